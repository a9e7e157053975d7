"""End to end: every fake mode is caught and only the fakes are removed; honest runs remove nobody."""
import os

import pytest

from conftest import read_json, read_jsonl, run_job

pytestmark = pytest.mark.slow

MODES = ["random", "zero", "sign-flip", "scaled", "stale", "lazy", "lowprec", "noise"]


def removed_ranks(out):
    return sorted(r["rank"] for r in read_json(os.path.join(out, "summary.json"))["removed"])


@pytest.mark.parametrize("mode", MODES)
def test_each_fake_mode_is_caught_and_only_the_fake_is_removed(mode, job_args, tmp_path):
    # ranks 1..6; rank 3 cheats from iteration 1, so the first iterations are honest ("stale"
    # then really resends an old gradient)
    r = run_job(7, job_args(fake_ranks=3, fake_mode=mode, fake_from=1))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    assert removed_ranks(out) == [3]
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    caught = [rec for rec in ledger if rec["removed"]]
    assert len(caught) == 1 and caught[0]["check"]["verdict"] == "fake"
    after = [a["rank"] for rec in ledger if rec["iteration"] > caught[0]["iteration"]
             for a in rec["assignments"]]
    assert after and 3 not in after  # removed for good: never given work again
    credits = read_json(os.path.join(out, "summary.json"))["credits"]
    assert credits["3"]["rejected"] == 1 and credits["3"]["removed_at"] == caught[0]["iteration"]


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


def test_fake_control_is_caught(job_args, tmp_path):
    # On the first iteration the controls are ranks N-2 and N-1 (DESIGN.md): rank 5 of 6.
    r = run_job(6, job_args(fake_ranks=5, fake_mode="sign-flip", blocks=1))
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(str(tmp_path / "run" / "summary.json"))
    assert s["removed"] == [{"rank": 5, "iteration": 0, "role": "control"}]


def test_colluding_fakes_are_both_removed_and_no_honest_rank(job_args, tmp_path):
    # Two fakes computing the same wrong gradient outvote an honest control 2-1 whenever they are
    # the checked worker and a control; the manager's recomputation must overturn that vote.
    r = run_job(6, job_args(fake_ranks="2,5", fake_mode="sign-flip"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "run")
    assert removed_ranks(out) == [2, 5]
    first = read_jsonl(os.path.join(out, "ledger.jsonl"))[0]["check"]
    # iteration 0: worker 2 is checked with controls 4 and 5, the fakes agree with each other
    assert first["worker"] == 2 and first["controls"] == [4, 5]
    assert first["referee"]["overturned"] is True and first["fake"] == [2, 5]


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


def test_intermittent_cheater_is_caught(job_args, tmp_path):
    r = run_job(6, job_args(fake_ranks=4, fake_mode="scaled", fake_prob=0.5, epochs=2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert removed_ranks(str(tmp_path / "run")) == [4]
