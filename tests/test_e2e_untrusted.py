"""Ranks an adversary owns (tests/adversaries/, programs that lie at the message level, not our
fault plugin): malformed answers, false stops, silence, pickles at the start and end. Each
ends the same way: the rank is removed or the job refused, within the deadline and a minute,
exit 0 (2 for a job that cannot start), the run directory complete, no honest rank removed."""
import os
import time

import pytest
from helpers.staging import first_plan
from jobs import ROOT, read_json, read_jsonl, run_job

from podlt_mpi.mpi import messages, tags

pytestmark = pytest.mark.slow
# the first tier: one case of each kind of lie an owned rank tells (issue 27); SIGSTOP: full tier
ADVERSARIES = os.path.join(ROOT, "tests", "adversaries")
LIAR = os.path.join(ADVERSARIES, "lie.py")
STARTER = os.path.join(ADVERSARIES, "startup.py")
WORLD = 6


def audit(out):
    from podlt_mpi.tools.audit import Audit
    return Audit(str(out)).run(sample=None)


def removed(out) -> list:
    return [x["rank"] for x in read_json(out / "summary.json")["removed"]]


def assert_complete(out, iterations):
    s = read_json(out / "summary.json")
    assert s["status"] == "complete" and s["iterations"] == iterations, s
    assert len(read_jsonl(out / "ledger.jsonl")) == iterations
    assert os.path.exists(out / "model_final.pt")


@pytest.mark.parametrize("lie,why", [pytest.param("long", "bytes where", marks=pytest.mark.full),
                                     ("short", "bytes where"),
                                     pytest.param("signal", "signal field",
                                                  marks=pytest.mark.full)])
def test_a_malformed_answer_is_refused_and_the_rank_removed(lie, why, mpi, job_args, tmp_path):
    plan = first_plan(WORLD)
    unchecked = next(r for r in plan.workers if r != plan.checked)
    control = plan.checks[0][1][0]
    for liar in (unchecked, control) if lie == "short" else (unchecked,):
        out = tmp_path / f"run{liar}"
        r = run_job(WORLD, job_args(out=out.name, blocks=4), adversary=(liar, LIAR),
                    env={"LIE": lie})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        assert removed(out) == [liar]
        assert f"rank {liar} removed at iteration 0" in r.stderr and why in r.stderr
        first = read_jsonl(out / "ledger.jsonl")[0]
        assert first["removed"] == [liar]
        (look,) = [x for x in first["looks"] if x["rank"] == liar]
        assert look["verdict"] == "malformed" and why in look["why"]
        assert [a["grad_digest"] for a in first["assignments"] if a["rank"] == liar] == [None]
        if liar == unchecked:  # the manager computed its lines instead: nothing is lost
            assert [a["lines"] for a in first["assignments"] if a["role"] == "manager"] == \
                [look["lines"]]
        else:  # the checked worker and the other control agree: their answer stands
            assert first["check"]["verdict"] == "fake" and first["check"]["fake"] == [liar]
        assert_complete(out, 4)
        rep = audit(out)
        assert rep["passed"], rep["problems"]


@pytest.mark.parametrize("lie", ["silent", pytest.param("sigstop", marks=pytest.mark.full)])
def test_a_rank_that_stops_answering_is_removed_and_the_job_finishes(lie, mpi, job_args,
                                                                     tmp_path):
    # alive but silent from iteration 2: removed after --rank-timeout, and once the run's
    # files are complete the job ends it (it would keep mpiexec from returning)
    plan = first_plan(WORLD)
    liar = next(r for r in plan.workers if r != plan.checked)
    t0 = time.monotonic()
    r = run_job(WORLD, job_args(blocks=5, rank_timeout=5), adversary=(liar, LIAR),
                env={"LIE": lie, "LIE_FROM": "2"}, timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    assert removed(out) == [liar]
    assert "no answer within 5 s" in r.stderr and f"rank {liar} removed at iteration 2" in r.stderr
    assert f"rank(s) [{liar}] said nothing at the job's end" in r.stderr
    assert_complete(out, 5)
    assert read_json(out / "summary.json")["peak_rss_mb"][liar] is None
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    assert took < 5 + 5 + 120, took  # two deadlines (its answer, its last word) and a start


def test_a_false_stop_stops_the_run_once_then_is_not_obeyed(mpi, job_args, tmp_path):
    liar = first_plan(WORLD).workers[0]
    r = run_job(WORLD, job_args(blocks=4), adversary=(liar, LIAR), env={"LIE": "stop"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    s = read_json(out / "summary.json")
    assert s["status"] == "stopped" and s["stopped_by"] == f"SIGTERM on rank {liar}", s
    # resumed: the same rank says it again, and the run goes on to its end regardless
    r = run_job(WORLD, ["--resume", str(out)], adversary=(liar, LIAR), env={"LIE": "stop"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"rank {liar} reports SIGTERM again" in r.stderr
    assert_complete(out, 4)
    assert removed(out) == []
    rep = audit(out)
    assert rep["passed"], rep["problems"]


@pytest.mark.parametrize("mode", ["pickle-report", pytest.param("absent", marks=pytest.mark.full)])
def test_a_rank_that_cannot_start_properly_is_refused_and_runs_no_code_on_rank_0(
        mode, mpi, job_args, tmp_path):
    marker = tmp_path / "pickle-ran"
    t0 = time.monotonic()
    r = run_job(4, job_args(blocks=2, start_timeout=20), adversary=(2, STARTER),
                env={"MODE": mode, "MARKER": str(marker)}, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not marker.exists()
    why = "nothing within 20 s" if mode == "absent" else "a malformed report"
    line = next(x for x in r.stderr.splitlines() if x.startswith("podlt_mpi: error:"))
    assert "rank 2: " + why in line, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written
    assert time.monotonic() - t0 < 20 + 120


@pytest.mark.parametrize("mode", [pytest.param("pickle-hello", marks=pytest.mark.full),
                                  "pickle-finish"])
def test_a_pickle_for_a_host_name_or_the_last_word_runs_nothing(mode, mpi, job_args, tmp_path):
    # a host name is only text (a false one misplaces the liar alone); a last word of the
    # wrong size is none: the rank is ended with the job, the run complete
    marker = tmp_path / "pickle-ran"
    r = run_job(4, job_args(blocks=2, rank_timeout=5), adversary=(2, STARTER),
                env={"MODE": mode, "MARKER": str(marker)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not marker.exists()
    assert_complete(tmp_path / "run", 2)
    peaks = read_json(tmp_path / "run" / "summary.json")["peak_rss_mb"]
    assert (peaks[2] is None) == (mode == "pickle-finish")


def test_no_object_message_passes_between_ranks(mpi, job_args, tmp_path):
    # every rank with mpi4py's pickling disabled: any object collective or send would fail
    guard = os.path.join(ROOT, "tests", "helpers", "nopickle.py")
    r = run_job(4, job_args(blocks=3), program=guard)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_complete(tmp_path / "run", 3)


def test_resume_writes_through_no_link_and_never_starts_over_unasked(mpi, job_args, tmp_path):
    import shutil
    r = run_job(4, job_args(blocks=2))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    # a ledger that is a link to someone else's file: refused, the file untouched
    elsewhere = tmp_path / "precious.jsonl"
    shutil.move(out / "ledger.jsonl", elsewhere)
    before = elsewhere.read_bytes()
    os.symlink(elsewhere, out / "ledger.jsonl")
    r = run_job(4, ["--resume", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ledger.jsonl is a symbolic link" in r.stderr and "Traceback" not in r.stderr
    assert elsewhere.read_bytes() == before
    os.unlink(out / "ledger.jsonl")
    shutil.move(elsewhere, out / "ledger.jsonl")
    # no checkpoint to continue from: an error, unless --restart says to start over
    shutil.rmtree(out / "checkpoints")
    r = run_job(4, ["--resume", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no checkpoint can be continued from" in r.stderr and "--restart" in r.stderr
    assert (out / "ledger.jsonl").read_bytes() == before
    r = run_job(4, ["--resume", str(out), "--restart"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert_complete(out, 2)


@pytest.mark.parametrize("tag,size", [(99, 4096),
                                      pytest.param(tags.FINISH, 8 * messages.LAST_WORD_LEN,
                                                   marks=pytest.mark.full)])
def test_a_flood_of_unsolicited_messages_is_drained_and_rank_0_memory_stays_flat(
        tag, size, mpi, job_args, tmp_path):
    # 20,000 messages of 4 KB (80 MB) on a tag rank 0 never receives, or of a last word's
    # size and tag (rank 0 keeps a rank's first): counted and discarded as they come, so rank
    # 0's peak stays within a fraction of them of an honest run's
    flooder = first_plan(5).workers[0]
    honest = run_job(5, job_args(out="honest", blocks=4))
    assert honest.returncode == 0, honest.stdout + honest.stderr
    r = run_job(5, job_args(blocks=4, rank_timeout=5),
                adversary=(flooder, os.path.join(ADVERSARIES, "flood.py")),
                env={"FLOOD_TAG": str(tag), "FLOOD_BYTES": str(size)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adversary: flooded 20000" in r.stderr
    assert f"rank {flooder} sends messages nobody asked for" in r.stderr
    out = tmp_path / "run"
    assert_complete(out, 4)
    s = read_json(out / "summary.json")
    # counted as they are taken in: MPI delivers a flood as fast as rank 0 takes it, and the
    # run may end before the last of it has come. The flooder's own answer comes behind its
    # flood: it may miss its deadline, and be removed for it; no other rank is
    assert list(s["unsolicited_messages"]) == [str(flooder)]
    assert [x["rank"] for x in s["removed"]] in ([], [flooder])
    assert 1000 < s["unsolicited_messages"][str(flooder)] <= 20000
    base = read_json(tmp_path / "honest" / "summary.json")["peak_rss_mb"][0]
    assert s["peak_rss_mb"][0] < base + 30, (s["peak_rss_mb"][0], base)


@pytest.mark.parametrize("mode", ["altered", pytest.param("withheld", marks=pytest.mark.full)])
def test_weights_altered_or_withheld_on_the_way_remove_no_honest_rank(mode, mpi, job_args,
                                                                      tmp_path):
    # an honest rank whose broadcast a forwarder tampered with says so, gets the weights
    # directly, and the broadcast is not used again
    victim = first_plan(WORLD).workers[0]
    r = run_job(WORLD, job_args(blocks=4, rank_timeout=10), adversary=(
        victim, os.path.join(ADVERSARIES, "forwarded.py")), env={"MODE": mode})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"adversary: the weights were {mode} on the way" in r.stderr
    assert f"rank(s) [{victim}] did not get the weights by the broadcast as sent" in r.stderr
    assert r.stderr.count("from now on the weights go to each rank directly") == 1
    out = tmp_path / "run"
    assert_complete(out, 4)
    assert removed(out) == []
    rep = audit(out)
    assert rep["passed"], rep["problems"]


def test_a_rank_that_never_joins_the_broadcast_group_hangs_nothing(mpi, job_args, tmp_path):
    liar = 3
    t0 = time.monotonic()
    r = run_job(WORLD, job_args(blocks=3, rank_timeout=5), adversary=(
        liar, os.path.join(ADVERSARIES, "nogroup.py")), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adversary: not joining" in r.stderr
    assert "the broadcast's group of 6 ranks was not formed within 5 s" in r.stderr
    out = tmp_path / "run"
    assert_complete(out, 3)
    assert removed(out) == [liar]  # it never answered the work it was then sent directly
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    assert time.monotonic() - t0 < 5 + 5 + 5 + 120
