"""Command line: train (the default), prepare data, audit or report on a run, simulate.

usage::
    mpiexec -n 50 python -m podlt_mpi [run] [options]          # train with PoDLT
    python -m podlt_mpi prepare synthetic --out data/synthetic-100k.h5
    python -m podlt_mpi prepare fashion-mnist --out data/fashion-mnist   # also: csv, npz
    python -m podlt_mpi audit RUN_DIR [--sample K | --all]    # check a run, no MPI
    python -m podlt_mpi report RUN_DIR [--out DIR]               # figures + summary of a run
    python -m podlt_mpi simulate --ranks N --fakes F --iterations T   # detection, in numbers
"""
from __future__ import annotations

import sys

from podlt_mpi.core import portable

SUBCOMMANDS = ("run", "prepare", "audit", "report", "simulate")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    if command == "prepare":
        from podlt_mpi.tools.prepare import main as prepare
        return prepare(argv)
    if command == "audit":
        from podlt_mpi.tools.audit import main as audit
        return audit(argv)
    if command == "report":
        from podlt_mpi.tools.report import main as report
        return report(argv)
    if command == "simulate":
        from podlt_mpi.tools.simulate import main as simulate
        return simulate(argv)
    portable.enter(portable.for_job(argv), [command, *argv])
    from podlt_mpi.run.job import run
    code = run(argv)
    if code == 0:  # error exits keep the normal path: with os._exit, MPICH returned 9, not 2
        from podlt_mpi.mpi.comm import finish
        finish(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
