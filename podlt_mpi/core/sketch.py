"""Sketches of answers for tolerance mode: 64 numbers per answer that estimate the distance
between two answers when the ledger cannot hold them whole. Pure, no MPI.

In tolerance mode honest answers differ in their bits, so a digest tells the audit nothing. The
manager keeps, for every answer it receives, its norm and a count sketch S g (docs/ledger.md,
"Sketches"): the values of g go, in each of BLOCKS blocks, to one of WIDTH buckets with a
random sign, and each bucket holds its signed sum divided by sqrt(BLOCKS). The buckets and signs
of iteration t come from the run's secret role key (BLAKE3 keyed with HMAC-SHA256(key,
"podlt-sketch"), input the decimal t, read as BLOCKS x n bytes, block-major: bucket c & 15,
sign minus where c & 16), so no rank knows them when it answers, and the audit has them once the
key is revealed.

How well it estimates: S is linear, so S a - S b = S d for d = a - b. E ||S d||^2 = ||d||^2, and
for d spread over many values (as the rounding differences of honest kernels are) the K sums are
nearly independent normals of variance ||d||^2 / K: ||S d|| / ||d|| ~ sqrt(chi^2_K / K). With
K = 64 it lies in [LOW, HIGH] = [0.521, 1.564] except with probability 1e-9 on either side. So
the audit passes an answer whose sketch is within HIGH x the run's bound of the replay's (an
honest answer within the bound fails with probability under 1e-9) and a difference of more than
HIGH / LOW = 3.0 x the bound is caught except with probability 1e-9. The worst case for a
cheater is a change concentrated on two values of equal size, which cancels in all four blocks
with probability (1/32)^4 = 1e-6 per answer; the checks and the look catch it independently.
The norms need no factor: | ||a|| - ||b|| | <= ||a - b||, so they are checked against the bound
itself.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass

import numpy as np

BLOCKS, WIDTH = 4, 16
K = BLOCKS * WIDTH
LOW, HIGH = 0.5214816256299614, 1.564235050867020  # sqrt(chi^2_64 / 64) at 1e-9, each side
SIGN = 16  # the code bit that makes a value's sign minus


@dataclass(frozen=True)
class Sketch:
    """An answer's K bucket sums and its norm (both over the finite values), and the digest of
    where its non-finite values are and their bits (None where all are finite)."""
    values: tuple       # K floats
    norm: float
    nonfinite: str | None = None

    def to_json(self) -> dict:
        raw = np.asarray(self.values, dtype="<f8").tobytes()
        return {"values": base64.b64encode(raw).decode(), "norm": self.norm,
                "nonfinite": self.nonfinite}

    @classmethod
    def from_json(cls, d) -> Sketch:
        """ValueError (one sentence) where `d` is not a sketch."""
        if not isinstance(d, dict) or set(d) != {"values", "norm", "nonfinite"}:
            raise ValueError(f"{d!r} is not a sketch (values, norm, nonfinite)")
        try:
            raw = base64.b64decode(d["values"], validate=True)
        except (TypeError, ValueError):
            raise ValueError("a sketch's values are not base64") from None
        if len(raw) != 8 * K:
            raise ValueError(f"a sketch holds {len(raw)} bytes of values, not {8 * K}")
        norm, nonfinite = d["norm"], d["nonfinite"]
        if type(norm) not in (int, float) or not math.isfinite(norm) or norm < 0:
            raise ValueError(f"a sketch's norm is {norm!r}, not a finite number >= 0")
        if nonfinite is not None and not isinstance(nonfinite, str):
            raise ValueError(f"a sketch's nonfinite is {nonfinite!r}, not a digest or null")
        values = np.frombuffer(raw, dtype="<f8")
        if not np.isfinite(values).all():
            raise ValueError("a sketch's values are not all finite")
        return cls(tuple(float(v) for v in values), float(norm), nonfinite)


def codes(key: bytes, iteration: int, n: int) -> np.ndarray:
    """The (BLOCKS, n) bucket-and-sign codes of iteration `iteration` for answers of n values."""
    import blake3
    secret = hmac.new(key, b"podlt-sketch", hashlib.sha256).digest()
    raw = blake3.blake3(str(iteration).encode(), key=secret).digest(length=BLOCKS * n)
    return np.frombuffer(raw, dtype=np.uint8).reshape(BLOCKS, n)


def of(g: np.ndarray, code: np.ndarray, digest) -> Sketch:
    """The sketch of a flat answer `g` under `code` (codes()); `digest(*arrays)`: the run's
    array digest, for the places and bits of non-finite values."""
    g = np.ascontiguousarray(g).reshape(-1)
    finite = np.isfinite(g)
    bad = None
    if not finite.all():
        where = np.flatnonzero(~finite)
        bad = digest(where.astype("<i8"), g[where])
        g = np.where(finite, g, 0)
    g64 = g.astype(np.float64)
    out = np.empty(K)
    for b in range(BLOCKS):
        # buckets 0..15 take the plus values, 16..31 the minus ones
        sums = np.bincount(code[b] & (2 * SIGN - 1), weights=g64, minlength=2 * WIDTH)
        out[b * WIDTH:(b + 1) * WIDTH] = sums[:WIDTH] - sums[SIGN:SIGN + WIDTH]
    out /= math.sqrt(BLOCKS)
    # the norm from bincount's sequential sums and fsum: the same bits on every processor
    # (np.linalg.norm's BLAS sums in an order its kernels choose)
    squares = np.bincount(code[0] & (2 * SIGN - 1), weights=g64 * g64, minlength=2 * WIDTH)
    return Sketch(tuple(float(v) for v in out), math.sqrt(math.fsum(squares)), bad)


def distance(a: Sketch, b: Sketch) -> float:
    """The estimate of ||a - b|| over the finite values (inf where the non-finite ones differ)."""
    if a.nonfinite != b.nonfinite:
        return math.inf
    return float(np.linalg.norm(np.subtract(a.values, b.values)))


def bound(a: Sketch, b: Sketch, rtol: float, atol: float) -> float:
    """The run's tolerance between two answers: rtol x the larger norm + atol (verify.compare)."""
    return rtol * max(a.norm, b.norm) + atol


def within(answer: Sketch, replay: Sketch, rtol: float, atol: float) -> bool:
    """Whether `answer` may be within the run's tolerance of `replay`: the sketch's distance at
    most HIGH x the bound, and the norms no further apart than the bound itself."""
    limit = bound(answer, replay, rtol, atol)
    return distance(answer, replay) <= HIGH * limit and abs(answer.norm - replay.norm) <= limit
