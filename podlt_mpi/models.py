"""Model registry: built-in `mlp` and `cnn`, or a user's `module:function` factory."""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from .config import ConfigError


def mlp(input_shape, n_classes: int) -> nn.Module:
    """The MLP 256-128-100 of the Fashion-MNIST benchmark table, on the flattened input."""
    n_in = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 100), nn.ReLU(), nn.Linear(100, n_classes))


def cnn(input_shape, n_classes: int) -> nn.Module:
    """Two conv+pool layers, a 128-unit hidden layer and the class scores, for [channels,
    height, width] input. The hidden layer is worth 1.2 points of Fashion-MNIST test accuracy
    (0.9227 against 0.9108, 12 epochs, Adam with a drop at epoch 10). No dropout or batch norm:
    honest ranks must compute the same gradient from the same lines, and the manager's weights
    must be the whole model."""
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


BUILTIN = {"mlp": mlp, "cnn": cnn}


def load_function(spec: str, what: str):
    """Resolve "module:function", turning every way it can fail into a ConfigError."""
    if ":" not in spec:
        raise ConfigError(f"unknown {what} {spec!r}: expected one of {sorted(BUILTIN)} "
                          "or module:function" if what == "model" else
                          f"{what} must be module:function, got {spec!r}")
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise ConfigError(f"cannot import {what} module {mod_name!r}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{what} module {mod_name!r} has no function {fn_name!r}")
    return fn


def build(spec: str, input_shape, n_classes: int, seed: int) -> nn.Module:
    factory = BUILTIN.get(spec) or load_function(spec, "model")
    torch.manual_seed(seed)
    try:
        model = factory(tuple(input_shape), n_classes)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"model {spec!r} could not be built for input {list(input_shape)} "
                          f"and {n_classes} classes: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    with torch.no_grad():  # a dry run, so a shape mismatch is bad input, not a crash mid-training
        try:
            out = model(torch.zeros((2, *input_shape)))
        except RuntimeError as e:
            raise _failure(spec, "cpu", e, f"fails on input of shape {list(input_shape)}") from None
        except Exception as e:
            raise ConfigError(f"model {spec!r} fails on input of shape {list(input_shape)}: {e}") from None
    if tuple(out.shape) != (2, n_classes):
        raise ConfigError(f"model {spec!r} outputs shape {list(out.shape[1:])} per line, "
                          f"expected [{n_classes}] class scores")
    torch.manual_seed(seed)  # the dry run must not shift initial weights between specs
    return factory(tuple(input_shape), n_classes)


def check_gradient(model: nn.Module, spec: str, input_shape, device) -> None:
    """One forward and backward pass on `device` before training starts: a model with an op that
    has no deterministic kernel there (exact mode makes torch raise) or that fails on the device
    is bad input, reported before the first iteration rather than as a crash in it."""
    x = torch.zeros((2, *input_shape), device=device)
    try:
        out = model(x)
        nn.functional.cross_entropy(out, torch.zeros(2, dtype=torch.long, device=device)).backward()
    except RuntimeError as e:
        raise _failure(spec, device, e, "fails a gradient step") from None
    finally:
        model.zero_grad(set_to_none=True)


def _failure(spec: str, device, e: RuntimeError, what: str) -> ConfigError:
    first = str(e).strip().split("\n", 1)[0]
    if "deterministic" in first:
        op = first.split(", but you set", 1)[0]  # torch goes on about its options for a paragraph
        return ConfigError(f"model {spec!r} uses an operation with no deterministic kernel on "
                           f"{device} ({op}); --compare exact needs bit-identical results on "
                           "every rank: replace that layer, or use --compare tolerance")
    return ConfigError(f"model {spec!r} {what} on {device}: {first}")
