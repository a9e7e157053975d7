#!/bin/bash
# Make the second environment the end-to-end tests use for Open MPI: mpi4py's binary wheel without
# the MPICH wheel loads the system's Open MPI (Debian: apt-get install openmpi-bin). Run from the
# repository root; PODLT_OPENMPI_VENV overrides the place (.venv-ompi).
set -euo pipefail
venv=${PODLT_OPENMPI_VENV:-.venv-ompi}
command -v mpirun.openmpi >/dev/null || command -v orterun >/dev/null || {
  echo "openmpi-venv.sh: Open MPI is not installed (apt-get install openmpi-bin)" >&2; exit 1; }
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e '.[test]'
"$venv/bin/python" -c "from mpi4py import MPI; print('$venv:', MPI.Get_library_version().splitlines()[0])"
