"""--resume: find where a run can continue from, and what changes (rank 0, before any training).

The newest checkpoint that the ledger vouches for wins: its fingerprint must be the one in the
record of the iteration it follows, and that record must sit in an intact hash chain. Records after
it are cut away when training starts, so the chain continues without duplicates. A run with no
usable checkpoint starts over from iteration 0 in the same directory.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from podlt_mpi.core import digests, ledger, records, rules
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.run import checkpoint

log = logging.getLogger("podlt_mpi")


@dataclass
class Resume:
    run_dir: str
    checkpoint: dict | None  # None: start over
    records: int             # ledger records kept
    prev: str                # hash the ledger continues from
    active: list             # active ranks in this world
    history: list = field(default_factory=list)  # config.json "resumed": one entry per resume
    format: int = records.FORMAT      # the ledger goes on in the format of the record it
    digest: str = digests.WRITTEN     # continues, so its chain of digests stays one hash


def saved_config(run_dir: str) -> dict:
    """The config.json of the run to continue (ConfigError if there is no run there)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise ConfigError(f"--resume {run_dir}: no such directory")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run_dir, "ledger.jsonl")):
        raise ConfigError(f"--resume {run_dir} holds no run (config.json and ledger.jsonl missing)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {run_dir}: config.json cannot be read: {e}") from None


def usable(ckpt: dict, kept: records.Ledger) -> str | None:
    """Why this checkpoint cannot be continued from, or None if the ledger vouches for it."""
    return rules.unvouched(ckpt["iteration"], ckpt["fingerprint"],
                           ckpt["position"]["ledger_hash"], kept)


def active_ranks(proof: dict | None, world_size: int) -> tuple:
    """(active ranks, sentences on what changed) for a run continued on `world_size` ranks."""
    if proof is None:
        return list(range(1, world_size)), []
    before = proof["world_size"]
    removed = {r["rank"] for r in proof["removed"]}
    active = [r for r in proof["active"] if r < world_size]
    notes = []
    if world_size != before:
        notes.append(f"the run had {before} ranks and continues on {world_size}")
        gone = [r for r in proof["active"] if r >= world_size]
        if gone:
            notes.append(f"ranks {gone} no longer exist and leave the active set")
        joined = [r for r in range(before, world_size) if r not in removed]
        active += joined
        if joined:
            notes.append(f"ranks {joined} join as new ranks with no credits")
        notes.append("the fragments differ from the original layout, so the final weights "
                     "equal a one-go run's only up to float rounding")
    if removed:
        notes.append(f"ranks {sorted(removed)} stay removed")
    return sorted(active), notes


def prepare(run_dir: str, world_size: int, need: int, changed: dict,
            history: list, restart: bool = False) -> Resume:
    """Choose the checkpoint to continue from; raise ConfigError if the run cannot continue
    (with no usable checkpoint, unless `restart`: then from iteration 0)."""
    kept = records.load(os.path.join(run_dir, "ledger.jsonl"))
    found = None
    for _, path in reversed(checkpoint.available(os.path.join(run_dir, "checkpoints"))):
        try:
            ckpt = checkpoint.load(path)
        except checkpoint.CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            continue
        why = usable(ckpt, kept)
        if why is None:
            found = ckpt
            break
        log.warning("skipping checkpoint %s: %s", path, why)
    proof = found["proof"] if found else None
    active, notes = active_ranks(proof, world_size)
    if len(active) < need:
        raise ConfigError(f"--resume {run_dir}: only {len(active)} active ranks remain on "
                          f"{world_size} ranks, and the checks need {need}")
    n = found["iteration"] if found else 0
    if found is None and not restart and len(kept):
        raise ConfigError(f"--resume {run_dir}: no checkpoint can be continued from, and "
                          f"going on would cut the ledger's {len(kept)} records; --restart "
                          f"starts the run over from iteration 0")
    if found is None:
        notes.insert(0, "no usable checkpoint: starting over from iteration 0")
    for name, (before, now) in changed.items():
        notes.append(f"--{name.replace('_', '-')} changes from {before!r} to {now!r}")
    for note in notes:
        log.info("resume: %s", note)
    prev = kept.records[n - 1].hash if n else ledger.GENESIS
    history = [*history, {"from_iteration": n, "world_size": world_size, "notes": notes}]
    last = kept.records[n - 1] if n else None
    return Resume(run_dir, found, n, prev, active, history,
                  *((last.format, last.digest) if last else (records.FORMAT, digests.WRITTEN)))
