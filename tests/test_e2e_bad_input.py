"""Bad input end to end: exit 2, one clear line from rank 0 only, no traceback, nothing written.

Every case's sentence is unit-tested without MPI in test_bad_input.py, through the job's own
phases; the cases here prove the exit path of each phase (options, rank 0's inputs, every rank's
model and fault behaviour, the devices)."""
import json
import os

import h5py
import numpy as np
import pytest
from jobs import ROOT, read_json, run_job

pytestmark = pytest.mark.slow


def h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return str(path)


def good_x(n=40):
    return np.random.default_rng(0).random((n, 8), dtype=np.float32)


def good_y(n=40):
    return (np.arange(n) % 3).astype(np.int64)


def bad_files(tmp):
    (tmp / "text.h5").write_text("not hdf5")
    nan_x = good_x()
    nan_x[7, 3] = np.nan
    return {
        "missing": (str(tmp / "nope.h5"), "does not exist"),
        "unreadable": (str(tmp / "text.h5"), "not a readable HDF5 file"),
        "no x": (h5(tmp / "nox.h5", y=good_y()), "no dataset 'x'"),
        "no y": (h5(tmp / "noy.h5", x=good_x()), "no dataset 'y'"),
        "empty": (h5(tmp / "empty.h5", x=np.zeros((0, 8), np.float32), y=np.zeros(0, np.int64)),
                  "is empty"),
        "lengths": (h5(tmp / "len.h5", x=good_x(40), y=good_y(39)), "has 40 lines but 'y' has 39"),
        "negative": (h5(tmp / "neg.h5", x=good_x(), y=good_y() - 1),
                     "class targets must be integers >= 0 or --ignore-index -100, line 0 has -1"),
        "nan target": (h5(tmp / "nant.h5", x=good_x(), y=np.where(good_y() == 2, np.nan, 1.0)),
                       "has a non-finite target at line 2"),
        "non-finite": (h5(tmp / "nan.h5", x=nan_x, y=good_y()), "non-finite value at line 7"),
    }


CASES = ["missing", "unreadable", "no x", "no y", "empty", "lengths", "negative", "nan target",
         "non-finite"]
# found when the block holding the line is read, not at start-up: the file declares nothing that
# needs them (float features, float targets), so start-up reads none of their values
LINE_CASES = ["nan target", "non-finite"]
E2E_DATA_CASES = ["missing", pytest.param("negative", marks=pytest.mark.full)]


def assert_clean_exit_2(r, message, out=None):
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr  # one line, from rank 0 only
    assert message in errors[0], errors[0]
    assert "Traceback" not in r.stderr + r.stdout
    if out is not None:
        assert not os.path.exists(out), "a bad run must write nothing"


@pytest.mark.parametrize("case", E2E_DATA_CASES)
def test_bad_data_file(case, tmp_path):
    path, message = bad_files(tmp_path)[case]
    out = tmp_path / "run"
    r = run_job(4, ["--data", path, "--out", out, "--block-lines", "10"], timeout=60)
    assert_clean_exit_2(r, message, out)


@pytest.mark.full
def test_a_bad_line_ends_the_run_when_its_block_is_read(tmp_path):
    # start-up reads no feature values (float features): the NaN is found in its block, after
    # the iterations before it, which stay whole in the ledger
    x = good_x()
    x[25, 3] = np.nan
    out = tmp_path / "run"
    r = run_job(4, ["--data", h5(tmp_path / "late.h5", x=x, y=good_y()), "--out", out,
                    "--block-lines", "10", "--no-shuffle-blocks"], timeout=120)
    assert_clean_exit_2(r, "'x' has a non-finite value at line 25 (read for iteration 2;")
    with open(out / "ledger.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [rec["lines"] for rec in records] == [[0, 10], [10, 20]]
    # a bad first block: not one iteration, so no run directory is left behind
    r = run_job(4, ["--data", h5(tmp_path / "all.h5", x=np.full((40, 8), np.inf, np.float32),
                                 y=good_y()), "--out", tmp_path / "run2"], timeout=120)
    assert_clean_exit_2(r, "non-finite value at line", tmp_path / "run2")


BAD_OPTIONS = [
    (3, [], "needs at least 4 ranks"),
    (6, ["--block-lines", "2"], "--block-lines 2 is smaller than the 3 workers"),
    (4, ["--model", "transformer"], "unknown model 'transformer'"),
    (4, ["--model", "no_such_module_xyz:make"], "cannot import model module"),
    (4, ["--fake-mode", "teleport"], "--fake-mode names 'teleport', which is not a fake mode"),
    (4, ["--fake-ranks", "2", "--fake-mode", "3=zero"], "gives rank 3 a mode, but --fake-ranks"),
    (4, ["--fake-ranks", "0"], "--fake-ranks names rank 0"),
    (4, ["--fake-ranks", "2", "--fake-mode", "buffers"],
     "--fake-mode buffers poisons float buffers, but model 'mlp' has none (rank 2)"),
    (4, ["--optimizer", "adam", "--nesterov"], "--nesterov needs --optimizer sgd"),
    (4, ["--fake-ranks", "2,9"], "--fake-ranks names rank 9"),
    (4, ["--controls", "1"], "--controls must be 0"),
    (4, ["--lr", "nan"], "--lr must be a finite number"),
]


# one per phase: the options (on every rank), rank 0's import of a user's module, a rank's
# fault behaviour (rank 2 alone finds the error: the others must exit too)
@pytest.mark.parametrize("n,args,message", [BAD_OPTIONS[i] for i in (0, 3, 7)])
def test_bad_options(n, args, message, small_data, tmp_path):
    out = tmp_path / "run"
    r = run_job(n, ["--data", small_data["train"], "--out", out, *args], timeout=60)
    assert_clean_exit_2(r, message, out)


@pytest.mark.full
def test_unwritable_out(small_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = run_job(4, ["--data", small_data["train"], "--out", blocker / "run"], timeout=60)
    assert_clean_exit_2(r, "cannot be created")
    r = run_job(4, ["--data", small_data["train"], "--out", "/proc/podlt-run"], timeout=60)
    assert_clean_exit_2(r, "--out /proc/podlt-run")
    assert not os.path.exists("/proc/podlt-run")


def no_cuda():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is good input here")


@pytest.mark.parametrize("args,message,needs_no_cuda", [
    (["--device", "cpu", "--cuda-aware-mpi"], "--cuda-aware-mpi moves GPU buffers", False),
    pytest.param(["--device", "cuda"], "rank 0 sees no CUDA device", True,
                 marks=pytest.mark.full),
    pytest.param(["--cuda-aware-mpi"], "rank(s) [0, 1, 2, 3] compute on the CPU", True,
                 marks=pytest.mark.full),
])
def test_device_options_that_cannot_work_are_bad_input(args, message, needs_no_cuda, small_data,
                                                       tmp_path):
    if needs_no_cuda:
        no_cuda()
    out = tmp_path / "run"
    r = run_job(4, ["--data", small_data["train"], "--out", out, *args], timeout=60)
    assert_clean_exit_2(r, message, out)


UNPOOL = '''
import math

from torch import nn

class Unpool(nn.Module):
    def __init__(self, n_in, n_classes):
        super().__init__()
        self.lin = nn.Linear(n_in, 2 * n_classes)

    def forward(self, x):
        y, idx = nn.functional.max_pool1d(self.lin(x.flatten(1)).unsqueeze(1), 2,
                                          return_indices=True)
        return nn.functional.max_unpool1d(y, idx, 2).squeeze(1)[:, ::2]

def make(shape, n_classes):
    return Unpool(math.prod(shape), n_classes)
'''


@pytest.mark.full
def test_a_model_without_deterministic_kernels_is_refused_in_exact_mode_only(small_data,
                                                                            tmp_path):
    (tmp_path / "unpoolmodel.py").write_text(UNPOOL)
    base = ["--data", small_data["train"], "--model", "unpoolmodel:make", "--block-lines", "200",
            "--blocks", "3"]
    out = tmp_path / "run"
    r = run_job(4, [*base, "--out", out], timeout=60, path=[tmp_path])
    assert_clean_exit_2(r, "(max_unpooling2d_forward_out does not have a deterministic implementation)", out)
    assert "--compare tolerance" in r.stderr
    r = run_job(4, [*base, "--out", out, "--compare", "tolerance"], timeout=120, path=[tmp_path])
    assert r.returncode == 0, r.stderr
    assert read_json(out / "summary.json")["iterations"] == 3


USER_MODELS = [
    (4, "no_backward", [], "model 'badmodels:no_backward' fails a training pass on 8 line(s) on "
                           "cpu: this layer has no backward"),
    (4, "clock", [], "model 'badmodels:clock' is not deterministic on cpu"),
    # 3 workers, 3 lines: fragments of one line, on which BatchNorm cannot train
    (6, "batchnorm", ["--block-lines", "3"], "fails a training pass on 1 line(s) on cpu: Expected "
                                             "more than 1 value per channel"),
]


@pytest.mark.parametrize("n,spec,extra,message", USER_MODELS[:1])
def test_a_user_model_that_cannot_train_is_bad_input(n, spec, extra, message, small_data,
                                                     tmp_path):
    out = tmp_path / "run"
    r = run_job(n, ["--data", small_data["train"], "--out", out, "--model", f"badmodels:{spec}",
                    *extra], timeout=120, path=[os.path.join(ROOT, "tests", "helpers")])
    assert_clean_exit_2(r, message, out)
