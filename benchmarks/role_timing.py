"""What a rank can tell of its role from timing: the residue the secrecy rules leave.

usage:: python benchmarks/role_timing.py [--ranks 6] [--iterations 240] [--broadcast on,off]
            [--model mlp] [--block-lines 100] [--window N] [--json out.json]

One rank of each job is a probe (an adversary's wrapper around the project's worker, as in
tests/adversaries/): per iteration it measures what it can cheaply observe of its own messages,
the seconds from its header to its weights and lines being in, and from posting its answer's
gradient to that send completing (a rendezvous send completes once the manager has posted the
receive: the moment the window's order decides). After the run, the ledger says what its role
was in each iteration: watched (the checked worker or a control) or not.

A classifier on those timings: for each feature, the threshold (and side) that best splits
watched from unwatched on one half of the iterations, scored on the other half, both ways round
(two-fold cross-validation); its accuracy against chance (always guessing the more frequent
class), and the ROC AUC of each feature over all iterations (0.5: no information).
`--window N`: the manager receives through N buffers, as it does for a model whose answers fill
its 256 MB window (run/exchange.py) with fewer than the workers, which this machine's models
do not: the window's order then decides when each rank's send completes. Prints a
Markdown table; --json keeps every number.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FEATURES = ("received_s", "send_s")

PROBE = r'''
import json, os, sys, time
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import tags
from podlt_mpi.run import worker
real_isend, real_run = mpi.isend, worker.run
seen = {"iteration": None, "t_head": None, "rows": {}}
def on_message(tag, arr):  # the worker calls it as each of its messages is in
    now = time.perf_counter()
    if tag == tags.HEADER:
        seen["iteration"], seen["t_head"] = int(arr[1]), now
    elif tag == tags.Y:
        row = seen["rows"].setdefault(seen["iteration"], {"iteration": seen["iteration"]})
        row.setdefault("received_s", now - seen["t_head"])
def isend(c, buf, dest, tag):
    req = real_isend(c, buf, dest, tag)
    if tag == tags.GRAD:
        t0 = time.perf_counter()
        while not req.Test():
            pass
        row = seen["rows"].setdefault(seen["iteration"], {"iteration": seen["iteration"]})
        row.setdefault("send_s", time.perf_counter() - t0)
    return req
mpi.isend = isend
worker.run = lambda *a, **k: real_run(*a, **{**k, "on_message": on_message})
real_finish = mpi.finish
def finish(code):  # the job leaves through C's exit(): write the rows first
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(list(seen["rows"].values()), f)
    real_finish(code)
mpi.finish = finish
from podlt_mpi.__main__ import main as job
sys.exit(job(sys.argv[1:]))
'''


MANAGER = r'''
import sys
from podlt_mpi.run import exchange
exchange.WINDOW, exchange.WINDOW_BYTES = int(sys.argv[1]), 0
from podlt_mpi.__main__ import main as job
sys.exit(job(sys.argv[2:]))
'''


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                        os.environ["PATH"])


def run(ranks, iterations, broadcast, model, block_lines, work, window=0) -> list:
    """One job; the probe's rows with its role per iteration."""
    probe_rank = ranks // 2
    out = os.path.join(work, f"run-{broadcast}")
    probe_out = os.path.join(work, f"probe-{broadcast}.json")
    probe = os.path.join(work, "probe.py")
    with open(probe, "w") as f:
        f.write(PROBE)
    args = ["--out", out, "--model", model, "--block-lines", str(block_lines), "--blocks",
            str(iterations), "--epochs", "1", "--broadcast", broadcast, "--eval-every", "0",
            "--checkpoint-every", "0", "--log-every", "0"]
    job = [sys.executable, "-m", "podlt_mpi", *args]
    first = [job] * probe_rank
    if window:
        manager = os.path.join(work, "manager.py")
        with open(manager, "w") as f:
            f.write(MANAGER)
        first[0] = [sys.executable, manager, str(window), *args]
    cmd = [mpiexec()]
    for c in first:
        cmd += ["-n", "1", *c, ":"]
    cmd += ["-n", "1", "-env", "PROBE_OUT", probe_out, sys.executable, probe, *args, ":",
            "-n", str(ranks - probe_rank - 1), *job]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT])}  # usermodel.py too
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        sys.exit(f"the job failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    with open(probe_out) as f:
        rows = f.read()
    rows = {row["iteration"]: row for row in json.loads(rows)}
    out_rows = []
    with open(os.path.join(out, "ledger.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            mine = [a for a in rec["assignments"] if a["rank"] == probe_rank
                    and a["role"] in ("worker", "control")]
            row = rows.get(rec["iteration"])
            if not mine or row is None:
                continue
            checks = [rec["check"], *rec.get("extra_checks", [])]
            watched = any(c and (c["worker"] == probe_rank or probe_rank in c["controls"])
                          for c in checks)
            out_rows.append({**row, "watched": watched})
    return out_rows


def auc(values, labels) -> float:
    """P(a watched iteration's value > an unwatched one's), ties halved."""
    pos = [v for v, w in zip(values, labels) if w]
    neg = [v for v, w in zip(values, labels) if not w]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def best_threshold(values, labels):
    """(threshold, side) with the best accuracy on these iterations."""
    best = (0.0, None, True)
    for t in sorted(set(values)):
        for above in (True, False):
            acc = sum(((v > t) if above else (v <= t)) == w
                      for v, w in zip(values, labels)) / len(values)
            if acc > best[0]:
                best = (acc, t, above)
    return best[1], best[2]


def cross_validated(values, labels) -> float:
    n = len(values) // 2
    halves = [(values[:n], labels[:n]), (values[n:], labels[n:])]
    right = 0
    for (tv, tl), (ev, el) in ((halves[0], halves[1]), (halves[1], halves[0])):
        t, above = best_threshold(tv, tl)
        right += sum(((v > t) if above else (v <= t)) == w for v, w in zip(ev, el))
    return right / len(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=6)
    p.add_argument("--iterations", type=int, default=240)
    p.add_argument("--broadcast", default="on,off")
    p.add_argument("--model", default="mlp")
    p.add_argument("--block-lines", type=int, default=100)
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as work:
        for broadcast in a.broadcast.split(","):
            rows = run(a.ranks, a.iterations, broadcast, a.model, a.block_lines, work, a.window)
            labels = [r["watched"] for r in rows]
            chance = max(sum(labels), len(labels) - sum(labels)) / len(labels)
            for feature in FEATURES:
                values = [r[feature] for r in rows]
                results.append({"broadcast": broadcast, "feature": feature,
                                "iterations": len(rows), "watched": sum(labels),
                                "chance": chance, "accuracy": cross_validated(values, labels),
                                "auc": auc(values, labels)})
    print(f"{a.ranks} ranks, model {a.model}, {a.block_lines} lines per block; "
          f"`python benchmarks/role_timing.py --ranks {a.ranks} --iterations {a.iterations} "
          f"--broadcast {a.broadcast} --model {a.model} --block-lines {a.block_lines}"
          f"{f' --window {a.window}' if a.window else ''}`\n")
    print("| broadcast | feature | iterations | watched | chance | classifier (2-fold) | AUC |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['broadcast']} | {r['feature']} | {r['iterations']} | {r['watched']} | "
              f"{r['chance']:.3f} | {r['accuracy']:.3f} | {r['auc']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
