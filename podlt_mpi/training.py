"""The computation every rank does: the gradient of the mean loss on a fragment. No MPI.

Weights and gradients travel as one flat float32 vector in `model.parameters()` order.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn


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


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def host(t: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy array of t (a copy from a GPU; no copy on the CPU)."""
    return t.detach().reshape(-1).cpu().numpy().astype(np.float32, copy=False)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def get_flat(model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return host(flat_weights(model))


def flat_weights(model: nn.Module) -> torch.Tensor:
    """The weights as one flat tensor on the model's device."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat(model: nn.Module, flat) -> None:
    """Load a flat vector (numpy, or a tensor on any device) into the model's parameters."""
    t = torch.as_tensor(flat).to(device_of(model))
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(t[i:i + p.numel()].view_as(p))
            i += p.numel()


def set_flat_grad(model: nn.Module, flat: torch.Tensor) -> None:
    i = 0
    for p in model.parameters():
        p.grad = flat[i:i + p.numel()].view_as(p).clone()
        i += p.numel()


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """(flat float32 gradient of the mean cross-entropy as numpy, the loss) on x, y."""
    flat, loss = gradient_tensor(model, x, y)
    return host(flat), loss


def gradient_tensor(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """(flat gradient on the model's device, the loss); x and y go to that device first."""
    dev = device_of(model)
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
    loss.backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return flat.detach(), float(loss.detach())


def weighted_mean(grads, counts, device="cpu") -> torch.Tensor:
    """sum(n_i g_i) / sum(n_i): the full-batch gradient over the union of the fragments, on
    `device` (gradients may be numpy or tensors anywhere).

    Summed in the order given (callers pass fragment order) so the result is reproducible.
    """
    total = float(sum(counts))
    acc = torch.zeros(len(grads[0]), dtype=torch.float32, device=device)
    for g, n in zip(grads, counts):
        acc.add_(torch.as_tensor(g).to(device), alpha=n / total)
    return acc


def learning_rate(lr: float, drops, gamma: float, epoch: int) -> float:
    """--lr times --lr-gamma for every --lr-drops epoch reached: a function of the epoch alone,
    so a resumed run and the audit's replay step with the same rate."""
    return lr * gamma ** sum(1 for d in drops if epoch >= d)


def apply_update(model: nn.Module, opt: torch.optim.Optimizer, grads, counts, lr: float) -> None:
    """One optimizer step, at rate lr, on the line-weighted mean of the accepted fragments'
    gradients."""
    for group in opt.param_groups:
        group["lr"] = lr
    set_flat_grad(model, weighted_mean(grads, counts, device_of(model)))
    opt.step()


def combined_loss(losses, counts) -> float:
    """The block's mean loss from the fragments' mean losses."""
    return sum(v * n for v, n in zip(losses, counts)) / sum(counts)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 2000) -> tuple:
    """(mean loss, accuracy) of the model on x, y."""
    loss_sum, correct, dev = 0.0, 0, device_of(model)
    for s in range(0, len(y), batch):
        xb = torch.from_numpy(x[s:s + batch]).to(dev)
        yb = torch.from_numpy(y[s:s + batch]).to(dev)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def make_optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr)
