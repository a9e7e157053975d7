"""Merkle commitments of an answer's slices (the ranks' reduction, reduction.py). Pure, no MPI.

A rank commits to its whole answer with one 32-byte root before any rank sees another's data;
each slice it then sends an aggregator travels with its path, which the aggregator (on
receipt) and the manager (when it re-sums a slice, or referees) check against the root. So
no slice that differs from the committed answer can enter a sum, and the ledger's digest of
the answer (the root) still names every applied fragment.

Leaves and inner nodes are BLAKE3 of different prefixes, so a leaf cannot pass for a node
(RFC 6962's rule against second preimages). The tree over n leaves is the tree of the first
k leaves joined with the tree of the rest, k the largest power of two below n (RFC 6962's
shape, and pairwise.py's): a path has at most ceil(log2 n) digests.
"""
from __future__ import annotations

import numpy as np

DIGEST = 32          # bytes of a leaf's, a node's and the root's digest
LEAF, NODE = b"\x00", b"\x01"


def _hash(*parts, threads: int = 1) -> bytes:
    import blake3
    h = blake3.blake3(max_threads=max(1, threads))
    for p in parts:
        h.update(p)
    return h.digest()


def leaf(values, threads: int = 1) -> bytes:
    """The digest of one leaf: a contiguous array's bytes (a slice of an answer)."""
    return _hash(LEAF, memoryview(np.ascontiguousarray(values)).cast("B"), threads=threads)


def node(left: bytes, right: bytes) -> bytes:
    return _hash(NODE, left, right)


def _split(n: int) -> int:
    """The size of the left subtree over n > 1 leaves: the largest power of two below n."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves) -> bytes:
    """The root over the leaves' digests, in order (at least one)."""
    leaves = list(leaves)
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node(root(leaves[:k]), root(leaves[k:]))


def path(leaves, i: int) -> list:
    """The siblings' digests from leaf i up to the root (what opens leaf i)."""
    leaves = list(leaves)
    if not 0 <= i < len(leaves):
        raise IndexError(f"leaf {i} of {len(leaves)}")
    return tree(leaves)[1][i]


def depth(i: int, n: int) -> int:
    """How many digests leaf i's path over n leaves has."""
    d = 0
    while n > 1:
        k = _split(n)
        i, n = (i, k) if i < k else (i - k, n - k)
        d += 1
    return d


def opens(top: bytes, i: int, n: int, digest: bytes, siblings) -> bool:
    """Whether `digest` is leaf i of n under the root `top`, by `siblings` (path's order)."""
    if not 0 <= i < n or len(siblings) != depth(i, n):
        return False
    sides = []  # from the root down: whether leaf i is in the left subtree
    while n > 1:
        k = _split(n)
        sides.append(i < k)
        i, n = (i, k) if i < k else (i - k, n - k)
    h = digest
    for left, sibling in zip(reversed(sides), siblings):
        h = node(h, sibling) if left else node(sibling, h)
    return h == top


def tree(leaves) -> tuple:
    """(root, every leaf's path) over the leaves' digests, each node hashed once: what a rank
    sends with its slices."""
    leaves = list(leaves)
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) == 1:
        return leaves[0], [[]]
    k = _split(len(leaves))
    (left, lp), (right, rp) = tree(leaves[:k]), tree(leaves[k:])
    return node(left, right), [p + [right] for p in lp] + [p + [left] for p in rp]
