"""The computation every rank does (a fragment's gradient and buffers) and the manager's step.
No MPI. What travels, and in which order, is layout.py's.
"""
from __future__ import annotations

import math
import os
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from podlt_mpi.compute.layout import Layout, device_of, host, pieces
from podlt_mpi.compute.losses import cross_entropy
from podlt_mpi.core import looks
from podlt_mpi.core.pairwise import PairwiseSum


def set_determinism(threads: int, exact: bool = True) -> None:
    """Same threads and deterministic kernels on every rank, so honest ranks agree bit for bit.

    exact mode: an op with no deterministic kernel raises (the job's probe turns that into bad
    input). tolerance mode: such an op only warns, since its rounding noise (~1e-7 relative) is
    far inside --rtol. TF32 stays off in both: its 1e-3 error is the size of the bf16 cheat that
    the tolerance exists to catch.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: cuBLAS
    torch.set_num_threads(threads)                                 # reads it once
    torch.use_deterministic_algorithms(True, warn_only=not exact)
    torch.backends.cudnn.benchmark = False  # autotuning may pick different kernels per rank
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@contextmanager
def fragment_rng(seed: int, device):
    """Every generator a model may draw from, seeded for one fragment, then put back as it was.

    The seed comes from the run's seed, the iteration and the fragment's lines (protocol.
    fragment_seed), never the rank: the checked worker, its controls, a recheck, the manager's
    referee and the audit's replay all draw the same dropout masks.
    """
    device = torch.device(device)
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the CPU generator and every CUDA device's
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def fragment(model: nn.Module, layout: Layout, x: torch.Tensor, y: torch.Tensor,
             seed: int, loss_fn=None) -> tuple:
    """(answer vector on the model's device, mean loss) for the lines x, y: the gradient of the
    fragment's mean loss (`loss_fn(output, y)`, losses.py; default cross-entropy), the float
    buffers the forward pass left and the counters' change.

    Runs in training mode under `fragment_rng(seed)` and puts the buffers back afterwards, so
    the model is as it was: a fake rank may compute again from the same state.
    """
    dev = device_of(model)
    saved = layout.snapshot()
    model.zero_grad(set_to_none=True)
    try:
        with fragment_rng(seed, dev):
            loss = (loss_fn or cross_entropy)(model(x.to(dev)), y.to(dev))
            loss.backward()
        answer = layout.answer(saved[len(layout.floats):])
    finally:
        layout.restore(saved)
    model.zero_grad(set_to_none=True)
    return answer, float(loss.detach())


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
             layout: Layout | None = None, loss_fn=None) -> tuple:
    """`fragment` with the answer as a host float32 array."""
    answer, loss = fragment(model, layout or Layout(model), x, y, seed, loss_fn)
    return host(answer), loss


def weighted_mean(vectors, counts, device="cpu") -> torch.Tensor:
    """sum(n_i v_i) / sum(n_i): the full-batch gradient over the union of the fragments, on
    `device` (vectors may be numpy or tensors anywhere).

    Summed in the order given (callers pass fragment order) so the result is reproducible.
    All counts 0 (every target ignored): zeros.
    """
    total = float(sum(counts))
    acc = torch.zeros(len(vectors[0]), dtype=torch.float32, device=device)
    for v, n in zip(vectors, counts):
        if not n:
            continue
        acc.add_(torch.as_tensor(v).to(device), alpha=n / total)
    return acc


def apply_update(model: nn.Module, opt: torch.optim.Optimizer, layout: Layout, answers, counts,
                 lr: float, clip: float = 0.0, lines=None) -> None:
    """The manager's step from the accepted fragments' answers (ledger formats 1 and 2; format 3
    folds them as they arrive, `Fold`):

    - the optimizer steps at rate `lr` on the gradients' mean weighted by `counts` (what each
      fragment's mean loss averages over, tasks.Task.weight), clipped first to L2 norm `clip`
      (0: no clipping);
    - float buffers become the mean of the fragments' buffers weighted by their `lines`
      (default: counts), computed as before + the mean change, so a buffer that no pass
      changes keeps its bits;
    - counters advance by the (lower) median of the fragments' changes: every honest pass makes
      the same change (one forward pass each, as single-process training makes one per step),
      and a minority of unchecked liars cannot move it.
    """
    dev = device_of(model)
    parts = [layout.split(torch.as_tensor(a).to(dev)) for a in answers]
    mean = weighted_mean([g for g, _, _ in parts], counts, dev)
    change = None
    if layout.n_float:
        before = _float_buffers(layout)
        change = weighted_mean([f - before for _, f, _ in parts],
                               counts if lines is None else lines, dev)
    optimizer_step(model, opt, layout, mean, change, [c for _, _, c in parts], lr, clip)


def _float_buffers(layout: Layout) -> torch.Tensor:
    return torch.cat([b.reshape(-1).float() for b in layout.float_buffers()])


def optimizer_step(model, opt, layout: Layout, mean, change, counters, lr: float,
                   clip: float) -> None:
    """The optimizer's step on the gradient `mean`, the float buffers moved by `change`, the
    counters by the median of `counters` (apply_update says why)."""
    for p, g in pieces(mean, layout.params):
        p.grad = g.clone()
    if clip:
        nn.utils.clip_grad_norm_(layout.params, clip)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        if layout.n_float:
            buffers = layout.float_buffers()
            after = torch.cat([b.reshape(-1).float() for b in buffers]) + change
            for b, v in pieces(after, buffers):
                b.copy_(v)
        if layout.n_count:
            step = torch.stack(counters).median(dim=0).values.round().long()
            for b, v in pieces(step, layout.counter_buffers()):
                b.add_(v.to(b.dtype))


class Fold:
    """Ledger format 3's update, built as the answers arrive so the manager keeps only a sum:
    the gradients' sum weighted by counts and the float buffers' changes weighted by lines, each
    accumulated in float32 in the order `add` is called (rules.fold_order), divided once by the
    totals when applied. Counter changes (a few integers per answer) are kept for the median."""

    def __init__(self, model: nn.Module, layout: Layout):
        self.model, self.layout, self.dev = model, layout, device_of(model)
        self.grad = torch.zeros(layout.n_grad, dtype=torch.float32, device=self.dev)
        self.before = _float_buffers(layout).to(self.dev) if layout.n_float else None
        self.change = torch.zeros_like(self.before) if layout.n_float else None
        self.counters, self.count, self.lines = [], 0, 0

    def add(self, answer, count: int, lines: int) -> None:
        g, f, c = self.layout.split(torch.as_tensor(answer).to(self.dev))
        if count:
            self.grad.add_(g, alpha=count)
        if self.change is not None:
            self.change.add_(f - self.before, alpha=lines)
        self.counters.append(c.clone())
        self.count, self.lines = self.count + count, self.lines + lines

    def apply(self, opt: torch.optim.Optimizer, lr: float, clip: float = 0.0) -> None:
        """The step, as apply_update takes it, from the folded sums. All counts 0: a zero
        gradient."""
        mean = self.grad / self.count if self.count else torch.zeros_like(self.grad)
        change = None if self.change is None else self.change / self.lines
        optimizer_step(self.model, opt, self.layout, mean, change, self.counters, lr, clip)


class TreeFold:
    """Ledger format 4's update: format 3's sums, each a pairwise tree over the block's worker
    fragments in line order (core/pairwise.py), so the order of the sum depends on the number
    of fragments alone, not on which were checked. Leaf i is count x gradient (absent when
    nothing counts) and lines x the float buffers' change; `set` them in any order, each once
    (None: the fragment is not applied). A partial sum absorbed into another gives its memory
    to the next leaf, so the tree allocates only as many vectors as it ever holds at once."""

    def __init__(self, model: nn.Module, layout: Layout, n: int):
        self.model, self.layout, self.dev = model, layout, device_of(model)
        self.grads, self.changes = _Tree(n), _Tree(n)
        self.before = _float_buffers(layout).to(self.dev) if layout.n_float else None
        self.counters, self.count, self.lines = [], 0, 0

    def set(self, i: int, answer, count: int = 0, lines: int = 0) -> None:
        if answer is None:
            self.grads.set(i, None)
            self.changes.set(i, None)
            return
        g, f, c = self.layout.split(torch.as_tensor(answer).to(self.dev))
        count, lines = int(count), int(lines)
        self.grads.set(i, self.grads.leaf(g, count) if count else None)
        self.changes.set(i, None if self.before is None else
                         self.changes.leaf(torch.sub(f, self.before), lines))
        self.counters.append(c.clone())
        self.count, self.lines = self.count + count, self.lines + lines

    def apply(self, opt: torch.optim.Optimizer, lr: float, clip: float = 0.0) -> None:
        """The step, as Fold.apply takes it, from the trees' sums."""
        step_from_sums(self.model, opt, self.layout, self.grads.result(), self.changes.result(),
                       self.counters, self.count, self.lines, lr, clip)


def step_from_sums(model, opt, layout: Layout, total, change, counters, count: int, lines: int,
                   lr: float, clip: float = 0.0) -> None:
    """The step from format 4's sums (TreeFold's, or the ranks' slices side by side): the
    gradients' tree divided once by the counted targets, the buffers' change by the lines."""
    mean = total / count if count and total is not None else \
        torch.zeros(layout.n_grad, dtype=torch.float32, device=device_of(model))
    change = None if change is None else change / lines
    optimizer_step(model, opt, layout, mean, change, counters, lr, clip)


class SliceSum:
    """One aggregator's share of TreeFold's sums (core/reduction.py): values [a, b) of the
    summed region (the gradient, then the float buffers' change) of every leaf, by the same
    float32 operations in the same tree. The operations are elementwise, so the slices side by
    side are TreeFold's sums bit for bit. `before`: the float buffers the changes are measured
    from (the whole vector, as TreeFold.before)."""

    def __init__(self, layout: Layout, n: int, a: int, b: int, before=None):
        g = layout.n_grad
        self.cut = max(0, min(b, g) - a)  # values of the slice in the gradient
        self.grads = _Tree(n) if self.cut else None
        self.changes = _Tree(n) if b - a > self.cut else None
        self.before = before[max(a, g) - g:b - g] if self.changes is not None else None

    def set(self, i: int, part, count: int = 0, lines: int = 0) -> None:
        """Leaf i's values [a, b) (None: the fragment is not applied)."""
        part = None if part is None else torch.as_tensor(part)
        if self.grads is not None:
            self.grads.set(i, self.grads.leaf(part[:self.cut], int(count))
                           if part is not None and count else None)
        if self.changes is not None:
            self.changes.set(i, None if part is None else
                             self.changes.leaf(torch.sub(part[self.cut:], self.before),
                                               int(lines)))

    def result(self) -> tuple:
        """(the gradient's part, the change's part) of the sums; None where absent. Once: the
        trees add in place."""
        return (self.grads.result() if self.grads is not None else None,
                self.changes.result() if self.changes is not None else None)

    def values(self) -> np.ndarray:
        """The result as the b - a float32 values a SUM carries (zeros where every leaf was
        absent: the manager knows from the table whether any counts); slice_parts inverts it."""
        grad, change = self.result()
        out = np.zeros(self.cut + (0 if self.changes is None else len(self.before)), np.float32)
        if grad is not None:
            out[:self.cut] = grad.numpy()
        if change is not None:
            out[self.cut:] = change.numpy()
        return out


def slice_sizes(layout: Layout, a: int, b: int, values, before) -> tuple:
    """What the reduction's look reads from one input of slice [a, b) (looks.slice_outliers):
    (finite, the gradient part's squared norm, the float buffers' change's squared norm), in
    float64. `before`: the float buffers the change is measured from (the whole vector)."""
    g = layout.n_grad
    cut = max(0, min(b, g) - a)
    part = torch.as_tensor(np.asarray(values)).double()
    change = part[cut:] - torch.as_tensor(before)[max(a, g) - g:b - g].double()
    grad, buffers = float(part[:cut].square().sum()), float(change.square().sum())
    return math.isfinite(grad) and math.isfinite(buffers), grad, buffers


def slice_parts(layout: Layout, a: int, b: int, values) -> tuple:
    """Slice [a, b)'s sum as a SUM carries it (b - a float32 values) in SliceSum.result's
    form: (gradient part, change part), None where the slice has none."""
    cut = max(0, min(b, layout.n_grad) - a)
    t = torch.from_numpy(np.ascontiguousarray(values, np.float32))
    return (t[:cut] if cut else None, t[cut:] if b - a > cut else None)


def joined(parts, n_grad: int, n_float: int) -> tuple:
    """(total, change) from the slices' (gradient part, change part) in slice order: None where
    every leaf was absent, as TreeFold's trees give."""
    def cat(pieces, n):
        pieces = [x for x in pieces if x is not None]
        if not n or not pieces:
            return None
        return torch.cat(pieces)
    return cat([g for g, _ in parts], n_grad), cat([c for _, c in parts], n_float)


class _Tree(PairwiseSum):
    """A PairwiseSum of float32 vectors, added in place, reusing the vectors it absorbs."""

    def __init__(self, n: int):
        super().__init__(n, self._add)
        self.free = []

    def leaf(self, v: torch.Tensor, weight) -> torch.Tensor:
        """weight x v, in a vector the tree no longer needs if it has one."""
        if self.free and self.free[-1].shape == v.shape:
            return torch.mul(v, weight, out=self.free.pop())
        return v * weight

    def _add(self, a, b):
        a.add_(b)
        self.free.append(b)
        return a


def answer_sizes(layout: Layout, answer, loss: float, before=None):
    """What looks.py reads from one answer: finiteness and its norms, in one pass over it.
    `before`: the float buffers the answer's change is measured from (TreeFold.before)."""
    g, f, c = layout.split(torch.as_tensor(answer))
    grad = float(torch.linalg.vector_norm(g)) if g.numel() else 0.0
    buffers = float(torch.linalg.vector_norm(f - before.to(f.device))) \
        if before is not None and f.numel() else 0.0
    # a non-finite value makes its part's norm non-finite; the counters are a few values
    finite = all(map(math.isfinite, (grad, buffers, loss))) and bool(torch.isfinite(c).all())
    return looks.Sizes(finite, grad, buffers)


def combined_loss(losses, counts) -> float:
    """The block's mean loss from the fragments' mean losses (NaN where nothing counts)."""
    total = sum(counts)
    return sum(v * n for v, n in zip(losses, counts) if n) / total if total else float("nan")


def make_optimizer(cfg, layout: Layout) -> torch.optim.Optimizer:
    """The manager's optimizer over the trainable parameters (--optimizer, --lr, --momentum,
    --nesterov, --weight-decay). The rate is set again before every step (rates.py)."""
    params, lr, wd = layout.params, cfg.lr, cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)
