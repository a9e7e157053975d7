"""The MPI implementations the end-to-end tests run under, since users have either: MPICH (the
PyPI wheel in this environment) and Debian's Open MPI, from a second environment without the
MPICH wheel (tests/openmpi-venv.sh makes it: .venv-ompi, or PODLT_OPENMPI_VENV)."""
import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("mpich", "openmpi")
# .ci/run sets these: there a test skipped for want of them is a failure, not a pass
REQUIRE = {"openmpi": "PODLT_REQUIRE_OPENMPI", "slurm": "PODLT_REQUIRE_SLURM",
           "triton": "PODLT_REQUIRE_TRITON", "data": "PODLT_REQUIRE_DATA",
           "transformers": "PODLT_REQUIRE_TRANSFORMERS"}


def unavailable(what: str, reason: str):
    """Skip for want of `what`, or fail where CI requires it."""
    if os.environ.get(REQUIRE[what]):
        pytest.fail(f"{reason} ({REQUIRE[what]} is set, so this must run)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Mpi:
    name: str
    python: str            # the interpreter whose mpi4py uses this MPI
    launcher: tuple        # mpiexec and its options, before -n N
    env: dict = field(default_factory=dict)

    def command(self, n: int, *args) -> list:
        return [*self.launcher, "-n", str(n), self.python, *map(str, args)]

    def mpmd(self, *segments) -> list:
        """One job of several programs: (n, args...) segments, ranks numbered in their order."""
        out = list(self.launcher)
        for n, *args in segments:
            out += [*([":"] if len(out) > len(self.launcher) else []), "-n", str(n), self.python,
                    *map(str, args)]
        return out

    def environ(self, extra=None) -> dict:
        """os.environ for a job: this MPI's variables, its interpreter's folder first on PATH."""
        path = os.path.dirname(self.python) + os.pathsep + os.environ.get("PATH", "")
        return {**os.environ, **self.env, **(extra or {}), "PATH": path}


def _library(python: str) -> str:
    r = subprocess.run([python, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                       capture_output=True, text=True, timeout=120)
    return r.stdout if r.returncode == 0 else ""


@functools.lru_cache(maxsize=None)
def get(name: str) -> Mpi:
    if name == "mpich":
        exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                           os.environ.get("PATH", ""))
        if exe is None:
            pytest.skip("no mpiexec: install the mpich extra or a system MPI")
        return Mpi("mpich", sys.executable, (exe,))
    venv = os.environ.get("PODLT_OPENMPI_VENV", os.path.join(ROOT, ".venv-ompi"))
    python = os.path.join(venv, "bin", "python")
    mpirun = shutil.which("mpirun.openmpi") or shutil.which("orterun")
    if mpirun is None:
        unavailable("openmpi", "Open MPI is not installed (apt-get install openmpi-bin)")
    if not os.path.exists(python):
        unavailable("openmpi", f"no Open MPI environment at {venv}: make it with "
                    "tests/openmpi-venv.sh")
    if "Open MPI" not in _library(python):
        unavailable("openmpi", f"mpi4py in {venv} does not load Open MPI")
    # As root Open MPI wants both variables; with more ranks than cores it wants
    # --oversubscribe, and binding would pin several ranks to one core.
    return Mpi("openmpi", python, (mpirun, "--oversubscribe", "--bind-to", "none"),
               {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
