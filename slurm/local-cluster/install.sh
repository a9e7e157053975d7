#!/bin/bash
# Install what the local cluster needs (Debian/Ubuntu, as root): Slurm, munge, and Debian's
# Open MPI with PMIx. Install before start.sh: slurmd loads its PMIx plugin when it starts, and
# `srun --mpi=pmix` hangs on a slurmd started before libpmix2 was there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends slurm-wlm munge openmpi-bin libopenmpi-dev </dev/null >/dev/null
echo "installed: $(sbatch --version), Open MPI $(mpirun --version 2>/dev/null | head -1 | awk '{print $NF}')"
