"""The look every unchecked answer gets before it is applied (ledger format 5). Pure, no MPI.

An unchecked answer is applied on trust: no control computed it. Trust stops at what honest work
can give. An answer is looked at for two things, cheap next to the fold that reads it anyway:
  - finiteness: NaN or Inf in the answer or its loss, where the model is finite;
  - size: the norm of its gradient, and of its change to the float buffers (BatchNorm's running
    statistics), against BOUND times the median of the previous iteration's standing answers.
An answer outside is not applied until the manager has recomputed its fragment itself (the
referee's recomputation): the same result is applied (honest work can be large), a different one
removes the rank and the recomputation is applied in its place.

Why a median and why BOUND (docs/protocol.md, "The look"): a minority of cheaters cannot move the
median of the other answers, and a fragment's gradient is a mean over its lines, so honest norms
within one iteration, and from one iteration to the next at a learning rate that trains, stay
within a small factor of the median. A cheater that stays just inside the bound adds at most
BOUND x median / W to the mean update of W workers, for as long as no check catches it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

BOUND = 10.0  # x the previous iteration's median norm


@dataclass(frozen=True)
class Sizes:
    """What the look reads from one answer."""
    finite: bool       # every value of the answer, and its loss
    grad: float        # the gradient's 2-norm
    buffers: float     # the 2-norm of its change to the float buffers (0 without any)


@dataclass(frozen=True)
class Reference:
    """The previous iteration's median norms (None: no iteration yet, the manager computes one
    fragment itself first)."""
    grad: float
    buffers: float

    def to_json(self) -> list:
        return [self.grad, self.buffers]

    @classmethod
    def from_json(cls, v) -> Reference | None:
        return None if v is None else cls(float(v[0]), float(v[1]))


def reference(sizes) -> Reference | None:
    """The median norms of an iteration's standing, finite answers (None if there are none)."""
    sizes = [s for s in sizes if s.finite]
    if not sizes:
        return None
    return Reference(statistics.median(s.grad for s in sizes),
                     statistics.median(s.buffers for s in sizes))


def why(sizes: Sizes, ref: Reference | None, model_finite: bool = True) -> str | None:
    """Why the answer may not be applied on trust, or None if it may."""
    if not sizes.finite and model_finite:
        return "non-finite"
    if ref is None:
        return None
    for what, v, r in (("gradient", sizes.grad, ref.grad), ("buffers", sizes.buffers, ref.buffers)):
        if not math.isfinite(v) or v > BOUND * r and v > 0:
            return f"{what} norm {v:.4g} > {BOUND:g} x median {r:.4g}"
    return None


# ---- the ranks' reduction (reduction.py): the look, slice by slice ---------------------------

MARGIN = 1e-3  # the manager's allowance, either way, for another processor's rounding of norms


def slice_outliers(sizes, margin: float = 0.0) -> set:
    """Under the ranks' reduction no answer reaches the manager whole, so each aggregator looks
    at its slice of every input: `sizes`, {leaf: (finite, the gradient part's squared norm,
    the float buffers' change's squared norm)} over that slice alone. The leaves outside:
    non-finite, or either squared norm beyond BOUND^2 times the median of the slice's finite
    inputs (one iteration's: a minority of cheaters cannot move it). An answer inside in every
    slice is within BOUND times the root of the sum of the slices' medians: beyond it, some
    slice would hold more than its share. `margin` widens (> 0) or narrows (< 0) the bound by
    that fraction, for the manager judging an aggregator's look from another processor."""
    finite = [s for s in sizes.values() if s[0]]
    if not finite:
        return {i for i, s in sizes.items() if not s[0]}
    medians = [statistics.median(s[k] for s in finite) for k in (1, 2)]
    limit = BOUND * BOUND * (1 + margin)
    return {i for i, (ok, *norms) in sizes.items()
            if not ok or any(v > limit * m and v > 0 for v, m in zip(norms, medians))}
