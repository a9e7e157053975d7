"""The ledger's records as types: the manager writes them, and the audit, replay, credits, the
report and resume read them through `load`, the one reader. Pure, no MPI. docs/ledger.md
describes the same layout for an independent auditor.

Formats: a record of format 1, the layout of the first release, carries no `format` key; every
later format writes `"format": N` into each record, inside its hash, so a ledger says record by
record how to read it and runs written before keep being audited, resumed and reported.

  1  arrays digested with sha256: `data_sha256`, `grad_sha256`, `model_before`/`model_after`.
  2  `digest` names the arrays' hash (digests.py; BLAKE3 when written by this version), under
     the keys `data_digest` and `grad_digest`; `model_before`/`model_after` use it too.
  3  the keys of format 2; the update is folded as the answers stream in (rules.fold_order,
     training.Fold): the sum of count x gradient over the unchecked fragments in line order,
     then the checked ones, divided once by the total count; an unchecked fragment whose rank
     is caught on a recheck stays applied (rules.applied).
  4  the roles come from the manager's secret key (roles.py): each record names the key's
     commitment (`roles`) and the ranks the roles were drawn from (`active`), so the audit
     recomputes every role once the key is revealed; the update's sums are pairwise trees over
     the worker fragments in line order (pairwise.py, training.TreeFold), whichever was checked.
  5  every assignment logs the loss its rank sent (`loss`), and `looks` lists the unchecked
     answers the look (looks.py) held back: each was recomputed by the manager, and where the
     recomputation differs the rank is removed and the manager's answer (an assignment of role
     `manager`, rank 0) is applied in its place.
  6  every assignment has a `sketch`: in tolerance mode the answer's norm and count sketch
     (sketch.py), which the audit compares with its replay's; null in exact mode, where the
     digest says everything.
  7  under --reduce ranks (reduction.py) a record has a `reduction`: who summed which slice of
     the answers, the slices the manager challenged or summed itself, and each slice's sum's
     digest; every assignment's digest is then its answer's Merkle root (the commitment its
     rank sent), not the hash of its bytes. Without it (the star) a record reads as format 6.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from podlt_mpi.core import digests, ledger
from podlt_mpi.core.sketch import Sketch

FORMAT = 7                # what this version writes
FORMATS = (1, 2, 3, 4, 5, 6, 7)  # what it reads
FOLDED = 3                # the first format whose update is folded as the answers stream in
KEYED = 4                 # the first whose roles come from a secret key, summed by a tree
LOOKED = 5                # the first that looks at every unchecked answer and logs each loss
SKETCHED = 6              # the first that keeps a sketch of every answer in tolerance mode
REDUCED = 7               # the first whose answers the ranks may sum (`reduction`)
ONLY_FROM = {"roles": KEYED, "active": KEYED, "looks": LOOKED,
             "reduction": REDUCED}  # keys older formats lack
ASSIGNMENT_SINCE = {"loss": LOOKED, "sketch": SKETCHED}  # and those their assignments lack
ROLES = ("worker", "control", "recheck", "manager")  # manager: format 5's recomputations
# same: applied as sent; differs: the rank removed, the manager's recomputation applied;
# malformed: the answer refused before it was read (wrong size or fields, or none in time): the
# rank removed, its assignment's digest null, and where it was an unchecked worker's the
# manager's recomputation applied
LOOK_VERDICTS = ("same", "differs", "malformed")
VERDICTS = ("agree", "fake", "dispute")


class RecordError(ValueError):
    """A ledger line that is not a record of any format this version reads (one sentence)."""


# ---- reading JSON values by their type -----------------------------------------------------------

def _int(v, what):
    if type(v) is not int:
        raise RecordError(f"{what} is {v!r}, not an integer")
    return v


def _str(v, what):
    if not isinstance(v, str):
        raise RecordError(f"{what} is {v!r}, not a string")
    return v


def _list(v, what):
    if not isinstance(v, list):
        raise RecordError(f"{what} is {v!r}, not a list")
    return v


def _ints(v, what) -> tuple:
    return tuple(_int(x, what) for x in _list(v, what))


def _lines(v, what) -> tuple:
    pair = _ints(v, what)
    if len(pair) != 2:
        raise RecordError(f"{what} is {v!r}, not [start, stop]")
    return pair


def _float_or_none(v, what):
    if v is not None and (type(v) not in (int, float)):
        raise RecordError(f"{what} is {v!r}, not a number or null")
    return v


def _key(field: str, fmt: int) -> str:
    """A field's JSON key in format `fmt` (format 1 named the digests after sha256)."""
    if fmt == 1:
        return {"data_digest": "data_sha256", "grad_digest": "grad_sha256"}.get(field, field)
    return field


def _fields(d, cls, what, optional=(), fmt=1) -> dict:
    if not isinstance(d, dict):
        raise RecordError(f"{what} is {d!r}, not an object")
    names = {_key(f.name, fmt) for f in dataclasses.fields(cls)}
    missing = sorted(names - set(d) - set(optional))
    unknown = sorted(set(d) - names)
    if missing:
        raise RecordError(f"{what} lacks {', '.join(missing)}")
    if unknown:
        raise RecordError(f"{what} has fields format {fmt} does not know: {', '.join(unknown)}")
    return d


def _drop_none(d: dict, keys) -> dict:
    """Optional keys are absent, not null, in the JSON (so older records keep their bytes)."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


# ---- the record's parts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Assignment:
    """Who computed which lines in which role, the digest of the answer it sent, from format 5
    the loss it sent with it (None where not finite, as JSON cannot hold it), and from format
    6 in tolerance mode the answer's sketch (None in exact mode and for a refused answer)."""
    rank: int
    role: str          # worker | control | recheck | manager
    lines: tuple       # (start, stop): absolute line numbers in the training file
    grad_digest: str | None  # None (format 5): the answer was refused (a malformed look)
    loss: float | None = None
    sketch: Sketch | None = None

    def to_json(self, fmt: int = FORMAT) -> dict:
        d = {"rank": self.rank, "role": self.role, "lines": list(self.lines),
             _key("grad_digest", fmt): self.grad_digest}
        if fmt >= LOOKED:
            d["loss"] = self.loss
        if fmt >= SKETCHED:
            d["sketch"] = self.sketch.to_json() if self.sketch else None
        return d

    @classmethod
    def from_json(cls, d, fmt: int = FORMAT) -> Assignment:
        _fields(d, cls, "an assignment", tuple(k for k, since in ASSIGNMENT_SINCE.items()
                                               if fmt < since), fmt=fmt)
        for k, since in ASSIGNMENT_SINCE.items():
            if fmt < since and k in d:
                raise RecordError(f"an assignment of format {fmt} has a {k}")
        role = _str(d["role"], "an assignment's role")
        if role not in ROLES or role == "manager" and fmt < LOOKED:
            raise RecordError(f"an assignment's role is {role!r}, not one of {', '.join(ROLES)}")
        key = _key("grad_digest", fmt)
        return cls(_int(d["rank"], "an assignment's rank"), role,
                   _lines(d["lines"], "an assignment's lines"),
                   None if fmt >= LOOKED and d[key] is None else
                   _str(d[key], f"an assignment's {key}"),
                   _float_or_none(d["loss"], "an assignment's loss") if fmt >= LOOKED else None,
                   _sketch(d["sketch"]) if fmt >= SKETCHED else None)


def _sketch(v) -> Sketch | None:
    if v is None:
        return None
    try:
        return Sketch.from_json(v)
    except ValueError as e:
        raise RecordError(f"an assignment's sketch: {e}") from None


@dataclass(frozen=True)
class Look:
    """An unchecked answer the look held back, and what the manager's recomputation showed; or
    any rank's answer refused as malformed."""
    rank: int
    lines: tuple
    why: str
    verdict: str       # LOOK_VERDICTS

    def to_json(self) -> dict:
        return {"rank": self.rank, "lines": list(self.lines), "why": self.why,
                "verdict": self.verdict}

    @classmethod
    def from_json(cls, d) -> Look:
        _fields(d, cls, "a look", fmt=LOOKED)
        verdict = _str(d["verdict"], "a look's verdict")
        if verdict not in LOOK_VERDICTS:
            raise RecordError(f"a look's verdict is {verdict!r}, not one of "
                              f"{', '.join(LOOK_VERDICTS)}")
        return cls(_int(d["rank"], "a look's rank"), _lines(d["lines"], "a look's lines"),
                   _str(d["why"], "a look's why"), verdict)


def _refusal(v) -> tuple:
    if not isinstance(v, list) or len(v) != 2:
        raise RecordError(f"a reduction's refusal is {v!r}, not [rank, why]")
    return _int(v[0], "a refused rank"), _str(v[1], "why it was refused")


@dataclass(frozen=True)
class Reduction:
    """Format 7, --reduce ranks: how the ranks summed the iteration's leaves (reduction.py)."""
    slices: int
    aggregators: tuple       # slice -> the rank that summed it
    challenged: tuple        # the slices the manager summed again from their inputs
    sums: tuple              # each slice's sum as applied: its Merkle leaf's digest (hex)
    fetched: tuple = ()      # the slices the manager summed itself, from the senders' slices
    unattributed: tuple = ()  # (sender, aggregator, slice): an input the aggregator flagged
    # that its sender then gave the manager: one of the two lies, and nothing tells which
    refused: tuple = ()      # (rank, why): removed by the reduction (a sum its inputs disprove,
    # none in time, a malformed one; a slice that does not open under its sender's root)

    @classmethod
    def of(cls, r) -> Reduction:
        """From run/reduce.Reduced."""
        return cls(len(r.aggregators), tuple(r.aggregators), tuple(r.challenged),
                   tuple(r.sums), tuple(r.fetched), tuple(tuple(x) for x in r.unattributed),
                   tuple(sorted(r.refused.items())))

    def to_json(self) -> dict:
        return {"slices": self.slices, "aggregators": list(self.aggregators),
                "challenged": list(self.challenged), "sums": list(self.sums),
                "fetched": list(self.fetched),
                "unattributed": [list(x) for x in self.unattributed],
                "refused": [list(x) for x in self.refused]}

    @classmethod
    def from_json(cls, d) -> Reduction:
        _fields(d, cls, "a reduction", fmt=REDUCED)
        n = _int(d["slices"], "a reduction's slices")
        out = cls(n, _ints(d["aggregators"], "its aggregators"),
                  _ints(d["challenged"], "its challenged slices"),
                  tuple(_str(x, "a slice's sum") for x in _list(d["sums"], "its sums")),
                  _ints(d["fetched"], "its fetched slices"),
                  tuple(_ints(x, "an unattributed input") for x in
                        _list(d["unattributed"], "its unattributed inputs")),
                  tuple(_refusal(x) for x in _list(d["refused"], "its refused ranks")))
        if n < 1 or len(out.aggregators) != n or len(out.sums) != n or \
                not all(0 <= j < n for j in (*out.challenged, *out.fetched)) or \
                not all(len(x) == 3 for x in out.unattributed):
            raise RecordError(f"a reduction of {n} slices names {len(out.aggregators)} "
                              f"aggregators, {len(out.sums)} sums or slices outside it")
        return out


@dataclass(frozen=True)
class Referee:
    """The manager's own recomputation of a check's fragment, where the votes disagreed."""
    by: str                      # "manager"
    agrees: tuple                # the votes equal to the manager's result
    overturned: bool | None = None  # the referee changed who was found fake
    rechecks: tuple | None = None   # a dispute's further ranks, in the order they were asked
    resolved: bool | None = None    # the rechecks ended the dispute

    OPTIONAL = ("overturned", "rechecks", "resolved")

    def to_json(self) -> dict:
        d = {"by": self.by, "agrees": list(self.agrees), "overturned": self.overturned,
             "rechecks": None if self.rechecks is None else list(self.rechecks),
             "resolved": self.resolved}
        return _drop_none(d, self.OPTIONAL)

    @classmethod
    def from_json(cls, d, fmt: int = FORMAT) -> Referee:
        _fields(d, cls, "a referee step", cls.OPTIONAL, fmt)
        flag = {k: d.get(k) for k in ("overturned", "resolved")}
        for k, v in flag.items():
            if v is not None and type(v) is not bool:
                raise RecordError(f"a referee step's {k} is {v!r}, not true or false")
        rechecks = d.get("rechecks")
        return cls(_str(d["by"], "a referee step's by"), _ints(d["agrees"], "a referee's agrees"),
                   rechecks=None if rechecks is None else _ints(rechecks, "a referee's rechecks"),
                   **flag)


@dataclass(frozen=True)
class CheckRecord:
    """One checked worker: its controls' votes, the verdict and who was found fake."""
    lines: tuple
    worker: int
    controls: tuple
    verdict: str                 # agree | fake | dispute
    fake: tuple
    rel_dist: tuple              # ((rank_a, rank_b, distance or None), ...)
    referee: Referee | None

    @property
    def rechecks(self) -> tuple:
        return (self.referee.rechecks or ()) if self.referee else ()

    def to_json(self) -> dict:
        return {"lines": list(self.lines), "worker": self.worker, "controls": list(self.controls),
                "verdict": self.verdict, "fake": list(self.fake),
                "rel_dist": [list(t) for t in self.rel_dist],
                "referee": self.referee.to_json() if self.referee else None}

    @classmethod
    def from_json(cls, d, fmt: int = FORMAT) -> CheckRecord:
        _fields(d, cls, "a check", fmt=fmt)
        verdict = _str(d["verdict"], "a check's verdict")
        if verdict not in VERDICTS:
            raise RecordError(f"a check's verdict is {verdict!r}, not one of "
                              f"{', '.join(VERDICTS)}")
        rel = []
        for t in _list(d["rel_dist"], "a check's rel_dist"):
            if not (isinstance(t, list) and len(t) == 3):
                raise RecordError(f"a check's rel_dist holds {t!r}, not [rank, rank, distance]")
            rel.append((_int(t[0], "a rel_dist rank"), _int(t[1], "a rel_dist rank"),
                        _float_or_none(t[2], "a rel_dist distance")))
        return cls(_lines(d["lines"], "a check's lines"), _int(d["worker"], "a check's worker"),
                   _ints(d["controls"], "a check's controls"), verdict,
                   _ints(d["fake"], "a check's fake"), tuple(rel),
                   None if d["referee"] is None else Referee.from_json(d["referee"], fmt))


@dataclass(kw_only=True)
class Record:
    """One iteration of the run, as sealed into the ledger. Built with keywords: most fields
    are digests or tuples of lines, which positions would mix up unseen."""
    iteration: int
    epoch: int
    block: int
    lines: tuple                 # the block's (start, stop)
    data_digest: str             # the block's x then y bytes
    model_before: str            # the weights' digest (layout.digest)
    assignments: tuple           # Assignment, workers and controls in line order, then rechecks
    check: CheckRecord | None    # the first check, None without controls
    applied: tuple               # the lines of each fragment applied, in line order
    applied_from: tuple          # the rank whose gradient was applied for each
    removed: tuple               # ranks found fake in this iteration
    loss: float | None           # the applied fragments' weighted mean loss; None if none
    model_after: str
    extra_checks: tuple = ()     # --checks-per-iteration: the other checks, in turn
    checkpoint: str | None = None  # the fingerprint of the checkpoint written after it
    prev: str | None = None      # the previous record's hash (sealing fills these two in)
    hash: str | None = None
    format: int = FORMAT
    digest: str = digests.WRITTEN  # the arrays' hash; format 1: sha256, and no key for it
    roles: str | None = None     # format 4: the commitment of the key the roles come from
    active: tuple = ()           # format 4: the ranks the roles were drawn from, in rank order
    looks: tuple = ()            # format 5: Look, the answers held back for a recomputation
    reduction: Reduction | None = None  # format 7: the ranks' reduction, None for the star

    OPTIONAL = ("extra_checks", "checkpoint", "prev", "hash", "format", "digest", "roles",
                "active", "looks", "reduction")

    def __post_init__(self):
        if self.format == 1 and self.digest != digests.SHA256:
            raise RecordError(f"format 1 digests with sha256, not {self.digest}")
        if (self.format >= KEYED) != (self.roles is not None):
            raise RecordError(f"a format {self.format} record "
                              f"{'lacks' if self.format >= KEYED else 'has'} roles")

    @property
    def checks(self) -> list:
        """Every check of the iteration: `check`, then `extra_checks`."""
        return ([self.check] if self.check else []) + list(self.extra_checks)

    def role_of(self, role: str) -> list:
        return [a for a in self.assignments if a.role == role]

    def to_json(self) -> dict:
        fmt = self.format
        d = {"iteration": self.iteration, "epoch": self.epoch, "block": self.block,
             "lines": list(self.lines),
             _key("data_digest", fmt): self.data_digest,
             "model_before": self.model_before,
             "assignments": [a.to_json(fmt) for a in self.assignments],
             "check": self.check.to_json() if self.check else None,
             "applied": [list(p) for p in self.applied], "applied_from": list(self.applied_from),
             "removed": list(self.removed), "loss": self.loss, "model_after": self.model_after,
             "extra_checks": [c.to_json() for c in self.extra_checks] or None,
             "checkpoint": self.checkpoint, "prev": self.prev, "hash": self.hash,
             "format": None if fmt == 1 else fmt, "digest": None if fmt == 1 else self.digest,
             "roles": self.roles, "active": list(self.active) if fmt >= KEYED else None,
             "looks": [x.to_json() for x in self.looks] if fmt >= LOOKED else None,
             "reduction": self.reduction.to_json() if self.reduction else None}
        return _drop_none(d, self.OPTIONAL)

    @classmethod
    def from_json(cls, d) -> Record:
        if not isinstance(d, dict):
            raise RecordError("the line is not a JSON object")
        fmt = d.get("format", 1)
        if fmt == 1 and "format" in d or fmt not in FORMATS:
            raise RecordError(f"the record says it is format {fmt!r}; this version reads "
                              f"format {', '.join(map(str, FORMATS))}")
        optional = cls.OPTIONAL if fmt == 1 else tuple(k for k in cls.OPTIONAL if k != "digest")
        optional = tuple(k for k in optional if ONLY_FROM.get(k, fmt + 1) > fmt
                         or k == "reduction")  # the star's records have none
        _fields(d, cls, "the record", optional, fmt)
        newer = sorted(k for k, since in ONLY_FROM.items() if k in d and fmt < since)
        if newer:
            raise RecordError(f"the record has fields format {fmt} does not know: "
                              f"{', '.join(newer)}")
        if fmt == 1 and "digest" in d:
            raise RecordError("a format 1 record has no digest field")
        alg = d.get("digest", digests.SHA256)
        if alg not in digests.ALGORITHMS:
            raise RecordError(f"the record's digest is {alg!r}, not one of "
                              f"{', '.join(digests.ALGORITHMS)}")
        s = lambda k: _str(d[k], k)  # noqa: E731
        extra = d.get("extra_checks", [])
        loss = _float_or_none(d["loss"], "loss")
        if isinstance(d["applied"], list) and isinstance(d["applied_from"], list) and \
                len(d["applied"]) != len(d["applied_from"]):
            raise RecordError(f"applied has {len(d['applied'])} fragments but applied_from "
                              f"{len(d['applied_from'])} ranks")
        return cls(
            iteration=_int(d["iteration"], "iteration"), epoch=_int(d["epoch"], "epoch"),
            block=_int(d["block"], "block"), lines=_lines(d["lines"], "lines"),
            data_digest=s(_key("data_digest", fmt)), model_before=s("model_before"),
            assignments=tuple(Assignment.from_json(a, fmt)
                              for a in _list(d["assignments"], "assignments")),
            check=None if d["check"] is None else CheckRecord.from_json(d["check"], fmt),
            applied=tuple(_lines(p, "applied") for p in _list(d["applied"], "applied")),
            applied_from=_ints(d["applied_from"], "applied_from"),
            removed=_ints(d["removed"], "removed"), loss=loss, model_after=s("model_after"),
            extra_checks=tuple(CheckRecord.from_json(c, fmt)
                               for c in _list(extra, "extra_checks")),
            checkpoint=d.get("checkpoint") and s("checkpoint"), prev=d.get("prev") and s("prev"),
            hash=d.get("hash") and s("hash"), format=fmt, digest=alg,
            roles=s("roles") if fmt >= KEYED else None,
            active=_ints(d["active"], "active") if fmt >= KEYED else (),
            looks=tuple(Look.from_json(x) for x in _list(d["looks"], "looks"))
            if fmt >= LOOKED else (),
            reduction=Reduction.from_json(d["reduction"]) if d.get("reduction") is not None
            else None)


# ---- the one reader -----------------------------------------------------------------------------

@dataclass
class Ledger:
    """A run's ledger.jsonl: the lines as stored (the hash chain is over these) and each as a
    typed record, or the sentence saying why it is not one."""
    raw: list
    records: list                # Record, or None where `errors` says why not
    errors: dict                 # position -> sentence
    torn: bool                   # the last line was cut off by a crash (never part of the chain)

    def __len__(self) -> int:
        return len(self.raw)

    def chain_problems(self, upto: int | None = None) -> list:
        return ledger.check_chain(self.raw[:upto])

    @property
    def head(self) -> str:
        return self.raw[-1].get("hash") if self.raw else ledger.GENESIS

    def readable(self) -> list:
        return [r for r in self.records if r is not None]


def parse(raw: list) -> Ledger:
    records, errors = [], {}
    for i, d in enumerate(raw):
        try:
            records.append(Record.from_json(d))
        except RecordError as e:
            records.append(None)
            errors[i] = str(e)
    return Ledger(raw, records, errors, False)


def load(path: str) -> Ledger:
    raw, torn = ledger.read(path)
    out = parse(raw)
    out.torn = torn
    return out
