"""Shared fixtures: a small dataset and a helper that launches the job under mpiexec."""
import json
import os
import subprocess
import sys

import pytest

import mpi_impls

# Triton reads this once, when it is first imported, and torch imports it as a side effect
# (torch.load does): set it before any test runs, or the interpreter tests of the fused
# comparison would skip after the first test that loads a checkpoint. CPU-only here.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = mpi_impls.ROOT
RUN_TIMEOUT = 240  # seconds; every subprocess has one, so a hang fails instead of blocking CI

# tests/mpi/ run inside an MPI world (python -m mpi4py -m pytest --with-mpi); plain pytest
# launches them from test_mpi_suite.py.
collect_ignore = [] if "--with-mpi" in sys.argv else ["mpi"]


def mpiexec():
    return mpi_impls.get("mpich").launcher[0]


def pytest_generate_tests(metafunc):
    # The end-to-end tests run under every MPI implementation users may have.
    if metafunc.module.__name__.startswith("test_e2e_") and "mpi" in metafunc.fixturenames:
        metafunc.parametrize("mpi", mpi_impls.NAMES, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def mpi(request):
    """The MPI implementation run_job launches with (MPICH unless parametrized)."""
    _current["mpi"] = mpi_impls.get(getattr(request, "param", "mpich"))
    yield _current["mpi"]
    _current["mpi"] = None


_current = {"mpi": None}


def run_job(n, args, cwd=None, timeout=RUN_TIMEOUT, path=(), env=None):
    """mpiexec -n N python -m podlt_mpi ARGS, with a timeout; returns CompletedProcess.

    Under the current test's MPI implementation. `path`: extra folders on PYTHONPATH (for user
    plugins and models); `env`: extra variables.
    """
    impl = _current["mpi"] or mpi_impls.get("mpich")
    full_env = impl.environ({**(env or {}),
                             "PYTHONPATH": os.pathsep.join([*map(str, path), ROOT])})
    return subprocess.run(impl.command(n, "-m", "podlt_mpi", *args), cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """2400 training and 400 test lines of the synthetic task."""
    from podlt_mpi import data
    folder = tmp_path_factory.mktemp("data")
    path = str(folder / "small.h5")
    data.prepare_synthetic(path, lines=2400, test_lines=400)
    return {"train": path, "test": data.test_path_for(path)}


@pytest.fixture
def job_args(small_data, tmp_path):
    """Base options for a quick run: 12 iterations of 200 lines."""
    def make(out="run", **extra):
        args = ["--data", small_data["train"], "--test-data", small_data["test"],
                "--out", str(tmp_path / out), "--block-lines", "200"]
        for k, v in extra.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        return args
    return make
