"""An honest rank on a node whose kernels differ: the job as it is, with ATen's CPU kernels set
to the environment's OTHER_ATEN (default: `default`, ATen's unvectorized ones), as a node
without AVX2, or one pinned otherwise, computes. Where OTHER_RANKS lists ranks (e.g. "1,3"),
only those do, and every rank may run this program.

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/helpers/other_kernels.py ARGS : ...
    OTHER_RANKS=1,3 mpiexec -n R python tests/helpers/other_kernels.py ARGS
"""
import os
import sys

chosen = os.environ.get("OTHER_RANKS")
# the launcher's rank, before MPI starts (MPICH's Hydra, Open MPI)
rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK"))
if chosen is None or rank in chosen.split(","):
    os.environ["ATEN_CPU_CAPABILITY"] = os.environ.get("OTHER_ATEN", "default")

from podlt_mpi.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
