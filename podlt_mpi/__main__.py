"""Command line: train (the default), or prepare data.

usage::
    mpiexec -n 50 python -m podlt_mpi [run] [options]          # train with PoDLT
    python -m podlt_mpi prepare synthetic --out data/synthetic-100k.h5
    python -m podlt_mpi audit RUN_DIR [--sample K | --all]    # check a run, no MPI
    python -m podlt_mpi simulate --ranks N --fakes F --iterations T   # detection, in numbers
"""
from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = ("run", "prepare", "audit", "simulate")


def prepare(argv) -> int:
    from .config import ConfigError
    from . import data
    p = argparse.ArgumentParser(prog="python -m podlt_mpi prepare",
                                description="Write a dataset in the HDF5 layout the job reads.")
    p.add_argument("kind", choices=["synthetic"], help="what to prepare")
    p.add_argument("--out", required=True, help="HDF5 file to write")
    p.add_argument("--lines", type=int, default=100_000, help="training lines")
    p.add_argument("--test-lines", type=int, default=10_000,
                   help="lines of the companion test file OUT-test.h5 (0: none)")
    a = p.parse_args(argv)
    try:
        if a.lines < 1 or a.test_lines < 0:
            raise ConfigError("--lines must be at least 1 and --test-lines at least 0")
        paths = data.prepare_synthetic(a.out, a.lines, a.test_lines)
    except ConfigError as e:
        print(f"podlt_mpi: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"podlt_mpi: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(paths))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    if command == "prepare":
        return prepare(argv)
    if command == "audit":
        from .audit import main as audit
        return audit(argv)
    if command == "simulate":
        from .simulate import main as simulate
        return simulate(argv)
    from .job import run
    code = run(argv)
    if code == 0:  # error exits keep the normal path: with os._exit, MPICH returned 9, not 2
        from .comm import finish
        finish(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
