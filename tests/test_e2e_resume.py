"""End to end: preemption, time limits and crashes end the job cleanly, and --resume finishes the
run with exactly the bytes of a run done in one go."""
import os
import shutil
import time

import pytest
from jobs import ROOT, read_json, read_jsonl, run_job

pytestmark = pytest.mark.slow

RANKS = 5
HELPERS = os.path.join(ROOT, "tests", "helpers")
CHAOS = ["--fake-ranks", "2", "--fault-plugin", "chaos:act"]  # rank 2 runs tests/helpers/chaos.py


def base(small_data, out):
    # 24 iterations of 200 lines; a checkpoint every 5
    return ["--data", small_data["train"], "--test-data", small_data["test"], "--out", out,
            "--block-lines", "200", "--epochs", "2", "--checkpoint-every", "5",
            "--keep-checkpoints", "0", "--role-seed", "0"]  # the reference's roles, every time


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """The run done in one go, honestly."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    r = run_job(RANKS, base(small_data, out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def same_bytes(a, b, name="model_final.pt"):
    with open(os.path.join(a, name), "rb") as f, open(os.path.join(b, name), "rb") as g:
        return f.read() == g.read()


def protocol_records(out):
    """Ledger records without what legitimately differs: hashes and checkpoint fingerprints."""
    drop = {"hash", "prev", "checkpoint"}
    return [{k: v for k, v in rec.items() if k not in drop}
            for rec in read_jsonl(os.path.join(out, "ledger.jsonl"))]


def resume(out, *extra):
    r = run_job(RANKS, ["--resume", out, *extra], path=[HELPERS])
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def assert_equals_reference(out, reference):
    assert read_json(os.path.join(out, "summary.json"))["status"] == "complete"
    assert same_bytes(out, reference)
    assert protocol_records(out) == protocol_records(reference)
    assert read_json(os.path.join(out, "summary.json"))["credits"] == \
        read_json(os.path.join(reference, "summary.json"))["credits"]


SIGNAMES = {"term-job": "SIGTERM", "usr1-self": "SIGUSR1", "int-job": "SIGINT",
            "usr1-job": "SIGUSR1"}


@pytest.mark.parametrize("action,at", [
    ("term-job", 2),
    pytest.param("usr1-self", 9, marks=pytest.mark.full),
    pytest.param("int-job", 16, marks=pytest.mark.full),
    pytest.param("usr1-job", 6, marks=pytest.mark.full),
])
def test_signal_checkpoints_exits_0_and_resume_gives_identical_bytes(action, at, small_data,
                                                                      tmp_path, reference, mpi):
    out = str(tmp_path / "run")
    r = run_job(RANKS, base(small_data, out) + CHAOS, path=[HELPERS],
                env={"PODLT_CHAOS": f"{action}@{at}"})
    if mpi.name == "openmpi" and action in ("term-job", "int-job"):
        # Open MPI's mpirun does not forward these: it ends the ranks itself (SIGTERM, SIGKILL a
        # second later). Whether or not a checkpoint landed, resume must give the one-go bytes.
        resume(out)
        assert_equals_reference(out, reference)
        return
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(os.path.join(out, "summary.json"))
    signame = SIGNAMES[action]
    assert s["status"] == "stopped" and s["stopped_by"].startswith(signame)
    assert s["iterations"] == at + 1  # it finished the iteration it was in, and no more
    assert f"--resume {out}" in r.stdout
    assert os.path.exists(os.path.join(out, "checkpoints", f"ckpt-{at + 1:08d}.pt"))
    assert not os.path.exists(os.path.join(out, "model_final.pt"))
    resume(out)
    assert_equals_reference(out, reference)


@pytest.mark.full
def test_time_limit_stops_in_time_and_resume_completes(small_data, tmp_path, reference):
    out = str(tmp_path / "run")
    r = run_job(RANKS, base(small_data, out) + ["--time-limit", "0.001"])
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(os.path.join(out, "summary.json"))
    assert s["status"] == "stopped" and s["stopped_by"] == "--time-limit"
    assert s["iterations"] < 24
    resume(out, "--time-limit", "0")
    assert_equals_reference(out, reference)


# wallclock: the rank timeout is max(20 s, 10 x the slowest exchange); exchanges here take well
# under a second, so a lost rank is found at about 20 s and the job aborted within 30 s
@pytest.mark.full
@pytest.mark.wallclock
@pytest.mark.parametrize("role", ["worker", "control"])
def test_kill_9_ends_the_job_quickly_and_resume_completes(role, small_data, tmp_path, reference):
    at = 7
    rec = read_jsonl(os.path.join(reference, "ledger.jsonl"))[at]
    victim = next(a["rank"] for a in rec["assignments"] if a["role"] == role)
    out, stamp = str(tmp_path / "run"), str(tmp_path / "stamp")
    r = run_job(RANKS, base(small_data, out) + ["--fake-ranks", victim, "--fault-plugin",
                                                "chaos:act"],
                path=[HELPERS], env={"PODLT_CHAOS": f"kill@{at}", "PODLT_CHAOS_STAMP": stamp})
    ended = time.time()
    assert r.returncode != 0
    with open(stamp) as f:
        assert ended - float(f.read()) < 30
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    assert [x["iteration"] for x in ledger] == list(range(at))  # ends at the last complete one
    resume(out, "--fake-ranks", "")
    assert_equals_reference(out, reference)


# a silent rank's removal is test_e2e_untrusted's; SIGSTOP is its full-tier variant
@pytest.mark.full
@pytest.mark.wallclock  # the same bound as above
def test_a_hanging_rank_is_removed_within_30_s_and_the_job_finishes(small_data, tmp_path):
    out, stamp = str(tmp_path / "run"), str(tmp_path / "stamp")
    r = run_job(RANKS, base(small_data, out) + CHAOS, path=[HELPERS],
                env={"PODLT_CHAOS": "stop@6", "PODLT_CHAOS_STAMP": stamp}, timeout=240)
    ended = time.time()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 2 removed at iteration 6" in r.stderr and "no answer within 20 s" in r.stderr
    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert metrics[6]["seconds"] < 30  # the deadline, then on without it
    assert len(read_jsonl(os.path.join(out, "ledger.jsonl"))) == 24
    summary = read_json(os.path.join(out, "summary.json"))
    assert summary["status"] == "complete" and [x["rank"] for x in summary["removed"]] == [2]
    with open(stamp) as f:  # the stopped rank is ended with the job, 20 s after the last word
        assert ended - float(f.read()) < 30 + 20 + 60


@pytest.mark.full
def test_resume_on_more_ranks_continues_and_says_what_changes(small_data, tmp_path, reference):
    out = str(tmp_path / "run")
    shutil.copytree(reference, out)
    for name in ("ckpt-00000024.pt", "ckpt-00000020.pt", "ckpt-00000015.pt"):
        os.unlink(os.path.join(out, "checkpoints", name))
    r = run_job(RANKS + 2, ["--resume", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "continues on 7" in r.stderr and "ranks [5, 6] join" in r.stderr
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    assert len(ledger) == 24 and ledger[10]["prev"] == ledger[9]["hash"]
    late = {a["rank"] for rec in ledger[10:] for a in rec["assignments"]}
    assert {5, 6} <= late
    hist = read_json(os.path.join(out, "config.json"))["resumed"]
    assert hist[-1]["from_iteration"] == 10 and hist[-1]["world_size"] == 7


def test_resume_refuses_to_change_what_decides_the_numbers(small_data, tmp_path, reference):
    out = str(tmp_path / "run")
    shutil.copytree(reference, out)
    r = run_job(RANKS, ["--resume", out, "--lr", "0.1"])
    assert r.returncode == 2
    assert "--lr cannot change on --resume" in r.stderr and "Traceback" not in r.stderr
    assert same_bytes(out, reference, "ledger.jsonl")  # nothing touched
