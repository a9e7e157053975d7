"""GPU measurements for issue 7, in one run that writes one Markdown file:

usage:: python benchmarks/gpu.py [--write benchmarks/RESULTS-gpu.md] [--sizes 1M,10M,50M,100M]
            [--fragments 20] [--ranks 4,8] [--models mlp,cnn] [--parts compare,agree,throughput]

compare     the fused three-way comparison (Triton) against the GPU's copy bandwidth. Copy GB/s
            counts the bytes a device-to-device copy of the three vectors reads and writes (24 n);
            the comparison reads 12 n. Goal: >= 0.8 of copy at 10M+ parameters. Also the upload
            of three host vectors (what the manager does before comparing) and the numpy pass.
agree       how often honest ranks agree bit for bit: --fragments fragments computed by three
            separate processes on the GPU (as three ranks would), and the same on the CPU; the
            relative L2 distances GPU-vs-GPU, GPU-vs-CPU and, for scale, a bf16 cheat's.
throughput  PoDLT (2 controls) against plain data parallel (--controls 0), ranks sharing the
            machine's GPUs (one on the lent machine), Fashion-MNIST when prepared (else the
            synthetic default data).

`--device cpu` runs the same machinery without a GPU (the numbers then say nothing about GPUs):
it is how the script itself is tested.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import overhead  # noqa: E402
from compare_throughput import best, make, size  # noqa: E402

from podlt_mpi.compute import triton_compare  # noqa: E402
from podlt_mpi.core import fused


def compare_rows(sizes, dev, repeat):
    cuda = dev == "cuda"
    rows = []
    for n in sizes:
        host = make(n)
        xs = [torch.from_numpy(x).to(dev) for x in host]
        flat = torch.cat(xs)
        dst = torch.empty_like(flat)
        pinned = [torch.from_numpy(x).pin_memory() if cuda else torch.from_numpy(x) for x in host]
        t_copy = best(lambda: dst.copy_(flat), repeat, cuda)
        t_up = best(lambda: [p.to(dev, non_blocking=True) for p in pinned], repeat, cuda)
        t_np = best(lambda: fused.three_way(*host), max(1, repeat // 3), False)
        row = {"n": n, "copy_gbs": 24 * n / t_copy / 1e9, "upload_ms": t_up * 1e3,
               "numpy_ms": t_np * 1e3}
        if cuda and triton_compare.available():
            got, want = triton_compare.three_way_triton(*xs), fused.three_way(*host)
            assert got.bit_mismatches == want.bit_mismatches  # the kernel still gives the answer
            t_k = best(lambda: triton_compare.three_way_triton(*xs), repeat, True)
            row.update(kernel_ms=t_k * 1e3, kernel_gbs=12 * n / t_k / 1e9)
            row["of_copy"] = row["kernel_gbs"] / row["copy_gbs"]
        rows.append(row)
        print(f"# compare n={n:,}: {row}", file=sys.stderr, flush=True)
    return rows


FRAGMENTS = r"""
import sys
import numpy as np, torch
from podlt_mpi.compute import models, training
from podlt_mpi.compute.layout import Layout, host
model_name, dev, count, lines, path = sys.argv[1:6]
training.set_determinism(1)
model = models.build(model_name, (1, 28, 28), 10, 0).to(dev)
layout = Layout(model)
out = []
for k in range(int(count)):
    g = np.random.default_rng([7, k])
    layout.load_state(host(layout.state()) + np.float32(1e-3) *
                      g.standard_normal(layout.state_size).astype(np.float32))
    x = torch.from_numpy(g.random((int(lines), 1, 28, 28), dtype=np.float32))
    y = torch.from_numpy(g.integers(0, 10, int(lines)))
    out.append(training.gradient(model, x, y)[0])
np.save(path, np.stack(out))
"""


def fragments(model, dev, count, lines, path):
    subprocess.run([sys.executable, "-c", FRAGMENTS, model, dev, str(count), str(lines), path],
                   check=True, timeout=1800, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    return np.load(path)


def rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b)))


def bf16_cheat(model_name, dev):
    """A lowprec fake's distance from the honest gradient on the same device, for scale."""
    from podlt_mpi.compute import faults, models, training
    training.set_determinism(1)
    model = models.build(model_name, (1, 28, 28), 10, 0).to(dev)
    g = np.random.default_rng(5)
    x = torch.from_numpy(g.random((500, 1, 28, 28), dtype=np.float32)).to(dev)
    y = torch.from_numpy(g.integers(0, 10, 500)).to(dev)
    def compute(m, xs, ys):
        return training.gradient(m, xs, ys)[0]
    return rel(compute(model, x, y), faults._bf16_answer(model, x, y, compute))


def agree_rows(models, dev, count, lines, tmp):
    rows = []
    for m in models:
        runs = [fragments(m, dev, count, lines, os.path.join(tmp, f"{m}-{dev}-{k}.npy"))
                for k in range(3)]
        cpu = fragments(m, "cpu", count, lines, os.path.join(tmp, f"{m}-cpu.npy"))
        same = sum(all(r[k].tobytes() == runs[0][k].tobytes() for r in runs) for k in range(count))
        within = [rel(runs[0][k], r[k]) for r in runs[1:] for k in range(count)]
        across = [rel(runs[0][k], cpu[k]) for k in range(count)]
        rows.append({"model": m, "fragments": count, "lines": lines, "bitwise_same": same,
                     "max_rel_same_device": max(within), "median_rel_vs_cpu": float(np.median(across)),
                     "max_rel_vs_cpu": max(across), "bf16_cheat_rel": bf16_cheat(m, dev)})
        print(f"# agree {m}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def throughput_rows(ranks, models, dev, a, tmp):
    data = overhead.DATA if os.path.exists(overhead.DATA) else os.path.join(ROOT, "data",
                                                                            "synthetic-100k.h5")
    opts = SimpleNamespace(data=data, block_lines=a.block_lines, warmup=a.warmup,
                           iterations=a.iterations, timeout=a.timeout)
    rows = []
    for n in ranks:
        for m in models:
            got = [overhead.podlt(n, m, c, opts, tmp, ["--device", dev]) for c in (2, 0)]
            got[0]["vs_plain"] = got[0]["useful_samples_per_s"] / got[1]["useful_samples_per_s"]
            rows += got
            print(f"# throughput {n} {m}: {got[0]['vs_plain']:.3f}", file=sys.stderr, flush=True)
    return rows


def markdown(dev_name, a, compare, agree, through) -> str:
    out = [f"# GPU measurements ({dev_name})", "",
           f"`python benchmarks/gpu.py {' '.join(sys.argv[1:])}`; torch {torch.__version__}, "
           f"{time.strftime('%Y-%m-%d')}.", ""]
    if compare:
        out += ["## Fused three-way comparison against copy bandwidth", "",
                "| n | copy GB/s (24n) | kernel ms | kernel GB/s (12n) | of copy | upload of 3 "
                "host vectors ms | numpy pass ms |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in compare:
            k = (f"{r['kernel_ms']:.3f} | {r['kernel_gbs']:.0f} | {r['of_copy']:.2f}"
                 if "kernel_ms" in r else "- | - | -")
            out.append(f"| {r['n']:,} | {r['copy_gbs']:.0f} | {k} | {r['upload_ms']:.2f} | "
                       f"{r['numpy_ms']:.1f} |")
        out.append("")
    if agree:
        out += ["## Do honest ranks agree bit for bit?", "",
                "| model | fragments x lines | bitwise equal in 3 processes | max rel, same device "
                "| median / max rel vs CPU | bf16 cheat rel |", "|---|---|---:|---:|---:|---:|"]
        for r in agree:
            out.append(f"| {r['model']} | {r['fragments']} x {r['lines']} | {r['bitwise_same']} / "
                       f"{r['fragments']} | {r['max_rel_same_device']:.1e} | "
                       f"{r['median_rel_vs_cpu']:.1e} / {r['max_rel_vs_cpu']:.1e} | "
                       f"{r['bf16_cheat_rel']:.1e} |")
        out.append("")
    if through:
        out += ["## PoDLT against plain data parallel, every rank on the one GPU", "",
                "| ranks | model | variant | s/it | useful samples/s | PoDLT / plain | limit W/(W+2) "
                "| compute s | comm s | verify s | ledger s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in through:
            w = r["ranks"] - 3
            ratio = f"{r['vs_plain']:.3f}" if "vs_plain" in r else ""
            out.append(f"| {r['ranks']} | {r['model']} | {r['variant']} | "
                       f"{r['seconds_per_iteration']:.3f} | {r['useful_samples_per_s']:,.0f} | "
                       f"{ratio} | {w / (w + 2):.3f} | {r['compute']:.3f} | {r['comm']:.3f} | "
                       f"{r['verify']:.4f} | {r['ledger']:.4f} |")
        out += [""] + [f"- `{r['command']}`" for r in through]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--parts", default="compare,agree,throughput")
    p.add_argument("--sizes", default="1M,10M,50M,100M")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--fragments", type=int, default=20)
    p.add_argument("--lines", type=int, default=250)
    p.add_argument("--ranks", default="4,8")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--block-lines", type=int, default=2400)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--write", help="also write the Markdown here")
    p.add_argument("--json", help="every number, as JSON")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: error: no CUDA device here (use --device cpu only to test the "
              "script)", file=sys.stderr)
        return 2
    parts = set(a.parts.split(","))
    models = a.models.split(",")
    with tempfile.TemporaryDirectory(prefix="podlt-gpu-") as tmp:
        compare = (compare_rows([size(s) for s in a.sizes.split(",")], a.device, a.repeat)
                   if "compare" in parts else [])
        agree = agree_rows(models, a.device, a.fragments, a.lines, tmp) if "agree" in parts else []
        through = (throughput_rows([int(n) for n in a.ranks.split(",")], models, a.device, a, tmp)
                   if "throughput" in parts else [])
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    text = markdown(name, a, compare, agree, through)
    print(text)
    if a.write:
        with open(a.write, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "compare": compare, "agree": agree,
                       "throughput": through}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
