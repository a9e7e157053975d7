"""`prepare text`: byte-level language-model data from text files. No MPI, no torch.

Every byte is a token (vocabulary 256). The files' bytes, in sorted path order, are joined and cut
into lines of T+1 bytes; a line's `x` is its first T bytes and `y` its last T (each position's
next byte). The last --holdout of the lines form test.h5. Both files record the vocabulary
(`vocab_size` 256, `bytes_per_token` 1, so the job reports bits per byte), the sequence length,
and the source files with their sizes.
"""
from __future__ import annotations

import fnmatch
import os

import numpy as np

from podlt_mpi.core.errors import ConfigError
from podlt_mpi.io import data

VOCAB = 256


def find_files(sources, pattern: str = "*", exclude=()) -> list:
    """The files named, and those under the folders named (recursively) whose names match
    `pattern`, skipping folders named in `exclude`; sorted, each once."""
    found = []
    for src in sources:
        if os.path.isfile(src):
            found.append(os.path.abspath(src))
        elif os.path.isdir(src):
            for folder, dirs, files in os.walk(src):
                dirs[:] = sorted(d for d in dirs if d not in exclude)
                found += [os.path.abspath(os.path.join(folder, f)) for f in sorted(files)
                          if fnmatch.fnmatch(f, pattern)]
        else:
            raise ConfigError(f"--source {src} is neither a file nor a folder")
    return sorted(set(found))


def read_bytes(paths) -> tuple:
    """(all the files' bytes joined, [size of each])."""
    chunks = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                chunks.append(f.read())
        except OSError as e:
            raise ConfigError(f"--source file {p} cannot be read: {e.strerror or e}") from None
    return b"".join(chunks), [len(c) for c in chunks]


def lines_of(raw: bytes, seq_len: int) -> tuple:
    """(x, y) uint8 [n, T]: consecutive, non-overlapping lines of T+1 bytes (a last, shorter
    piece is dropped)."""
    n = len(raw) // (seq_len + 1)
    cut = np.frombuffer(raw, np.uint8, count=n * (seq_len + 1)).reshape(n, seq_len + 1)
    return np.ascontiguousarray(cut[:, :-1]), np.ascontiguousarray(cut[:, 1:])


def prepare_text(sources, seq_len: int, out: str, pattern: str = "*", holdout: float = 0.1,
                 exclude=()) -> list:
    """Write OUT/train.h5 and OUT/test.h5 (when holdout > 0); everything is checked first, so
    bad input writes nothing. Returns the paths written."""
    if seq_len < 1:
        raise ConfigError(f"--seq-len must be at least 1, got {seq_len}")
    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout}")
    paths = find_files(sources, pattern, exclude)
    if not paths:
        raise ConfigError(f"--source {' '.join(sources)} holds no file matching --glob {pattern}")
    raw, sizes = read_bytes(paths)
    x, y = lines_of(raw, seq_len)
    held = int(len(x) * holdout)
    if holdout > 0:
        held = max(held, 1)
    if len(x) - held < 1:
        raise ConfigError(f"the text is too short: {len(raw)} bytes in {len(paths)} file(s) make "
                          f"{len(x)} line(s) of --seq-len {seq_len} + 1 bytes; at least "
                          f"{2 if holdout > 0 else 1} are needed")
    attrs = {"vocab_size": VOCAB, "bytes_per_token": 1.0, "tokenizer": "bytes",
             "seq_len": seq_len, "sources": paths, "source_sizes": np.asarray(sizes, np.int64)}
    train = os.path.join(out, "train.h5")
    split = len(x) - held
    data.write_h5(train, x[:split], y[:split], attrs)
    written = [train]
    if held:
        test = os.path.join(out, "test.h5")
        data.write_h5(test, x[split:], y[split:], attrs)
        written.append(test)
    return written
