"""The run directory (rank 0 only): checked before anything is written, files replaced atomically."""
from __future__ import annotations

import json
import os
import time

from podlt_mpi.core import roles
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.io import atomic


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


def write_json(path: str, obj) -> None:
    with atomic.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def add_to_json(path: str, **fields) -> None:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    write_json(path, {**obj, **fields})


def save_model(path: str, model) -> None:
    import torch  # lazily: the job checks its input before paying for the import
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
        # host copies: the file must load on a machine without the GPU the run used
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, f)


def keep_metrics_before(path: str, iteration: int) -> None:
    """Drop metrics rows of iterations a resumed run will do again."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    kept = []
    for line in rows:
        try:
            if json.loads(line)["iteration"] < iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a row torn by a crash
    with atomic.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)


def _keys_path(out: str) -> str:
    return os.path.join(out, roles.KEY_FILE)


def _revealed_keys(out: str) -> dict:
    """{commitment: key} of the keys the run revealed so far ({} where none, or unreadable: it
    is written again at the end)."""
    try:
        with open(_keys_path(out), encoding="utf-8") as f:
            return roles.read_revealed(json.load(f))
    except (OSError, ValueError):
        return {}


def revealed(out: str, key: bytes) -> bool:
    """Whether the run's end revealed `key` already (roles.KEY_FILE)."""
    return roles.commitment(key) in _revealed_keys(out)


def reveal(out: str, key: bytes) -> None:
    """Add `key` to the run's revealed keys (a continued run may have drawn several)."""
    keys = {**_revealed_keys(out), roles.commitment(key): key}
    write_json(_keys_path(out), {"keys": [{"commitment": c, "key": k.hex()}
                                          for c, k in keys.items()]})
