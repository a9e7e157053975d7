"""Start-up against the size of the training file: the whole-file scan the job did before the
first iteration, against what it reads now (the layout, and values only where the task needs
them, data.inspect(full=False)).

    python benchmarks/startup.py [--lines 50000 200000] [--declare | --no-declare]

For each size it writes a file of Fashion-MNIST-shaped lines (float32 [1, 28, 28], integer
classes, with or without the `classes` attribute) in a temporary folder, then times both ways in
this one process, alternating, and prints a table (seconds, and the ratio). The files are read
just after they are written, so from the page cache: a disk makes the scan slower still.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import h5py
import numpy as np

from podlt_mpi.io import data


def write(path: str, lines: int, declare: bool) -> float:
    """A file of `lines` lines; returns its size in GB."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", (lines, 1, 28, 28), np.float32)
        f.create_dataset("y", data=rng.integers(0, 10, lines))
        for s in range(0, lines, 10_000):
            n = min(10_000, lines - s)
            x[s:s + n] = rng.random((n, 1, 28, 28), dtype=np.float32)
        if declare:
            f.attrs["classes"] = 10
    return os.path.getsize(path) / 1e9


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--declare", action=argparse.BooleanOptionalAction, default=True,
                   help="the file declares its classes (prepare's files do)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    print("| lines | GB | whole-file scan s | start-up now s | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for lines in a.lines:
            path = os.path.join(tmp, f"{lines}.h5")
            gb = write(path, lines, a.declare)
            full = best(lambda: data.inspect(path, "x", "y", full=True), a.repeat)
            lazy = best(lambda: data.inspect(path, "x", "y", full=False), a.repeat)
            print(f"| {lines:,} | {gb:.2f} | {full:.3f} | {lazy:.4f} | {full / lazy:,.0f}x |")
            os.remove(path)


if __name__ == "__main__":
    main()
