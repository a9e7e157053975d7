"""HDF5 input: validation, block reads, and `prepare synthetic`. No MPI.

Layout (DESIGN.md): datasets `x` (float32, [n, ...]) and `y` (int64, [n]) at the root.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from . import atomic
from .config import ConfigError, DEFAULT_DATA, DEFAULT_TEST_DATA, RunConfig

SCAN_LINES = 8192  # validation reads the file in slices of this many lines


@dataclass
class Split:
    """Lines [start, stop) of one HDF5 file."""
    path: str
    start: int
    stop: int

    def __len__(self):
        return self.stop - self.start


def _open(path: str, role: str) -> h5py.File:
    if not os.path.exists(path):
        raise ConfigError(f"{role} file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ConfigError(f"{role} file {path} is not a readable HDF5 file ({e})") from None


def first_nonfinite_line(x: np.ndarray) -> int | None:
    """Index of the first line of x holding a NaN or an infinity."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(1)
    return int(np.argmax(bad)) if bad.any() else None


def first_bad_label(y: np.ndarray) -> int | None:
    """Index of the first label that is not an integer >= 0."""
    bad = (y < 0) | (np.mod(y, 1) != 0)
    return int(np.argmax(bad)) if bad.any() else None


def inspect(path: str, x_key: str, y_key: str, role: str = "data") -> tuple:
    """Validate a whole file; return (n_lines, line shape, n_classes). Raises ConfigError."""
    with _open(path, role) as f:
        for key, opt in ((x_key, "--x-key"), (y_key, "--y-key")):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ConfigError(f"{role} file {path} has no dataset {key!r} (see {opt})")
        x, y = f[x_key], f[y_key]
        if len(x.shape) < 2:
            raise ConfigError(f"{role} file {path}: {x_key!r} must have shape [lines, features...], "
                              f"it has {list(x.shape)}")
        if len(y.shape) != 1:
            raise ConfigError(f"{role} file {path}: {y_key!r} must have shape [lines], it has {list(y.shape)}")
        if x.shape[0] == 0:
            raise ConfigError(f"{role} file {path} is empty: {x_key!r} has no lines")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"{role} file {path}: {x_key!r} has {x.shape[0]} lines but {y_key!r} "
                              f"has {y.shape[0]}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ConfigError(f"{role} file {path}: {x_key!r} must be numeric, it is {x.dtype}")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise ConfigError(f"{role} file {path}: {y_key!r} must hold integer labels, it is {y.dtype}")
        n, top = x.shape[0], -1
        for s in range(0, n, SCAN_LINES):
            xs = x[s:s + SCAN_LINES]
            bad = first_nonfinite_line(xs)
            if bad is not None:
                raise ConfigError(f"{role} file {path}: {x_key!r} has a non-finite value at line "
                                  f"{s + bad}")
            ys = y[s:s + SCAN_LINES]
            bad = first_bad_label(ys)
            if bad is not None:
                raise ConfigError(f"{role} file {path}: labels must be integers >= 0, line "
                                  f"{s + bad} has {ys[bad]}")
            top = max(top, int(ys.max()))
        return n, tuple(x.shape[1:]), top + 1


class Reader:
    """Reads line ranges of one file as (float32 x, int64 y)."""

    def __init__(self, path: str, x_key: str, y_key: str):
        self._f = h5py.File(path, "r")
        self._x, self._y = self._f[x_key], self._f[y_key]

    @property
    def lines(self) -> int:
        return self._y.shape[0]

    def read(self, start: int, stop: int) -> tuple:
        x = np.ascontiguousarray(self._x[start:stop], dtype=np.float32)
        y = np.ascontiguousarray(self._y[start:stop]).astype(np.int64)
        return x, y

    def close(self):
        self._f.close()


@dataclass
class Dataset:
    train: Split
    test: Split | None
    line_shape: tuple
    n_classes: int


def resolve(cfg: RunConfig) -> Dataset:
    """Validate the training (and test) files named by the configuration. Raises ConfigError."""
    n, shape, classes = inspect(cfg.data_path, cfg.x_key, cfg.y_key, "data")
    train, test = Split(cfg.data_path, 0, n), None
    test_path = cfg.test_data or (DEFAULT_TEST_DATA if cfg.uses_default_data else None)
    if test_path:
        tn, tshape, tclasses = inspect(test_path, cfg.x_key, cfg.y_key, "test data")
        if tshape != shape:
            raise ConfigError(f"test data {test_path} has lines of shape {list(tshape)}, the training "
                              f"data {list(shape)}")
        classes = max(classes, tclasses)
        test = Split(test_path, 0, tn)
    elif cfg.holdout > 0:
        held = int(n * cfg.holdout)
        if held >= 1 and n - held >= 1:
            train, test = Split(cfg.data_path, 0, n - held), Split(cfg.data_path, n - held, n)
    return Dataset(train, test, shape, max(classes, 2))


# ---- prepare synthetic ---------------------------------------------------------------------

SYNTH_SEED = 20261123
SYNTH_SHAPE = (1, 28, 28)
SYNTH_CLASSES = 10
SYNTH_LATENT = 24


def synthetic(lines: int, stream: int) -> tuple:
    """A learnable image-shaped task: images from a random latent code, labels from a fixed teacher.

    Every stream shares the same generator (projection and teacher), so a test stream is drawn
    from the same distribution as the training stream.
    """
    world = np.random.default_rng(SYNTH_SEED)
    proj = world.standard_normal((SYNTH_LATENT, int(np.prod(SYNTH_SHAPE)))).astype(np.float32) / 3
    w1 = world.standard_normal((SYNTH_LATENT, 64)).astype(np.float32)
    w2 = world.standard_normal((64, SYNTH_CLASSES)).astype(np.float32)
    rng = np.random.default_rng([SYNTH_SEED, stream])
    x = np.empty((lines, *SYNTH_SHAPE), np.float32)
    y = np.empty(lines, np.int64)
    for s in range(0, lines, 10000):
        z = rng.standard_normal((min(10000, lines - s), SYNTH_LATENT)).astype(np.float32)
        noise = 0.3 * rng.standard_normal((len(z), proj.shape[1])).astype(np.float32)
        x[s:s + len(z)] = (1 / (1 + np.exp(-(z @ proj + noise)))).reshape(len(z), *SYNTH_SHAPE)
        y[s:s + len(z)] = np.argmax(np.maximum(z @ w1, 0) @ w2, axis=1)
    return x, y


def write_h5(path: str, x: np.ndarray, y: np.ndarray) -> None:
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=y)


def test_path_for(path: str) -> str:
    stem = path[:-3] if path.endswith(".h5") else path
    return stem + "-test.h5"


def prepare_synthetic(path: str, lines: int = 100_000, test_lines: int = 10_000) -> list:
    """Write the training file and, if test_lines, its `-test.h5` companion. Returns the paths."""
    written = []
    write_h5(path, *synthetic(lines, 0))
    written.append(path)
    if test_lines:
        write_h5(test_path_for(path), *synthetic(test_lines, 1))
        written.append(test_path_for(path))
    return written


def ensure_default_data() -> None:
    """Generate the embedded default data if it is missing (called on rank 0 only)."""
    assert test_path_for(DEFAULT_DATA) == DEFAULT_TEST_DATA
    if not (os.path.exists(DEFAULT_DATA) and os.path.exists(DEFAULT_TEST_DATA)):
        prepare_synthetic(DEFAULT_DATA)
