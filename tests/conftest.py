"""Shared fixtures: a small dataset and a helper that launches the job under mpiexec."""
import os
import subprocess
import sys

import mpi_impls
import pytest

# Triton reads this once, when it is first imported, and torch imports it as a side effect
# (torch.load does): set it before any test runs, or the interpreter tests of the fused
# comparison would skip after the first test that loads a checkpoint. CPU-only here.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests compare runs with training and audits in this process (single_process.py, Audit):
# it computes with the kernels a run uses by default, set before torch is first imported.
from podlt_mpi.core import portable  # noqa: E402

assert "torch" not in sys.modules, "torch was imported before conftest could set the kernels"
portable.apply(portable.PORTABLE)

ROOT = mpi_impls.ROOT
# the models and data helpers that jobs load as user plugins; tests import some of them too
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))
import runfiles  # noqa: E402

read_json, read_jsonl = runfiles.read_json, runfiles.read_jsonl  # tests import them from here
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


# Test tiers. The README's test command runs `-m "not full"`: every feature once, end to end
# under MPICH, in under 10 minutes on 2 cores. CI then runs `-m full`: the rest of the matrix,
# the same runs under Open MPI, every fault mode (twice), every kind of user model and task, the
# other bad-input cases, Slurm. Each test says its own tier: `@pytest.mark.full` on a test, or
# on the cases that are full (`pytest.param(..., marks=pytest.mark.full)`, tiers.full_but); here
# the one rule over them all: everything under Open MPI or Slurm is `full` (tests/test_tiers.py).
def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(item, "callspec", None)
        if item.get_closest_marker("slurm") or \
                (params is not None and params.params.get("mpi") == "openmpi"):
            item.add_marker(pytest.mark.full)


@pytest.fixture(scope="module", autouse=True)
def mpi(request):
    """The MPI implementation run_job launches with (MPICH unless parametrized)."""
    _current["mpi"] = mpi_impls.get(getattr(request, "param", "mpich"))
    yield _current["mpi"]
    _current["mpi"] = None


_current = {"mpi": None}


def run_job(n, args, cwd=None, timeout=RUN_TIMEOUT, path=(), env=None, adversary=None,
            program=None):
    """mpiexec -n N python -m podlt_mpi ARGS, with a timeout; returns CompletedProcess.

    Under the current test's MPI implementation. `path`: extra folders on PYTHONPATH (for user
    plugins and models); `env`: extra variables (None: unset, e.g. this process's portable
    kernel settings for a job whose ranks choose natively); `adversary`: (rank, program) runs
    that rank as the program (tests/adversaries/), given the same ARGS; `program`: every rank
    runs it instead of the package.
    """
    impl = _current["mpi"] or mpi_impls.get("mpich")
    full_env = impl.environ({**(env or {}),
                             "PYTHONPATH": os.pathsep.join([*map(str, path), ROOT])})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    job = (program, *args) if program else ("-m", "podlt_mpi", *args)
    if adversary is None:
        command = impl.command(n, *job)
    else:
        rank, program = adversary
        command = impl.mpmd(*[seg for seg in ((rank, *job), (1, program, *args),
                                              (n - rank - 1, *job)) if seg[0]])
    return subprocess.run(command, cwd=cwd or ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """2400 training and 400 test lines of the synthetic task."""
    from podlt_mpi.io import data
    folder = tmp_path_factory.mktemp("data")
    path = str(folder / "small.h5")
    data.prepare_synthetic(path, lines=2400, test_lines=400)
    return {"train": path, "test": data.test_path_for(path)}


@pytest.fixture
def job_args(small_data, tmp_path):
    """Base options for a quick run: 12 iterations of 200 lines."""
    def make(out="run", **extra):
        # the weights by broadcast, which auto leaves off where ranks sleep (here: 2 cores)
        args = ["--data", small_data["train"], "--test-data", small_data["test"],
                "--out", str(tmp_path / out), "--block-lines", "200", "--broadcast", "on"]
        # the roles' key from a number, so a test's roles are the same every time; role_seed=None
        # leaves the key to the manager's CSPRNG, as in a real run
        extra.setdefault("role_seed", 0)
        for k, v in extra.items():
            if v is not None:
                args += ["--" + k.replace("_", "-"), str(v)]
        return args
    return make
