"""What tolerance mode's sketches cost the manager: the seal of each answer (its digest, and in
tolerance mode its sketch too) on the digest pool, and the codes drawn once per iteration.

    python benchmarks/sketches.py [--params 247766,2400000,24200000] [--answers 8] [--repeat 3]

For each answer size the two seals run in this one process on the same arrays, alternating, so a
noisy shared machine moves both together; the table gives seconds per iteration (all answers
sealed in the pool, as the manager's window does while the answers still arrive) and the ratio.
Writes nothing; paste the table into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from podlt_mpi.core import digests, sketch
from podlt_mpi.mpi.comm import cores

KEY = bytes(range(32))


def seal_all(pool, arrays):
    return [f.result() for f in [pool.answer(a) for a in arrays]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="247766,2400000,24200000")
    ap.add_argument("--answers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    k = cores()
    pool = digests.Pool(digests.BLAKE3, k)
    print(f"{args.answers} answers per iteration, a pool of {k} threads, best of {args.repeat}")
    print("| values per answer | digest only s | codes s | digest + sketch s | ratio |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in (int(p) for p in args.params.split(",")):
        arrays = [rng.standard_normal(n, dtype=np.float32) for _ in range(args.answers)]
        best = {"digest": float("inf"), "codes": float("inf"), "sketch": float("inf")}
        for t in range(args.repeat):
            pool.codes = None
            t0 = time.perf_counter()
            seal_all(pool, arrays)
            best["digest"] = min(best["digest"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            pool.codes = sketch.codes(KEY, t, n)
            best["codes"] = min(best["codes"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            seal_all(pool, arrays)
            best["sketch"] = min(best["sketch"], time.perf_counter() - t0)
        total = best["codes"] + best["sketch"]
        print(f"| {n:,} | {best['digest']:.3f} | {best['codes']:.3f} | {best['sketch']:.3f} "
              f"| {total / best['digest']:.1f}x |")
    pool.close()


if __name__ == "__main__":
    main()
