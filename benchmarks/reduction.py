"""The star against the ranks' reduction (issue 29): the bytes the manager counted per iteration,
and seconds per iteration, at 8 and 16 ranks, in one run of this script; then the cluster model.

usage:: python benchmarks/reduction.py [--ranks 8,16] [--blocks 5] [--model mlp] [--wait sleep]
            [--block-lines 400]
        python benchmarks/reduction.py --ranks 16 --model scale:mlp24 --wait spin --blocks 4

Each variant is its own mpiexec job, one after the other, on the same data and options (this
machine is shared: compare within a run). Numbers are the means over iterations 1..blocks-2 of
metrics.jsonl (iteration 0 warms up, the last writes the final checkpoint). The manager counts
every byte it sends and receives (exchange.py, reduce.py); its link is the star's bottleneck.
Every rank also counts the bytes it hands MPI and asks of it (mpi/comm.counted, summary.json's
counted_bytes: the whole job, start-up included, shown per iteration); a broadcast counts its
buffer once at each rank, whatever MPI forwards on the way. `scale:mlp24` is the 24.2M-parameter
MLP of benchmarks/scale.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from podlt_mpi.core import reduction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def job(n: int, how: str, a, tmp: str) -> dict:
    out = os.path.join(tmp, f"{how}{n}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-m", "podlt_mpi", "--model", a.model,
           "--blocks", str(a.blocks), "--block-lines", str(a.block_lines), "--reduce", how,
           "--wait", a.wait, "--checkpoint-every", "0", "--out", out]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (HERE, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout,
                       env=env)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:a.blocks - 1]
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(out, "summary.json")) as f:
        counted = json.load(f)["counted_bytes"]
    workers = [c for c in counted[1:] if c is not None]

    def mean(key):
        return sum(row[key] for row in rows) / len(rows)
    return {"ranks": n, "reduce": how, "seconds": mean("seconds"), "bytes_in": mean("bytes_in"),
            "bytes_out": mean("bytes_out"), "answer_bytes": 4 * cfg["answer_size"],
            # per iteration, over the whole job: the manager's own count, the mean and busiest
            # other rank's
            "rank0": [v / a.blocks for v in counted[0]],
            "rank_mean": [sum(c[k] for c in workers) / len(workers) / a.blocks for k in (0, 1)],
            "rank_max": [max(c[k] for c in workers) / a.blocks for k in (0, 1)],
            "command": " ".join(["mpiexec", "-n", str(n), "python", "-m", "podlt_mpi",
                                 *cmd[6:-2]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="8,16")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block-lines", type=int, default=400)
    p.add_argument("--model", default="mlp")
    p.add_argument("--wait", default="sleep", help="sleep on an oversubscribed machine")
    p.add_argument("--timeout", type=float, default=1200)
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="podlt-reduce-") as tmp:
        for n in map(int, a.ranks.split(",")):
            for how in ("star", "ranks"):
                results.append(job(n, how, a, tmp))
                print(f"# {n} ranks, --reduce {how}: {results[-1]['seconds']:.3f} s/it",
                      file=sys.stderr, flush=True)
    print("| ranks | reduce | manager in MB/it | out MB/it | in / one answer | s/it |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['ranks']} | {r['reduce']} | {r['bytes_in'] / 1e6:.2f} "
              f"| {r['bytes_out'] / 1e6:.2f} | {r['bytes_in'] / r['answer_bytes']:.2f} "
              f"| {r['seconds']:.3f} |")
    print("\nEvery rank's own count (summary.json counted_bytes), MB per iteration, in / out:\n")
    print("| ranks | reduce | rank 0 | other ranks, mean | other ranks, busiest |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['ranks']} | {r['reduce']} | "
              + " | ".join(f"{r[k][0] / 1e6:.2f} / {r[k][1] / 1e6:.2f}"
                           for k in ("rank0", "rank_mean", "rank_max")) + " |")
    print()
    for n in sorted({r["ranks"] for r in results}):
        star, mine = (next(r for r in results if r["ranks"] == n and r["reduce"] == h)
                      for h in ("star", "ranks"))
        print(f"- {n} ranks: manager in, ranks / star {mine['bytes_in'] / star['bytes_in']:.3f};"
              f" s/it ranks / star {mine['seconds'] / star['seconds']:.2f}; "
              f"`{mine['command']}`")
    values = results[0]["answer_bytes"] // 4
    print(f"\nThe cluster model at {values:,} values (core/reduction.traffic), busiest link / "
          "ring all-reduce per rank:\n")
    print("| ranks | star | ranks |")
    print("|---|---|---|")
    for n in (4, 8, 16, 64, 256, 1024):
        t = reduction.traffic(values, n)
        print(f"| {n} | {reduction.busiest(t['star']) / t['ring']:.1f}x "
              f"| {reduction.busiest(t['ranks']) / t['ring']:.2f}x |")


if __name__ == "__main__":
    main()
