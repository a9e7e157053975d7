"""Fake behaviours, for demonstration and tests: what a cheating rank sends instead of its answer.

A fake rank follows the protocol in every other way; only the vector it returns changes (the
gradient and the buffers, layout.py). Modes that compute something else (lazy, label-flip,
mimic, alie, lowprec) compute it under the fragment's own seed, as an honest rank would.
"""
from __future__ import annotations

import numpy as np
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.compute.losses import loss_function
from podlt_mpi.compute.user_code import load_function
from podlt_mpi.core.config import RunConfig, fake_modes
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task


class Faker:
    """Decides, per iteration, whether this rank cheats and what it sends."""

    def __init__(self, cfg: RunConfig, rank: int, layout: Layout | None = None,
                 task: Task | None = None):
        self.rank = rank
        self.task = task  # None: features in, one class per line, cross-entropy
        self.loss_fn = loss_function(task) if task is not None else None
        self.mode = fake_modes(cfg.fake_mode, cfg.fake_ranks).get(rank)
        self.layout = layout
        if self.mode == "buffers" and layout is not None and not layout.n_float:
            raise ConfigError(f"--fake-mode buffers poisons float buffers, but model "
                              f"{cfg.model!r} has none (rank {rank})")
        self.active = self.mode is not None
        self.start, self.prob, self.seed = cfg.fake_from, cfg.fake_prob, cfg.seed
        self.plugin = load_function(cfg.fault_plugin, "--fault-plugin") if cfg.fault_plugin else None
        self._last = None  # what it sent last time, for "stale"
        self._data = (cfg.data_path, cfg.x_key, cfg.y_key)  # "mimic" reads other lines

    def cheats(self, iteration: int) -> bool:
        if not self.active or iteration < self.start:
            return False
        if self.prob >= 1:
            return True
        return bool(self._rng(iteration, 1).random() < self.prob)

    def _rng(self, iteration: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, iteration, purpose])

    def send(self, grad: np.ndarray, iteration: int, model, x: torch.Tensor, y: torch.Tensor,
             seed: int = 0) -> np.ndarray:
        """The vector to send: the honest answer `grad`, or a fake one in this iteration.
        `seed`: the fragment's (protocol.fragment_seed), for modes that compute again."""
        out = grad
        if self.cheats(iteration):
            layout = self.layout or Layout(model)

            def compute(m, xs, ys):  # an honest pass of `m` over other lines or labels
                return training.gradient(m, xs, ys, seed, layout if m is model else None,
                                         self.loss_fn)[0]
            out = self._fake(grad, iteration, model, x, y, compute, layout)
        self._last = out
        return out

    def _fake(self, grad, iteration, model, x, y, compute, layout) -> np.ndarray:
        if self.plugin is not None:
            t = self.plugin(torch.from_numpy(grad.copy()).to(x.device), iteration=iteration,
                            rank=self.rank, x=x, y=y, model=model)
            out = host(torch.as_tensor(t).to(torch.float32))
            if out.shape != grad.shape:
                raise ValueError(f"--fault-plugin returned {out.size} values, the gradient has {grad.size}")
            return np.ascontiguousarray(out)
        m = self.mode
        if m == "zero":
            return np.zeros_like(grad)
        if m == "sign-flip":
            return -grad
        if m == "scaled":
            return grad * np.float32(10)
        if m == "random":
            noise = self._rng(iteration, 2).standard_normal(grad.size).astype(np.float32)
            return noise * np.float32(np.linalg.norm(grad) / max(np.linalg.norm(noise), 1e-30))
        if m == "noise":  # relative L2 noise 1e-3: well above float noise, far below a wrong result
            noise = self._rng(iteration, 2).standard_normal(grad.size).astype(np.float32)
            return grad + noise * np.float32(1e-3 * np.linalg.norm(grad) / np.linalg.norm(noise))
        if m == "stale":
            return self._last if self._last is not None else grad
        if m == "lazy":
            half = max(1, len(y) // 2)
            return compute(model, x[:half], y[:half])
        if m == "lowprec":
            return _bf16_answer(model, x, y, compute)
        if m == "alie":  # "a little is enough": a shift of one spread, coordinate by coordinate
            return grad - _spread(model, x, y, compute)
        if m == "ipm":  # inner product manipulation: a small step against the true gradient
            return grad * np.float32(-0.1)
        if m == "collude":  # every colluder sends the same vector, whatever lines it holds
            same = np.random.default_rng([self.seed, iteration, 77]).standard_normal(grad.size)
            return (same * 1e-2).astype(np.float32)
        if m == "label-flip":  # honest computation on poisoned targets
            return compute(model, x, self._flipped(model, x, y))
        if m == "mimic":  # an honest-looking gradient copied from other lines of the data
            return self._mimic(iteration, model, len(y), x.shape[1:], compute)
        if m == "buffers":  # an honest gradient, with statistics that would wreck inference
            out = grad.copy()
            g, f = layout.n_grad, layout.n_grad + layout.n_float
            out[g:f] = out[g:f] * np.float32(2) + np.float32(1)
            return out
        raise ValueError(f"unknown fake mode {m!r}")

    def _flipped(self, model, x, y) -> torch.Tensor:
        """label-flip's targets: class k becomes C-1-k (ignored positions stay ignored); float
        targets change sign."""
        t = self.task
        if t is None:
            return _classes(model, x) - 1 - y
        if t.targets == "values":
            return -y
        return torch.where(y == t.ignore_index, y, t.n_classes - 1 - y)

    def _mimic(self, iteration, model, lines, shape, compute) -> np.ndarray:
        from podlt_mpi.io.data import Reader
        path, xk, yk = self._data
        reader = Reader(path, xk, yk)
        try:
            n = reader.lines
            start = int(self._rng(iteration, 3).integers(max(1, n - lines)))
            x, y = reader.read(start, start + lines)
        finally:
            reader.close()
        return compute(model, torch.from_numpy(x).view(len(y), *shape),
                       torch.from_numpy(y))  # fragment() moves them to the model's device


def _classes(model, x) -> int:
    """The number of class scores, from a forward pass that changes nothing (eval mode)."""
    model.eval()
    try:
        with torch.no_grad():
            return model(x[:1]).shape[1]
    finally:
        model.train()


def _spread(model, x, y, compute, parts: int = 4) -> np.ndarray:
    """Per-coordinate standard deviation of the answer over parts of the fragment."""
    k = max(1, min(parts, len(y)))
    grads = [compute(model, xs, ys)
             for xs, ys in zip(torch.tensor_split(x, k), torch.tensor_split(y, k), strict=True)]
    return np.std(np.stack(grads), axis=0).astype(np.float32) if k > 1 else np.abs(grads[0])


def _bf16_answer(model, x, y, compute) -> np.ndarray:
    """The answer computed in bfloat16: cheaper, and wrong by about 1e-3."""
    import copy
    cheap = copy.deepcopy(model).to(torch.bfloat16)
    return compute(cheap, x.to(torch.bfloat16) if x.is_floating_point() else x, y)
