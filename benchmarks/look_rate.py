"""How often the look at unchecked answers (core/looks.py) holds back honest work.

usage:: python benchmarks/look_rate.py [--ranks 6] [--iterations 60] [--block-lines 100]
            [--cases mlp,cnn,dropout,bn1d,bn2d,frozen,combined,gpt] [--json out.json]

Honest runs of the built-in models and the tests' user models (tests/helpers/usermodels.py) on
the embedded default data, and of gpt on a small next-token task (tests/helpers/taskdata.py),
each with the learning rate the tests use. For each: the unchecked answers looked at, those held
back for a recomputation, and how many of those the recomputation contradicted (a removal: must
be 0 in an honest run). Prints a Markdown table with the command; --json keeps every number.
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
HELPERS = os.path.join(ROOT, "tests", "helpers")
GPT = ["--model", "gpt", "--model-args", "n_layer=1,n_head=2,n_embd=16,dropout=0.1"]
CASES = {
    "mlp": [],
    "cnn": ["--model", "cnn"],
    **{m: ["--model", f"usermodels:{m}"] for m in ("dropout", "bn1d", "bn2d", "frozen",
                                                   "combined")},
    "gpt": GPT,
}


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                        os.environ["PATH"])


def run(case, ranks, iterations, block_lines, work, tokens) -> dict:
    out = os.path.join(work, case)
    data = ["--data", tokens] if case == "gpt" else []
    args = [*data, *CASES[case], "--out", out, "--block-lines", str(block_lines), "--blocks",
            str(iterations), "--epochs", "1", "--eval-every", "0", "--checkpoint-every", "0",
            "--log-every", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HELPERS, ROOT])}
    r = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "podlt_mpi", *args],
                       env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        sys.exit(f"{case}: the job failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    looked = held = differs = 0
    with open(os.path.join(out, "ledger.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            checked = {c["worker"] for c in [rec["check"], *rec.get("extra_checks", [])] if c}
            looked += sum(1 for a in rec["assignments"]
                          if a["role"] == "worker" and a["rank"] not in checked)
            held += len(rec["looks"])
            differs += sum(x["verdict"] == "differs" for x in rec["looks"])
    with open(os.path.join(out, "summary.json")) as f:
        removed = len(json.load(f)["removed"])
    return {"case": case, "iterations": iterations, "looked": looked, "held": held,
            "differs": differs, "removed": removed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=6)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--block-lines", type=int, default=100)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json")
    a = p.parse_args()
    sys.path.insert(0, HELPERS)
    import taskdata
    results = []
    with tempfile.TemporaryDirectory() as work:
        tokens = taskdata.tokens(os.path.join(work, "tokens.h5"), 20000)
        for case in a.cases.split(","):
            results.append(run(case, a.ranks, a.iterations, a.block_lines, work, tokens))
    print(f"`python benchmarks/look_rate.py --ranks {a.ranks} --iterations {a.iterations} "
          f"--block-lines {a.block_lines} --cases {a.cases}`\n")
    print("| model | iterations | unchecked answers looked at | held back | of those, different "
          "| removed |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['iterations']} | {r['looked']} | {r['held']} "
              f"({r['held'] / max(r['looked'], 1):.2%}) | {r['differs']} | {r['removed']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
