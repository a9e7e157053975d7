"""The model tried on this rank's device before iteration 0: a model that cannot train there,
or cannot train the same way twice, is bad input reported at start-up, not a crash or a stream of
disputes in the run."""
from __future__ import annotations

import math

import torch
from torch import nn

from podlt_mpi.compute import losses, training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.compute.models import dummy_input, dummy_targets, failure
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task, classification


def probe(model: nn.Module, spec: str, input_shape, n_classes: int, device, lines: int,
          exact: bool, task: Task | None = None) -> bool:
    """Training passes over the same `lines` random lines on `device` before training starts:
    a model that fails there, keeps a tensor on another device, uses an op with no deterministic
    kernel (exact mode makes torch raise) or gives two different answers under one seed (exact
    mode) is bad input, reported before the first iteration rather than as a crash or a stream
    of disputes in it. `lines`: the smallest fragment the run will send (a BatchNorm layer
    cannot train on one line). The model is left as it was.

    Returns whether the model draws random numbers (another seed gives another answer)."""
    device = torch.device(device)
    task = task or classification(n_classes)
    loss_fn = losses.loss_function(task)
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.device != device:
            raise ConfigError(f"model {spec!r} keeps {name!r} on {t.device}, but this rank "
                              f"computes on {device}: register it as a parameter or buffer, so "
                              "that .to(device) moves it")
    g = torch.Generator().manual_seed(0)
    x = dummy_input(task, input_shape, lines, g)
    y = (torch.arange(lines) % n_classes if task.target_shape == () and task.targets == "classes"
         else dummy_targets(task, lines, g))
    layout = Layout(model)
    answers = []
    for seed in (12345, 12345, 54321) if exact else (12345, 54321):
        try:
            answer, loss = training.gradient(model, x, y, seed, layout, loss_fn)
        except Exception as e:  # the user's forward, loss or backward may fail in any way
            raise failure(spec, device, e, f"fails a training pass on {lines} line(s)") from None
        if not math.isfinite(loss):
            raise ConfigError(f"model {spec!r} with --loss {task.loss} gives a non-finite loss "
                              f"({loss}) on {lines} random line(s)")
        answers.append(answer.tobytes())
    if exact and answers[0] != answers[1]:
        raise ConfigError(f"model {spec!r} is not deterministic on {device}: two passes over the "
                          "same lines under the same seed gave different gradients (random draws "
                          "outside torch, numpy and random, or the clock?); --compare exact needs "
                          "bit-identical results on every rank: fix the model, or use --compare "
                          "tolerance")
    return answers[0] != answers[-1]
