"""Measure a whole job as a user starts it: wall time, time to the first iteration, peak memory.

usage:: python benchmarks/default_run.py [-n 50] [--label NAME] [-- extra podlt_mpi options]

Samples the summed RSS of every process of the job twice a second, notes when the first ledger
record appears, and prints one Markdown table row. Variants passed one after another in the same
shell compare fairly only on a quiet machine: this one is shared, so report ratios of runs made
back to back.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def job_rss_mb(root_pid: int) -> float:
    """Summed resident memory of root_pid and all its descendants, in MB."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--label", default="default")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="podlt-bench-")
    shutil.rmtree(out)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    cmd = [mpiexec, "-n", str(a.n), sys.executable, "-m", "podlt_mpi", "--out", out, *a.extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, first = 0.0, None
    ledger = os.path.join(out, "ledger.jsonl")
    while proc.poll() is None:
        peak = max(peak, job_rss_mb(proc.pid))
        if first is None and os.path.exists(ledger) and os.path.getsize(ledger) > 0:
            first = time.monotonic() - t0
        if time.monotonic() - t0 > a.timeout:
            proc.kill()
            sys.exit("timed out")
        time.sleep(0.5)
    wall = time.monotonic() - t0
    log = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"job failed ({proc.returncode}):\n{log[-3000:]}")
    s = json.load(open(os.path.join(out, "summary.json")))
    print("| variant | ranks | wall s | first iteration s | training s | useful samples/s | test acc | peak RSS GB (all ranks) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {a.label} | {a.n} | {wall:.1f} | {first:.1f} | {s['wall_time_s']:.1f} | "
          f"{s['useful_samples_per_s']:,.0f} | {s['test_accuracy']:.4f} | {peak / 1024:.1f} |")
    print(f"command: {' '.join(cmd[1:3])} python -m podlt_mpi {' '.join(a.extra)}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
