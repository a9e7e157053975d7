"""What of a model's output the loss takes: the scores (docs/usage.md, "What a model returns").

Models as people bring them return more than a tensor: Hugging Face `transformers` models a
ModelOutput (a dict with attributes) holding `logits`, others a dict, or a tuple whose first
element is the scores. The rule, in this order:
  - a tensor: itself;
  - with --output-key NAME: the output's item NAME (a dict), attribute NAME, or element NAME
    (a tuple or list, NAME a number);
  - a dict holding "logits", or an object with a `logits` attribute: that;
  - a tuple or list whose first element is a tensor: that element.
Anything else is bad input, named with what the model returned.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task

DEFAULT_KEY = "logits"


def scores(out, key: str | None = None, spec: str = "the model"):
    """The tensor the loss takes from the model's output `out`. Raises ConfigError."""
    if isinstance(out, torch.Tensor):
        return out
    found = _pick(out, key) if key else _default(out)
    if isinstance(found, torch.Tensor):
        return found
    what = type(out).__name__
    if key:
        got = "nothing" if found is None else type(found).__name__
        raise ConfigError(f"model {spec} returns {what}, whose {key!r} is {got}, not a tensor")
    raise ConfigError(f"model {spec} returns {what}, not a tensor, a dict or object with "
                      f"'logits', or a tuple starting with a tensor: name the scores with "
                      f"--output-key NAME")


def _pick(out, key: str):
    if isinstance(out, Mapping):
        return out.get(key)
    if isinstance(out, (tuple, list)) and key.isdigit():
        return out[int(key)] if int(key) < len(out) else None
    return getattr(out, key, None)


def _default(out):
    if isinstance(out, Mapping):  # before the attribute: a ModelOutput is a dict too
        return out.get(DEFAULT_KEY)
    if isinstance(out, (tuple, list)):
        return out[0] if out else None
    return getattr(out, DEFAULT_KEY, None)


def check_output(task: Task, out, lines: int, spec: str) -> None:
    """A model whose scores the loss cannot take is bad input (ConfigError)."""
    out = scores(out, task.output_key, repr(spec))
    want = task.output_shape(lines)
    if want is None:
        return
    got = tuple(out.shape)
    fits = got == want if task.loss == "cross-entropy" else math.prod(got) == math.prod(want)
    if not fits:
        what = ("class scores" if task.loss == "cross-entropy" else "values (mse)")
        raise ConfigError(f"model {spec!r} outputs {list(got[1:])} per line, expected "
                          f"{list(want[1:])} {what}")
