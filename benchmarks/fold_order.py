"""What the role-independent summation costs: ledger format 3's fold (one running sum, the
checked fragments last) against format 4's pairwise tree (O(log W) partial sums, the checked
fragment a hole until it is settled) and format 5's, which looks at every unchecked answer
before it goes in (core/looks.py: finiteness and norms, one more pass), on the manager's own
work per iteration.

    python benchmarks/fold_order.py [--params 24200000] [--answers 15] [--repeat 3]

The variants run in this one process on the same answers, alternating, so a noisy shared
machine moves them together; the table gives each one's seconds per iteration (every answer
folded, then the step's division), their ratio, and the peak number of model-sized vectors
each holds besides the answers themselves. Writes nothing; paste the table into
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import looks


class Flat(torch.nn.Module):
    """A model that is one parameter vector of the given size: the fold sees only its layout."""

    def __init__(self, n: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n))


def linear(model, layout, answers, checked):
    fold = training.Fold(model, layout)
    for i, a in enumerate(answers):
        if i != checked:
            fold.add(a, 7, 7)
    fold.add(answers[checked], 7, 7)
    return (fold.grad / fold.count), 1


def tree(model, layout, answers, checked, look=False):
    fold = training.TreeFold(model, layout, len(answers))
    peak, ref = 0, looks.Reference(float("inf"), float("inf"))
    for i, a in enumerate(answers):
        if i != checked:
            if look:  # as manager.look does: the answer's sizes against the bound, then in
                assert looks.why(training.answer_sizes(layout, a, 0.5, fold.before), ref) is None
            fold.set(i, a, 7, 7)
            peak = max(peak, fold.grads.held)
    fold.set(checked, answers[checked], 7, 7)
    return fold.grads.result() / fold.count, peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=24_200_000)
    ap.add_argument("--answers", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as the manager's fold runs
    model = Flat(args.params)
    layout = Layout(model)
    gen = torch.Generator().manual_seed(0)
    answers = [torch.randn(args.params, generator=gen).numpy() for _ in range(args.answers)]
    checked = args.answers // 2
    variants = (("format 3 (running sum)", linear), ("format 4 (pairwise tree)", tree),
                ("format 5 (tree, each answer looked at)",
                 lambda *a: tree(*a, look=True)))
    seconds = {name: [] for name, _ in variants}
    held = {}
    for _ in range(args.repeat):
        for name, fn in variants:
            t0 = time.perf_counter()
            _, held[name] = fn(model, layout, answers, checked)
            seconds[name].append(time.perf_counter() - t0)
    base = min(seconds["format 3 (running sum)"])
    print(f"{args.answers} answers of {args.params:,} float32 values, the middle one checked, "
          f"best of {args.repeat}")
    print("| variant | s per iteration | vs format 3 | partial sums held (model-sized) |")
    print("|---|---|---|---|")
    for name, ts in seconds.items():
        print(f"| {name} | {min(ts):.3f} | {min(ts) / base:.2f}x | {held[name]} |")


if __name__ == "__main__":
    main()
