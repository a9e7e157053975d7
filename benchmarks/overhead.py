"""What verification costs: PoDLT (2 controls) against plain data-parallel with the same code
(--controls 0) and PyTorch DDP (gloo), on the same data, model, ranks and lines per iteration.

usage:: python benchmarks/overhead.py [--ranks 8,16,50] [--models mlp,cnn] [--block-lines 2400]
            [--iterations 20] [--warmup 3] [--repeat 1] [--json out.json]

For every (ranks, model) the three variants run back to back (with --repeat 2, a second time in
reverse order, so drift on a shared machine falls on all of them alike), each its own mpiexec job.
Timings are per iteration after --warmup iterations; PoDLT's come from its metrics.jsonl (the
manager's split of each iteration, the ranks' own compute seconds and bytes), DDP's from
benchmarks/ddp_peer.py. Prints one Markdown table; --json keeps every number.

Columns: s/it, useful samples/s (lines whose gradient was applied), the ratio to plain and to DDP,
the protocol's limit W/(W+2) for W workers, then the manager's time split: compute (the slowest
rank's fragment), comm (the exchange less that compute: messages and waiting), verify, ledger
(hashes and the record), other (read + update), MB out/in per iteration, peak RSS (manager,
largest other rank).
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
DATA = os.path.join(ROOT, "data", "fashion-mnist", "train.h5")


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])


def shown(cmd) -> str:
    """The command as a user types it: mpiexec and python by name, paths relative to the repo."""
    words = ["mpiexec", *cmd[1:3], "python"] + [os.path.relpath(w, ROOT) if os.path.isabs(w) else w
                                                for w in cmd[4:-2]]  # not the temporary output
    return " ".join(words)


def run(cmd, timeout):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def podlt(n, model, controls, a, tmp, extra=()):
    """One job's per-iteration numbers; `extra`: further options (benchmarks/gpu.py: --device)."""
    out = os.path.join(tmp, f"podlt-{n}-{model}-{controls}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "podlt_mpi", "--data", a.data,
           "--model", model, "--block-lines", str(a.block_lines),
           "--epochs", "100", "--blocks", str(a.warmup + a.iterations), "--controls", str(controls),
           "--checkpoint-every", "0", *extra, "--out", out]
    run(cmd, a.timeout)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][a.warmup:]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    shutil.rmtree(out)
    k = len(rows)

    def mean(get):
        return sum(get(r) for r in rows) / k

    part = lambda name: mean(lambda r: r["time"].get(name, 0.0))  # noqa: E731
    seconds = mean(lambda r: r["seconds"]) - part("eval")  # the last row evaluates: not training
    compute = mean(lambda r: r["compute_max"])
    return {"variant": "podlt" if controls else "plain", "ranks": n, "model": model,
            "block_lines": a.block_lines, "iterations": k, "seconds_per_iteration": seconds,
            "useful_samples_per_s": mean(lambda r: r["applied_lines"]) / seconds,
            "compute": compute, "comm": part("exchange") - compute, "verify": part("verify"),
            "ledger": part("ledger"), "other": part("read") + part("update"),
            "bytes_out": mean(lambda r: r["bytes_out"]), "bytes_in": mean(lambda r: r["bytes_in"]),
            "peak_rss_mb": summary["peak_rss_mb"], "command": shown(cmd)}


def ddp(n, model, a, tmp):
    result = os.path.join(tmp, f"ddp-{n}-{model}.json")
    cmd = [mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, "ddp_peer.py"), "--data",
           a.data, "--model", model, "--block-lines", str(a.block_lines), "--iterations",
           str(a.iterations), "--warmup", str(a.warmup), "--result", result]
    run(cmd, a.timeout)
    with open(result) as f:
        r = json.load(f)
    r["comm"] = r["seconds_per_iteration"] - r["compute"] - r["step"] - r["read"]
    r.update(verify=0.0, ledger=0.0, other=r["read"] + r["step"],
             command=shown(cmd))
    return r


def table(results) -> str:
    head = ("| ranks | model | variant | s/it | useful samples/s | vs plain | vs DDP | limit W/(W+2) "
            "| compute s | comm s | verify s | ledger s | other s | MB out/in per it | peak RSS MB (manager / max other) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cell = [x for x in results if x["ranks"] == r["ranks"] and x["model"] == r["model"]]
        plain = next(x for x in cell if x["variant"] == "plain")["useful_samples_per_s"]
        peer = next(x for x in cell if x["variant"] == "ddp")["useful_samples_per_s"]
        w = r["ranks"] - 3
        rss = r["peak_rss_mb"]
        lines.append(
            f"| {r['ranks']} | {r['model']} | {r['variant']} | {r['seconds_per_iteration']:.3f} "
            f"| {r['useful_samples_per_s']:,.0f} | {r['useful_samples_per_s'] / plain:.3f} "
            f"| {r['useful_samples_per_s'] / peer:.3f} | {w / (w + 2):.3f} "
            f"| {r['compute']:.3f} | {r['comm']:.3f} | {r['verify']:.4f} | {r['ledger']:.4f} "
            f"| {r['other']:.4f} | {r['bytes_out'] / 1e6:.1f} / {r['bytes_in'] / 1e6:.1f} "
            f"| {rss[0]:.0f} / {max(rss[1:]):.0f} |")
    return "\n".join(lines)


def average(runs):
    """One result from repeated runs of a variant: the mean of every number."""
    out = dict(runs[0])
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = sum(r[k] for r in runs) / len(runs)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="8,16,50")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--block-lines", type=int, default=2400)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--data", default=DATA)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json")
    a = p.parse_args()
    if not os.path.exists(a.data):
        sys.exit(f"{a.data} is missing: python -m podlt_mpi prepare fashion-mnist --out data/fashion-mnist")
    results = []
    with tempfile.TemporaryDirectory(prefix="podlt-overhead-") as tmp:
        for n in map(int, a.ranks.split(",")):
            for model in a.models.split(","):
                variants = [lambda: podlt(n, model, 2, a, tmp), lambda: podlt(n, model, 0, a, tmp),
                            lambda: ddp(n, model, a, tmp)]
                got = {}
                for rep in range(a.repeat):
                    for v in (variants if rep % 2 == 0 else variants[::-1]):
                        r = v()
                        got.setdefault(r["variant"], []).append(r)
                        print(f"# {n} ranks {model} {r['variant']}: {r['useful_samples_per_s']:,.0f} "
                              "samples/s", file=sys.stderr, flush=True)
                results += [average(got[k]) for k in ("podlt", "plain", "ddp")]
    print(table(results))
    for r in results:
        print(f"- {r['ranks']} {r['model']} {r['variant']}: `{r['command']}`")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
