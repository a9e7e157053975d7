"""Runs the job with mpi4py's pickling disabled on this rank: any object call between ranks
(comm.bcast, allgather, gather, send, recv ...) raises, so a job that still used one fails.

    mpiexec -n N python tests/helpers/nopickle.py ARGS
"""
import sys

from mpi4py import MPI


def refuse(*args, **kwargs):
    raise RuntimeError("an object (pickled) message between ranks")


MPI.pickle.__init__(refuse, refuse)  # mpi4py's Pickle: its dumps and loads are set this way

if __name__ == "__main__":
    from podlt_mpi.__main__ import main
    sys.exit(main(sys.argv[1:]))
