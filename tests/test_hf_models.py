"""End to end: Hugging Face `transformers` models as users bring them (tests/helpers/hfmodels.py:
built from a config, returned as they are, no wrapper) keep every guarantee: a GPT-2 on a
byte-level corpus from `prepare text` and a ResNet with BatchNorm on images. Honest ranks agree,
the audit replays every iteration bit for bit, the final model is single-process training's, and
a cheater is removed and nobody else. Needs `pip install -e '.[hf]'`; .ci/run installs it."""
import importlib.util
import subprocess
import sys

import mpi_impls
import pytest
import single_process
from jobs import ROOT, RUN_TIMEOUT, read_json, read_jsonl
from user_runs import audit_all, cheater_is_removed, job, made_once

pytestmark = [pytest.mark.slow, pytest.mark.full]

BLOCKS = 6
# model: (data, ranks, --model-args, fake rank and mode). 5 ranks: 4 workers, fragments of
# unequal size from 201-line blocks.
MODELS = {
    "gpt2": ("text", 5, "n_layer=1,n_head=2,n_embd=16", (2, "label-flip")),
    "resnet": ("images", 5, "width=4", (2, "lazy")),
}


@pytest.fixture(scope="module", autouse=True)
def transformers_installed():
    if importlib.util.find_spec("transformers") is None:
        mpi_impls.unavailable("transformers", "transformers is not installed (pip install -e "
                                              "'.[hf]')")


@pytest.fixture(scope="module")
def data(small_data, tmp_path_factory):
    """The images: the small synthetic set ([1, 28, 28]); the text: this package's own source,
    through `prepare text` (byte-level, lines of 32 tokens)."""
    folder = tmp_path_factory.mktemp("text")
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", "text", "--source",
                        f"{ROOT}/podlt_mpi", "--glob", "*.py", "--seq-len", "32", "--out",
                        str(folder)], cwd=ROOT, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"images": (small_data["train"], small_data["test"]),
            "text": (str(folder / "train.h5"), str(folder / "test.h5"))}


def args(data, model, out, *extra):
    kind, _, model_args, _ = MODELS[model]
    train, test = data[kind]
    return ["--data", train, "--test-data", test, "--out", str(out), "--model",
            f"hfmodels:{model}", "--model-args", model_args, "--block-lines", "201",
            "--blocks", str(BLOCKS), *map(str, extra)]


@pytest.fixture(scope="module")
def honest(data, tmp_path_factory):
    return made_once(tmp_path_factory, lambda model, out: (MODELS[model][1],
                                                           args(data, model, out)))


@pytest.mark.parametrize("model", list(MODELS))
def test_honest_run_agrees_audits_and_equals_single_process_training(model, honest, data):
    out = honest(model)
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["checks"] == {"agree": BLOCKS, "fake": 0, "dispute": 0}, s
    assert s["test_loss"] > 0 and 0 <= s["test_accuracy"] <= 1, s  # evaluated on the logits
    audit_all(out, BLOCKS)
    cfg = read_json(out / "config.json")
    assert cfg["task"]["output_key"] is None  # the ModelOutput's logits, by the default rule
    single_process.assert_matches(out, data[MODELS[model][0]][0], cfg,
                                  read_jsonl(out / "ledger.jsonl"))


@pytest.mark.parametrize("model", list(MODELS))
def test_a_cheater_is_removed_and_no_honest_rank(model, data, tmp_path):
    _, ranks, _, (fake, mode) = MODELS[model]
    cheater_is_removed(ranks, args(data, model, tmp_path / "run"), fake, mode)
    audit_all(tmp_path / "run", BLOCKS)


def test_a_named_output_key_trains_and_the_audit_takes_it(data, tmp_path):
    """--output-key logits names what the default takes: the same bits as the default rule."""
    out = tmp_path / "run"
    r = job(5, args(data, "resnet", out, "--output-key", "logits"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(out / "config.json")["task"]["output_key"] == "logits"
    audit_all(out, BLOCKS)
