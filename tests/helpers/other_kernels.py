"""An honest rank on a node whose kernels differ: the job as it is, with ATen's CPU kernels set
to the environment's OTHER_ATEN (default: `default`, ATen's unvectorized ones), as a node
without AVX2, or one pinned otherwise, computes.

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/helpers/other_kernels.py ARGS : ...
"""
import os
import sys

os.environ["ATEN_CPU_CAPABILITY"] = os.environ.get("OTHER_ATEN", "default")

from podlt_mpi.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
