"""Tasks without MPI: what the data files say (inspect, resolve), the loss and its weights, the
test figures, the gpt model, label-flip per task and `prepare text`."""
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from jobs import ROOT

from podlt_mpi.compute import losses, models, probe, training
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core.config import ConfigError, RunConfig, model_kwargs, parse_args
from podlt_mpi.core.tasks import Task, choose_loss, classification, figures_text
from podlt_mpi.io import data

sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))
import taskdata  # noqa: E402

LM = Task("tokens", "classes", (6,), 10, "cross-entropy", vocab=10, bytes_per_token=1.0)


def h5(path, attrs=None, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
        f.attrs.update(attrs or {})
    return str(path)


def resolve(path, *extra):
    return data.resolve(parse_args(["--data", path, "--holdout", "0.25", *extra]))


# ---- what the files say ------------------------------------------------------------------------

def test_token_sequences_with_padding_make_a_language_model_task(tmp_path):
    x = np.arange(40).reshape(4, 10) % 7
    y = np.full((4, 10), -100)
    y[:, :5] = x[:, 1:6]
    ds = resolve(h5(tmp_path / "t.h5", x=x, y=y))
    t = ds.task
    assert (t.inputs, t.targets, t.target_shape, t.loss) == ("tokens", "classes", (10,),
                                                              "cross-entropy")
    assert t.language_model and ds.line_shape == (10,)
    assert t.n_classes == 7 and t.vocab == 7  # one vocabulary in and out, from the largest id
    r = data.Reader(ds.train.path, "x", "y")
    bx, by = r.read(0, 2)
    r.close()
    assert bx.dtype == np.int64 and by.dtype == np.int64 and by.shape == (2, 10)
    assert t.weight(by) == 10  # counted targets, not lines nor positions


def test_the_files_classes_attribute_wins_and_bounds_the_labels(tmp_path):
    x, y = np.zeros((8, 3), np.float32), np.arange(8) % 3
    assert resolve(h5(tmp_path / "a.h5", {"classes": 5}, x=x, y=y)).n_classes == 5
    with pytest.raises(ConfigError, match=r"integers in \[0, 2\) or --ignore-index -100, line 2"):
        resolve_and_read(h5(tmp_path / "b.h5", {"classes": 2}, x=x, y=y))
    assert resolve(h5(tmp_path / "c.h5", x=x, y=y)).n_classes == 3


def test_float_targets_are_regression_with_mse(tmp_path):
    x = np.zeros((8, 3), np.float32)
    ds = resolve(h5(tmp_path / "r.h5", x=x, y=np.ones((8, 2), np.float64)))
    assert (ds.task.targets, ds.task.loss, ds.task.target_shape, ds.n_classes) == \
        ("values", "mse", (2,), 0)
    assert ds.task.figures() == ("test_loss",) and ds.task.weight(np.ones((5, 2))) == 5
    with pytest.raises(ConfigError, match="--loss cross-entropy needs integer class targets"):
        resolve(str(tmp_path / "r.h5"), "--loss", "cross-entropy")


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 2), np.float32), np.array([0.0, np.inf, 1, 2]), "non-finite target at line 1"),
    (np.zeros((4, 2), np.float32), np.zeros((5, 2)), "'x' has 4 lines but 'y' has 5"),
    (np.array([[1, 2], [3, -1]]), np.array([0, 1]), "token ids must be >= 0, line 1"),
    (np.zeros((4, 2), np.float32), np.array([[0, 1], [1, -7], [0, 0], [1, 1]]),
     "line 1 has [1, -7]"),
    (np.zeros((2, 2), np.float32), np.array(["a", "b"], dtype="S1"), "must hold integers or floats"),
])
def test_bad_values_are_one_sentence(tmp_path, x, y, message):
    path = h5(tmp_path / "bad.h5", x=x, y=y)
    with pytest.raises(ConfigError, match=None) as e:
        resolve_and_read(path)
    assert message in str(e.value)
    with pytest.raises(ConfigError, match=None) as e:  # what `prepare check` does
        data.inspect(path, "x", "y")
    assert message in str(e.value)


def resolve_and_read(path, *extra, block=2):
    """resolve, then check every block of the training lines as the manager reads them."""
    ds = resolve(path, *extra)
    reader = data.Reader(path, "x", "y")
    for s in range(ds.train.start, ds.train.stop, block):
        ds.rules.check(*reader.read(s, min(s + block, ds.train.stop)), s)
    reader.close()
    return ds


def test_a_token_beyond_the_declared_vocabulary_is_refused(tmp_path):
    x = np.array([[1, 2], [3, 4], [5, 6], [3, 9]])
    path = h5(tmp_path / "v.h5", {"vocab_size": 8}, x=x, y=x % 8)
    resolve(path)  # start-up reads no token: the file declares its vocabulary
    with pytest.raises(ConfigError, match="token id 9 at line 3 of 'x' is outside the "
                                          "vocabulary of 8"):
        resolve_and_read(path, "--holdout", "0")


def test_start_up_reads_only_the_values_the_task_needs(tmp_path):
    # float features and declared classes: no value is read at start-up, so a bad line (a NaN
    # feature, a class beyond the declared 3) is found only in its block, with its line number
    x, y = np.zeros((8, 2), np.float32), np.arange(8) % 3
    x[5, 1] = np.nan
    path = h5(tmp_path / "lazy.h5", {"classes": 3}, x=x, y=y)
    assert resolve(path, "--holdout", "0").n_classes == 3
    with pytest.raises(ConfigError, match="'x' has a non-finite value at line 5"):
        resolve_and_read(path, "--holdout", "0")
    y[6] = 3
    path = h5(tmp_path / "lazy2.h5", {"classes": 3}, x=np.zeros((8, 2), np.float32), y=y)
    with pytest.raises(ConfigError, match=r"integers in \[0, 3\).*line 6 has 3"):
        resolve_and_read(path, "--holdout", "0")
    # undeclared classes: the targets are read at start-up, the features still are not
    with pytest.raises(ConfigError, match="line 6 has -1"):
        resolve(h5(tmp_path / "neg.h5", x=x, y=np.where(np.arange(8) == 6, -1, y)))
    assert resolve(h5(tmp_path / "ok.h5", x=x, y=y), "--holdout", "0").n_classes == 4


def test_the_test_file_must_pose_the_same_task(tmp_path):
    x = np.zeros((6, 3), np.float32)
    train = h5(tmp_path / "train.h5", x=x, y=np.arange(6) % 2)
    test = h5(tmp_path / "test.h5", x=x, y=np.ones(6, np.float32))
    with pytest.raises(ConfigError, match="has targets of kind values, the training data classes"):
        data.resolve(parse_args(["--data", train, "--test-data", test]))


def test_runs_before_tasks_read_as_classification():
    t = Task.from_meta({"n_classes": 10})
    assert t == Task("float", "classes", (), 10, "cross-entropy") == classification(10)
    assert Task.from_meta({"task": LM.to_meta()}) == LM
    assert choose_loss("auto", "classes") == "cross-entropy" and choose_loss("auto", "values") == "mse"


def test_options_for_tasks_parse_and_refuse_nonsense():
    assert model_kwargs("n_layer=2, dropout=0.1,bias=false,act=gelu") == \
        {"n_layer": 2, "dropout": 0.1, "bias": False, "act": "gelu"}
    for bad in ("n_layer", "2=3"):
        with pytest.raises(ConfigError, match="must be NAME=VALUE"):
            parse_args(["--model-args", bad])
    with pytest.raises(ConfigError, match="--loss must be one of"):
        parse_args(["--loss", "hinge"])
    assert parse_args(["--ignore-index", "0"]).ignore_index == 0


# ---- the loss, its weights and the figures ------------------------------------------------------

def test_one_class_per_line_is_torchs_cross_entropy_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(9, 5, generator=g), torch.randint(0, 5, (9,), generator=g)
    assert torch.equal(losses.cross_entropy(out, y), torch.nn.functional.cross_entropy(out, y))


def test_per_position_cross_entropy_averages_over_counted_targets():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(3, 4, 6, generator=g)
    y = torch.randint(0, 6, (3, 4), generator=g)
    y[0, 2:] = -100
    per = torch.nn.functional.cross_entropy(out.reshape(-1, 6), y.reshape(-1), reduction="none",
                                            ignore_index=-100)
    assert float(losses.cross_entropy(out, y)) == pytest.approx(float(per.sum()) / 10, rel=1e-6)
    assert LM.weight(y.numpy()) == 10


def test_a_fragment_whose_targets_are_all_ignored_weighs_nothing():
    out = torch.randn(2, 3, 4, requires_grad=True)
    loss = losses.cross_entropy(out, torch.full((2, 3), -100))
    loss.backward()
    assert float(loss.detach()) == 0 and not out.grad.any()
    assert not training.weighted_mean([np.ones(3, np.float32)], [0]).any()
    assert math.isnan(training.combined_loss([0.0], [0]))


def test_evaluation_reports_the_tasks_figures():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 10))  # scores from the token itself
    x = np.arange(12).reshape(2, 6) % 10
    y = np.where(np.arange(12).reshape(2, 6) % 4 == 0, -100, x)
    f = losses.evaluate(model, LM, x, y)
    assert set(f) == {"test_loss", "test_accuracy", "test_bits_per_byte"}
    assert f["test_bits_per_byte"] == pytest.approx(f["test_loss"] / math.log(2))
    scores = model(torch.from_numpy(x)).argmax(-1).numpy()
    keep = y != -100
    assert f["test_accuracy"] == pytest.approx((scores[keep] == y[keep]).mean())
    reg = Task("float", "values", (2,), 0, "mse")
    lin = torch.nn.Linear(3, 2)
    xr, yr = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    fr = losses.evaluate(lin, reg, xr, yr)
    assert set(fr) == {"test_loss"}
    with torch.no_grad():
        assert fr["test_loss"] == pytest.approx(float((lin(torch.ones(4, 3)) ** 2).mean()))
    assert figures_text(f).startswith("loss ") and "bits per byte" in figures_text(f)


# ---- the gpt model ------------------------------------------------------------------------------

def small_gpt(**kw):
    return models.build("gpt", (6,), 10, 0, LM, {"n_layer": 1, "n_head": 2, "n_embd": 8, **kw})


def test_gpt_is_causal_tied_and_passes_the_exact_probe():
    model = small_gpt(dropout=0.0)
    assert model.head.weight is model.wte.weight
    x = torch.randint(0, 10, (2, 6), generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 10
    with torch.no_grad():
        a, b = model(x), model(later)
    assert a.shape == (2, 6, 10)
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.equal(a[:, 4:], b[:, 4:])
    drops = small_gpt(dropout=0.1)
    assert probe.probe(drops, "gpt", (6,), 10, "cpu", 4, exact=True, task=LM)  # random masks
    assert not probe.probe(model, "gpt", (6,), 10, "cpu", 4, exact=True, task=LM)


@pytest.mark.parametrize("kw, message", [
    ({"n_embd": 9}, "n_embd 9 must be a multiple of n_head 2"),
    ({"block": 4}, "block 4 is shorter than the data's sequences of 6"),
    ({"dropout": 1.5}, "dropout must be in [0, 1)"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"width": 3}, "unexpected keyword argument 'width'"),
])
def test_gpt_refuses_bad_model_args(kw, message):
    with pytest.raises(ConfigError) as e:
        small_gpt(**kw)
    assert message in str(e.value)


def test_gpt_needs_token_inputs():
    with pytest.raises(ConfigError, match="--model gpt reads token ids"):
        models.build("gpt", (6,), 10, 0, Task("float", "classes", (6,), 10, "cross-entropy"))


def test_a_users_loss_that_fails_is_bad_input():
    reg = Task("float", "values", (2,), 0, "usermodels:huber")
    model = models.build("usermodels:regressor", (3,), 0, 0, reg)
    assert probe.probe(model, "m", (3,), 0, "cpu", 4, exact=True, task=reg)  # dropout
    for spec, message in (("tasks_unit_losses:vector", "must return a tensor of one value"),
                          ("tasks_unit_losses:broken", "fails a training pass"),
                          ("tasks_unit_losses:nowhere", "has no function 'nowhere'")):
        with pytest.raises(ConfigError, match=message):
            probe.probe(model, "m", (3,), 0, "cpu", 4, exact=True,
                         task=Task("float", "values", (2,), 0, spec))


# ---- fault modes per task -----------------------------------------------------------------------

def test_label_flip_mirrors_classes_keeps_padding_and_negates_values():
    faker = Faker(RunConfig(fake_ranks=[1], fake_mode="label-flip"), 1, task=LM)
    y = torch.tensor([[0, 3, -100], [9, -100, -100]])
    assert faker._flipped(None, None, y).tolist() == [[9, 6, -100], [0, -100, -100]]
    reg = Faker(RunConfig(fake_ranks=[1], fake_mode="label-flip"), 1,
                task=Task("float", "values", (), 0, "mse"))
    assert reg._flipped(None, None, torch.tensor([1.5, -2.0])).tolist() == [-1.5, 2.0]


def test_a_language_models_cheater_sends_something_else():
    model = small_gpt()
    layout = Layout(model)
    x = torch.randint(0, 10, (4, 6), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, 1)
    honest = training.gradient(model, x, y, 5, layout, losses.loss_function(LM))[0]
    for mode in ("label-flip", "lazy", "lowprec", "alie"):
        faker = Faker(RunConfig(fake_ranks=[1], fake_mode=mode), 1, layout, LM)
        sent = faker.send(honest, 0, model, x, y, seed=5)
        assert sent.shape == honest.shape and not np.array_equal(sent, honest), mode


# ---- prepare text -------------------------------------------------------------------------------

def prepare_text(*argv):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", "text", *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_prepare_text_cuts_bytes_into_next_token_lines(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "test").mkdir(parents=True)
    (src / "a.py").write_bytes(bytes(range(97, 123)) * 4)      # 104 bytes
    (src / "pkg" / "b.py").write_bytes("é—ü\n".encode() * 10)  # 80 bytes, not ASCII
    (src / "pkg" / "notes.txt").write_bytes(b"skipped by --glob")
    (src / "pkg" / "test" / "t.py").write_bytes(b"skipped by --exclude")
    out = tmp_path / "lm"
    r = prepare_text("--source", src, "--seq-len", 8, "--out", out, "--glob", "*.py",
                     "--exclude", "test")
    assert r.returncode == 0, r.stderr
    raw = (src / "a.py").read_bytes() + (src / "pkg" / "b.py").read_bytes()
    n = len(raw) // 9  # 184 bytes: 20 lines of 9, and 4 left over
    with h5py.File(out / "train.h5") as tr, h5py.File(out / "test.h5") as te:
        x = np.concatenate([tr["x"][:], te["x"][:]])
        y = np.concatenate([tr["y"][:], te["y"][:]])
        assert len(te["x"]) == int(n * 0.1) == 2 and len(tr["x"]) == n - 2
        assert x.shape == (n, 8) and y.shape == (n, 8)
        lines = np.frombuffer(raw[:n * 9], np.uint8).reshape(n, 9)
        assert np.array_equal(x, lines[:, :8]) and np.array_equal(y, lines[:, 1:])
        assert tr.attrs["vocab_size"] == 256 and tr.attrs["bytes_per_token"] == 1.0
        assert tr.attrs["seq_len"] == 8
        assert [os.path.relpath(p, src) for p in tr.attrs["sources"]] == ["a.py", "pkg/b.py"]
        assert list(tr.attrs["source_sizes"]) == [104, 80]
    ds = data.resolve(parse_args(["--data", str(out / "train.h5"), "--test-data",
                                  str(out / "test.h5")]))
    assert ds.task.language_model and ds.n_classes == 256
    assert ds.task.figures()[-1] == "test_bits_per_byte"


@pytest.mark.parametrize("setup, argv, message", [
    ("empty", ["--seq-len", 4], "too short: 0 bytes in 1 file(s) make 0 line(s)"),
    ("short", ["--seq-len", 4], "too short: 6 bytes in 1 file(s) make 1 line(s)"),
    ("short", ["--seq-len", 0], "--seq-len must be at least 1"),
    ("missing", ["--seq-len", 4], "is neither a file nor a folder"),
    ("folder", ["--seq-len", 4, "--glob", "*.rs"], "holds no file matching --glob *.rs"),
])
def test_prepare_text_bad_input_exits_2_and_writes_nothing(tmp_path, setup, argv, message):
    src = {"empty": tmp_path / "e.txt", "short": tmp_path / "s.txt",
           "missing": tmp_path / "nope", "folder": tmp_path}[setup]
    if setup == "empty":
        src.write_bytes(b"")
    if setup == "short":
        src.write_bytes(b"hello!")
    out = tmp_path / "out"
    r = prepare_text("--source", src, *argv, "--out", out)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_taskdata_helpers_pose_the_tasks_the_e2e_tests_claim(tmp_path):
    tok = data.resolve(parse_args(["--data", taskdata.tokens(str(tmp_path / "t.h5"), 300)]))
    assert tok.task.language_model and tok.n_classes == 24
    r = data.Reader(tok.train.path, "x", "y")
    _, y = r.read(0, 300)
    r.close()
    assert 0 < (y == -100).mean() < 0.3  # some padding, not all
    reg = data.resolve(parse_args(["--data", taskdata.regression(str(tmp_path / "r.h5"), 50)]))
    assert reg.task.loss == "mse" and reg.task.target_shape == (2,)
