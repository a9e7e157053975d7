"""Bad input found before the first protocol message, without MPI: each case goes through the
job's own phases (run/job.py: options, rank 0's inputs, every rank's parts) and must stop with
one sentence (ConfigError) and nothing written. test_e2e_bad_input.py runs one case of each phase
as a real job, to prove the exit path: exit 2 on every rank, one line from rank 0."""
import os
import sys

import pytest
from jobs import ROOT
from test_e2e_bad_input import (
    BAD_OPTIONS,
    CASES,
    LINE_CASES,
    USER_MODELS,
    bad_files,
    good_x,
    good_y,
    h5,
)

from podlt_mpi.core.errors import ConfigError
from podlt_mpi.io import data
from podlt_mpi.run import job

HELPERS = os.path.join(ROOT, "tests", "helpers")


def first_error(argv, size: int) -> str | None:
    """The sentence the job's phases before MPI give for `argv` on `size` ranks, or None."""
    try:
        cfg = job.options(argv, size)
        found = job.inputs(cfg, argv, size)
        for rank in range(size):
            job.rank_parts(found, rank, size, "cpu")
    except ConfigError as e:
        return str(e)
    return None


def block_error(argv, size: int) -> str | None:
    """With start-up's data phase passing, the sentence the manager gives reading each block
    of the training file, or None."""
    cfg = job.options(argv, size)
    ds = job.inputs(cfg, argv, size).ds
    reader = data.Reader(ds.train.path, cfg.x_key, cfg.y_key)
    try:
        for s in range(ds.train.start, ds.train.stop, cfg.block_lines):
            ds.rules.check(*reader.read(s, min(s + cfg.block_lines, ds.train.stop)), s)
    except ConfigError as e:
        return str(e)
    finally:
        reader.close()
    return None


@pytest.fixture
def helpers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(HELPERS)
    yield
    for name in ("badmodels",):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("case", CASES)
def test_bad_data_file(case, tmp_path):
    path, message = bad_files(tmp_path)[case]
    out = tmp_path / "run"
    argv = ["--data", path, "--out", str(out), "--block-lines", "10"]
    # a line case passes start-up's data phase; the block holding the line is refused
    error = (block_error if case in LINE_CASES else first_error)(argv, 4)
    assert error is not None and message in error, error
    assert not os.path.exists(out)


@pytest.mark.parametrize("n,args,message", BAD_OPTIONS)
def test_bad_options(n, args, message, small_data, tmp_path):
    out = tmp_path / "run"
    error = first_error(["--data", small_data["train"], "--out", str(out), *args], n)
    assert error is not None and message in error, error
    assert not os.path.exists(out)


@pytest.mark.parametrize("n,spec,extra,message", USER_MODELS)
def test_a_user_model_that_cannot_train_is_bad_input(n, spec, extra, message, small_data,
                                                     tmp_path, helpers_on_path):
    error = first_error(["--data", small_data["train"], "--out", str(tmp_path / "run"),
                         "--model", f"badmodels:{spec}", *extra], n)
    assert error is not None and message in error, error


def test_cnn_on_flat_data_is_bad_input(tmp_path):
    path = h5(tmp_path / "flat.h5", x=good_x(), y=good_y())
    error = first_error(["--data", path, "--out", str(tmp_path / "run"), "--model", "cnn",
                         "--block-lines", "10"], 4)
    assert error is not None and "needs image-shaped input" in error, error


def test_an_out_that_already_holds_a_run(small_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.jsonl").write_text("")
    error = first_error(["--data", small_data["train"], "--out", str(out)], 4)
    assert error is not None and "already holds a run" in error, error


def test_good_input_passes_every_phase(small_data, tmp_path):
    """So the cases above fail for their own reason, not the harness's."""
    assert first_error(["--data", small_data["train"], "--out", str(tmp_path / "run")], 4) is None
