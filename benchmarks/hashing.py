"""Which hash for the ledger's digests: sha256 or BLAKE3, on one thread or in a pool of threads,
over what the manager hashes each iteration (one answer per rank, each the model's size).

    python benchmarks/hashing.py [--params 24200000] [--answers 8] [--repeat 3]

All variants run in this one process on the same arrays, alternating, and the table gives each
one's GB/s and its speed relative to sha256 on one thread (the format 1 ledger's way), so a
noisy shared machine moves all of them together. Writes nothing; paste the table into
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from podlt_mpi.core import digests
from podlt_mpi.mpi.comm import cores


def one_by_one(alg, arrays):
    return [digests.of_arrays(alg, a) for a in arrays]


def in_pool(pool):
    return lambda arrays: [f.result() for f in [pool.submit(a) for a in arrays]]


def each_over_threads(alg, threads):
    return lambda arrays: [digests.of_arrays(alg, a, threads=threads) for a in arrays]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=24_200_000)
    ap.add_argument("--answers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(args.params, dtype=np.float32) for _ in range(args.answers)]
    gb = sum(a.nbytes for a in arrays) / 1e9
    k = cores()
    pools = {alg: digests.Pool(alg, k) for alg in digests.ALGORITHMS}
    variants = {
        "sha256, one thread": lambda a: one_by_one(digests.SHA256, a),
        f"sha256, pool of {k}": in_pool(pools[digests.SHA256]),
        "blake3, one thread": lambda a: one_by_one(digests.BLAKE3, a),
        f"blake3, pool of {k}": in_pool(pools[digests.BLAKE3]),
        f"blake3, each over {k} threads": each_over_threads(digests.BLAKE3, k),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeat):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run(arrays)
            best[name] = min(best[name], time.perf_counter() - t0)
    for p in pools.values():
        p.close()
    base = best["sha256, one thread"]
    print(f"{args.answers} arrays of {args.params:,} float32 ({gb:.2f} GB), {k} cores, best of "
          f"{args.repeat}\n")
    print("| variant | seconds | GB/s | vs sha256 on one thread |")
    print("|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.3f} | {gb / t:.2f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
