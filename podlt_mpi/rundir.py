"""The run directory (rank 0 only): checked before anything is written, files replaced atomically."""
from __future__ import annotations

import json
import os
import tempfile
import time

import torch

from .config import ConfigError

FILES = ("config.json", "model_init.pt", "model_final.pt", "ledger.jsonl", "metrics.jsonl",
         "summary.json")


def default_out() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = os.path.join("runs", stamp), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def check(path: str) -> None:
    """Raise ConfigError unless `path` can become a fresh run directory."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--out {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {path} is not writable")
        if os.path.exists(os.path.join(path, "ledger.jsonl")):
            raise ConfigError(f"--out {path} already holds a run (ledger.jsonl); choose a new directory")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path} cannot be created: {parent} is not a writable directory")


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_model(path: str, model: torch.nn.Module) -> None:
    _atomic(path, lambda f: torch.save(model.state_dict(), f))
