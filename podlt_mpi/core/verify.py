"""Are gradients "the same", and what follows from the votes. Pure, no MPI.

exact: bitwise equality (honest ranks with the same build and thread count agree bit for bit).
tolerance: ||a-b|| <= rtol * max(||a||, ||b||) + atol over the finite entries; non-finite entries
must sit at the same places with the same bits, so two honest NaNs agree and a NaN against a finite
value does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from podlt_mpi.core.fused import Pair
from podlt_mpi.core.fused import three_way as fused_three_way


def compare(a: np.ndarray | None, b: np.ndarray | None, mode: str = "exact",
            rtol: float = 1e-5, atol: float = 0.0) -> Pair:
    """None is a rank's refused answer (malformed, or none in time): the same as nothing."""
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
        return Pair(False, float("inf"))
    bits_equal = a.tobytes() == b.tobytes()
    fa, fb = np.isfinite(a), np.isfinite(b)
    nonfinite_same = bool(np.array_equal(fa, fb)) and (
        fa.all() or a[~fa].tobytes() == b[~fb].tobytes())
    if not nonfinite_same:
        return Pair(False, float("inf"))
    fin_a = a[fa].astype(np.float64)
    fin_b = b[fb].astype(np.float64)
    dist = float(np.linalg.norm(fin_a - fin_b))
    scale = max(float(np.linalg.norm(fin_a)), float(np.linalg.norm(fin_b)))
    rel = dist / scale if scale > 0 else (0.0 if dist == 0 else float("inf"))
    if mode == "exact":
        return Pair(bits_equal, rel)
    return Pair(bits_equal or dist <= rtol * scale + atol, rel)


def same_loss(a: float, b: float, mode: str = "exact", rtol: float = 1e-5,
              atol: float = 0.0) -> bool:
    """Two ranks' losses for the same lines (ledger format 5 compares them with the gradients):
    the same bits, or in tolerance mode within its bound."""
    return compare(np.array([a], np.float64), np.array([b], np.float64), mode, rtol, atol).same


@dataclass
class Decision:
    verdict: str                        # agree | fake | dispute
    fake: list = field(default_factory=list)
    majority: list = field(default_factory=list)  # ranks whose (equal) result stands
    rel_dist: list = field(default_factory=list)  # [[rank_a, rank_b, d], ...]
    referee: dict | None = None          # the manager's confirmation, where one was needed


def decide(grads: dict, mode: str = "exact", rtol: float = 1e-5, atol: float = 0.0,
           three_way=None, losses: dict | None = None) -> Decision:
    """Votes of the checked worker and its controls (rank -> gradient, None where the rank's
    answer was refused; `losses`, rank -> the loss it sent: from format 5 two votes are the
    same only if their losses are too).

    `three_way(a, b, c) -> fused.ThreeWay`: the fused pass to use (default the numpy
    one; a GPU manager passes kernels.for_device's Triton kernel).

    agree: all equal. fake: a strict majority agrees among itself and every other rank differs
    from each of them. Anything else (a 1-1-1 split, or tolerance that is not transitive) is a
    dispute: nobody can be removed on it.
    """
    ranks = list(grads)
    same = {}
    rel = []
    same_shape = _same_shape(grads.values())
    if same_shape and len({grads[r].tobytes() for r in ranks}) == 1:
        # all bits equal, the honest case: the same verdict and rel_dist (0.0) as the full pass,
        # for a memcmp, a small part of the fused pass's cost
        pairs = {(r, s): Pair(True, 0.0) for r, s in combinations(ranks, 2)}
    elif len(ranks) == 3 and same_shape:
        # the usual check: one fused pass reads each vector once (kernels/)
        stats = (three_way or fused_three_way)(*(grads[r] for r in ranks))
        pairs = {(ranks[i], ranks[j]): stats.compare(i, j, mode, rtol, atol)
                 for i, j in stats.PAIRS}
    else:
        pairs = {(r, s): compare(grads[r], grads[s], mode, rtol, atol)
                 for r, s in combinations(ranks, 2)}
    for (r, s), p in pairs.items():
        same[(r, s)] = same[(s, r)] = p.same and (
            losses is None or same_loss(losses[r], losses[s], mode, rtol, atol))
        rel.append([r, s, p.rel_dist])
    return _vote(ranks, same, rel)


def _same_shape(arrays) -> bool:
    arrays = list(arrays)
    return all(a is not None and a.dtype == np.float32 and a.shape == arrays[0].shape for a in arrays)


def _vote(ranks, same, rel) -> Decision:
    if all(same[(r, s)] for r, s in combinations(ranks, 2)):
        return Decision("agree", [], ranks, rel)
    need = len(ranks) // 2 + 1
    for group in _cliques(ranks, same):
        if len(group) >= need:
            rest = [r for r in ranks if r not in group]
            if all(not same[(r, g)] for r in rest for g in group):
                return Decision("fake", rest, group, rel)
    return Decision("dispute", [], [], rel)


def _cliques(ranks, same):
    """Largest groups of mutually equal results, biggest first (K+1 is small: brute force)."""
    for k in range(len(ranks), 1, -1):
        for group in combinations(ranks, k):
            if all(same[(r, s)] for r, s in combinations(group, 2)):
                yield list(group)


def referee(decision: Decision, grads: dict, reference: np.ndarray, mode: str = "exact",
            rtol: float = 1e-5, atol: float = 0.0, losses: dict | None = None,
            reference_loss: float | None = None) -> Decision:
    """Confirm a removal against the manager's own, trusted recomputation of the fragment.

    A majority of colluding fakes (a fake worker and a fake control returning the same wrong
    result) would otherwise outvote an honest rank. A removal stands only against ranks that
    differ from the reference, and only where some rank agrees with it (so a manager on different
    hardware cannot remove anybody by itself); otherwise the check becomes a dispute.
    """
    if decision.verdict != "fake":
        return decision
    agrees = [r for r in grads if compare(grads[r], reference, mode, rtol, atol).same and (
        losses is None or same_loss(losses[r], reference_loss, mode, rtol, atol))]
    return _confirm(decision, list(grads), agrees)


def _confirm(decision: Decision, ranks, agrees) -> Decision:
    ref = {"by": "manager", "agrees": agrees}
    if not agrees:
        return Decision("dispute", [], [], decision.rel_dist, ref)
    fake = [r for r in ranks if r not in agrees]
    if not fake:  # tolerance is not transitive: the majority and the odd one both pass
        return Decision("dispute", [], [], decision.rel_dist, ref)
    ref["overturned"] = sorted(fake) != sorted(decision.fake)
    return Decision("fake", fake, agrees, decision.rel_dist, ref)


def settle(ranks, agrees, rel_dist=(), step: dict | None = None) -> Decision:
    """A dispute after its rechecks: two votes equal to the manager's result win and every other
    vote loses; with fewer, or nobody to lose (tolerance is not transitive), it stays a dispute."""
    lose = [r for r in ranks if r not in agrees]
    if len(agrees) < 2 or not lose:
        return Decision("dispute", [], [], list(rel_dist), step)
    return Decision("fake", lose, list(agrees), list(rel_dist), step)


def by_hashes(hashes: dict, reference: str) -> Decision:
    """The decision the manager must have reached, from bitwise identities alone (the audit).

    `hashes`: rank -> sha256 of the gradient it sent; `reference`: the replayed gradient's.
    Exact mode only: there, "the same" is "the same bits".
    """
    ranks = list(hashes)  # None: a refused answer, the same as nothing
    same = {(r, s): hashes[r] is not None and hashes[r] == hashes[s]
            for r in ranks for s in ranks if r != s}
    decision = _vote(ranks, same, [])
    if decision.verdict != "fake":
        return decision
    return _confirm(decision, ranks, [r for r in ranks if hashes[r] == reference])
