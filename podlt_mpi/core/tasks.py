"""What a run learns: the kinds of inputs and targets, the loss, and how fragments are weighed.
Pure (numpy only): the manager, the ranks, the audit and the tests share these rules.

A dataset's `x` holds float features or integer token ids, of any line shape; its `y` holds one
target per line (`[lines]`) or per position (`[lines, ...]`), integer classes or float values.

The manager combines fragments so that the step is the gradient of the block's mean loss, the
one single-process training computes over the whole block:
  - cross-entropy averages over counted targets (those not equal to --ignore-index), so a
    fragment weighs as many as it counts: sum(c_i g_i) / sum(c_i);
  - mse and a user's loss average over lines (every line has the same number of values), so a
    fragment weighs its lines.
Buffers (BatchNorm statistics) are weighed by lines in every task: every line goes through them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from podlt_mpi.core.errors import ConfigError


@dataclass(frozen=True)
class Task:
    inputs: str                 # "float" features or "tokens" (integer ids)
    targets: str                # "classes" (integers) or "values" (floats)
    target_shape: tuple         # one line's targets: () or (T,) or ...
    n_classes: int              # classes (and, for tokens in and classes out, the vocabulary)
    loss: str                   # "cross-entropy", "mse" or a user's "module:function"
    ignore_index: int = -100    # a target of this value does not count (cross-entropy)
    vocab: int = 0              # token inputs: ids lie in [0, vocab)
    bytes_per_token: float | None = None  # from the data file: turns nats into bits per byte
    output_key: str | None = None  # --output-key: where the scores are in the model's output

    @property
    def x_dtype(self):
        return np.int64 if self.inputs == "tokens" else np.float32

    @property
    def y_dtype(self):
        return np.int64 if self.targets == "classes" else np.float32

    @property
    def per_position(self) -> bool:
        return len(self.target_shape) > 0

    @property
    def counts_targets(self) -> bool:
        """Whether fragments weigh their counted targets (cross-entropy) or their lines."""
        return self.loss == "cross-entropy"

    def weight(self, y: np.ndarray) -> int:
        """What a fragment with targets `y` weighs in the block's mean (see the module doc)."""
        if self.counts_targets:
            return int(np.count_nonzero(np.asarray(y) != self.ignore_index))
        return len(y)

    def figures(self) -> tuple:
        """The test figures that mean something for this task, as summary keys."""
        out = ["test_loss"]
        if self.loss == "cross-entropy":
            out.append("test_accuracy")  # per position for sequences
            if self.language_model and self.bytes_per_token:
                out.append("test_bits_per_byte")
        return tuple(out)

    @property
    def language_model(self) -> bool:
        return self.inputs == "tokens" and self.targets == "classes" and self.per_position

    def output_shape(self, lines: int) -> tuple | None:
        """The model's output shape for `lines` lines, where the loss fixes it (None: a user's
        loss decides)."""
        if self.loss == "cross-entropy":
            return (lines, *self.target_shape, self.n_classes)
        if self.loss == "mse":
            return (lines, *self.target_shape)
        return None

    def to_meta(self) -> dict:
        return {**asdict(self), "target_shape": list(self.target_shape)}

    @classmethod
    def from_meta(cls, meta: dict) -> Task:
        """The task of a run from its config.json (runs without one: `classification`)."""
        t = meta.get("task")
        if t is None:
            return classification(meta["n_classes"])
        return cls(**{**t, "target_shape": tuple(t["target_shape"])})


def classification(n_classes: int = 0) -> Task:
    """The task of runs written before tasks existed, and the default where none is given:
    float features in, one class per line out, cross-entropy."""
    return Task("float", "classes", (), n_classes, "cross-entropy")


def choose_loss(spec: str, targets: str) -> str:
    """--loss resolved against the data's targets. Raises ConfigError."""
    if spec == "auto":
        return "cross-entropy" if targets == "classes" else "mse"
    if spec == "cross-entropy" and targets != "classes":
        raise ConfigError("--loss cross-entropy needs integer class targets, but the data's y "
                          "holds floats (use --loss mse, or store the classes as integers)")
    return spec


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    return loss_nats / math.log(2) / bytes_per_token


# The test figures a summary may hold, in the order they are shown, with their names.
FIGURES = {"test_loss": "loss", "test_accuracy": "accuracy", "test_bits_per_byte": "bits per byte"}


def figures_text(values: dict) -> str | None:
    """"loss 0.4321, accuracy 0.8123" for the figures in `values` (None: none evaluated)."""
    shown = [f"{name} {values[k]:.4f}" for k, name in FIGURES.items()
             if values.get(k) is not None]
    return ", ".join(shown) or None
