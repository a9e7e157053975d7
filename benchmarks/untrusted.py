"""What one adversarial rank costs the job, against the code before the untrusted-ranks work.

usage:: python benchmarks/untrusted.py --old DIR [--ranks 6] [--repeats 2]

DIR is a checkout of the code to compare with (e.g. `git worktree add /tmp/old a210a5c`).
Both trees run the same jobs (the adversaries are this tree's tests/adversaries/, which lie at
the message level and so run under either): an honest run; one where a worker goes silent, alive,
at iteration 2 (LIE=silent), with the automatic deadline; one where a worker floods rank 0 with
20,000 messages of 4 KB on a tag it never receives. For each: the exit code, whether the run
completed, the wall time (the silent case's, less the honest one's, is what the silence cost)
and rank 0's peak resident memory (summary.json; none where the job wrote none). Prints a
Markdown table with the command.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ADV = os.path.join(ROOT, "tests", "adversaries")


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                        os.environ["PATH"])


def job(tree, ranks, out, data, adversary=None, env=None) -> dict:
    args = ["--data", data["train"], "--test-data", data["test"], "--out", out,
            "--block-lines", "200", "--blocks", "8", "--role-seed", "0"]
    py = [sys.executable]
    if adversary is None:
        cmd = [mpiexec(), "-n", str(ranks), *py, "-m", "podlt_mpi", *args]
    else:
        rank, prog = adversary
        cmd = [mpiexec(), "-n", str(rank), *py, "-m", "podlt_mpi", *args, ":", "-n", "1", *py,
               prog, *args, ":", "-n", str(ranks - rank - 1), *py, "-m", "podlt_mpi", *args]
    full = {**os.environ, **(env or {}), "PYTHONPATH": tree}
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=900, cwd=tree)
    wall = time.monotonic() - t0
    summary = os.path.join(out, "summary.json")
    peak = None
    if os.path.exists(summary):
        with open(summary) as f:
            peaks = json.load(f).get("peak_rss_mb")
        peak = peaks[0] if peaks else None
    return {"rc": r.returncode, "wall_s": round(wall, 1), "peak0_mb": peak,
            "stderr": r.stderr}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, help="checkout of the code to compare with")
    p.add_argument("--ranks", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from podlt_mpi.io import data as data_module
    from tests.helpers.staging import first_plan
    plan = first_plan(a.ranks)
    worker = next(r for r in plan.workers if r != plan.checked)
    work = tempfile.mkdtemp(prefix="untrusted-")
    path = os.path.join(work, "small.h5")
    data_module.prepare_synthetic(path, lines=2400, test_lines=400)
    data = {"train": path, "test": data_module.test_path_for(path)}
    cases = {"honest": {},
             "silent at iteration 2": {"adversary": (worker, os.path.join(ADV, "lie.py")),
                                       "env": {"LIE": "silent", "LIE_FROM": "2"}},
             "flood of 20,000 x 4 KB": {"adversary": (worker, os.path.join(ADV, "flood.py"))}}
    rows = []
    for rep in range(a.repeats):
        for name, kw in cases.items():
            for label, tree in (("before", os.path.abspath(a.old)), ("now", ROOT)):
                out = os.path.join(work, f"{rep}-{label}-{name.split()[0]}")
                got = job(tree, a.ranks, out, data, **kw)
                ok = "complete" if os.path.exists(os.path.join(out, "model_final.pt")) else "-"
                rows.append((name, label, got["rc"], ok, got["wall_s"], got["peak0_mb"]))
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"`python benchmarks/untrusted.py --old {a.old} --ranks {a.ranks} --repeats "
          f"{a.repeats}` ({a.ranks} ranks, 8 iterations of 200 lines, mlp):\n")
    print("| case | code | exit | run | wall s | rank 0 peak MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join("-" if v is None else str(v) for v in r) + " |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
