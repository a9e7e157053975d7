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

import numpy as np

GENESIS = "0" * 64


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


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
    """Problems found, as (iteration or index, message); empty when the chain is intact."""
    problems, prev = [], GENESIS
    for i, rec in enumerate(records):
        where = rec.get("iteration", i)
        body = {k: v for k, v in rec.items() if k != "hash"}
        if hashlib.sha256(canonical(body)).hexdigest() != rec.get("hash"):
            problems.append((where, "record hash does not match its contents"))
        if rec.get("prev") != prev:
            problems.append((where, "prev does not match the previous record's hash"))
        prev = rec.get("hash")
    return problems


class LedgerWriter:
    """Appends sealed records to ledger.jsonl, flushed and synced every iteration."""

    def __init__(self, path: str, prev: str = GENESIS):
        self.path = path
        self.prev = prev
        self._f = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> dict:
        sealed = seal(record, self.prev)
        self._f.write(canonical(sealed).decode() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.prev = sealed["hash"]
        return sealed

    def close(self):
        self._f.close()


def read(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
