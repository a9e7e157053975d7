"""Runs tests/mpi inside a 4-rank MPI world, so plain `pytest` covers them too."""
import os
import subprocess
import sys

import pytest
from jobs import ROOT, mpiexec


@pytest.mark.slow
def test_mpi_suite_passes_in_a_4_rank_world():
    cmd = [mpiexec(), "-n", "4", sys.executable, "-m", "mpi4py", "-m", "pytest", "-x", "-q",
           "--with-mpi", "--timeout=120", "--timeout-method=thread", "-p", "no:cacheprovider",
           os.path.join(ROOT, "tests", "mpi")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "passed" in r.stdout and "failed" not in r.stdout and "skipped" not in r.stdout
