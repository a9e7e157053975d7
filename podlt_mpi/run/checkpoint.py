"""Checkpoints: the manager's full state, written atomically, read without unpickling code.

A checkpoint after iteration i holds what iteration i+1 needs: weights, optimizer state, active
set, RNG state, credits (`proof`, fingerprinted) and where the ledger and metrics files end
(`position`). The fingerprint goes into iteration i's ledger record, so a changed checkpoint is
found by the audit and refused by --resume. The ledger position cannot be inside the fingerprint:
it names the hash of the record that holds the fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import torch

from podlt_mpi.core.ledger import canonical
from podlt_mpi.io import atomic

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(Exception):
    pass


def path_for(folder: str, iteration: int) -> str:
    """The checkpoint holding the state before `iteration` (after iteration - 1)."""
    return os.path.join(folder, f"ckpt-{iteration:08d}.pt")


def _feed(h, obj) -> None:
    """Hash any nest of dicts, lists, tensors and scalars, the same way every time."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{list(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
            h.update(repr(k).encode() + b":")
            _feed(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def fingerprint(model_state: dict, optimizer_state: dict, proof: dict) -> str:
    h = hashlib.sha256()
    _feed(h, model_state)
    _feed(h, optimizer_state)
    h.update(canonical(proof))
    return h.hexdigest()


def save(folder: str, iteration: int, model_state: dict, optimizer_state: dict, proof: dict,
         position: dict) -> str:
    path = path_for(folder, iteration)
    blob = {"format": FORMAT, "iteration": iteration, "model": model_state,
            "optimizer": optimizer_state, "proof": json.dumps(proof), "position": json.dumps(position)}
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)
    return path


def load(path: str) -> dict:
    """The checkpoint's parts, with `fingerprint` recomputed from what was read."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a podlt_mpi checkpoint of format {FORMAT}")
        out = {"iteration": int(blob["iteration"]), "model": blob["model"],
               "optimizer": blob["optimizer"], "proof": json.loads(blob["proof"]),
               "position": json.loads(blob["position"]), "path": path}
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or foreign file can fail in many ways inside torch.load
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {e}") from None
    out["fingerprint"] = fingerprint(out["model"], out["optimizer"], out["proof"])
    return out


def available(folder: str) -> list:
    """(iteration, path) of the checkpoints in `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, n))
             for n in os.listdir(folder) if (m := _NAME.match(n))]
    return sorted(found)


def prune(folder: str, keep: int, protect=()) -> None:
    """Keep the newest `keep` checkpoints (0: all) and every iteration in `protect`."""
    if keep <= 0:
        return
    found = available(folder)
    for it, path in found[:-keep]:
        if it not in protect:
            os.unlink(path)
