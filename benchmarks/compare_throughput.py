"""Throughput of the three-way gradient comparison, against a plain copy of the same bytes.

usage:: python benchmarks/compare_throughput.py [--sizes 1M,10M] [--repeat 5] [--threads 1]

GB/s = bytes of the three float32 vectors read (12 n) / best time of --repeat runs. Methods:
  copy    torch clone of the three vectors: the memory-bandwidth ceiling (it also writes them)
  naive   torch, verify.compare's steps per pair: bitwise equality, isfinite, float64
          subtraction and norms, each a separate pass
  fused   podlt_mpi.core.fused.three_way (numpy, chunked, one pass)
  triton  podlt_mpi.compute.triton_compare (CUDA only; the interpreter is no benchmark)
The vectors all differ pairwise (1% one-ulp flips, one non-finite entry), so no method can
shortcut on identical bits: the worst case. CPU runs use --threads torch threads (default 1:
the fused path is single-threaded too, and the machine may be shared).
"""
import argparse
import sys
import time

import numpy as np
import torch

from podlt_mpi.compute import triton_compare
from podlt_mpi.core import fused

PAIRS = fused.PAIRS


def make(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n, dtype=np.float32)
    flip = rng.random(n) < 0.01
    b = a.copy()
    b[flip] = np.nextafter(b[flip], np.float32(np.inf))
    c = b.copy()
    c[rng.random(n) < 0.01] *= np.float32(1.5)
    for x in (a, b, c):
        x[n // 2] = np.nan  # same bits everywhere: exercises the masked path, agrees
    return a, b, c


def naive(a, b, c):
    """Per pair, the separate torch ops verify.compare does; returns (same_bits, dist) per pair."""
    xs = (a, b, c)
    fin = [torch.isfinite(x) for x in xs]
    out = []
    for i, j in PAIRS:
        same_bits = torch.equal(xs[i].view(torch.int32), xs[j].view(torch.int32))
        both = fin[i] & fin[j]
        d = torch.where(both, xs[i].double() - xs[j].double(), 0.0)
        dist = torch.linalg.vector_norm(d)
        ni = torch.linalg.vector_norm(torch.where(fin[i], xs[i].double(), 0.0))
        nj = torch.linalg.vector_norm(torch.where(fin[j], xs[j].double(), 0.0))
        nonfin_same = torch.equal(fin[i], fin[j]) and torch.equal(
            xs[i][~fin[i]].view(torch.int32), xs[j][~fin[j]].view(torch.int32))
        out.append((same_bits, nonfin_same, float(dist), float(max(ni, nj))))
    return out


def best(fn, repeat, cuda):
    fn()  # warm-up: allocator, triton compile
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def size(s):
    s = s.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(s[-1], 1)
    return int(float(s.rstrip("KMG")) * mult)


def main():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1M,10M,100M" if cuda else "1M,10M")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = "cuda" if cuda else "cpu"
    print("command: python " + " ".join(sys.argv))
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}, "
          f"numpy {np.__version__}, torch threads {args.threads}, best of {args.repeat}\n")
    print("| n | method | ms | GB/s | vs copy |")
    print("|---|---|---:|---:|---:|")
    for n in map(size, args.sizes.split(",")):
        bench(n, dev, args.repeat)


def bench(n, dev, repeat):
    """One size: check the methods agree, then print a table row per method."""
    cuda = dev == "cuda"
    host = make(n)
    xs = [torch.from_numpy(x).to(dev) for x in host]
    t_fused = fused.three_way(*host)
    for k, (same_bits, nonfin_same, dist, _) in enumerate(naive(*xs)):
        assert same_bits == (t_fused.bit_mismatches[k] == 0)
        assert nonfin_same == (t_fused.nonfinite_mismatches[k] == 0)
        assert np.isclose(dist, t_fused.dist2[k] ** 0.5, rtol=1e-9)
    runs = {"copy": lambda: [x.clone() for x in xs], "naive": lambda: naive(*xs),
            "fused": lambda: fused.three_way(*host)}
    if cuda and triton_compare.available():
        runs["triton"] = lambda: triton_compare.three_way_triton(*xs)
    secs = {m: best(f, repeat, cuda and m != "fused") for m, f in runs.items()}
    gb = 12 * n / 1e9
    for m, s in secs.items():
        where = "cpu" if m == "fused" else dev
        print(f"| {n:,} | {m} ({where}) | {s * 1e3:.2f} | {gb / s:.2f} | "
              f"{secs['copy'] / s:.2f} |")

if __name__ == "__main__":
    main()
