"""The task's loss as torch computes it on a fragment, and its test figures. No MPI.

Every loss returns the fragment's mean (tasks.py says over what), so the manager's weighted
mean of the fragments' gradients is the gradient of the block's mean loss.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from podlt_mpi.compute.layout import device_of
from podlt_mpi.compute.outputs import scores
from podlt_mpi.compute.user_code import load_function
from podlt_mpi.core.tasks import Task, bits_per_byte


def cross_entropy(out: torch.Tensor, y: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the targets that count; class scores on the last axis.

    For one class per line this is torch's cross_entropy on [lines, classes], bit for bit what
    runs written before tasks existed computed. A fragment whose targets are all ignored has
    loss 0 and a zero gradient (weight 0 in the block's mean), not torch's 0/0.
    """
    out = out.float().reshape(-1, out.shape[-1])
    y = y.reshape(-1)
    if not bool((y != ignore).any()):
        return out.sum() * 0.0
    return nn.functional.cross_entropy(out, y, ignore_index=ignore)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every target value (the output reshaped to the targets')."""
    return nn.functional.mse_loss(out.float().reshape(y.shape), y.float())


def loss_function(task: Task):
    """(the model's output, y) -> the fragment's mean loss, for the task's --loss, on the
    output's scores (outputs.py)."""
    key = task.output_key
    if task.loss == "cross-entropy":
        ignore = task.ignore_index
        return lambda out, y: cross_entropy(scores(out, key), y, ignore)
    if task.loss == "mse":
        return lambda out, y: mse(scores(out, key), y)
    user = load_function(task.loss, "--loss")

    def users(out, y):
        loss = user(scores(out, key), y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"--loss {task.loss} must return a tensor of one value (the "
                             f"fragment's mean loss), it returned "
                             f"{list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        return loss.reshape(())
    return users


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: np.ndarray, y: np.ndarray,
             batch: int | None = None) -> dict:
    """The task's test figures (tasks.Task.figures) of the model, in eval mode, on x, y.

    test_loss: the mean over what the training loss averages (counted targets, target values,
    or lines for a user's loss); test_accuracy: argmax against the counted class targets, per
    position for sequences; test_bits_per_byte: the loss in bits, per byte of the source text.
    """
    dev, fn = device_of(model), loss_function(task)
    # 2,000 lines of one target; lines of many targets, 16,384 targets a batch
    batch = batch or (max(1, 16384 // math.prod(task.target_shape)) if task.per_position
                      else 2000)
    loss_sum = correct = counted = 0.0
    ce = task.loss == "cross-entropy"
    for s in range(0, len(y), batch):
        xb = torch.from_numpy(x[s:s + batch]).to(dev)
        yb = torch.from_numpy(y[s:s + batch]).to(dev)
        out = scores(model(xb), task.output_key)
        if ce:
            flat, targets = out.float().reshape(-1, out.shape[-1]), yb.reshape(-1)
            keep = targets != task.ignore_index
            loss_sum += float(nn.functional.cross_entropy(
                flat, targets, ignore_index=task.ignore_index, reduction="sum"))
            correct += int((flat.argmax(-1)[keep] == targets[keep]).sum())
            counted += int(keep.sum())
        elif task.loss == "mse":
            loss_sum += float(nn.functional.mse_loss(out.float().reshape(yb.shape), yb.float(),
                                                     reduction="sum"))
            counted += yb.numel()
        else:
            loss_sum += float(fn(out, yb)) * len(yb)
            counted += len(yb)
    loss = loss_sum / counted if counted else None
    figures = {"test_loss": loss}
    if ce:
        figures["test_accuracy"] = correct / counted if counted else None
    if "test_bits_per_byte" in task.figures():
        figures["test_bits_per_byte"] = None if loss is None else \
            bits_per_byte(loss, task.bytes_per_token)
    return figures
