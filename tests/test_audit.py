"""The audit: an honest run and a run with caught fakes pass; every kind of tampering fails it,
at the iteration where it was done."""
import json
import os
import shutil

import pytest
from jobs import read_json, run_job

pytestmark = pytest.mark.slow


def make_run(small_data, out, *extra, ranks=6):
    # the roles from --role-seed: which of a fake's cheats are checked is then the same in
    # every run (with a secret key the fakes were sometimes caught at their first cheat)
    args = ["--data", small_data["train"], "--test-data", small_data["test"], "--out", out,
            "--block-lines", "200", "--checkpoint-every", "4", "--keep-checkpoints", "0",
            "--role-seed", "0", *extra]
    r = run_job(ranks, args)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def honest(small_data, tmp_path_factory):
    return make_run(small_data, str(tmp_path_factory.mktemp("honest") / "run"))


@pytest.fixture(scope="module")
def with_fakes(small_data, tmp_path_factory):
    # ranks 2 and 5 flip signs from iteration 2; unchecked fragments of theirs are applied
    # before each is caught. The learning rate drops for the second epoch: the replay must too.
    return make_run(small_data, str(tmp_path_factory.mktemp("fakes") / "run"), "--fake-ranks",
                    "2,5", "--fake-mode", "sign-flip", "--fake-from", "2", "--epochs", "2",
                    "--lr-drops", "1", "--lr-gamma", "0.3", ranks=8)


def audit(run_dir, sample=None):
    from podlt_mpi.tools.audit import Audit
    return Audit(run_dir).run(sample=sample)


def test_audit_all_passes_on_an_honest_run_and_replays_every_iteration(honest):
    rep = audit(honest)
    assert rep["passed"], rep["problems"]
    assert rep["replay"]["replayed"] == rep["replay"]["verified"] == rep["iterations"] == 12
    assert rep["replay"]["verdicts_confirmed"] == 12
    assert rep["credits"] == read_json(os.path.join(honest, "summary.json"))["credits"]


def test_a_sample_replays_from_the_nearest_checkpoint_not_from_the_start(honest):
    from podlt_mpi.tools.audit import Audit
    a = Audit(honest)
    a.check_chain()
    a.build()
    rep = a.replay([10], a.check_checkpoints())
    assert sorted(rep["outcomes"]) == [8, 9, 10]  # from checkpoint 8, not iteration 0
    assert all(o.in_sync for o in rep["outcomes"].values())


def test_audit_all_passes_with_caught_fakes_and_attributes_their_contributions(with_fakes):
    summary = read_json(os.path.join(with_fakes, "summary.json"))
    assert sorted(r["rank"] for r in summary["removed"]) == [2, 5]
    rep = audit(with_fakes)
    assert rep["passed"], rep["problems"]
    assert sorted(r["rank"] for r in rep["removed"]) == [2, 5]
    assert rep["credits"] == summary["credits"]
    # every fragment replay shows was wrong came from a rank that was removed later
    assert all(f["rank"] in (2, 5) and f["removed_at"] >= f["iteration"]
               for f in rep["fake_contributions"])
    # before iteration 2 the fakes computed honestly; from then on replay exposes what they sent
    unverified = rep["unverified_from_removed"]
    assert any(u["replay"] == "shown fake" for u in unverified)
    assert all(u["replay"] == "honest" for u in unverified if u["iteration"] < 2)
    assert all(u["replay"] in ("shown fake", "not replayed") for u in unverified
               if u["iteration"] >= 2)
    assert rep["replay"]["verified"] + len(rep["replay"]["skipped"]) + \
        len({f["iteration"] for f in rep["fake_contributions"]}) >= rep["iterations"] - 1


def edited(src, dst, iteration, edit, reseal=False, follow_checkpoints=True):
    """Copy a run and change record `iteration` of its ledger (resealing the chain, and moving
    the checkpoints after it onto the new chain, if asked)."""
    from podlt_mpi.core import ledger
    shutil.copytree(src, dst)
    path = os.path.join(dst, "ledger.jsonl")
    records, _ = ledger.read(path)
    edit(records[iteration])
    if reseal:
        prev = records[iteration - 1]["hash"] if iteration else ledger.GENESIS
        for k in range(iteration, len(records)):
            records[k] = ledger.seal(records[k], prev)
            prev = records[k]["hash"]
    with open(path, "w") as f:
        f.writelines(ledger.canonical(r).decode() + "\n" for r in records)
    if reseal and follow_checkpoints:
        move_checkpoints(dst, records, iteration)
    return dst


def move_checkpoints(run, records, iteration):
    """Point the checkpoints after `iteration` at the resealed records: their ledger position
    is outside their fingerprint, so a forger can rewrite it too."""
    import torch

    from podlt_mpi.run import checkpoint
    for n, path in checkpoint.available(os.path.join(run, "checkpoints")):
        if n - 1 >= iteration:
            blob = torch.load(path, weights_only=True)
            pos = json.loads(blob["position"])
            pos["ledger_hash"] = records[n - 1]["hash"]
            blob["position"] = json.dumps(pos)
            torch.save(blob, path)


def _set(key, value):
    return lambda rec: rec.__setitem__(key, value)


FIELD_EDITS = {
    "iteration": _set("iteration", 99), "epoch": _set("epoch", 1), "block": _set("block", 0),
    "lines": _set("lines", [0, 200]), "data_digest": _set("data_digest", "0" * 64),
    "model_before": _set("model_before", "1" * 64),
    "assignments": lambda rec: rec["assignments"][0].update(  # another rank, already busy
        rank=rec["assignments"][1]["rank"]),
    "check": lambda rec: rec["check"].__setitem__("verdict", "fake"),
    "applied": _set("applied", []), "applied_from": _set("applied_from", []),
    "removed": _set("removed", [3]), "loss": _set("loss", 0.5),
    "model_after": _set("model_after", "2" * 64), "prev": _set("prev", "3" * 64),
    "hash": _set("hash", "4" * 64), "checkpoint": _set("checkpoint", "5" * 64),
    "format": _set("format", 2), "digest": _set("digest", "sha256"),
}


@pytest.mark.parametrize("field", sorted(FIELD_EDITS))
def test_editing_any_field_of_a_record_is_found_at_its_iteration(field, honest, tmp_path):
    run = edited(honest, str(tmp_path / "run"), 3, FIELD_EDITS[field])
    rep = audit(run, sample=0)
    assert not rep["passed"]
    assert 3 in {p["iteration"] for p in rep["problems"] if p["check"] == "chain"}


@pytest.mark.parametrize("field,check", [
    ("loss", "replay"), ("model_after", "weights"), ("applied", "structure"),
    ("removed", "structure"), ("lines", "structure"), ("data_digest", "replay"),
    ("digest", "replay"),
    ("assignments", "structure"),
])
def test_a_resealed_chain_does_not_hide_an_edit(field, check, honest, tmp_path):
    run = edited(honest, str(tmp_path / "run"), 3, FIELD_EDITS[field], reseal=True)
    rep = audit(run)
    assert not rep["passed"]
    assert any(p["check"] == check and p["iteration"] in (3, 4) for p in rep["problems"]), \
        rep["problems"]
    assert any(p["check"] == "summary" for p in rep["problems"])  # head no longer matches


def test_only_the_published_head_catches_a_ledger_and_summary_rewritten_together(honest, tmp_path):
    head = read_json(os.path.join(honest, "summary.json"))["ledger_head"]
    run = edited(honest, str(tmp_path / "run"), 3, FIELD_EDITS["loss"], reseal=True)
    path = os.path.join(run, "summary.json")
    s = read_json(path)
    s["ledger_head"] = json.loads(open(os.path.join(run, "ledger.jsonl")).readlines()[-1])["hash"]
    with open(path, "w") as f:
        json.dump(s, f)
    from podlt_mpi.tools.audit import Audit
    assert Audit(run).run(sample=0)["passed"]  # consistent files, no replay of iteration 3
    rep = Audit(run).run(sample=0, expect_head=head)
    assert [p["check"] for p in rep["problems"]] == ["ledger_head"]
    assert Audit(honest).run(sample=0, expect_head=head)["passed"]


def test_checkpoints_left_on_the_old_chain_betray_a_resealed_ledger(honest, tmp_path):
    """A checkpoint records which ledger it continues (resume refuses one from another); the
    audit applies the same rule (rules.unvouched), so a rewrite that forgets them is found
    without the published head."""
    run = edited(honest, str(tmp_path / "run"), 3, FIELD_EDITS["loss"], reseal=True,
                 follow_checkpoints=False)
    from podlt_mpi.tools.audit import Audit
    rep = Audit(run).run(sample=0)
    found = [p for p in rep["problems"] if p["check"] == "checkpoint"]
    assert found and all("continues a different ledger" in p["message"] for p in found)


def test_a_forged_gradient_hash_is_found_by_replay(honest, tmp_path):
    def forge(rec):
        rec["assignments"][1]["grad_digest"] = "6" * 64
    run = edited(honest, str(tmp_path / "run"), 5, forge, reseal=True)
    rep = audit(run)
    assert any(p["check"] == "replay" and p["iteration"] == 5 for p in rep["problems"])


def test_a_changed_checkpoint_is_found_and_refused_by_resume(honest, tmp_path):
    import torch

    from podlt_mpi.core import records
    from podlt_mpi.run import checkpoint, resume
    run = str(tmp_path / "run")
    shutil.copytree(honest, run)
    path = checkpoint.path_for(os.path.join(run, "checkpoints"), 8)
    blob = torch.load(path, weights_only=True)
    name = next(iter(blob["model"]))
    blob["model"][name].view(-1)[0] += 1e-3
    torch.save(blob, path)
    rep = audit(run, sample=0)
    assert {(p["iteration"], p["check"]) for p in rep["problems"]} == {(7, "checkpoint")}
    kept = records.load(os.path.join(run, "ledger.jsonl"))
    assert "differ from what iteration 7" in resume.usable(checkpoint.load(path), kept)


def test_credits_in_the_summary_must_match_the_ledger(honest, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(honest, run)
    path = os.path.join(run, "summary.json")
    s = read_json(path)
    s["credits"]["1"]["verified"] += 1
    with open(path, "w") as f:
        json.dump(s, f)
    rep = audit(run, sample=0)
    assert [p["check"] for p in rep["problems"]] == ["credits"]


def test_audit_command_exit_codes_and_json(honest, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", honest, "--sample", "3",
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and json.loads(out.read_text())["passed"] is True
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    bad = edited(honest, str(tmp_path / "bad"), 2, _set("loss", 9.0))
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", bad, "--sample", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "PROBLEM iteration 2 [chain]" in r.stdout


@pytest.mark.full
def test_a_cuda_run_is_replayed_only_on_cuda_and_resumed_only_there(honest, tmp_path):
    import subprocess
    import sys

    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusals below are for machines without it")
    run = str(tmp_path / "run")
    shutil.copytree(honest, run)
    path = os.path.join(run, "config.json")
    cfg = read_json(path)
    cfg.update(device_kind="cuda", devices=["cuda:0 NVIDIA H100 80GB HBM3"] * cfg["world_size"])
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", run], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "computed on CUDA (NVIDIA H100 80GB HBM3); its replay needs a CUDA device" in r.stderr
    assert audit(run, sample=0)["passed"]  # the hashes hold whatever the device
    r = run_job(6, ["--resume", run, "--epochs", "2"])
    assert r.returncode == 2, r.stderr
    assert "this run computed on cuda, this job would on cpu" in r.stderr


def test_the_audit_imports_no_code_a_run_names_unless_the_auditor_allows_it(honest, tmp_path):
    # a run directory from someone else, whose config names a "model" that runs a shell command
    import subprocess
    import sys
    run, marker = str(tmp_path / "run"), tmp_path / "ran"
    shutil.copytree(honest, run)
    path = os.path.join(run, "config.json")
    cfg = read_json(path)
    cfg.update(model="subprocess:run", model_args=f"args=touch {marker},shell=true")
    with open(path, "w") as f:
        json.dump(cfg, f)
    for extra in ([], ["--loss", "subprocess:run"], ["--model", "os:system"]):
        r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", run, *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "the run names its model subprocess:run" in r.stderr
        assert "--model subprocess:run" in r.stderr and "--trust-config" in r.stderr
        assert not marker.exists()


def test_the_replay_sample_is_fresh_unless_a_seed_is_given(honest):
    from podlt_mpi.tools.audit import Audit
    seeds = {Audit(honest).run(sample=0)["replay"]["seed"] for _ in range(3)}
    assert len(seeds) == 3  # 32 random bits each
    a, b = (Audit(honest).run(sample=3, seed=7)["replay"] for _ in range(2))
    assert a["seed"] == b["seed"] == 7 and a["targets"] == b["targets"]


def test_named_code_and_its_refusal():
    from podlt_mpi.core.config import RunConfig
    from podlt_mpi.core.tasks import classification
    from podlt_mpi.tools.audit import TRUST_CONFIG, named_code, refused_code
    task = classification(10)
    assert named_code(RunConfig(model="mlp"), task) == []
    user = named_code(RunConfig(model="mymodels:net"), task)
    assert user == [("--model", "mymodels:net")]
    assert refused_code(user, [("--model", "mymodels:net")]) is None
    assert refused_code(user, TRUST_CONFIG) is None
    assert "--model mymodels:net" in refused_code(user, [("--loss", "mymodels:net")])
