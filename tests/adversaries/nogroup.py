"""An adversary's rank that never joins the broadcast's group (MPI_Comm_create_group): it is
told to, and sleeps instead, alive, for ever. Reports "adversary: not joining".

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/nogroup.py ARGS : ...
"""
import sys
import time

from podlt_mpi.mpi import comm as mpi


def never(*args, **kwargs):
    print("adversary: not joining", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


def main(argv) -> int:
    mpi.subgroup = never
    from podlt_mpi.__main__ import main as job
    return job(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
