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


# what a run directory holds (docs/ledger.md); none of it may be a symbolic link
RUN_FILES = ("config.json", "ledger.jsonl", "metrics.jsonl", "summary.json", "model_init.pt",
             "model_final.pt", roles.KEY_FILE, "checkpoints")


def check_links(path: str, option: str) -> None:
    """Raise ConfigError if the run directory, or any of its files, is a symbolic link: the
    job writes and truncates them, and would do it to whatever a link points to."""
    folders = [path, os.path.join(path, "checkpoints")]
    names = [path] + [os.path.join(path, n) for n in RUN_FILES]
    if os.path.isdir(folders[1]) and not os.path.islink(folders[1]):
        names += [os.path.join(folders[1], n) for n in sorted(os.listdir(folders[1]))]
    linked = [n for n in names if os.path.islink(n)]
    if linked:
        what = "it" if linked[0] == path else os.path.relpath(linked[0], path)
        raise ConfigError(f"{option} {path}: {what} is a symbolic link, and the job does not "
                          f"write through links: put the file itself there")


def check(path: str) -> None:
    """Raise ConfigError unless `path` can become a fresh run directory."""
    check_links(path, "--out")
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
