"""End to end: every fake mode is caught and only the fakes are removed; honest runs remove nobody."""
import math
import os

import pytest
from fakes import (
    GROUPS,
    MODES,
    assert_each_fake_removed_once_and_for_good,
    fake_spec,
    groups,
    removed_ranks,
)
from jobs import read_json, read_jsonl, run_job
from staging import first_plan, first_rechecks

from podlt_mpi.core import records
from podlt_mpi.mpi import messages

pytestmark = pytest.mark.slow

ACCURACY_MARGIN = 0.05


@pytest.fixture(scope="module")
def honest_accuracy(small_data, tmp_path_factory):
    """accuracy(seed): the test accuracy of the honest 7-rank run, run the first time it is
    asked for (the first tier asks for seed 0 only)."""
    acc = {}

    def accuracy(seed):
        if seed not in acc:
            out = str(tmp_path_factory.mktemp(f"honest{seed}") / "run")
            r = run_job(7, ["--data", small_data["train"], "--test-data", small_data["test"],
                            "--out", out, "--block-lines", "200", "--seed", seed])
            assert r.returncode == 0, r.stdout + r.stderr
            acc[seed] = read_json(os.path.join(out, "summary.json"))["test_accuracy"]
        return acc[seed]
    return accuracy


def assert_accuracy_near(out, honest):
    acc = read_json(os.path.join(out, "summary.json"))["test_accuracy"]
    assert abs(acc - honest) <= ACCURACY_MARGIN, (acc, honest)


def test_the_groups_hold_every_mode_once():
    assert sorted(m for g in GROUPS for m in g) == sorted(MODES)
    assert max(map(len, GROUPS)) <= 5 and groups(list("abcdefghijklm")) == [
        tuple("abcd"), tuple("efgh"), tuple("ijklm")]


# the first tier: two modes, an honest computation on poisoned targets and a crafted shift, on
# 6 ranks; the full tier: every mode, in its groups
@pytest.mark.parametrize("modes", [("label-flip", "alie"),
                                   *(pytest.param(g, marks=pytest.mark.full) for g in GROUPS)],
                         ids="+".join)
def test_each_fake_mode_is_caught_and_only_the_fakes_are_removed(modes, job_args, tmp_path,
                                                                honest_accuracy):
    # one fake per mode on the even ranks, as many honest ranks plus one on the odd ranks; the
    # fakes cheat from iteration 1, so the first iterations are honest ("stale" then really
    # resends an old gradient)
    modes_of = {2 * (i + 1): m for i, m in enumerate(modes)}
    r = run_job(2 * len(modes) + 2, job_args(**fake_spec(modes_of), fake_from=1))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    assert_each_fake_removed_once_and_for_good(out, modes_of)
    assert_accuracy_near(out, honest_accuracy(0))


@pytest.mark.full
@pytest.mark.parametrize("modes", GROUPS, ids="+".join)
def test_two_fakes_of_each_mode_with_another_seed(modes, job_args, tmp_path, honest_accuracy):
    # a second seed and two fakes per mode, cheating from the start, with four honest ranks
    # (1, g+2, 2g+3, 2g+4). Two fakes of one mode may meet as worker and control: "collude",
    # and every mode that computes the same wrong answer from the same lines, then outvotes the
    # honest control, and the manager's referee must overturn it.
    g = len(modes)
    modes_of = {**{2 + i: m for i, m in enumerate(modes)},
                **{g + 3 + i: m for i, m in enumerate(modes)}}
    r = run_job(2 * g + 5, job_args(**fake_spec(modes_of), seed=1))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    assert_each_fake_removed_once_and_for_good(out, modes_of)
    assert_accuracy_near(out, honest_accuracy(1))


@pytest.mark.full
def test_honest_run_removes_nobody_and_every_check_agrees(job_args, tmp_path):
    r = run_job(6, job_args(epochs=2))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    s = read_json(os.path.join(out, "summary.json"))
    assert s["removed"] == [] and s["checks"] == {"agree": 24, "fake": 0, "dispute": 0}
    assert s["test_accuracy"] is not None and s["test_accuracy"] > 0.2  # above chance (10 classes)
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    assert all(rec["applied"] and sum(e - s for s, e in rec["applied"]) == 200 for rec in ledger)
    assert "removed: none" in r.stdout
    # the costs behind the overhead benchmarks: bytes from the ledger's own assignments
    config = read_json(os.path.join(out, "config.json"))
    n, line = config["n_params"], math.prod(config["line_shape"])
    assert config["state_size"] == config["answer_size"] == n  # the mlp has no buffers
    for rec, row in zip(ledger, read_jsonl(os.path.join(out, "metrics.jsonl")), strict=True):
        lines = [e - s for s, e in (a["lines"] for a in rec["assignments"])]
        # one copy of the weights (the group's broadcast), a header and lines for each rank;
        # first, each of the 5 ranks learns the group: a header and the 6 members
        head = 8 * messages.HEADER_LEN  # int64s: with the broadcast's state digest (issue 27)
        regroup = 5 * (head + 4 * 6) if rec["iteration"] == 0 else 0
        assert row["bytes_out"] == regroup + 4 * n + sum(head + k * (4 * line + 8) for k in lines)
        assert row["bytes_in"] == len(lines) * (4 * n + 3 * 8)
        assert {"exchange", "verify", "update", "ledger", "read"} <= set(row["time"])
        assert 0 < row["compute_max"] <= row["time"]["exchange"] <= row["seconds"]
    assert len(s["peak_rss_mb"]) == 6 and all(m > 50 for m in s["peak_rss_mb"])
    # every rank's own count of its bytes: the manager's covers the protocol's (and the
    # start's), and the others sent at least what the manager counted in
    rows = read_jsonl(os.path.join(out, "metrics.jsonl"))
    counted = s["counted_bytes"]
    assert len(counted) == 6 and all(c[0] > 0 and c[1] > 0 for c in counted)
    assert counted[0][0] >= sum(row["bytes_in"] for row in rows)
    assert counted[0][1] >= sum(row["bytes_out"] for row in rows)
    assert sum(c[1] for c in counted[1:]) >= sum(row["bytes_in"] for row in rows)


@pytest.mark.full
def test_fake_control_is_caught(job_args, tmp_path):
    # a control of the first iteration (drawn from --role-seed 0, as the job draws it) cheats
    control = first_plan(6).controls[0]
    r = run_job(6, job_args(fake_ranks=control, fake_mode="sign-flip", blocks=1))
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(str(tmp_path / "run" / "summary.json"))
    assert s["removed"] == [{"rank": control, "iteration": 0, "role": "control"}]


@pytest.mark.full
def test_colluding_fakes_are_both_removed_and_no_honest_rank(job_args, tmp_path):
    # Two fakes computing the same wrong gradient outvote an honest control 2-1 whenever they are
    # the checked worker and a control; the manager's recomputation must overturn that vote.
    (worker, controls), = first_plan(6).checks
    fakes = sorted([worker, controls[1]])
    r = run_job(6, job_args(fake_ranks=",".join(map(str, fakes)), fake_mode="sign-flip"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    assert removed_ranks(out) == fakes
    first = read_jsonl(os.path.join(out, "ledger.jsonl"))[0]["check"]
    # iteration 0: the checked worker and one of its controls are the fakes, and agree
    assert first["worker"] == worker and first["controls"] == list(controls)
    assert first["referee"]["overturned"] is True and first["fake"] == fakes


@pytest.mark.full
def test_fault_plugin(job_args, tmp_path):
    plugin_dir = tmp_path / "plug"
    plugin_dir.mkdir()
    (plugin_dir / "myfault.py").write_text(
        "def halve(grad, *, iteration, rank, x, y, model):\n"
        "    assert x.shape[0] == y.shape[0] and iteration >= 0 and rank == 2\n"
        "    return grad * 0.5\n")
    r = run_job(6, job_args(fake_ranks=2, fault_plugin="myfault:halve"), path=[plugin_dir])
    assert r.returncode == 0, r.stdout + r.stderr
    assert removed_ranks(str(tmp_path / "run")) == [2]


@pytest.mark.full
def test_intermittent_cheater_is_caught(job_args, tmp_path):
    r = run_job(6, job_args(fake_ranks=4, fake_mode="scaled", fake_prob=0.5, epochs=2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert removed_ranks(str(tmp_path / "run")) == [4]


@pytest.mark.full  # the first tier's is test_manager_parts.py's, in one process
def test_a_dispute_is_resolved_by_a_further_rank_and_both_fakes_removed(job_args, tmp_path):
    # iteration 0 (--role-seed 0, 6 ranks): the checked worker and one control send different
    # random vectors: a 1-1-1 split. The fragment goes to one more rank, which agrees with the
    # honest control and the manager: both fakes lose and are removed at once.
    (worker, controls), = first_plan(6).checks
    fakes = sorted([worker, controls[1]])
    r = run_job(6, job_args(fake_ranks=",".join(map(str, fakes)), fake_mode="random"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    first = read_jsonl(os.path.join(out, "ledger.jsonl"))[0]
    check = first["check"]
    assert check["worker"] == worker and check["controls"] == list(controls)
    assert check["verdict"] == "fake" and check["fake"] == fakes and first["removed"] == fakes
    step = check["referee"]
    assert step["resolved"] is True and step["rechecks"] == first_rechecks(6)[:1]
    again = [a for a in first["assignments"] if a["role"] == "recheck"]
    assert [a["rank"] for a in again] == step["rechecks"]
    assert again[0]["lines"] == check["lines"]
    assert sorted(step["agrees"]) == sorted([controls[0], *step["rechecks"]])
    assert sum(e - s for s, e in first["applied"]) == 200  # the block lost nothing
    assert removed_ranks(out) == fakes
    from podlt_mpi.tools.audit import Audit
    rep = Audit(out).run(sample=None)
    assert rep["passed"], rep["problems"]


@pytest.mark.full
@pytest.mark.parametrize("reduce", ["star", "ranks"])
def test_a_rank_caught_on_a_recheck_keeps_its_folded_fragment_and_the_audit_names_it(
        reduce, job_args, tmp_path):
    # iteration 0 (--role-seed 0, 7 ranks): the checked worker and its second control send
    # different random vectors, a 1-1-1 split with the first control. The first recheck goes to
    # a fake too, the second to an honest rank, which agrees with the honest control and the
    # manager: the three fakes are removed. The fake recheck's own fragment as an unchecked
    # worker was folded into the update before the dispute (ledger formats 3 and 4): it stays
    # applied, and the audit attributes it to that rank, removed at that iteration.
    (worker, controls), = first_plan(7).checks
    asked = first_rechecks(7)[:2]
    fakes = sorted([worker, controls[1], asked[0]])
    # under the ranks' reduction the votes are commitments, and the removed rank still sends
    # the slices of its own fragment, which the table names
    r = run_job(7, job_args(fake_ranks=",".join(map(str, fakes)), fake_mode="random", seed=0,
                            reduce=reduce))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    first = read_jsonl(os.path.join(out, "ledger.jsonl"))[0]
    assert ("reduction" in first) == (reduce == "ranks")
    if reduce == "ranks":
        assert first["reduction"]["fetched"] == first["reduction"]["unattributed"] == []
    check = first["check"]
    assert first["format"] == records.FORMAT
    assert check["worker"] == worker and check["controls"] == list(controls)
    assert check["referee"]["rechecks"] == asked and sorted(first["removed"]) == fakes
    mine = next(a["lines"] for a in first["assignments"]
                if a["rank"] == asked[0] and a["role"] == "worker")
    assert first["applied_from"][first["applied"].index(mine)] == asked[0]
    # the disputed fragment, settled: the honest control's answer stands in
    assert first["applied_from"][first["applied"].index(check["lines"])] == controls[0]
    from podlt_mpi.tools.audit import Audit
    rep = Audit(out).run(sample=None)
    assert rep["passed"], rep["problems"]
    assert {"iteration": 0, "lines": mine, "rank": asked[0], "removed_at": 0,
            "replay": "shown fake"} in rep["unverified_from_removed"]


@pytest.mark.full
def test_several_checks_per_iteration(job_args, tmp_path):
    # 8 ranks: 2 checks of 2 controls each, 3 more workers; rank 3 cheats from iteration 1
    r = run_job(9, job_args(checks_per_iteration=2, fake_ranks=3, fake_mode="ipm", fake_from=1))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    for rec in ledger:
        checks = [rec["check"], *rec["extra_checks"]]
        assert len(checks) == 2 and checks[0]["worker"] != checks[1]["worker"]
        assert not set(checks[0]["controls"]) & set(checks[1]["controls"])
    s = read_json(os.path.join(out, "summary.json"))
    assert removed_ranks(out) == [3]
    assert sum(s["checks"].values()) == 2 * len(ledger)
    from podlt_mpi.tools.audit import Audit
    rep = Audit(out).run(sample=None)
    assert rep["passed"], rep["problems"]
    assert rep["credits"] == s["credits"]
