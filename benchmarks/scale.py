"""The manager at scale (issue 18): a 24.2M-parameter MLP at 8 and 16 ranks, this code against
an earlier commit and against plain data-parallel (--controls 0), and a model of a cluster.

usage:: python benchmarks/scale.py [--ranks 8,16] [--before f61fd6b] [--iterations 3]
            [--json out.json]

Every variant is its own mpiexec job, all of them in this one run, one after the other (this
machine is shared: compare within a run). `--before REV` runs that commit's code from a git
worktree on the same data and options. Numbers per iteration are the means over iterations
1..--iterations from each run's metrics.jsonl (iteration 0 warms up, the last one writes the
final checkpoint); peak RSS from its summary.json.

The cluster model (core/reduction.traffic): what the busiest link carries per iteration on
100 Gb/s links at 4 to 1024 ranks, the star and the ranks' reduction, against a ring all-reduce
of the same gradient (2(P-1)/P of the model through every rank).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

from torch import nn

from podlt_mpi.core import reduction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LINK = 100e9 / 8  # bytes/s of a 100 Gb/s link, each way
LINES_PER_WORKER = 80  # 480 lines at 8 ranks (6 workers), as in the issue
ON = ("--broadcast", "on")


def mlp24(input_shape, n_classes):
    """784-4096-4096-1024-10: 24.2M parameters (--model scale:mlp24, this file on the path)."""
    n = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                         nn.ReLU(), nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, n_classes))


def job(code: str, n: int, controls: int, a, tmp: str, extra=()) -> dict:
    """One run of the code at `code` (a folder holding podlt_mpi); its per-iteration numbers."""
    out = os.path.join(tmp, "run")
    shutil.rmtree(out, ignore_errors=True)
    lines = LINES_PER_WORKER * (n - 2)
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-m", "podlt_mpi", "--model", "scale:mlp24",
           "--block-lines", str(lines), "--blocks", str(a.iterations + 2),
           "--controls", str(controls), "--checkpoint-every", "0", *extra, "--out", out]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, HERE])}
    r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=a.timeout)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:a.iterations + 1]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        state = json.load(f)["state_size"] * 4

    def mean(get):
        return sum(get(row) for row in rows) / len(rows)
    part = lambda name: mean(lambda row: row["time"].get(name, 0.0))  # noqa: E731
    return {"ranks": n, "controls": controls, "lines": lines, "weights_bytes": state,
            "seconds": mean(lambda row: row["seconds"]),
            "samples_per_s": mean(lambda row: row["applied_lines"] / row["seconds"]),
            **{k: part(k) for k in ("exchange", "ledger", "verify", "update", "read")},
            "bytes_out": mean(lambda row: row["bytes_out"]),
            "bytes_in": mean(lambda row: row["bytes_in"]),
            "data_bytes": lines * (784 * 4 + 8),
            "peak_rss_mb": summary["peak_rss_mb"],
            "command": " ".join(["mpiexec", "-n", str(n), "python", "-m", "podlt_mpi",
                                 *cmd[6:-2]])}


def worktree(rev: str, tmp: str) -> str:
    path = os.path.join(tmp, "before")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", path, rev], cwd=ROOT, check=True)
    return path


def table(results) -> str:
    head = ("| ranks | code | controls | s/it | samples/s | exchange | ledger (share) | verify "
            "| update | MB out / in | out vs weights + data | peak RSS MB (manager / max other) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        once = r["weights_bytes"] + r["data_bytes"]
        rss = r["peak_rss_mb"]
        out.append(
            f"| {r['ranks']} | {r['code']} | {r['controls']} | {r['seconds']:.2f} "
            f"| {r['samples_per_s']:.0f} | {r['exchange']:.2f} "
            f"| {r['ledger']:.3f} ({r['ledger'] / r['seconds']:.1%}) | {r['verify']:.3f} "
            f"| {r['update']:.3f} | {r['bytes_out'] / 1e6:,.0f} / {r['bytes_in'] / 1e6:,.0f} "
            f"| {r['bytes_out'] / once:.2f}x | {rss[0]:,.0f} / {max(rss[1:]):,.0f} |")
    return "\n".join(out)


def cluster(weights: int, controls: int = 2) -> str:
    """Bytes through the busiest link per iteration, and the seconds they take, from
    core/reduction.traffic (the data's lines left out: a ring all-reduce does not carry them).

    The star: every worker's and control's answer comes in to the manager (one model each). The
    ranks' reduction: the commitments, one model of slices' sums and the challenged slices'
    inputs come in; the busiest other rank is an aggregator. A ring all-reduce moves 2(P-1)/P
    models through every rank, and has no manager."""
    head = ("| ranks | star: manager in GB | link s | ranks: busiest link GB | link s "
            "| ring all-reduce GB/rank | link s | star / ring | ranks / ring |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in (4, 8, 16, 64, 256, 1024):
        t = reduction.traffic(weights // 4, p, controls)
        star, mine, ring = t["star"]["manager_in"], reduction.busiest(t["ranks"]), t["ring"]
        out.append(f"| {p} | {star / 1e9:.2f} | {star / LINK:.3f} | {mine / 1e9:.3f} "
                   f"| {mine / LINK:.4f} | {ring / 1e9:.3f} | {ring / LINK:.4f} "
                   f"| {star / ring:.0f}x | {mine / ring:.2f}x |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="8,16")
    p.add_argument("--before", default="f61fd6b",
                   help="the commit to compare with (default: before issue 18's changes)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json")
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="podlt-scale-") as tmp:
        before = worktree(a.before, tmp) if a.before else None
        try:
            for n in map(int, a.ranks.split(",")):
                # the broadcast as on a cluster: auto turns it off where ranks share cores
                variants = [("this", ROOT, 2, ON), ("this", ROOT, 0, ON)]
                if before:
                    variants.insert(0, (a.before, before, 2, ()))
                for name, code, controls, extra in variants:
                    r = {**job(code, n, controls, a, tmp, extra), "code": name}
                    results.append(r)
                    print(f"# {n} ranks, {name}, --controls {controls}: {r['seconds']:.2f} s/it",
                          file=sys.stderr, flush=True)
        finally:
            if before:
                subprocess.run(["git", "worktree", "remove", "--force", before], cwd=ROOT)
    print(table(results))
    for n in sorted({r["ranks"] for r in results}):
        mine = {r["controls"]: r for r in results if r["ranks"] == n and r["code"] == "this"}
        print(f"- {n} ranks: PoDLT / plain {mine[2]['samples_per_s'] / mine[0]['samples_per_s']:.3f}"
              f"; `{mine[2]['command']}`")
    r = results[0]
    print()
    print(cluster(r["weights_bytes"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
