"""End to end: the models users bring (tests/helpers/usermodels.py) - dropout, BatchNorm 1d and
2d, frozen layers, an unused branch, all of them at once - train with the built-in models'
guarantees, on fragments of unequal size: honest ranks agree, a cheater is removed and nobody
else, the audit replays every iteration, resume is byte-identical, and the final weights and
buffers are single-process training's, bit for bit."""

import h5py
import numpy as np
import pytest
import single_process
import torch
from jobs import read_json, read_jsonl
from tiers import full_but
from user_runs import audit_all, cheater_is_removed, job, made_once, protocol_records

pytestmark = pytest.mark.slow

# model: (ranks, fake rank, its mode). 5 ranks with 201-line blocks: fragments of 101 and 100
# lines; 7 ranks: 51, 50, 50, 50. Rank 4 of 5 (6 of 7) is a control in iteration 0, rank 2 a
# worker the random checks find later.
MODELS = {
    "dropout": (5, 2, "label-flip"),
    "bn1d": (5, 4, "buffers"),
    "bn2d": (5, 2, "lazy"),
    "frozen": (5, 4, "mimic"),
    "unused": (5, 2, "alie"),
    "combined": (7, 2, "mimic"),
}


def args(small_data, out, model, *extra):
    return ["--data", small_data["train"], "--test-data", small_data["test"], "--out", str(out),
            "--model", f"usermodels:{model}", "--block-lines", "201", "--blocks", "8",
            "--checkpoint-every", "3", *map(str, extra)]


@pytest.fixture(scope="module")
def honest(small_data, tmp_path_factory):
    """One honest run per model, made once (the resume test compares against it)."""
    return made_once(tmp_path_factory,
                     lambda model, out: (MODELS[model][0], args(small_data, out, model)))


# the first tier: the model with every feature at once
@pytest.mark.parametrize("model", full_but(MODELS, "combined"))
def test_honest_run_agrees_audits_and_equals_single_process_training(model, honest, small_data):
    out = honest(model)
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["checks"] == {"agree": 8, "fake": 0, "dispute": 0}
    ledger = read_jsonl(out / "ledger.jsonl")
    sizes = {e - s for rec in ledger for s, e in rec["applied"]}
    assert len(sizes) > 1  # fragments of unequal size
    audit_all(out)
    cfg = read_json(out / "config.json")
    single_process.assert_matches(out, small_data["train"], cfg, ledger)
    state = torch.load(out / "model_final.pt", weights_only=True)
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            assert int(value) == 8  # one step per iteration, as in one process
    if model == "frozen":
        init = torch.load(out / "model_init.pt", weights_only=True)
        assert torch.equal(state["1.weight"], init["1.weight"])  # frozen: never updated
        assert not torch.equal(state["3.weight"], init["3.weight"])
    if model == "unused":  # a zero gradient still moves Adam's weights only through its state
        init = torch.load(out / "model_init.pt", weights_only=True)
        assert torch.equal(state["aux.weight"], init["aux.weight"])


@pytest.mark.full
@pytest.mark.parametrize("model", list(MODELS))
def test_a_cheater_is_removed_and_no_honest_rank(model, small_data, tmp_path):
    ranks, fake, mode = MODELS[model]
    cheater_is_removed(ranks, args(small_data, tmp_path / "run", model), fake, mode)


@pytest.mark.full
@pytest.mark.parametrize("model", list(MODELS))
def test_resume_after_a_signal_is_byte_identical(model, honest, small_data, tmp_path):
    """Stopped by SIGUSR1 in iteration 4 (tests/helpers/chaos.py, which sends honest answers),
    then resumed: the files are those of the run done in one go."""
    ranks, out = MODELS[model][0], tmp_path / "run"
    r = job(ranks, args(small_data, out, model, "--fake-ranks", 2, "--fault-plugin", "chaos:act"),
            env={"PODLT_CHAOS": "usr1-job@4"})
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(out / "summary.json")
    assert s["status"] == "stopped" and s["stopped_by"].startswith("SIGUSR1"), s
    assert s["iterations"] == 5 and not (out / "model_final.pt").exists()
    r = job(ranks, ["--resume", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    one_go = honest(model)
    assert read_json(out / "summary.json")["status"] == "complete"
    assert (out / "model_final.pt").read_bytes() == (one_go / "model_final.pt").read_bytes()
    assert protocol_records(out) == protocol_records(one_go)


@pytest.mark.full
def test_batchnorm_statistics_are_the_training_data_s(small_data, tmp_path):
    """The manager's running statistics are those of the data: the test accuracy with them
    equals, within 1 point, the accuracy with statistics recomputed over the training lines
    with the final weights (48 iterations: momentum 0.1 leaves 0.9^48 < 1% of the start).
    4000 test lines, so that 1 point is 40 lines, not the noise of a few."""
    from podlt_mpi.compute import losses, models
    from podlt_mpi.core.tasks import classification
    from podlt_mpi.io import data
    test_path = str(tmp_path / "test.h5")
    data.write_h5(test_path, *data.synthetic(4000, 7))
    out = tmp_path / "run"
    argv = args({**small_data, "test": test_path}, out, "bn1d", "--epochs", 2)
    argv[argv.index("--blocks"):argv.index("--blocks") + 2] = []
    argv[argv.index("--block-lines") + 1] = "101"
    r = job(5, argv)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = read_json(out / "config.json")
    model = models.build(cfg["model"], cfg["line_shape"], cfg["n_classes"], 0)
    model.load_state_dict(torch.load(out / "model_final.pt", weights_only=True))
    assert int(model[2].num_batches_tracked) == 48
    with h5py.File(small_data["train"]) as f:
        x, y = f["x"][:], f["y"][:]
    with h5py.File(test_path) as f:
        tx, ty = f["x"][:], f["y"][:]
    model.eval()
    acc_final = losses.evaluate(model, classification(), tx, ty)["test_accuracy"]
    bn = model[2]
    bn.reset_running_stats()
    bn.momentum = None  # a cumulative mean over every batch
    model.train()
    with torch.no_grad():
        for s in range(0, len(y), 101):
            model(torch.from_numpy(x[s:s + 101]))
    model.eval()
    acc_recomputed = losses.evaluate(model, classification(), tx, ty)["test_accuracy"]
    assert acc_final > 0.3 and abs(acc_final - acc_recomputed) <= 0.01, (acc_final, acc_recomputed)


@pytest.mark.full
def test_adamw_clipping_and_cosine_warmup_match_single_process_and_audit(small_data, tmp_path):
    out = tmp_path / "run"
    r = job(7, args(small_data, out, "combined", "--optimizer", "adamw", "--weight-decay", 0.05,
                    "--clip-grad-norm", 0.5, "--lr-schedule", "cosine", "--warmup", 3,
                    "--lr", 0.01))
    assert r.returncode == 0, r.stdout + r.stderr
    rates = [row["lr"] for row in read_jsonl(out / "metrics.jsonl")]
    assert rates[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01]) and rates[3] > rates[-1] > 0
    cfg = read_json(out / "config.json")
    ledger = read_jsonl(out / "ledger.jsonl")
    single_process.assert_matches(out, small_data["train"], cfg, ledger, total=8)
    audit_all(out)
    # they decide the numbers: resume may not change them, nor the length a cosine spans
    for extra, message in ((["--weight-decay", "0.1"], "--weight-decay cannot change"),
                           (["--clip-grad-norm", "1"], "--clip-grad-norm cannot change"),
                           (["--blocks", "9"], "--blocks cannot change on --resume of a run "
                                               "with --lr-schedule cosine")):
        r = job(7, ["--resume", str(out), *extra])
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.full
def test_clipping_changes_the_run(small_data, tmp_path, honest):
    """--clip-grad-norm reaches the manager's step: the same run clipped ends elsewhere."""
    out = tmp_path / "run"
    r = job(7, args(small_data, out, "combined", "--clip-grad-norm", 0.01))
    assert r.returncode == 0, r.stdout + r.stderr
    one_go = honest("combined")
    assert (out / "model_final.pt").read_bytes() != (one_go / "model_final.pt").read_bytes()
    assert protocol_records(out)[0]["model_before"] == protocol_records(one_go)[0]["model_before"]
    assert np.isfinite(read_json(out / "summary.json")["final_loss"])
