"""Secret roles end to end: a rank that knows its command line cannot predict them, two runs of
the same command draw different roles and give the same model, and the audit recomputes every
role from the key the run reveals at its end."""
import json
import os
import shutil
import sys

import pytest
from helpers.forge import rechain
from jobs import ROOT, read_json, read_jsonl, run_job

from podlt_mpi.core import records, roles

pytestmark = pytest.mark.slow
ADVERSARY = os.path.join(ROOT, "tests", "adversaries", "predict_roles.py")


def audit(out):
    from podlt_mpi.tools.audit import Audit
    return Audit(str(out)).run(sample=None)


def role_list(out):
    return [[(a["rank"], a["role"]) for a in rec["assignments"]]
            for rec in read_jsonl(os.path.join(out, "ledger.jsonl"))]


def test_a_rank_that_predicts_its_roles_from_the_seed_and_cheats_when_unwatched_is_removed(
        job_args, tmp_path):
    sys.path.insert(0, os.path.dirname(ADVERSARY))
    from predict_roles import predicted_watched
    # 6 ranks: 5 active, a check of 2 controls. In an iteration the adversary thinks unwatched
    # it cheats, and is watched with probability 3/5 whatever it thinks: not caught after k
    # cheats with probability (2/5)^k. 40 blocks of 20 lines give it k >= 11 (under 5e-5).
    args = job_args(role_seed=None, block_lines=20, blocks=40, seed=5)
    unwatched = [not w for w in predicted_watched(args, 6, 3, 40)]
    assert sum(unwatched) >= 11 and 0.4 ** sum(unwatched) < 5e-5
    r = run_job(6, args, adversary=(3, ADVERSARY))
    assert r.returncode == 0, r.stdout + r.stderr
    cheats = [int(line.rsplit(" ", 1)[1]) for line in r.stderr.splitlines()
              if line.startswith("adversary: cheated at iteration")]
    assert cheats and all(unwatched[it] for it in cheats)  # it cheated when it thought it safe
    out = tmp_path / "run"
    s = read_json(out / "summary.json")
    assert [x["rank"] for x in s["removed"]] == [3], s["removed"]
    assert s["removed"][0]["iteration"] == cheats[-1]  # caught at the last cheat it made
    ledger = read_jsonl(out / "ledger.jsonl")
    caught = ledger[cheats[-1]]
    assert caught["removed"] == [3] and any(3 in c["fake"] for c in
                                            [caught["check"], *caught.get("extra_checks", [])])
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    # its unchecked cheats before were applied on trust: the audit shows each, named
    shown = {(f["iteration"], f["rank"]) for f in rep["fake_contributions"]}
    assert {(it, 3) for it in cheats[:-1]} <= shown | {(u["iteration"], u["rank"]) for u in
                                                      rep["unverified_from_removed"]}


@pytest.mark.full
def test_two_runs_of_one_command_draw_other_roles_give_one_model_and_audit_every_role(
        job_args, tmp_path):
    outs = []
    for name in ("a", "b"):
        r = run_job(6, job_args(out=name, role_seed=None))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "roles committed:" in r.stderr and "INSECURE" not in r.stderr
        outs.append(tmp_path / name)
    a, b = (role_list(o) for o in outs)
    assert sum(x != y for x, y in zip(a, b, strict=True)) >= 6  # 12 iterations; 1/60 alike
    assert (outs[0] / "model_final.pt").read_bytes() == (outs[1] / "model_final.pt").read_bytes()
    for o in outs:
        config, ledger = read_json(o / "config.json"), read_jsonl(o / "ledger.jsonl")
        committed = config["roles"]["commitment"]
        assert config["roles"]["key"] == "secret" and ledger[0]["format"] == records.FORMAT
        assert {rec["roles"] for rec in ledger} == {committed}
        assert roles.read_revealed(read_json(o / roles.KEY_FILE)).keys() == {committed}
        rep = audit(o)
        assert rep["passed"], rep["problems"]
        assert rep["replay"]["verified"] == len(ledger)
    assert_the_audit_recomputes_every_role_from_the_revealed_key(outs[0], tmp_path)


def assert_the_audit_recomputes_every_role_from_the_revealed_key(out, tmp_path):

    def swap_two_unchecked_workers(recs):
        # every digest stays with its lines and the credits stay the same: only the roles lie
        rec = recs[5]
        checked = rec["check"]["lines"]
        plain = [a for a in rec["assignments"] if a["role"] == "worker" and a["lines"] != checked]
        a, b = plain[0], plain[1]
        a["rank"], b["rank"] = b["rank"], a["rank"]
        rec["applied_from"] = [{tuple(x["lines"]): x["rank"] for x in plain}.get(tuple(lines), r)
                               for lines, r in zip(rec["applied"], rec["applied_from"])]

    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    rechain(forged, swap_two_unchecked_workers)
    rep = audit(forged)
    assert not rep["passed"]
    assert [(p["iteration"], p["check"]) for p in rep["problems"]] == [(5, "roles")], \
        rep["problems"]

    # a key that is not the committed one opens nothing
    other = tmp_path / "other-key"
    shutil.copytree(out, other)
    key = roles.new_key()
    (other / roles.KEY_FILE).write_text(json.dumps(
        {"keys": [{"commitment": roles.commitment(key), "key": key.hex()}]}))
    rep = audit(other)
    assert not rep["passed"] and {p["check"] for p in rep["problems"]} == {"roles"}
    assert "no revealed key opens" in rep["problems"][0]["message"]

    # and a complete run must reveal its key
    os.unlink(other / roles.KEY_FILE)
    rep = audit(other)
    assert not rep["passed"] and "revealed no key" in rep["problems"][0]["message"]


@pytest.mark.full  # the first tier's resume tests run with --role-seed: here the key is secret
def test_a_stopped_run_keeps_its_key_and_a_continued_one_commits_to_a_new_one(job_args, tmp_path):
    out = tmp_path / "run"
    r = run_job(6, job_args(role_seed=None, time_limit=0.001))
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(out / "summary.json")["status"] == "stopped"
    assert not (out / roles.KEY_FILE).exists()  # secret until the run completes
    committed = read_json(out / "config.json")["roles"]["commitment"]
    rep = audit(out)
    assert rep["passed"] and any("roles are not checked" in n for n in rep["notes"])
    r = run_job(6, ["--resume", str(out), "--time-limit", "0"])
    assert r.returncode == 0, r.stdout + r.stderr
    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == 12 and {rec["roles"] for rec in ledger} == {committed}
    assert roles.read_revealed(read_json(out / roles.KEY_FILE)).keys() == {committed}
    rep = audit(out)  # every role, before the stop and after, from the one key
    assert rep["passed"], rep["problems"]
    # a completed run continued: its key is known, so the rest is drawn from a new one
    r = run_job(6, ["--resume", str(out), "--epochs", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    ledger = read_jsonl(out / "ledger.jsonl")
    later = read_json(out / "config.json")["roles"]["commitment"]
    assert later != committed and [rec["roles"] for rec in ledger] == [committed] * 12 + [later] * 12
    assert roles.read_revealed(read_json(out / roles.KEY_FILE)).keys() == {committed, later}
    rep = audit(out)
    assert rep["passed"], rep["problems"]
