"""A byte-level GPT on the Python standard library's own source: the 8-rank job, honest and with
two fakes, against the same recipe in one process.

usage:: python benchmarks/gpt_stdlib.py [--ranks 8] [--iterations 300] [--write]

The corpus is every .py file of `sysconfig.get_paths()["stdlib"]` outside test folders and
site-packages (about 13 MB on CPython 3.11), cut by `prepare text --seq-len 128` into lines of
129 bytes; the last 10% of the lines are the test set. The model is `--model gpt` with 4 layers,
4 heads, 128-wide embeddings, dropout 0.1 (0.84M parameters). Every variant trains on the same
blocks in the same seeded order from the same initial weights with AdamW and the same cosine
rate with warm-up per iteration (podlt_mpi.core.rates); the one-process loop takes each block as one
batch. All are evaluated on the whole test set (loss in nats per byte, bits per byte, next-byte
accuracy) with the model in eval mode. `--write` appends the table to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "stdlib-bytes")
SEQ = 128
MODEL_ARGS = "n_layer=4,n_head=4,n_embd=128,dropout=0.1"
EXCLUDE = ("test", "tests", "idle_test", "site-packages", "__pycache__")


def recipe(a) -> list:
    return ["--data", os.path.join(DATA, "train.h5"), "--test-data", os.path.join(DATA, "test.h5"),
            "--model", "gpt", "--model-args", MODEL_ARGS, "--optimizer", "adamw",
            "--lr", str(a.lr), "--weight-decay", "0.01", "--lr-schedule", "cosine",
            "--warmup", str(a.warmup), "--block-lines", str(a.block_lines),
            "--blocks", str(a.iterations), "--seed", str(a.seed), "--checkpoint-every", "0"]


def prepare() -> None:
    if os.path.exists(os.path.join(DATA, "test.h5")):
        return
    argv = [sys.executable, "-m", "podlt_mpi", "prepare", "text", "--source",
            sysconfig.get_paths()["stdlib"], "--glob", "*.py", "--seq-len", str(SEQ), "--out", DATA]
    for name in EXCLUDE:
        argv += ["--exclude", name]
    subprocess.run(argv, check=True, cwd=ROOT, timeout=600)


def job(a, fakes: list, label: str) -> dict:
    out = os.path.join(ROOT, "runs", f"gpt-stdlib-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.monotonic()
    subprocess.run(["mpiexec", "-n", str(a.ranks), sys.executable, "-m", "podlt_mpi", *recipe(a),
                    *fakes, "--out", out], check=True, cwd=ROOT, timeout=7200,
                   env={**os.environ, "PYTHONPATH": ROOT})
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # training only, as the one-process loop is timed: the iterations less their evaluation
    train_s = sum(r["seconds"] - r.get("time", {}).get("eval", 0.0) for r in rows)
    tokens = sum(r["applied_lines"] for r in rows) * SEQ
    return {"variant": f"PoDLT, {a.ranks} ranks" + (f", fakes {' '.join(fakes)}" if fakes else ""),
            **{k: s[k] for k in ("test_loss", "test_bits_per_byte", "test_accuracy", "removed",
                                 "checks")},
            "useful_tokens_per_s": tokens / train_s, "wall_s": time.monotonic() - t0, "out": out}


def one_process(a) -> dict:
    """The recipe as a plain PyTorch loop: each block one batch, the block's mean loss."""
    import h5py
    import numpy as np
    import torch

    from podlt_mpi.compute import losses, models, training
    from podlt_mpi.core import config, rates, schedule
    from podlt_mpi.io import data
    cfg = config.parse_args(recipe(a))
    ds = data.resolve(cfg)
    training.set_determinism(2, exact=False)  # two threads: the machine's cores
    with h5py.File(ds.train.path) as f:
        x, y = f["x"][:].astype(np.int64), f["y"][:].astype(np.int64)
    with h5py.File(ds.test.path) as f:
        tx, ty = f["x"][:].astype(np.int64), f["y"][:].astype(np.int64)
    model = models.build("gpt", ds.line_shape, ds.n_classes, cfg.seed, ds.task,
                         config.model_kwargs(cfg.model_args))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = schedule.total_iterations(len(y), cfg.block_lines, cfg.epochs, cfg.blocks)
    torch.manual_seed(cfg.seed)
    t0 = time.monotonic()
    lines = 0
    for it, epoch, _, s, e in schedule.run_blocks(len(y), cfg.block_lines, cfg.epochs, cfg.blocks,
                                                  schedule.shuffle_seed(cfg)):
        for group in opt.param_groups:
            group["lr"] = rates.learning_rate(cfg, it, epoch, total)
        opt.zero_grad()
        out = model(torch.from_numpy(x[s:e]))
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                          torch.from_numpy(y[s:e]).reshape(-1)).backward()
        opt.step()
        lines += e - s
    train_s = time.monotonic() - t0
    model.eval()
    f = losses.evaluate(model, ds.task, tx, ty)
    return {"variant": "one process (2 threads)", **f,
            "useful_tokens_per_s": lines * ds.line_shape[0] / train_s,
            "wall_s": time.monotonic() - t0}


def table(rows) -> str:
    ref = rows[0]["test_loss"]
    out = ["| variant | test loss (nats/byte) | vs one process | bits per byte | next-byte "
           "accuracy | useful tokens/s (training) | removed | wall s |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        removed = ", ".join(f"rank {x['rank']} at {x['iteration']}" for x in r.get("removed", []))
        out.append(f"| {r['variant']} | {r['test_loss']:.4f} | {r['test_loss'] / ref - 1:+.2%} | "
                   f"{r['test_bits_per_byte']:.4f} | {r['test_accuracy']:.4f} | "
                   f"{r['useful_tokens_per_s']:,.0f} | {removed or '-'} | {r['wall_s']:.0f} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--block-lines", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fakes", default="--fake-ranks 3,5 --fake-mode 3=label-flip,5=alie "
                   "--fake-from 20", help="the faked run's fault-injection options")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    a = p.parse_args()
    prepare()
    rows = [one_process(a), job(a, [], "honest"), job(a, a.fakes.split(), "fakes")]
    text = table(rows)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    if a.write:
        with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
