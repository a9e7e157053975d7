"""Launching the job in tests: run_job (mpiexec -n N python -m podlt_mpi ...) under the current
test's MPI implementation, which conftest's `mpi` fixture sets in `current`, and what the tests
use with it. It imports no torch: conftest imports it, and torch may only be imported once
conftest has set the kernels."""
import os
import subprocess

import mpi_impls
from runfiles import read_json, read_jsonl  # noqa: F401 (the tests read a run's files with these)

ROOT = mpi_impls.ROOT
RUN_TIMEOUT = 240  # seconds; every subprocess has one, so a hang fails instead of blocking CI
# the MPI implementation run_job launches with: conftest's `mpi` fixture sets it for each module
current = {"mpi": None}


def mpiexec():
    return mpi_impls.get("mpich").launcher[0]


def run_job(n, args, cwd=None, timeout=RUN_TIMEOUT, path=(), env=None, adversary=None,
            program=None):
    """mpiexec -n N python -m podlt_mpi ARGS, with a timeout; returns CompletedProcess.

    Under the current test's MPI implementation. `path`: extra folders on PYTHONPATH (for user
    plugins and models); `env`: extra variables (None: unset, e.g. this process's portable
    kernel settings for a job whose ranks choose natively); `adversary`: (rank, program) runs
    that rank as the program (tests/adversaries/), given the same ARGS; `program`: every rank
    runs it instead of the package.
    """
    impl = current["mpi"] or mpi_impls.get("mpich")
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
