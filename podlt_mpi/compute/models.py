"""Model registry: built-in `mlp`, `cnn` and `gpt`, or a user's `module:function` factory."""
from __future__ import annotations

import math

import torch
from torch import nn

from podlt_mpi.compute.gpt import gpt
from podlt_mpi.compute.outputs import check_output
from podlt_mpi.compute.user_code import load_function
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task, classification


def mlp(input_shape, n_classes: int) -> nn.Module:
    """The MLP 256-128-100 of the Fashion-MNIST benchmark table, on the flattened input."""
    n_in = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 100), nn.ReLU(), nn.Linear(100, n_classes))


def cnn(input_shape, n_classes: int) -> nn.Module:
    """Two conv+pool layers, a 128-unit hidden layer and the class scores, for [channels,
    height, width] input. The hidden layer gains Fashion-MNIST test accuracy over a linear head
    (measured: benchmarks/RESULTS.md, "Fashion-MNIST accuracy on 8 ranks (issue 6)"). No dropout
    or batch norm, so that its published numbers stay comparable; users' models may have both
    (layout.py)."""
    if len(input_shape) != 3:
        raise ConfigError(f"--model cnn needs image-shaped input [channels, height, width], "
                          f"the data has lines of shape {list(input_shape)}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ConfigError(f"--model cnn needs images of at least 4x4, the data has {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, n_classes))


BUILTIN = {"mlp": mlp, "cnn": cnn, "gpt": gpt}


def dummy_input(task: Task, input_shape, lines: int, generator=None) -> torch.Tensor:
    """`lines` lines of the task's kind of input: random features, or token ids in range."""
    if task.inputs == "tokens":
        return torch.randint(0, max(task.vocab, 1), (lines, *input_shape), generator=generator)
    return torch.randn((lines, *input_shape), generator=generator)


def dummy_targets(task: Task, lines: int, generator=None) -> torch.Tensor:
    shape = (lines, *task.target_shape)
    if task.targets == "classes":
        return torch.randint(0, max(task.n_classes, 1), shape, generator=generator)
    return torch.randn(shape, generator=generator)


def build(spec: str, input_shape, n_classes: int, seed: int, task: Task | None = None,
          args: dict | None = None) -> nn.Module:
    """The model `spec` names, with weights drawn from `seed` and the factory's keyword
    arguments `args` (--model-args). Every way a user's factory or model can fail here is bad
    input (ConfigError), named with the model and the cause."""
    task = task or classification(n_classes)
    if spec == "gpt" and not (task.inputs == "tokens" and task.targets == "classes"):
        raise ConfigError("--model gpt reads token ids and predicts classes: the data's x and y "
                          "must both be integers")
    factory = BUILTIN.get(spec) or load_function(spec, "model", BUILTIN)
    model = _construct(factory, spec, input_shape, n_classes, seed, args)
    with torch.no_grad():  # a dry run, so a shape mismatch is bad input, not a crash mid-training
        try:
            out = model(dummy_input(task, input_shape, 2, torch.Generator().manual_seed(0)))
        except Exception as e:  # the user's forward may fail in any way
            raise failure(spec, "cpu", e, f"fails on input of shape {list(input_shape)}") from None
    check_output(task, out, 2, spec)
    # built again: the dry run moved BatchNorm statistics, and must not shift initial weights
    return _construct(factory, spec, input_shape, n_classes, seed, args)


def _construct(factory, spec, input_shape, n_classes, seed, args=None) -> nn.Module:
    torch.manual_seed(seed)
    try:
        model = factory(tuple(input_shape), n_classes, **(args or {}))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"model {spec!r} could not be built for input {list(input_shape)} "
                          f"and {n_classes} classes: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    params = list(model.named_parameters())
    if not any(p.requires_grad for _, p in params):
        raise ConfigError(f"model {spec!r} has no trainable parameters (requires_grad=True)")
    odd = next((n for n, p in params if p.dtype not in FLOAT_TYPES), None)
    if odd:
        raise ConfigError(f"model {spec!r} has parameter {odd!r} of type "
                          f"{dict(params)[odd].dtype}; parameters travel as float32, so they "
                          "must be float32, float16 or bfloat16")
    model.train()
    return model


FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def place(model: nn.Module, spec: str, device) -> nn.Module:
    """The model moved to `device`; a model that cannot move is bad input."""
    try:
        return model.to(device)
    except Exception as e:  # a tensor on the meta device, a user's _apply...
        raise ConfigError(f"model {spec!r} cannot move to {device}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().split("\n", 1)[0]
    return text or type(e).__name__


def failure(spec: str, device, e: Exception, what: str) -> ConfigError:
    first = _first_line(e)
    if "deterministic" in first:
        op = first.split(", but you set", 1)[0]  # torch goes on about its options for a paragraph
        return ConfigError(f"model {spec!r} uses an operation with no deterministic kernel on "
                           f"{device} ({op}); --compare exact needs bit-identical results on "
                           "every rank: replace that layer, or use --compare tolerance")
    return ConfigError(f"model {spec!r} {what} on {device}: {first}")
