"""Single-process training written out for the tests, to hold the job's final model against.

It computes every fragment a run applied the way the README says a rank does (training mode,
the torch, numpy and random generators seeded with the fragment's seed, the buffers as the
manager sent them, the fragment's mean loss, zeros for parameters without a gradient) and takes
the step the README says the manager takes: the gradients weighted by what each fragment's loss
averages over (counted targets for cross-entropy, lines otherwise), the buffers by lines, summed
in the manager's order with the same float32 operations on vectors of the same length, so the
result can be compared bit for bit. Ledger format 3 (docs/ledger.md) sums weight x vector over
the unchecked fragments in line order, then the checked ones, and divides once; format 4 sums
the same products by a pairwise tree over the block's worker fragments in line order (the first
2^k of n fragments, 2^k < n the largest such, then the rest, each summed alike; a fragment not
applied is left out of its pair) and divides once; format 7's ranks' reduction sums the same
tree slice by slice (S slices of the gradient-then-change vector, cut at multiples of 16
values: slice j starts at 16 * floor(ceil(n / 16) * j / S)), each slice's pieces of the
leaves added as the whole tree adds them, and the slices put side by side; formats 1 and 2
add weight/total x vector in line order. The loss takes the model's scores: the output itself
if a tensor, else its --output-key item or attribute (an index for a tuple), else its
"logits", else a tuple's first element (docs/usage.md). It shares no code with the job but the model's factory, the
seed's formula and the learning-rate formula.
"""
import importlib
import random

import h5py
import numpy as np
import torch
from torch import nn

from podlt_mpi.compute import models
from podlt_mpi.core import rates
from podlt_mpi.core.config import model_kwargs
from podlt_mpi.core.tasks import Task
from podlt_mpi.mpi import messages


def flat(tensors):
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def scores(out, key):
    """The tensor the loss takes from a model's output, written from docs/usage.md."""
    if isinstance(out, torch.Tensor):
        return out
    if key is not None:
        if isinstance(out, dict):
            return out[key]
        return out[int(key)] if isinstance(out, (tuple, list)) else getattr(out, key)
    if isinstance(out, dict):
        return out["logits"]
    return out[0] if isinstance(out, (tuple, list)) else out.logits


def objective(cfg):
    """(loss(output, y), weight(y)) of the run's task, written from the README."""
    task = cfg.get("task") or {"loss": "cross-entropy", "ignore_index": -100}
    loss, weight = _loss(task)
    key = task.get("output_key")
    return (lambda out, y: loss(scores(out, key), y)), weight


def _loss(task):
    if task["loss"] == "cross-entropy":
        ignore = task["ignore_index"]

        def ce(out, y):
            return nn.functional.cross_entropy(out.float().reshape(-1, out.shape[-1]),
                                               y.reshape(-1), ignore_index=ignore)
        return ce, lambda y: int((y != ignore).sum())
    if task["loss"] == "mse":
        return (lambda out, y: nn.functional.mse_loss(out.float().reshape(y.shape), y.float()),
                len)
    module, _, name = task["loss"].partition(":")
    return getattr(importlib.import_module(module), name), len


def tree_sum(leaves):
    """Format 4's sum, written from docs/ledger.md: None stands for a fragment not applied."""
    if len(leaves) == 1:
        return leaves[0]
    half = 1
    while 2 * half < len(leaves):
        half *= 2
    left, right = tree_sum(leaves[:half]), tree_sum(leaves[half:])
    if left is None or right is None:
        return right if left is None else left
    return left + right


def sliced_tree_sum(grads, changes, n_slices):
    """Format 7's reduction, written from docs/ledger.md: the tree over the leaves, slice by
    slice of the vector [gradient, change], each slice's pieces summed alike; None stands for a
    leaf's absent part."""
    n_grad = next(g.numel() for g in grads if g is not None) if any(
        g is not None for g in grads) else 0
    n_change = next((c.numel() for c in changes if c is not None), 0)
    n = n_grad + n_change if n_grad else None
    if n is None:  # no leaf counts: only the buffers' change is summed
        return None, tree_sum(changes) if n_change else None
    blocks = -(-n // 16)
    cuts = [min(n, 16 * (blocks * j // n_slices)) for j in range(n_slices)] + [n]
    g_out, c_out = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a < n_grad:
            g_out.append(tree_sum([None if g is None else g[a:min(b, n_grad)] for g in grads]))
        if b > n_grad and n_change:
            lo, hi = max(a, n_grad) - n_grad, b - n_grad
            c_out.append(tree_sum([None if c is None else c[lo:hi] for c in changes]))
    return torch.cat(g_out), torch.cat(c_out) if c_out else None


def train(model, opt, x, y, records, cfg, total):
    """Replay `records` (the run's ledger) on `model` with `opt`; x, y: the whole training file."""
    loss_of, weight_of = objective(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for rec in records:
        it, applied = rec["iteration"], rec["applied"]
        if not applied:
            continue
        buffers = dict(model.named_buffers())
        floats = [n for n, b in buffers.items() if b.is_floating_point()]
        counters = [n for n, b in buffers.items()
                    if not b.is_floating_point() and b.dtype != torch.bool]
        before = {n: b.detach().clone() for n, b in buffers.items()}
        n_lines = sum(e - s for s, e in applied)
        n_weight = sum(weight_of(y[s:e]) for s, e in applied)
        grad_sum = buf_sum = None
        steps = []
        folded = rec.get("format", 1) >= 3
        tree = rec.get("format", 1) >= 4
        leaves = {}  # format 4: lines -> (weight x gradient or None, lines x buffers' change)
        if folded and not tree:  # the unchecked fragments as they streamed in, then the checked ones
            checked = [c["lines"] for c in [rec["check"], *rec.get("extra_checks", [])] if c]
            applied = ([f for f in applied if f not in checked] +
                       [f for f in applied if f in checked])
        for s, e in applied:
            for n in before:
                buffers[n].data.copy_(before[n])
            seed = messages.fragment_seed(cfg["seed"], it, s, e)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            model.zero_grad(set_to_none=True)
            out = model(torch.from_numpy(x[s:e]))
            loss_of(out, torch.from_numpy(y[s:e])).backward()
            g = flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
            grad_sum = torch.zeros_like(g) if grad_sum is None else grad_sum
            w = weight_of(y[s:e])
            change = (flat([buffers[n] for n in floats]) - flat([before[n] for n in floats])
                      if floats else None)
            if tree:
                leaves[(s, e)] = (g * w if w else None,
                                  change * (e - s) if floats else None)
            elif w:
                grad_sum.add_(g, alpha=w if folded else w / n_weight)
            if floats and not tree:
                buf_sum = torch.zeros_like(change) if buf_sum is None else buf_sum
                buf_sum.add_(change, alpha=(e - s) if folded else (e - s) / n_lines)
            steps.append([int(buffers[n]) - int(before[n]) for n in counters])
        for n in before:
            buffers[n].data.copy_(before[n])
        if tree:  # every worker's fragment is a leaf, in line order
            fragments = [tuple(a["lines"]) for a in rec["assignments"] if a["role"] == "worker"]
            got = [leaves.get(f, (None, None)) for f in fragments]
            if rec.get("reduction"):  # the ranks summed it, slice by slice
                total_grad, buf_sum = sliced_tree_sum([g for g, _ in got], [c for _, c in got],
                                                      rec["reduction"]["slices"])
            else:
                total_grad = tree_sum([g for g, _ in got])
                buf_sum = tree_sum([c for _, c in got]) if floats else None
            grad_sum = total_grad if total_grad is not None else torch.zeros_like(grad_sum)
        if folded:  # one division by the totals
            grad_sum = grad_sum / n_weight if n_weight else torch.zeros_like(grad_sum)
            buf_sum = None if buf_sum is None else buf_sum / n_lines
        i = 0
        for p in params:
            p.grad = grad_sum[i:i + p.numel()].view_as(p).clone()
            i += p.numel()
        if cfg.get("clip_grad_norm"):
            nn.utils.clip_grad_norm_(params, cfg["clip_grad_norm"])
        for group in opt.param_groups:
            group["lr"] = rates.learning_rate(Cfg(cfg), it, rec["epoch"], total)
        opt.step()
        if floats:
            new = flat([before[n] for n in floats]) + buf_sum
            i = 0
            for n in floats:
                b = buffers[n]
                b.data.copy_(new[i:i + b.numel()].view_as(b))
                i += b.numel()
        for k, n in enumerate(counters):  # every fragment's pass counts once: all agree
            assert len({st[k] for st in steps}) == 1
            buffers[n].data.add_(steps[0][k])
    return model


def assert_matches(out, data_path, cfg, ledger, total=None):
    """model_final.pt (weights and buffers) equals single_process.train's, bit for bit."""
    with h5py.File(data_path) as f:
        x, y = f["x"][:], f["y"][:]
    x = x.astype(np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32)
    y = y.astype(np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32)
    torch.set_num_threads(cfg["threads"])
    model = models.build(cfg["model"], cfg["line_shape"], cfg["n_classes"], cfg["seed"],
                         Task.from_meta(cfg), model_kwargs(cfg.get("model_args", "")))
    model.load_state_dict(torch.load(out / "model_init.pt", weights_only=True))
    params = [p for p in model.parameters() if p.requires_grad]
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg.get("weight_decay", 0.0)
    opt = (torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd,
                           nesterov=cfg.get("nesterov", False)) if name == "sgd" else
           torch.optim.AdamW(params, lr=lr, weight_decay=wd) if name == "adamw" else
           torch.optim.Adam(params, lr=lr, weight_decay=wd))
    train(model, opt, x, y, ledger, cfg, total or len(ledger))
    final = torch.load(out / "model_final.pt", weights_only=True)
    mine = model.state_dict()
    assert final.keys() == mine.keys()
    for k, v in mine.items():
        assert final[k].dtype == v.dtype and torch.equal(final[k], v), k


class Cfg:
    """A run's config.json as attributes, for rates.learning_rate."""

    def __init__(self, d):
        self.__dict__.update(d)
