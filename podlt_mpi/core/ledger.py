"""The hash-chained ledger: one JSON record per iteration, append-only. Pure, no MPI.

Each record carries `prev` (the previous record's hash, 64 zeros for the first) and `hash`, the
sha256 of the record's canonical JSON without `hash`; editing, inserting, dropping or reordering
any record breaks the chain.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

GENESIS = "0" * 64


def finite_or_none(x):
    """JSON has no NaN or Infinity; the ledger says null instead."""
    return x if x is None or math.isfinite(x) else None


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(record: dict, prev: str) -> dict:
    """Return the record with `prev` and `hash` filled in."""
    body = {k: v for k, v in record.items() if k != "hash"}
    body["prev"] = prev
    body["hash"] = hashlib.sha256(canonical(body)).hexdigest()
    return body


def check_chain(records) -> list:
    """Problems found, as (position, message); empty when the chain is intact.

    Record i is iteration i, so the position is the iteration where the chain breaks."""
    problems, prev = [], GENESIS
    for i, rec in enumerate(records):
        said = rec.get("iteration")
        aside = f" (the record says iteration {said})" if said != i else ""
        body = {k: v for k, v in rec.items() if k != "hash"}
        if hashlib.sha256(canonical(body)).hexdigest() != rec.get("hash"):
            problems.append((i, "record hash does not match its contents" + aside))
        if rec.get("prev") != prev:
            problems.append((i, "prev does not match the previous record's hash" + aside))
        prev = rec.get("hash")
    return problems


def no_links(path: str, flags: int) -> int:
    """open()'s opener for the run's files: a symbolic link where one belongs is refused
    (ELOOP), so no run writes or truncates a file that a link points to elsewhere."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


class LedgerWriter:
    """Appends sealed records to ledger.jsonl, flushed and synced every iteration."""

    def __init__(self, path: str, prev: str = GENESIS):
        self.path = path
        self.prev = prev
        self._f = open(path, "a", encoding="utf-8", opener=no_links)

    def append(self, record: dict) -> dict:
        sealed = seal(record, self.prev)
        self._f.write(canonical(sealed).decode() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.prev = sealed["hash"]
        return sealed

    def close(self):
        self._f.close()


def read(path: str) -> tuple:
    """(records, torn): `torn` is True when the last line was cut off mid-write by a crash.

    Every complete line ends with a newline, written together with its record; a line that does
    not is the only thing a crash can leave behind, and it is never part of the chain.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    torn = lines[-1] != ""
    return [_parse(line) for line in lines[:-1] if line.strip()], torn


def _parse(line: str) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        rec = None
    return rec if isinstance(rec, dict) else {"unreadable": line[:80]}  # the chain check reports it


def truncate(path: str, records: int) -> None:
    """Keep the first `records` lines of a JSON-lines file: a resumed run rewrites the rest."""
    with open(path, "rb+", opener=no_links) as f:
        kept = 0
        for _ in range(records):
            line = f.readline()
            if not line.endswith(b"\n"):
                raise ValueError(f"{path} has fewer than {records} complete lines")
            kept += len(line)
        f.truncate(kept)
        f.flush()
        os.fsync(f.fileno())
