"""End to end: tasks beyond one class per line keep every guarantee. A language model (--model
gpt, per-position targets with ignored padding), a regression head (float targets, mse) and a
user's loss: honest ranks agree and the audit replays every iteration bit for bit, the final
model is single-process training's (tests/single_process.py), a cheater is removed and nobody
else, and resume after a signal is byte-identical."""

import pytest
import single_process
import taskdata  # tests/helpers, on the path through conftest
import torch
from jobs import read_json, read_jsonl
from tiers import full_but
from user_runs import audit_all, cheater_is_removed, job, made_once, protocol_records

pytestmark = pytest.mark.slow

GPT = ["--model", "gpt", "--model-args", "n_layer=1,n_head=2,n_embd=16,dropout=0.1"]
# task: (data kind, ranks, options, fake rank and mode). 5 ranks with 201-line blocks make
# fragments of 101 and 100 lines, 7 ranks 51, 50, 50, 50.
TASKS = {
    "lm": ("tokens", 5, GPT, (2, "label-flip")),
    "regression": ("regression", 5, ["--model", "usermodels:regressor"], (4, "label-flip")),
    "user-loss": ("regression", 7, ["--model", "usermodels:regressor", "--loss",
                                    "usermodels:huber"], (2, "lazy")),
}


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("taskdata")
    return {"tokens": (taskdata.tokens(str(folder / "tok.h5"), 2000),
                       taskdata.tokens(str(folder / "tok-test.h5"), 300, seed=1)),
            "regression": (taskdata.regression(str(folder / "reg.h5"), 2000),
                           taskdata.regression(str(folder / "reg-test.h5"), 300, seed=1))}


def args(task_data, task, out, *extra):
    kind, _, options, _ = TASKS[task]
    train, test = task_data[kind]
    return ["--data", train, "--test-data", test, "--out", str(out), *options,
            "--block-lines", "201", "--blocks", "8", "--checkpoint-every", "3", *map(str, extra)]


@pytest.fixture(scope="module")
def honest(task_data, tmp_path_factory):
    return made_once(tmp_path_factory,
                     lambda task, out: (TASKS[task][1], args(task_data, task, out)))


@pytest.mark.parametrize("task", full_but(TASKS, "lm"))
def test_honest_run_agrees_audits_and_equals_single_process_training(task, honest, task_data):
    out = honest(task)
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["checks"] == {"agree": 8, "fake": 0, "dispute": 0}
    audit_all(out)
    cfg, ledger = read_json(out / "config.json"), read_jsonl(out / "ledger.jsonl")
    single_process.assert_matches(out, task_data[TASKS[task][0]][0], cfg, ledger)
    init = torch.load(out / "model_init.pt", weights_only=True)
    final = torch.load(out / "model_final.pt", weights_only=True)
    assert any(not torch.equal(init[k], final[k]) for k in init)  # it trained


@pytest.mark.full
def test_the_tasks_report_their_own_figures(honest):
    lm = read_json(honest("lm") / "summary.json")
    assert read_json(honest("lm") / "config.json")["task"]["loss"] == "cross-entropy"
    assert 0 <= lm["test_accuracy"] <= 1 and lm["test_loss"] > 0
    assert "test_bits_per_byte" not in lm  # the file declares no bytes_per_token
    assert lm["useful_tokens_per_s"] == pytest.approx(lm["useful_samples_per_s"] * 8)
    reg = read_json(honest("regression") / "summary.json")
    assert read_json(honest("regression") / "config.json")["task"]["loss"] == "mse"
    assert reg["test_loss"] > 0 and "test_accuracy" not in reg
    rows = read_jsonl(honest("regression") / "metrics.jsonl")
    assert rows[-1]["test_loss"] == reg["test_loss"] and "test_accuracy" not in rows[-1]


@pytest.mark.full
@pytest.mark.parametrize("task", list(TASKS))
def test_a_cheater_is_removed_and_no_honest_rank(task, task_data, tmp_path):
    _, ranks, _, (fake, mode) = TASKS[task]
    cheater_is_removed(ranks, args(task_data, task, tmp_path / "run"), fake, mode)


@pytest.mark.full
@pytest.mark.parametrize("task", list(TASKS))
def test_resume_after_a_signal_is_byte_identical(task, honest, task_data, tmp_path):
    ranks, out = TASKS[task][1], tmp_path / "run"
    r = job(ranks, args(task_data, task, out, "--fake-ranks", 2, "--fault-plugin", "chaos:act"),
            env={"PODLT_CHAOS": "usr1-job@4"})
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(out / "summary.json")
    assert s["status"] == "stopped" and s["iterations"] == 5, s
    r = job(ranks, ["--resume", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    one_go = honest(task)
    assert (out / "model_final.pt").read_bytes() == (one_go / "model_final.pt").read_bytes()
    assert protocol_records(out) == protocol_records(one_go)
