"""The cost of the portable kernels (core/portable.py): a rank's work per iteration, portable
against native, for the mlp, the cnn and gpt, in one run.

usage:: python benchmarks/kernels.py [--repeats 3] [--steps 5] [--threads 1]

A rank's work is a fragment's gradient (training.fragment) and, for the manager, the optimizer's
step: both are measured, on the shapes the README's runs use (the default job's mlp on 20
features with 25 lines per fragment, the mlp and cnn on Fashion-MNIST's 28x28 images with 125,
the pylib gpt with its 128-token lines, 16 per fragment). The kernels are read once, when torch starts, so each
variant runs in its own process; the variants alternate, `--repeats` times, and the table gives
the median seconds and portable / native. Native is whatever the environment asks for (unset:
the processor's best).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {  # name: (model, line shape, classes, lines per fragment, model args, integer inputs)
    "mlp, default job": ("mlp", (20,), 10, 25, {}, False),
    "mlp, Fashion-MNIST": ("mlp", (784,), 10, 125, {}, False),
    "cnn, Fashion-MNIST": ("cnn", (1, 28, 28), 10, 125, {}, False),
    "gpt, pylib": ("gpt", (128,), 256, 16, {"n_layer": 4, "n_head": 4, "n_embd": 128}, True),
}


def measure(steps: int, threads: int) -> dict:
    """Seconds per fragment and per optimizer step for every case, in this process."""
    import torch

    from podlt_mpi.compute import models, training
    from podlt_mpi.compute.layout import Layout
    from podlt_mpi.core.tasks import Task
    training.set_determinism(threads)
    out = {}
    for name, (spec, shape, classes, lines, args, tokens) in CASES.items():
        task = Task("tokens" if tokens else "float", "classes", shape if tokens else (),
                    classes, "cross-entropy", vocab=classes if tokens else 0)
        model = models.build(spec, shape, classes, 0, task, args)
        layout = Layout(model)
        opt = torch.optim.Adam(layout.params, lr=1e-3)
        g = torch.Generator().manual_seed(0)
        if tokens:
            x = torch.randint(0, classes, (lines, *shape), generator=g)
            y = torch.randint(0, classes, (lines, *shape), generator=g)
        else:
            x = torch.randn(lines, *shape, generator=g)
            y = torch.randint(0, classes, (lines,), generator=g)
        training.fragment(model, layout, x, y, 0)  # warm-up
        t = time.perf_counter()
        for i in range(steps):
            answer, _ = training.fragment(model, layout, x, y, i)
        grad = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        for _ in range(steps):
            training.apply_update(model, opt, layout, [answer], [lines], 1e-3)
        out[name] = {"fragment": grad, "step": (time.perf_counter() - t) / steps}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.steps, a.threads)))
        return 0
    from podlt_mpi.core import portable
    runs = {"portable": [], "native": []}
    for _ in range(a.repeats):
        for variant in runs:
            env = dict(os.environ, PYTHONPATH=ROOT)
            portable.apply(portable.settings(variant, os.environ), env)
            r = subprocess.run([sys.executable, __file__, "--child", "--steps", str(a.steps),
                                "--threads", str(a.threads)], env=env, capture_output=True,
                               text=True, timeout=1800, check=True)
            runs[variant].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print("| model | part | native s | portable s | portable / native |")
    print("|---|---|---|---|---|")
    for name in CASES:
        for part in ("fragment", "step"):
            n, q = (statistics.median(r[name][part] for r in runs[v]) for v in ("native", "portable"))
            print(f"| {name} | {part} | {n:.4f} | {q:.4f} | {q / n:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
