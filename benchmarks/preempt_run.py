"""Preemption and proof at scale: signal a running job, resume it, audit it.

usage:: python benchmarks/preempt_run.py [-n 50] [--after K] [-- extra podlt_mpi options]

Starts the job, sends SIGTERM to mpiexec once the ledger holds K records (as Slurm's
--signal would, forwarded), and reports how long the job took to exit after the signal, the
resumed run's wall time, whether the final model equals an uninterrupted run's (--compare), and
how long `audit --sample 10` and `audit --all` take on the finished run. One Markdown table row.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                        os.environ["PATH"])


def records(out):
    path = os.path.join(out, "ledger.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def timed(cmd, timeout):
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.monotonic() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--after", type=int, default=40, help="signal once this many iterations are done")
    p.add_argument("--compare", action="store_true", help="also run uninterrupted and compare bytes")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="podlt-preempt-")
    out = os.path.join(base, "run")
    job = [mpiexec(), "-n", str(a.n), sys.executable, "-m", "podlt_mpi"]
    proc = subprocess.Popen(job + ["--out", out, *a.extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + a.timeout
    while records(out) < a.after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    t_signal = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=a.timeout)
    to_exit = time.monotonic() - t_signal
    if proc.returncode != 0 or "Resume with" not in log:
        sys.exit(f"the signalled job did not stop cleanly ({proc.returncode}):\n{log[-3000:]}")
    stopped_at = records(out)
    resume_s = timed(job + ["--resume", out], a.timeout)
    same = ""
    if a.compare:
        ref = os.path.join(base, "ref")
        timed(job + ["--out", ref, *a.extra], a.timeout)
        with open(os.path.join(out, "model_final.pt"), "rb") as f, \
                open(os.path.join(ref, "model_final.pt"), "rb") as g:
            same = "identical" if f.read() == g.read() else "DIFFERENT"
    audit = [sys.executable, "-m", "podlt_mpi", "audit", out]
    sample_s = timed(audit + ["--sample", "10"], a.timeout)
    all_s = timed(audit + ["--all"], a.timeout)
    print("| ranks | signalled after | signal to exit | resume wall | final model vs one go | "
          "audit --sample 10 | audit --all |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {a.n} | {stopped_at} iterations | {to_exit:.1f} s | {resume_s:.1f} s | "
          f"{same or 'not compared'} | {sample_s:.1f} s | {all_s:.1f} s |")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
