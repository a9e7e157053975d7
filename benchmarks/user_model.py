"""A user's model with dropout and BatchNorm on Fashion-MNIST: the 8-rank job against the same
model trained in one process with the same recipe.

usage:: python benchmarks/user_model.py [--ranks 8] [--epochs 20] [--lr-drops 15] [--json PATH]
                                       [--fakes "--fake-ranks 2,4 --fake-mode 2=buffers,4=label-flip"]

The one-process run takes the job's recipe: the same initial weights (--seed), the same blocks
in the same seeded order, each block one batch, Adam at the same rate per iteration
(podlt_mpi.core.rates), BatchNorm and dropout as torch has them in training mode. The job computes
each block as fragments on its workers (BatchNorm normalises over a fragment, dropout draws from
the fragment's seed) and steps on their line-weighted mean. Both are evaluated on the 10,000 test
images with the model in eval mode (running statistics, no dropout).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")
DATA = os.path.join(ROOT, "data", "fashion-mnist")
MODEL = "usermodel:mlp_bn_dropout"


def recipe(a) -> list:
    return ["--data", os.path.join(DATA, "train.h5"), "--test-data", os.path.join(DATA, "test.h5"),
            "--block-lines", str(a.block_lines), "--model", MODEL, "--epochs", str(a.epochs),
            "--lr-drops", a.lr_drops, "--seed", str(a.seed)]


def job(a) -> dict:
    out = os.path.join(ROOT, "runs", f"user-model-{time.strftime('%Y%m%d-%H%M%S')}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT])}
    t0 = time.monotonic()
    subprocess.run(["mpiexec", "-n", str(a.ranks), sys.executable, "-m", "podlt_mpi", *recipe(a),
                    *a.fakes.split(), "--out", out], check=True, cwd=ROOT, env=env, timeout=7200)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    return {"variant": f"PoDLT, {a.ranks} ranks {a.fakes}".strip(), "test_accuracy": s["test_accuracy"],
            "test_loss": s["test_loss"], "wall_s": time.monotonic() - t0,
            "removed": s["removed"], "checks": s["checks"], "out": out}


def one_process(a) -> dict:
    import h5py
    import torch

    from podlt_mpi.compute import losses, models, training
    from podlt_mpi.core import rates, schedule
    from podlt_mpi.core.config import parse_args
    from podlt_mpi.core.tasks import classification
    sys.path.insert(0, HERE)
    cfg = parse_args(recipe(a))
    training.set_determinism(1)
    with h5py.File(os.path.join(DATA, "train.h5")) as f:
        x, y = f["x"][:], f["y"][:]
    with h5py.File(os.path.join(DATA, "test.h5")) as f:
        tx, ty = f["x"][:], f["y"][:]
    model = models.build(MODEL, x.shape[1:], 10, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total = schedule.total_iterations(len(y), cfg.block_lines, cfg.epochs)
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    for it, epoch, _, s, e in schedule.run_blocks(len(y), cfg.block_lines, cfg.epochs, None,
                                                  schedule.shuffle_seed(cfg)):
        for group in opt.param_groups:
            group["lr"] = rates.learning_rate(cfg, it, epoch, total)
        opt.zero_grad()
        out = model(torch.from_numpy(x[s:e]))
        torch.nn.functional.cross_entropy(out, torch.from_numpy(y[s:e])).backward()
        opt.step()
    model.eval()
    figures = losses.evaluate(model, classification(10), tx, ty)
    loss, acc = figures["test_loss"], figures["test_accuracy"]
    return {"variant": "one process", "test_accuracy": acc, "test_loss": loss,
            "wall_s": time.monotonic() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr-drops", default="15")
    p.add_argument("--block-lines", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fakes", default="", help="fault-injection options for the job, e.g. "
                   "\"--fake-ranks 2,4 --fake-mode 2=buffers,4=label-flip --fake-from 50\"")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    if not os.path.exists(os.path.join(DATA, "train.h5")):
        subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", "fashion-mnist", "--out",
                        DATA], check=True, cwd=ROOT, timeout=600)
    rows = [one_process(a), job(a)]
    print("| variant | test accuracy | test loss | wall s | removed |\n|---|---:|---:|---:|---|")
    for r in rows:
        removed = ", ".join(f"{x['rank']} at {x['iteration']}" for x in r.get("removed", []))
        print(f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} | "
              f"{r['wall_s']:.0f} | {removed or '-'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
