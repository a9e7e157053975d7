"""The ranks' reduction (`--reduce ranks`): which rank sums which slice of the answers, in what
order, which slices the manager sums again, and what it all costs on the wire. Pure, no MPI.

The answers' summed region (the gradient, then the float buffers' change: layout.py) is cut
into one slice per active rank. Slice j is summed by aggregator j, a rank drawn from the
secret key for the iteration (so nobody knows before the answers are committed who sums
what), over the iteration's leaves: every worker fragment in line order, each the answer that
stands for it (reduce_messages.TableLeaf), by format 4's pairwise tree (pairwise.py). The tree is elementwise, so
the slices' sums, put side by side, are the bits the manager's own tree over whole answers
gives (training.SliceSum): the reduction changes who adds, never what is added in which order.
The counters (a few integers per answer, whose median the step takes) go to the manager with
the commitment (`commitment`).

The aggregators are checked by the manager: after every sum is in, it draws `challenges`
slices from the key and sums them again itself from the aggregator's inputs, each opened
against its sender's committed root (merkle.py); a sum that differs from the inputs' is a lie
the inputs prove. docs/protocol.md, "The ranks' reduction", compares
this with two aggregators per slice and with random projections.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from typing import NamedTuple

import numpy as np

from podlt_mpi.core import merkle

ALIGN = 16  # values: every slice but the last starts and ends on a 64-byte boundary
STAR, RANKS, AUTO = "star", "ranks", "auto"
AGGREGATE, CHALLENGE = "aggregate", "challenge"  # the key's streams of one iteration's draws


def bounds(n_summed: int, n_slices: int, align: int = ALIGN) -> tuple:
    """(start, stop) of each of `n_slices` slices of [0, n_summed): near-equal in blocks of
    `align` values, the last ending at n_summed; some are empty where there are more slices
    than blocks."""
    if n_slices < 1:
        raise ValueError("a reduction needs at least one slice")
    blocks = -(-n_summed // align)
    cuts = [min(n_summed, align * (blocks * j // n_slices)) for j in range(n_slices)]
    return tuple(zip(cuts, [*cuts[1:], n_summed]))


def commitment(slice_digests, counters_digest: bytes) -> bytes:
    """An answer's root, what its rank commits to and the ledger keeps as its digest: the node
    over the Merkle root of its slices' leaves and the leaf of its counters (so the counters,
    sent to the manager with the commitment, are opened by one digest, the slices' root).
    `slice_digests`: the slices' leaves (or their root alone, a tree of one)."""
    return merkle.node(merkle.root(slice_digests), counters_digest)


class Committed(NamedTuple):
    """What a rank keeps of one answer it committed to: the answer, its root (the commitment,
    and the ledger's digest), its slices' root and every slice's Merkle path."""
    answer: np.ndarray
    root: bytes
    slices_root: bytes
    paths: list


def commit(answer: np.ndarray, n_summed: int, n_slices: int, threads: int = 1) -> Committed:
    """The commitment of an answer (float32: the summed region, then the counters)."""
    leaves = [merkle.leaf(answer[a:b], threads) for a, b in bounds(n_summed, n_slices)]
    slices_root, paths = merkle.tree(leaves)
    return Committed(answer, commitment([slices_root], merkle.leaf(answer[n_summed:])),
                     slices_root, paths)


def opens(slices_root: bytes, j: int, n_slices: int, values: np.ndarray, path) -> bool:
    """Whether `values` are slice j of the answer whose slices' root is `slices_root`."""
    return merkle.opens(slices_root, j, n_slices, merkle.leaf(values), path)


def _generator(key: bytes, iteration: int, stream: str):
    mac = hmac.new(key, f"podlt-roles:{iteration}:{stream}:0".encode(), hashlib.sha256)
    return np.random.default_rng(np.frombuffer(mac.digest(), np.uint32).tolist())


def aggregators(key: bytes, iteration: int, active) -> tuple:
    """Slice j's aggregator, for every j: the active ranks (in rank order), permuted by the
    key's AGGREGATE stream of the iteration."""
    ranks = sorted(active)
    return tuple(int(ranks[i]) for i in _generator(key, iteration, AGGREGATE).permutation(len(ranks)))


def challenged(key: bytes, iteration: int, n_slices: int, n: int) -> tuple:
    """The slices the manager sums again, in order: `n` of them (all, if there are fewer),
    drawn by the key's CHALLENGE stream, which no rank knows before it has sent its sum."""
    n = min(n, n_slices)
    picked = _generator(key, iteration, CHALLENGE).choice(n_slices, size=n, replace=False)
    return tuple(sorted(int(j) for j in picked))


def choose(mode: str, exact: bool, ranks_spin: bool, world: int) -> str:
    """The reduction `auto` takes, `star` or `ranks` as asked: the ranks' reduction in exact
    mode (tolerance mode needs every answer whole at the manager, for its sketch), where ranks
    spin (a rank that sleeps between polls on an oversubscribed node makes every hop of the
    reduction a wake-up), from MIN_RANKS up."""
    if mode != AUTO:
        return mode
    return RANKS if exact and ranks_spin and world >= MIN_RANKS else STAR


MIN_RANKS = 8  # below, the manager's link is not the bottleneck (traffic: 1-2 answers a rank)


# ---- counted bytes, and the cluster model -----------------------------------------------------

HEADER_BYTES = 9 * 8     # messages.HEADER_LEN int64
ANSWER_BYTES = 3 * 8     # [loss, signal, seconds]
ROOT_BYTES = 32
SIGNATURE_BYTES = 64     # signatures.py's Ed25519
TABLE_FIELDS = 4         # a leaf's (rank, seed, count, lines) in a table
FANOUT = 2               # reduce_messages.FANOUT: the table's copies out of each rank


def path_bytes(n_leaves: int) -> int:
    """The longest Merkle path over n_leaves leaves."""
    return ROOT_BYTES * max(0, math.ceil(math.log2(n_leaves))) if n_leaves > 1 else 0


def traffic(values: int, ranks: int, controls: int = 2, challenges: int = 2, counters: int = 0,
            data_bytes: int = 0) -> dict:
    """Bytes per iteration, each way, through the manager and through the busiest other rank,
    for the star and for the ranks' reduction, and a ring all-reduce's per rank; `values`: the
    summed region of an answer (float32), `ranks`: the world (the manager and ranks - 1 active),
    `data_bytes`: every worker's lines together (the same in both, and not part of a ring's
    reduction). The weights' broadcast (MPI's for large messages: a scatter, then a ring
    allgather) sends about two models from the root and moves about two through every other
    rank; both reductions use it. Honest iteration, no dispute."""
    a = ranks - 1
    w = a - controls
    model = 4 * (values + counters)
    bcast = 2 * model
    headers = a * HEADER_BYTES
    star = {"manager_in": a * (model + ANSWER_BYTES),
            "manager_out": bcast + headers + data_bytes,
            "rank_in": bcast / 2 + HEADER_BYTES + data_bytes / max(w, 1),
            "rank_out": bcast / 2 + model + ANSWER_BYTES}
    slice_bytes = 4 * values / a
    # a slice's path to its slices' root, then the counters; a SLICE also carries its sender's
    # signature, which a proof leaves out where the input opens
    path = path_bytes(a) + ROOT_BYTES
    signed = path + SIGNATURE_BYTES
    # reduce_messages.table, int64: [slices, leaves, each slice's aggregator, each leaf's
    # (rank, seed, count, lines) and root], relayed through a tree of the ranks, FANOUT copies
    # out of each (point to point from the manager, a x w entries would be 75 MB an iteration
    # at 1024 ranks, whatever the model)
    table = 8 * (2 + a + TABLE_FIELDS * w) + ROOT_BYTES * w
    commit = 2 * ROOT_BYTES + ANSWER_BYTES + 4 * counters  # the root, the slices' root
    # a slice's sum, then one bit per leaf, 32 to a 4-byte word
    sums = a * (slice_bytes + 4 * -(-w // 32))
    inputs = min(challenges, a) * w * (slice_bytes + path)  # unflagged: no signature
    ranks_mode = {
        "manager_in": a * commit + sums + inputs,
        "manager_out": bcast + headers + data_bytes + a * HEADER_BYTES + FANOUT * table,
        # an aggregator that also worked: its weights, lines, the table, w slices in; its own
        # answer's a slices and its sum out
        "rank_in": bcast / 2 + HEADER_BYTES + data_bytes / max(w, 1) + table
                   + w * (slice_bytes + signed),
        "rank_out": bcast / 2 + commit + FANOUT * table + a * (slice_bytes + signed) + slice_bytes
                    + w * (slice_bytes + path),  # + its inputs, if challenged
    }
    ring = 2 * (ranks - 1) / ranks * model
    return {"star": star, "ranks": ranks_mode, "ring": ring}


def busiest(link: dict) -> float:
    """The most bytes any one link carries one way, of a `traffic` entry."""
    return max(link.values())
