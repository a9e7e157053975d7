"""Shared fixtures: a small dataset and a helper that launches the job under mpiexec."""
import json
import os
import shutil
import subprocess
import sys

import pytest

# Triton reads this once, when it is first imported, and torch imports it as a side effect
# (torch.load does): set it before any test runs, or the interpreter tests of the fused
# comparison would skip after the first test that loads a checkpoint. CPU-only here.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 240  # seconds; every subprocess has one, so a hang fails instead of blocking CI

# tests/mpi/ run inside an MPI world (python -m mpi4py -m pytest --with-mpi); plain pytest
# launches them from test_mpi_suite.py.
collect_ignore = [] if "--with-mpi" in sys.argv else ["mpi"]


def mpiexec():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("no mpiexec: install the mpich extra or a system MPI")
    return exe


def run_job(n, args, cwd=None, timeout=RUN_TIMEOUT, path=(), env=None):
    """mpiexec -n N python -m podlt_mpi ARGS, with a timeout; returns CompletedProcess.

    `path`: extra folders on PYTHONPATH (for user plugins and models); `env`: extra variables.
    """
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "podlt_mpi", *map(str, args)]
    full_env = {**os.environ, **(env or {}),
                "PYTHONPATH": os.pathsep.join([*map(str, path), ROOT])}
    return subprocess.run(cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


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
