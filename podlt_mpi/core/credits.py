"""Reward accounting, from ledger records (records.Record) alone. Pure, no MPI.

The manager builds summary.json's credits by feeding this every record it seals, and the audit
feeds it the ledger: the two tables agree unless one of the files was changed.
"""
from __future__ import annotations

from podlt_mpi.core.records import VERDICTS


def entry() -> dict:
    return {"computed": 0, "verified": 0, "rejected": 0, "as_worker": 0, "as_control": 0,
            "as_recheck": 0, "verdicts": {v: 0 for v in VERDICTS}, "removed_at": None}


def table(ranks) -> dict:
    return {str(r): entry() for r in ranks}


def check_of(a, checks: list):
    """The check an assignment took part in: as its checked worker, a control or a recheck of
    the same lines (the checked fragments of one iteration never overlap)."""
    for c in checks:
        if a.role == "worker" and a.rank == c.worker or \
                a.role in ("control", "recheck") and a.lines == c.lines:
            return c
    return None


def account(credits: dict, record) -> None:
    """Add one iteration. A fragment earns `computed` unless it took part in a check that
    rejected it or ended in a dispute; a rank caught this iteration (by a check or a look)
    earns nothing for it."""
    checks = record.checks
    caught = set(record.removed)
    looked = {x.rank for x in record.looks if x.verdict == "differs"}  # format 5's look
    for a in record.assignments:
        if a.role == "manager":  # the look's recomputation (format 5): the manager earns nothing
            continue
        c = credits.setdefault(str(a.rank), entry())
        c["as_" + a.role] += 1
        check = check_of(a, checks)
        if check is not None:
            c["verdicts"][check.verdict] += 1
        if a.rank in caught:
            c["rejected"] += check is not None or a.rank in looked
        elif check is None:
            c["computed"] += 1
        elif check.verdict != "dispute":
            c["computed"] += 1
            c["verified"] += 1
    for r in record.removed:
        credits.setdefault(str(r), entry())["removed_at"] = record.iteration


def verdict_counts(records) -> dict:
    counts = {v: 0 for v in VERDICTS}
    for rec in records:
        for c in rec.checks:
            counts[c.verdict] += 1
    return counts


def from_ledger(records, ranks=()) -> dict:
    credits = table(ranks)
    for rec in records:
        account(credits, rec)
    return credits


def differences(a: dict, b: dict) -> list:
    """Ranks whose entries differ between two credit tables, as sentences."""
    out = []
    for r in sorted(set(a) | set(b), key=int):
        if a.get(r) != b.get(r):
            out.append(f"rank {r}: {a.get(r)} != {b.get(r)}")
    return out
