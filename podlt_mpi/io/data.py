"""HDF5 input: validation, block reads, and `prepare synthetic`. No MPI.

Layout: datasets `x` ([n, ...] float features or integer token ids) and `y` ([n] or [n, ...]:
integer classes or float values) at the root; optional root attributes `classes` (or
`vocab_size`) and `bytes_per_token` (tasks.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from podlt_mpi.core.config import DEFAULT_DATA, DEFAULT_TEST_DATA, RunConfig
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task, choose_loss
from podlt_mpi.io import atomic

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


def first_bad_label(y: np.ndarray, classes: int | None = None, ignore: int | None = None) -> int | None:
    """Index of the first line holding a class target that is not an integer in [0, classes)
    (any integer >= 0 when classes is None) or the ignored value."""
    y = y.reshape(len(y), -1)
    bad = (y < 0) | (np.mod(y, 1) != 0) if classes is None else (y < 0) | (y >= classes)
    if ignore is not None:
        bad &= y != ignore
    bad = bad.any(1)
    return int(np.argmax(bad)) if bad.any() else None


@dataclass(frozen=True)
class LineRules:
    """What every line's values must be. The job checks each block as it reads it, so a bad line
    ends the run (exit 2, its line number) before anything of its block is applied; `inspect`
    applies the same rules to a whole file."""
    where: str           # "data file PATH", for the messages
    x_key: str
    y_key: str
    inputs: str          # "float" or "tokens"
    targets: str         # "classes" or "values"
    classes: int | None  # class targets lie in [0, classes) (None: any integer >= 0)
    vocab: int | None    # token ids lie in [0, vocab) (None: any id >= 0)
    ignore: int          # a class target of this value does not count

    def check(self, x, y, first: int) -> tuple:
        """Raise ConfigError at the first bad line of x and y (either may be None: not
        checked), numbering the lines from `first`; return (top token id, top counted class
        target) of these lines, -1 where there are none."""
        top_token = top_label = -1
        if x is not None and self.inputs == "float":
            bad = first_nonfinite_line(x)
            if bad is not None:
                raise ConfigError(f"{self.where}: {self.x_key!r} has a non-finite value at line "
                                  f"{first + bad}")
        elif x is not None and len(x):
            flat = x.reshape(len(x), -1)
            low, high = flat.min(1), flat.max(1)
            if (low < 0).any():
                bad = int(np.argmax(low < 0))
                raise ConfigError(f"{self.where}: token ids must be >= 0, line {first + bad} of "
                                  f"{self.x_key!r} has {int(low[bad])}")
            if self.vocab is not None and (high >= self.vocab).any():
                bad = int(np.argmax(high >= self.vocab))
                raise ConfigError(f"{self.where}: token id {int(high[bad])} at line {first + bad}"
                                  f" of {self.x_key!r} is outside the vocabulary of {self.vocab}")
            top_token = int(high.max())
        if y is None:
            return top_token, top_label
        if self.targets == "values":
            bad = first_nonfinite_line(y)
            if bad is not None:
                raise ConfigError(f"{self.where}: {self.y_key!r} has a non-finite target at line "
                                  f"{first + bad}")
            return top_token, top_label
        bad = first_bad_label(y, self.classes, self.ignore)
        if bad is not None:
            rule = (f"integers in [0, {self.classes})" if self.classes else "integers >= 0")
            raise ConfigError(f"{self.where}: class targets must be {rule} or --ignore-index "
                              f"{self.ignore}, line {first + bad} has {y[bad].tolist()}")
        counted = y[y != self.ignore]
        return top_token, int(counted.max()) if counted.size else -1


@dataclass
class Inspection:
    """What validating one file found."""
    lines: int
    line_shape: tuple
    inputs: str          # "float" or "tokens"
    targets: str         # "classes" or "values"
    target_shape: tuple
    classes: int | None  # from the file's `classes` or `vocab_size` attribute
    top_label: int       # the largest class target (-1: none seen, or float targets)
    top_token: int       # the largest token id (-1: none seen, or float inputs)
    bytes_per_token: float | None


def _attribute(f, *names):
    for n in names:
        if n in f.attrs:
            return f.attrs[n]
    return None


def inspect(path: str, x_key: str, y_key: str, role: str = "data",
            ignore: int = -100, full: bool = True) -> Inspection:
    """Validate a file: its layout, shapes and types, and its values: every value (`full`), or
    only those the task cannot be known without (the class targets where the file declares no
    `classes`, the token ids where it declares no `vocab_size`), so that a file that declares
    them starts in the same time whatever its size. Raises ConfigError."""
    with _open(path, role) as f:
        for key, opt in ((x_key, "--x-key"), (y_key, "--y-key")):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ConfigError(f"{role} file {path} has no dataset {key!r} (see {opt})")
        x, y = f[x_key], f[y_key]
        if len(x.shape) < 2:
            raise ConfigError(f"{role} file {path}: {x_key!r} must have shape [lines, features...], "
                              f"it has {list(x.shape)}")
        if len(y.shape) < 1:
            raise ConfigError(f"{role} file {path}: {y_key!r} must have shape [lines, ...], "
                              "it is a scalar")
        if x.shape[0] == 0:
            raise ConfigError(f"{role} file {path} is empty: {x_key!r} has no lines")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"{role} file {path}: {x_key!r} has {x.shape[0]} lines but {y_key!r} "
                              f"has {y.shape[0]}")
        kinds = []
        for key, d in ((x_key, x), (y_key, y)):
            if np.issubdtype(d.dtype, np.floating):
                kinds.append("float")
            elif np.issubdtype(d.dtype, np.integer):
                kinds.append("int")
            else:
                raise ConfigError(f"{role} file {path}: {key!r} must hold integers or floats, it "
                                  f"is {d.dtype}")
        inputs = "tokens" if kinds[0] == "int" else "float"
        targets = "classes" if kinds[1] == "int" else "values"
        for name in ("classes", "vocab_size"):
            v = f.attrs.get(name)
            if v is not None and (not np.issubdtype(np.asarray(v).dtype, np.integer)
                                  or int(v) < 1):
                raise ConfigError(f"{role} file {path}: its {name!r} attribute must be a "
                                  f"positive integer, it is {v!r}")
        classes = _attribute(f, "classes", "vocab_size")
        classes = None if classes is None else int(classes)
        vocab = int(f.attrs["vocab_size"]) if "vocab_size" in f.attrs else None
        rules = LineRules(f"{role} file {path}", x_key, y_key, inputs, targets, classes, vocab,
                          ignore)
        scan_x = full or (inputs == "tokens" and vocab is None)
        scan_y = full or (targets == "classes" and classes is None)
        bpt = _attribute(f, "bytes_per_token")
        n, top_label, top_token = x.shape[0], -1, -1
        for s in range(0, n if scan_x or scan_y else 0, SCAN_LINES):
            tops = rules.check(x[s:s + SCAN_LINES] if scan_x else None,
                               y[s:s + SCAN_LINES] if scan_y else None, s)
            top_token, top_label = max(top_token, tops[0]), max(top_label, tops[1])
        return Inspection(n, tuple(x.shape[1:]), inputs, targets, tuple(y.shape[1:]), classes,
                          top_label, top_token, None if bpt is None else float(bpt))


class Reader:
    """Reads line ranges of one file as the wire's types: x float32 (features) or int64 (token
    ids), y int64 (classes) or float32 (values)."""

    def __init__(self, path: str, x_key: str, y_key: str):
        self._f = h5py.File(path, "r")
        self._x, self._y = self._f[x_key], self._f[y_key]
        self.x_dtype = np.int64 if np.issubdtype(self._x.dtype, np.integer) else np.float32
        self.y_dtype = np.int64 if np.issubdtype(self._y.dtype, np.integer) else np.float32

    @property
    def lines(self) -> int:
        return self._y.shape[0]

    def read(self, start: int, stop: int) -> tuple:
        x = np.ascontiguousarray(self._x[start:stop], dtype=self.x_dtype)
        y = np.ascontiguousarray(self._y[start:stop], dtype=self.y_dtype)
        return x, y

    def close(self):
        self._f.close()


@dataclass
class Dataset:
    train: Split
    test: Split | None
    line_shape: tuple
    task: Task
    rules: LineRules  # what each line of the training file must hold: checked as it is read

    @property
    def n_classes(self) -> int:
        return self.task.n_classes


def resolve(cfg: RunConfig) -> Dataset:
    """Validate the training (and test) files named by the configuration, and find the task
    they pose. Raises ConfigError."""
    found = inspect(cfg.data_path, cfg.x_key, cfg.y_key, "data", cfg.ignore_index, full=False)
    train, test, seen = Split(cfg.data_path, 0, found.lines), None, [found]
    test_path = cfg.test_data or (DEFAULT_TEST_DATA if cfg.uses_default_data else None)
    if test_path:
        t = inspect(test_path, cfg.x_key, cfg.y_key, "test data", cfg.ignore_index)
        for what, a, b in (("lines of shape", t.line_shape, found.line_shape),
                           ("inputs of kind", t.inputs, found.inputs),
                           ("targets of kind", t.targets, found.targets),
                           ("targets per line of shape", t.target_shape, found.target_shape)):
            if a != b:
                show = (lambda v: list(v)) if isinstance(a, tuple) else str
                raise ConfigError(f"test data {test_path} has {what} {show(a)}, the training "
                                  f"data {show(b)}")
        test = Split(test_path, 0, t.lines)
        seen.append(t)
    elif cfg.holdout > 0:
        held = int(found.lines * cfg.holdout)
        if held >= 1 and found.lines - held >= 1:
            train = Split(cfg.data_path, 0, found.lines - held)
            test = Split(cfg.data_path, found.lines - held, found.lines)
    task = _task(cfg, seen)
    rules = LineRules(f"data file {cfg.data_path}", cfg.x_key, cfg.y_key, task.inputs,
                      task.targets, task.n_classes or None, task.vocab or None, cfg.ignore_index)
    return Dataset(train, test, found.line_shape, task, rules)


def _task(cfg: RunConfig, seen: list) -> Task:
    """The task the inspected files pose."""
    first = seen[0]
    loss = choose_loss(cfg.loss, first.targets)
    declared = [s.classes for s in seen if s.classes is not None]
    top_token = max(s.top_token for s in seen)
    top_label = max(s.top_label for s in seen)
    if first.targets == "classes":
        n = declared[0] if declared else top_label + 1
        if first.inputs == "tokens" and first.target_shape:
            n = max(n, top_token + 1)  # a language model: one vocabulary in and out
        if declared and top_label >= declared[0]:
            raise ConfigError(f"a class target reaches {top_label}, outside the {declared[0]} "
                              "classes the data file declares")
        n = max(n, 2)
    else:
        n = 0
    vocab = max(top_token + 1, declared[0] if declared and first.inputs == "tokens" else 0)
    return Task(first.inputs, first.targets, first.target_shape, n, loss, cfg.ignore_index,
                vocab, first.bytes_per_token, cfg.output_key)


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


def write_h5(path: str, x: np.ndarray, y: np.ndarray, attrs: dict | None = None) -> None:
    """x and y, and root attributes `attrs` (stored densely: a list of thousands of source files
    may exceed HDF5's 64 KB for an attribute in the old format)."""
    with atomic.replacing(path) as tmp, \
            h5py.File(tmp, "w", **({"libver": "latest"} if attrs else {})) as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=y)
        for k, v in (attrs or {}).items():
            f.attrs[k] = (np.array(v, dtype=h5py.string_dtype())
                          if isinstance(v, list) and v and isinstance(v[0], str) else v)


def test_path_for(path: str) -> str:
    stem = path[:-3] if path.endswith(".h5") else path
    return stem + "-test.h5"


def prepare_synthetic(path: str, lines: int = 100_000, test_lines: int = 10_000) -> list:
    """Write the training file and, if test_lines, its `-test.h5` companion. Returns the paths."""
    written, attrs = [], {"classes": SYNTH_CLASSES}  # declared: start-up reads no values
    write_h5(path, *synthetic(lines, 0), attrs)
    written.append(path)
    if test_lines:
        write_h5(test_path_for(path), *synthetic(test_lines, 1), attrs)
        written.append(test_path_for(path))
    return written


def ensure_default_data() -> None:
    """Generate the embedded default data if it is missing (called on rank 0 only)."""
    assert test_path_for(DEFAULT_DATA) == DEFAULT_TEST_DATA
    if not (os.path.exists(DEFAULT_DATA) and os.path.exists(DEFAULT_TEST_DATA)):
        prepare_synthetic(DEFAULT_DATA)
