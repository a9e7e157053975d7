"""Fake behaviours, for demonstration and tests: what a cheating rank sends instead of its gradient.

A fake rank follows the protocol in every other way; only the vector it returns changes.
"""
from __future__ import annotations

import numpy as np
import torch

from . import training
from .config import RunConfig
from .models import load_function


class Faker:
    """Decides, per iteration, whether this rank cheats and what it sends."""

    def __init__(self, cfg: RunConfig, rank: int):
        self.rank = rank
        self.mode = cfg.fake_mode
        self.active = rank in cfg.fake_ranks
        self.start, self.prob, self.seed = cfg.fake_from, cfg.fake_prob, cfg.seed
        self.plugin = load_function(cfg.fault_plugin, "--fault-plugin") if cfg.fault_plugin else None
        self._last = None  # what it sent last time, for "stale"

    def cheats(self, iteration: int) -> bool:
        if not self.active or iteration < self.start:
            return False
        if self.prob >= 1:
            return True
        return bool(self._rng(iteration, 1).random() < self.prob)

    def _rng(self, iteration: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, iteration, purpose])

    def send(self, grad: np.ndarray, iteration: int, model, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """The vector to send: the honest gradient, or a fake one in this iteration."""
        out = grad
        if self.cheats(iteration):
            out = self._fake(grad, iteration, model, x, y)
        self._last = out
        return out

    def _fake(self, grad, iteration, model, x, y) -> np.ndarray:
        if self.plugin is not None:
            t = self.plugin(torch.from_numpy(grad.copy()), iteration=iteration, rank=self.rank,
                            x=x, y=y, model=model)
            out = torch.as_tensor(t).detach().reshape(-1).to(torch.float32).numpy()
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
            return training.gradient(model, x[:half], y[:half])[0]
        if m == "lowprec":
            return _bf16_gradient(model, x, y)
        raise ValueError(f"unknown fake mode {m!r}")


def _bf16_gradient(model, x, y) -> np.ndarray:
    """The gradient computed in bfloat16: cheaper, and wrong by about 1e-3."""
    import copy
    cheap = copy.deepcopy(model).to(torch.bfloat16)
    cheap.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(cheap(x.to(torch.bfloat16)).float(), y)
    loss.backward()
    return torch.cat([p.grad.reshape(-1).float() for p in cheap.parameters()]).numpy()
