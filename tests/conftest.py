"""Shared fixtures: a small dataset, the MPI implementation a module's jobs run under, a quick
run's options. The helpers that launch the job are tests/helpers/jobs.py."""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
# the tests' own modules (mpi_impls, single_process, user_runs) and tests/helpers: the models and
# data helpers that jobs load as user plugins, which tests import too, and jobs.py. Put here
# whatever pytest's import mode (--import-mode=importlib puts no test folder on the path).
sys.path[:0] = [TESTS, os.path.join(TESTS, "helpers")]
import mpi_impls  # noqa: E402

# Triton reads this once, when it is first imported, and torch imports it as a side effect
# (torch.load does): set it before any test runs, or the interpreter tests of the fused
# comparison would skip after the first test that loads a checkpoint. CPU-only here.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests compare runs with training and audits in this process (single_process.py, Audit):
# it computes with the kernels a run uses by default, set before torch is first imported.
from podlt_mpi.core import portable  # noqa: E402

assert "torch" not in sys.modules, "torch was imported before conftest could set the kernels"
portable.apply(portable.PORTABLE)

import jobs  # noqa: E402

# tests/mpi/ run inside an MPI world (python -m mpi4py -m pytest --with-mpi); plain pytest
# launches them from test_mpi_suite.py.
collect_ignore = [] if "--with-mpi" in sys.argv else ["mpi"]


def pytest_generate_tests(metafunc):
    # The end-to-end tests run under every MPI implementation users may have. (By the file's
    # name: the module's is "tests.test_e2e_..." under --import-mode=importlib.)
    if metafunc.definition.path.name.startswith("test_e2e_") and "mpi" in metafunc.fixturenames:
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
    jobs.current["mpi"] = mpi_impls.get(getattr(request, "param", "mpich"))
    yield jobs.current["mpi"]
    jobs.current["mpi"] = None


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
