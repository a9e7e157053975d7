"""Determinism and correctness of the applied update."""
import os

import pytest
import single_process
import torch
from jobs import read_json, read_jsonl, run_job

pytestmark = pytest.mark.slow


# bitwise reproducibility: test_matches_single_process_training, against the reference
@pytest.mark.full
def test_same_seed_same_bytes(job_args, tmp_path):
    for name in ("a", "b"):
        r = run_job(5, job_args(out=name, blocks=6, seed=7))
        assert r.returncode == 0, r.stdout + r.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model_final.pt").read_bytes() == (b / "model_final.pt").read_bytes()
    ha = [rec["hash"] for rec in read_jsonl(a / "ledger.jsonl")]
    hb = [rec["hash"] for rec in read_jsonl(b / "ledger.jsonl")]
    assert ha == hb and len(ha) == 6
    # and a different seed gives a different run
    r = run_job(5, job_args(out="c", blocks=6, seed=8))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "c" / "model_final.pt").read_bytes() != (a / "model_final.pt").read_bytes()


def test_files_follow_the_contract(job_args, tmp_path):
    r = run_job(5, job_args(blocks=4, fake_ranks=4, fake_mode="zero"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    cfg = read_json(out / "config.json")
    assert cfg["block_lines"] == 200 and cfg["controls"] == 2 and cfg["world_size"] == 5
    assert cfg["out"] == str(out) and cfg["compare"] == "exact"
    for name in ("model_init.pt", "model_final.pt"):
        state = torch.load(out / name, weights_only=True)
        assert set(state) and all(isinstance(v, torch.Tensor) for v in state.values())
    ledger = read_jsonl(out / "ledger.jsonl")
    keys = {"iteration", "epoch", "block", "lines", "model_before", "assignments", "check",
            "applied", "removed", "loss", "model_after", "prev", "hash"}
    for i, rec in enumerate(ledger):
        assert keys <= set(rec) and rec["iteration"] == i
        assert set(rec["check"]) >= {"lines", "worker", "controls", "verdict", "fake", "rel_dist"}
        if i:
            assert rec["model_before"] == ledger[i - 1]["model_after"]
            assert rec["prev"] == ledger[i - 1]["hash"]
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 4 and metrics[-1]["test_accuracy"] is not None
    s = read_json(out / "summary.json")
    assert s["iterations"] == 4 and s["removed"][0]["rank"] == 4
    assert s["useful_samples"] == sum(e - a for rec in ledger for a, e in rec["applied"])
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


@pytest.mark.full
@pytest.mark.parametrize("model_name,optimizer", [("mlp", "sgd"), ("cnn", "sgd"), ("mlp", "adam")])
def test_matches_single_process_training(model_name, optimizer, job_args, small_data, tmp_path):
    """The manager's update equals training in one process on the applied fragments, summed in
    the manager's order: bit for bit, on any processor (the same float32 operations on the same
    vectors; the mean against one batch of the same lines is test_training's, with its bound).

    Rank 2 fakes from the start and is the checked worker of iteration 0 (seed 0), so it is
    caught before any of its fragments goes unchecked and the controls' gradient replaces it.
    """
    r = run_job(6, job_args(blocks=5, model=model_name, optimizer=optimizer, lr=0.05
                            if optimizer == "sgd" else 1e-3, momentum=0.9 if optimizer == "sgd" else 0,
                            fake_ranks=2, fake_mode="zero"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    cfg = read_json(out / "config.json")
    ledger = read_jsonl(out / "ledger.jsonl")
    assert ledger[0]["check"]["worker"] == 2 and ledger[0]["removed"] == [2]
    s = ledger[0]["lines"][0]  # the first block the shuffled order visits
    assert ledger[0]["applied"] == [[s, s + 67], [s + 67, s + 134], [s + 134, s + 200]]
    single_process.assert_matches(out, small_data["train"], cfg, ledger)


@pytest.mark.full
def test_user_model_and_held_out_split(small_data, tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import math\nfrom torch import nn\n"
        "def tiny(input_shape, n_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))\n")
    out = tmp_path / "run"
    r = run_job(4, ["--data", small_data["train"], "--out", out, "--model", "mymodels:tiny",
                    "--block-lines", "300", "--holdout", "0.25"], path=[tmp_path])
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = read_json(out / "config.json")
    assert cfg["n_params"] == 784 * 10 + 10 and cfg["model"] == "mymodels:tiny"
    assert cfg["train_lines"] == [0, 1800] and cfg["test_lines"] == [1800, 2400]
    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == 6  # the epoch ends where the held-out lines begin
    assert max(e for rec in ledger for _, e in rec["applied"]) == 1800
    assert read_json(out / "summary.json")["test_accuracy"] is not None
