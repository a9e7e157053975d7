"""Three-way gradient comparison in one chunked pass (numpy, CPU).

For gradients a, b, c (indices 0, 1, 2) it collects, per pair, the squared distance over the
positions where both are finite, the count of bitwise mismatches and the count of non-finite
mismatches (finiteness differs, or both non-finite with other bits), and per vector the squared
norm over its finite entries and its non-finite count. From these alone, `ThreeWay.compare` gives
the same verdict and rel_dist as `verify.compare` for both modes (up to float64 summation order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Pair:
    """Two vectors compared: the same (in the comparison's mode), and their relative distance
    (inf where non-finite entries differ). `verify.compare` and the fused passes give these."""
    same: bool
    rel_dist: float


EXP_MASK = np.uint32(0x7F800000)  # all exponent bits set <=> inf or NaN
PAIRS = ((0, 1), (0, 2), (1, 2))
CHUNK = 1 << 16  # ~2.5 MB of temporaries stay in cache, which beats 1M-element chunks


@dataclass(frozen=True)
class PairStats:
    bit_mismatches: int
    nonfinite_mismatches: int
    dist2: float    # sum of (a-b)^2 where both are finite, float64
    norm2_a: float  # sum of a^2 over a's finite entries
    norm2_b: float

    @property
    def rel_dist(self) -> float:
        if self.nonfinite_mismatches:
            return math.inf
        dist, scale = math.sqrt(self.dist2), self._scale()
        return dist / scale if scale > 0 else (0.0 if dist == 0 else math.inf)

    def same(self, mode: str = "exact", rtol: float = 1e-5, atol: float = 0.0) -> bool:
        if self.nonfinite_mismatches:
            return False
        # as in verify: any mode but "exact" is tolerance, and equal bits pass either way
        if self.bit_mismatches == 0 or mode == "exact":
            return self.bit_mismatches == 0
        return math.sqrt(self.dist2) <= rtol * self._scale() + atol

    def pair(self, mode: str = "exact", rtol: float = 1e-5, atol: float = 0.0) -> Pair:
        return Pair(self.same(mode, rtol, atol), self.rel_dist)

    def _scale(self) -> float:
        return max(math.sqrt(self.norm2_a), math.sqrt(self.norm2_b))


@dataclass(frozen=True)
class ThreeWay:
    """Totals of one pass; pair-indexed fields follow PAIRS = ((0,1), (0,2), (1,2))."""
    n: int
    dist2: tuple
    bit_mismatches: tuple
    nonfinite_mismatches: tuple
    norm2: tuple       # per vector
    nonfinite: tuple   # per vector
    PAIRS: ClassVar[tuple] = PAIRS

    def pair(self, i: int, j: int) -> PairStats:
        k = PAIRS.index((min(i, j), max(i, j)))
        return PairStats(self.bit_mismatches[k], self.nonfinite_mismatches[k], self.dist2[k],
                         self.norm2[i], self.norm2[j])

    def compare(self, i: int, j: int, mode: str = "exact", rtol: float = 1e-5,
                atol: float = 0.0) -> Pair:
        """What verify.compare(x[i], x[j], mode, rtol, atol) returns."""
        return self.pair(i, j).pair(mode, rtol, atol)


def as_f32(x) -> np.ndarray:
    """A flat float32 numpy view (torch CPU tensors go through .numpy(), no copy)."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.detach().numpy()
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"expected float32, got {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1)


def _sq(x: np.ndarray) -> float:
    # einsum, not np.dot: BLAS threads dot products this long, which on cores shared with MPI
    # ranks runs far slower, and makes the sum's rounding depend on the thread count
    return float(np.einsum("i,i->", x, x))


def three_way(a, b, c, chunk: int = CHUNK) -> ThreeWay:
    xs = [as_f32(v) for v in (a, b, c)]
    n = xs[0].size
    if any(x.size != n for x in xs):
        raise ValueError("gradients differ in length")
    dist2, norm2 = [0.0] * 3, [0.0] * 3
    bits, nonfin_mis, nonfin = [0] * 3, [0] * 3, [0] * 3
    for lo in range(0, n, chunk):
        u = [x[lo:lo + chunk].view(np.uint32) for x in xs]
        fin = [(v & EXP_MASK) != EXP_MASK for v in u]
        cnt = [v.size - int(np.count_nonzero(f)) for v, f in zip(u, fin)]
        f64 = [x[lo:lo + chunk].astype(np.float64) for x in xs]
        for k in range(3):
            if cnt[k]:  # zero the non-finite entries so they add nothing (and raise no warnings)
                f64[k][~fin[k]] = 0.0
                nonfin[k] += cnt[k]
            norm2[k] += _sq(f64[k])
        for k, (i, j) in enumerate(PAIRS):
            diff = u[i] != u[j]
            m = int(np.count_nonzero(diff))
            if m == 0:  # identical bits: nothing else to add (the usual honest case)
                continue
            bits[k] += m
            d = f64[i] - f64[j]
            if cnt[i] or cnt[j]:
                both = fin[i] & fin[j]
                d[~both] = 0.0
                # non-finite mismatch: some side non-finite and the bits differ
                nonfin_mis[k] += int(np.count_nonzero(diff & ~both))
            dist2[k] += _sq(d)
    return ThreeWay(n, tuple(dist2), tuple(bits), tuple(nonfin_mis), tuple(norm2), tuple(nonfin))
