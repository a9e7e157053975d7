"""`python -m podlt_mpi prepare`: bring data into the HDF5 layout the job reads. No MPI.

  prepare synthetic     --out FILE.h5     the embedded default task (and FILE-test.h5)
  prepare fashion-mnist --out DIR         Debian's dataset-fashion-mnist (IDX) -> DIR/train.h5, test.h5
  prepare csv           --source F --out FILE.h5    one line per row, the label in one column
  prepare npz           --source F --out FILE.h5    NumPy arrays x and y
  prepare text          --source PATH... --seq-len T --out DIR   byte-level language model (text.py)
  prepare check         --data FILE.h5    validate every value of a file, before a long run

The job checks a file's layout up front and each block's values as it reads them; it reads
values at start-up only where the task needs them (class targets without a `classes`
attribute, token ids without `vocab_size`). The files written here declare them.

Every output is written whole or not at all (data.write_h5), and bad input is one ConfigError.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys

import numpy as np

from podlt_mpi.core.errors import ConfigError
from podlt_mpi.io import data

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}
IDX_UBYTE = 0x08


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes, checked against its header."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"{path} cannot be read: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path} is not an IDX file (its first two bytes must be zero)")
    if raw[2] != IDX_UBYTE:
        raise ConfigError(f"{path}: IDX type 0x{raw[2]:02x}, expected unsigned bytes (0x08)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise ConfigError(f"{path}: IDX header is cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - head != int(np.prod(shape)):
        raise ConfigError(f"{path}: the header promises {shape} = {int(np.prod(shape))} values, "
                          f"the file holds {len(raw) - head}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(shape)


def _find(source: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(source, name)):
            return os.path.join(source, name)
    raise ConfigError(f"{source} has no {stem}[.gz] (install Debian's dataset-fashion-mnist, "
                      "or give the folder holding the IDX files with --source)")


def fashion_mnist(source: str, out: str) -> list:
    """Convert the four IDX files to OUT/train.h5 and OUT/test.h5: images float32 [n, 1, 28, 28]
    in [0, 1], labels int64 in 0..9. Checked before anything is written."""
    if not os.path.isdir(source):
        raise ConfigError(f"--source {source} is not a folder (Debian's dataset-fashion-mnist "
                          f"installs {FASHION_MNIST})")
    splits = {}
    for split, (images, labels, expected) in FASHION_FILES.items():
        x, y = read_idx(_find(source, images)), read_idx(_find(source, labels))
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ConfigError(f"{split} images have shape {list(x.shape)}, expected [n, 28, 28]")
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"{split}: {len(x)} images but labels of shape {list(y.shape)}")
        if len(x) != expected:
            print(f"podlt_mpi: note: {split} has {len(x)} images; Fashion-MNIST's has {expected}",
                  file=sys.stderr)
        if y.size and y.max() > 9:
            raise ConfigError(f"{split} labels must be 0..9, one is {int(y.max())}")
        splits[split] = ((x.astype(np.float32) / 255.0).reshape(len(x), 1, 28, 28),
                         y.astype(np.int64))
    written = []
    for split, (x, y) in splits.items():
        path = os.path.join(out, f"{split}.h5")
        data.write_h5(path, x, y, {"classes": 10})
        written.append(path)
    return written


def _labels(column: list, what: str) -> np.ndarray:
    try:
        y = np.asarray(column, dtype=np.float64)
    except ValueError:
        raise ConfigError(f"{what}: labels must be integers >= 0") from None
    bad = data.first_bad_label(y)
    if bad is not None:
        raise ConfigError(f"{what}: labels must be integers >= 0; line {bad} has {y[bad]:g}")
    return y.astype(np.int64)


def _shaped(x: np.ndarray, shape: tuple | None, what: str) -> np.ndarray:
    if not shape:
        return x
    if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
        raise ConfigError(f"--shape {','.join(map(str, shape))} holds {int(np.prod(shape))} "
                          f"values, but {what} has {int(np.prod(x.shape[1:]))} per line")
    return x.reshape(len(x), *shape)


def _checked(x: np.ndarray, what: str) -> np.ndarray:
    if len(x) == 0:
        raise ConfigError(f"{what} holds no lines")
    bad = data.first_nonfinite_line(x)
    if bad is not None:
        raise ConfigError(f"{what}: line {bad} has a non-finite value")
    return x


def from_csv(source: str, out: str, label: str | None, shape: tuple | None, scale: float) -> list:
    """One line per row; the label column is `label` (a header name or a 0-based index), else
    the header's 'label' column, else the last one. A first row that is not numeric is a header."""
    try:
        with open(source, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--source {source} cannot be read: {e}") from None
    if not rows:
        raise ConfigError(f"--source {source} is empty")
    header = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = rows[0], rows[1:]
    if not rows:
        raise ConfigError(f"--source {source} has a header but no lines")
    width = len(rows[0])
    if width < 2:
        raise ConfigError(f"--source {source}: each row needs features and a label")
    if label is None:
        col = header.index("label") if header and "label" in header else width - 1
    elif label.isdigit():
        col = int(label)
    elif header and label in header:
        col = header.index(label)
    else:
        raise ConfigError(f"--label {label}: no such column in {source}"
                          + (f" (columns: {', '.join(header)})" if header else " (no header row)"))
    if col >= width:
        raise ConfigError(f"--label {label}: {source} has only {width} columns")
    table = np.empty((len(rows), width), np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ConfigError(f"{source}: line {i} has {len(row)} values, the first has {width}")
        try:
            table[i] = [float(v) for v in row]
        except ValueError:
            raise ConfigError(f"{source}: line {i} has a value that is not a number") from None
    y = _labels(table[:, col], source)
    x = np.delete(table, col, axis=1).astype(np.float32) / np.float32(scale)
    data.write_h5(out, _shaped(_checked(x, source), shape, source), y)
    return [out]


def from_npz(source: str, out: str, x_key: str, y_key: str, shape: tuple | None,
             scale: float) -> list:
    try:
        with np.load(source, allow_pickle=False) as f:
            missing = [k for k in (x_key, y_key) if k not in f.files]
            if missing:
                raise ConfigError(f"--source {source} has no array {missing[0]!r} "
                                  f"(it has {', '.join(f.files) or 'none'}; see --x-key, --y-key)")
            x, y = f[x_key], f[y_key]
    except (OSError, ValueError) as e:
        raise ConfigError(f"--source {source} is not a readable .npz file: {e}") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"{source}: {x_key!r} must be [lines, features...] and {y_key!r} "
                          f"[lines] of the same length; they are {list(x.shape)} and {list(y.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise ConfigError(f"{source}: {x_key!r} must be numeric, it is {x.dtype}")
    x = x.astype(np.float32) / np.float32(scale)
    data.write_h5(out, _shaped(_checked(x, source), shape, source), _labels(y, source))
    return [out]


def check(path: str, x_key: str, y_key: str, ignore: int) -> str:
    """Every value of the file, as the job's blocks would check them; one line on what it holds."""
    f = data.inspect(path, x_key, y_key, ignore=ignore, full=True)
    inputs = "token ids" if f.inputs == "tokens" else "float features"
    targets = (f"class targets up to {f.top_label}" if f.targets == "classes"
               else f"float targets of shape {list(f.target_shape)}")
    declared = "" if f.classes is None else f", {f.classes} classes declared"
    return f"{path}: {f.lines} lines of {inputs} {list(f.line_shape)}, {targets}{declared}: " \
           "every value is good"


def _shape(text: str) -> tuple:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a shape is positive integers joined by commas, "
                                         "e.g. 1,28,28") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError("a shape is positive integers, e.g. 1,28,28")
    return dims


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m podlt_mpi prepare",
                                description="Write a dataset in the HDF5 layout the job reads: "
                                            "x [lines, ...] (float features or token ids), y "
                                            "[lines] or [lines, ...] (classes or values).")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    s = kinds.add_parser("synthetic", help="the embedded default task")
    s.add_argument("--out", required=True, help="HDF5 file to write")
    s.add_argument("--lines", type=int, default=100_000, help="training lines")
    s.add_argument("--test-lines", type=int, default=10_000,
                   help="lines of the companion test file OUT-test.h5 (0: none)")
    f = kinds.add_parser("fashion-mnist", help="Fashion-MNIST from its IDX files")
    f.add_argument("--out", required=True, help="folder for train.h5 and test.h5")
    f.add_argument("--source", default=FASHION_MNIST,
                   help="folder with the four IDX files, gzipped or not (default: %(default)s)")
    for kind, what in (("csv", "a CSV file, one line per row"), ("npz", "a NumPy .npz file")):
        c = kinds.add_parser(kind, help=what)
        c.add_argument("--source", required=True, help=f"{what} to convert")
        c.add_argument("--out", required=True, help="HDF5 file to write")
        c.add_argument("--shape", type=_shape, help="shape of one line's features, e.g. 1,28,28 "
                       "for the cnn model (default: as they come)")
        c.add_argument("--scale", type=float, default=1.0,
                       help="divide the features by this, e.g. 255 for bytes (default: 1)")
        if kind == "csv":
            c.add_argument("--label", help="label column: header name or 0-based index "
                           "(default: the column named 'label', else the last)")
        else:
            c.add_argument("--x-key", default="x", help="array of features (default: x)")
            c.add_argument("--y-key", default="y", help="array of labels (default: y)")
    k = kinds.add_parser("check", help="validate every value of a file the job would read")
    k.add_argument("--data", required=True, help="HDF5 file to check")
    k.add_argument("--x-key", default="x", help="dataset of inputs (default: x)")
    k.add_argument("--y-key", default="y", help="dataset of targets (default: y)")
    k.add_argument("--ignore-index", type=int, default=-100,
                   help="class target that does not count (default: %(default)s)")
    t = kinds.add_parser("text", help="byte-level language-model data from text files")
    t.add_argument("--source", required=True, nargs="+", metavar="PATH",
                   help="text files, or folders read recursively")
    t.add_argument("--seq-len", type=int, required=True, metavar="T",
                   help="tokens (bytes) per line; each line holds T+1 bytes of the text")
    t.add_argument("--out", required=True, help="folder for train.h5 and test.h5")
    t.add_argument("--glob", default="*", help="in folders, read the files whose names match "
                   "this pattern, e.g. '*.py' (default: every file)")
    t.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="skip folders of this name, e.g. test (repeatable)")
    t.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of the lines, the last ones, that form test.h5 (default: 0.1)")
    return p


def main(argv) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.kind == "check":
            print(check(a.data, a.x_key, a.y_key, a.ignore_index))
            return 0
        if a.kind == "synthetic":
            if a.lines < 1 or a.test_lines < 0:
                raise ConfigError("--lines must be at least 1 and --test-lines at least 0")
            paths = data.prepare_synthetic(a.out, a.lines, a.test_lines)
        elif a.kind == "fashion-mnist":
            paths = fashion_mnist(a.source, a.out)
        elif a.kind == "text":
            from podlt_mpi.tools.text import prepare_text
            paths = prepare_text(a.source, a.seq_len, a.out, a.glob, a.holdout, a.exclude)
        else:
            if not a.scale > 0:
                raise ConfigError("--scale must be a positive number")
            paths = (from_csv(a.source, a.out, a.label, a.shape, a.scale) if a.kind == "csv" else
                     from_npz(a.source, a.out, a.x_key, a.y_key, a.shape, a.scale))
    except ConfigError as e:
        print(f"podlt_mpi: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"podlt_mpi: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(paths))
    return 0
