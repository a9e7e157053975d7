"""A rank that lies at the message level (tests/adversaries/lie.py, not our fault plugin): NaN,
Inf or 1000x answers are never applied on trust, and a lying loss is caught and named."""
import math
import os
import shutil

import pytest
from helpers.forge import rechain
from helpers.staging import first_plan
from jobs import ROOT, read_json, read_jsonl, run_job

pytestmark = pytest.mark.slow
LIAR = os.path.join(ROOT, "tests", "adversaries", "lie.py")
WORLD = 6


def audit(out):
    from podlt_mpi.tools.audit import Audit
    return Audit(str(out)).run(sample=None)


def unchecked_worker() -> int:
    """A rank that iteration 0 makes a worker nobody checks (--role-seed 0)."""
    plan = first_plan(WORLD)
    return next(r for r in plan.workers if r != plan.checked)


def lied(stderr) -> list:
    return [int(line.rsplit(" ", 1)[1]) for line in stderr.splitlines()
            if line.startswith("adversary: lied at iteration")]


@pytest.mark.parametrize("lie", ["nan", pytest.param("inf", marks=pytest.mark.full),
                                 pytest.param("1000x", marks=pytest.mark.full)])
def test_a_wild_answer_from_an_unchecked_worker_removes_it_at_once(lie, job_args, tmp_path):
    liar = unchecked_worker()
    r = run_job(WORLD, job_args(), adversary=(liar, LIAR), env={"LIE": lie})
    assert r.returncode == 0, r.stdout + r.stderr
    assert lied(r.stderr) == [0]  # one lie: removed before it could send another
    out = tmp_path / "run"
    first = read_jsonl(out / "ledger.jsonl")[0]
    assert first["removed"] == [liar]
    assert first["check"]["verdict"] == "agree"  # not a check's catch: the look's
    (look,) = first["looks"]
    assert (look["rank"], look["verdict"]) == (liar, "differs")
    assert ("non-finite" if lie in ("nan", "inf") else "gradient norm") in look["why"]
    # the manager's recomputation stands in for the lie: no fragment is lost
    mine = [a for a in first["assignments"] if a["role"] == "manager"]
    assert [(a["rank"], a["lines"]) for a in mine] == [(0, look["lines"])]
    assert look["lines"] in first["applied"] and 0 in first["applied_from"]
    s = read_json(out / "summary.json")
    assert [x["rank"] for x in s["removed"]] == [liar]
    assert all(math.isfinite(s[k]) for k in ("final_loss", "test_loss"))
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    assert_the_audit_sees_forged_looks_and_losses(out, tmp_path, liar)


def assert_the_audit_sees_forged_looks_and_losses(out, tmp_path, liar):
    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    rechain(forged, lambda recs: recs[0]["looks"][0].update(verdict="same"))
    rep = audit(forged)
    assert not rep["passed"]
    assert any("look's verdict same" in p["message"] for p in rep["problems"]), rep["problems"]
    # a logged loss an honest rank never sent is named as that rank's, not the manager's
    shutil.rmtree(forged)
    shutil.copytree(out, forged)
    rec = read_jsonl(out / "ledger.jsonl")[1]
    checked = {c["worker"] for c in [rec["check"], *rec.get("extra_checks", [])]}
    victim = next(a for a in rec["assignments"] if a["role"] == "worker"
                  and a["rank"] not in checked)
    rechain(forged, lambda recs: next(a for a in recs[1]["assignments"]
                                      if a["rank"] == victim["rank"]).update(loss=0.5))
    rep = audit(forged)
    assert not rep["passed"]
    assert any(f"rank {victim['rank']}'s loss for lines {victim['lines']} differs" in p["message"]
               for p in rep["problems"]), rep["problems"]


@pytest.mark.full
def test_a_lying_loss_gets_the_rank_removed_and_the_audit_names_it(job_args, tmp_path):
    # 5 active ranks, 3 of them in each check: a rank that always lies is caught in its first
    # watched iteration; before that its lies stood, unchecked, and the audit must say whose
    liar = unchecked_worker()
    r = run_job(WORLD, job_args(), adversary=(liar, LIAR), env={"LIE": "loss"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    s = read_json(out / "summary.json")
    assert [x["rank"] for x in s["removed"]] == [liar], s["removed"]
    caught = s["removed"][0]["iteration"]
    assert lied(r.stderr)[-1] == caught
    ledger = read_jsonl(out / "ledger.jsonl")
    rec = ledger[caught]
    assert any(liar in c["fake"] for c in [rec["check"], *rec.get("extra_checks", [])])
    assert [a["loss"] for a in rec["assignments"] if a["rank"] == liar] == [0.001]
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    named = {(f["iteration"], f["rank"], f["what"]) for f in rep["fake_contributions"]}
    assert {(it, liar, "loss") for it in range(caught)} <= named
    assert caught > 0  # staged: unchecked at 0, so it lied unchecked first


@pytest.mark.full
def test_a_wild_answer_leaves_the_model_within_noise_of_an_honest_run(job_args, tmp_path):
    honest = run_job(WORLD - 1, job_args(out="honest"))
    assert honest.returncode == 0, honest.stdout + honest.stderr
    liar = unchecked_worker()
    r = run_job(WORLD, job_args(), adversary=(liar, LIAR), env={"LIE": "1000x"})
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = (read_json(tmp_path / d / "summary.json") for d in ("honest", "run"))
    assert abs(a["test_loss"] - b["test_loss"]) < 0.1 * a["test_loss"], (a, b)
