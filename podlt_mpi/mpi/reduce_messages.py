"""What travels in the ranks' reduction (run/reduce.py, run/aggregate.py), as plain arrays. Pure,
no MPI. Every size follows from the run (the answer's length, the slices) and the table, so a
receiver knows each message's exact size before it probes for it.

- The commitment (on GRAD, in place of the answer): float32 [root, slices' root, counters], the
  two digests as 8 words each.
- REDUCE header (from the manager to every rank the table names: `recipients`), [REDUCE,
  iteration, the table's length, the round (0, or 1 where the look found a fake answer) and
  the rank it comes from (`relay_field`, `relay`), the aggregators' wait in ms,
  the table's digest as 4 int64], then the table (int64, on tags.table_tag): [slices, leaves,
  each slice's aggregator, each leaf's (rank, fragment seed, count, lines), each leaf's
  slices' root as 4 words]. A leaf's rank is -1 where the
  fragment is not applied. The seed names the answer: a rank is never told line numbers, and
  it knows each fragment it computed by its seed. Every aggregator needs every leaf, so the
  table goes through a tree of the ranks (the manager sends FANOUT copies, each rank forwards
  FANOUT), not to each from the manager: a x w entries out of its link was 75 MB an iteration
  at 1024 ranks. A rank checks what it is given against the header's digest, and one its
  relay did not give it asks the manager.
- SLICE (a sender to an aggregator, or to the manager when fetched): float32 [values, path,
  the sender's Ed25519 signature of signatures.statement (16 words)].
- SUM (an aggregator to the manager): float32 [the slice's sum, then one flag bit per leaf, 32
  to a 32-bit word from the lowest bit up (read as uint32): 1 where its input did not come or
  did not open under its root, else 0]. Bits, not words: at 1024 ranks a word per leaf would
  be 4.2 MB an iteration into the manager, past 2x a ring all-reduce's link for a 1 MB model.
- CHALLENGE header (iteration, slice): PROOF, the slice's inputs as SLICE messages, in leaf
  order, absent leaves left out, the signature only on those the SUM flagged (`proof_len`). FETCH header (iteration, slice, seed): one SLICE.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from podlt_mpi.core import merkle, signatures

REDUCE, CHALLENGE, FETCH = 4, 5, 6  # header commands, after messages.STOP..REGROUP
WORDS = merkle.DIGEST // 4          # float32 (or 8-byte int64: half as many) words of a digest
LEAF_FIELDS = 4                     # (rank, seed, count, lines)


def words(digest: bytes) -> np.ndarray:
    return np.frombuffer(digest, np.float32).copy()


def digest_of(w: np.ndarray) -> bytes:
    return np.ascontiguousarray(w, np.float32).tobytes()


def commit_len(n_count: int) -> int:
    return 2 * WORDS + n_count


def commitment(root: bytes, slices_root: bytes, counters: np.ndarray) -> np.ndarray:
    return np.concatenate([words(root), words(slices_root), np.asarray(counters, np.float32)])


def read_commitment(vec: np.ndarray) -> tuple:
    """(root, slices' root, counters) of a commitment."""
    return digest_of(vec[:WORDS]), digest_of(vec[WORDS:2 * WORDS]), vec[2 * WORDS:]


class TableLeaf(NamedTuple):
    rank: int          # -1: not applied
    seed: int          # the fragment's seed (messages.fragment_seed)
    count: int
    lines: int
    slices_root: bytes
    key: bytes = signatures.NO_KEY  # its rank's public key: the manager's, never in a table


class Table(NamedTuple):
    n_slices: int
    aggregators: tuple  # slice -> rank
    leaves: tuple       # TableLeaf, in line order


LEAF_WORDS = LEAF_FIELDS + merkle.DIGEST // 8  # int64, one leaf


def table(n_slices: int, aggregators, leaves) -> np.ndarray:
    head = [n_slices, len(leaves), *aggregators]
    fields = [v for x in leaves for v in (x.rank, x.seed, x.count, x.lines)]
    roots = b"".join(x.slices_root for x in leaves)
    return np.concatenate([np.array(head + fields, np.int64), np.frombuffer(roots, np.int64)])


def read_table(arr: np.ndarray, world: int) -> Table:
    """A TABLE, or ValueError saying why it is not one (it comes from rank 0, but a rank checks
    what it indexes with)."""
    if len(arr) < 2:
        raise ValueError("a table of fewer than 2 words")
    n_slices, n_leaves = int(arr[0]), int(arr[1])
    want = 2 + n_slices + n_leaves * LEAF_WORDS
    if n_slices < 1 or n_leaves < 0 or len(arr) != want:
        raise ValueError(f"a table of {len(arr)} words for {n_slices} slices, {n_leaves} leaves")
    aggregators = tuple(int(r) for r in arr[2:2 + n_slices])
    fields = arr[2 + n_slices:2 + n_slices + LEAF_FIELDS * n_leaves].reshape(n_leaves,
                                                                              LEAF_FIELDS)
    roots = arr[2 + n_slices + LEAF_FIELDS * n_leaves:].tobytes()
    if not all(0 < r < world for r in aggregators) or \
            not all(-1 <= int(r) < world for r in fields[:, 0]):
        raise ValueError("a table naming ranks outside the world")
    leaves = tuple(TableLeaf(int(r), int(s), int(c), int(n),
                             roots[merkle.DIGEST * i:merkle.DIGEST * (i + 1)])
                   for i, (r, s, c, n) in enumerate(fields))
    return Table(n_slices, aggregators, leaves)


def table_digest(arr: np.ndarray) -> np.ndarray:
    """What a REDUCE header names: the table's BLAKE3 digest as 4 int64 values."""
    return np.frombuffer(merkle.leaf(np.ascontiguousarray(arr, np.int64)), np.int64).copy()


def recipients(aggregators, leaves) -> tuple:
    """The ranks a table goes to, in rank order: the aggregators and every leaf's sender (a
    rank found fake on a recheck of another fragment keeps its own unchecked one applied,
    rules.applied, and aggregates nothing)."""
    return tuple(sorted({*aggregators, *(x.rank for x in leaves if x.rank > 0)}))


FANOUT = 2  # the copies of the table the manager sends, and each rank forwards


def relay_field(round_: int, parent: int) -> int:
    """A REDUCE header's seed field: the round (tags.step) and the rank the table comes from."""
    return round_ << 32 | parent


def read_relay(field: int) -> tuple:
    """(round, parent) of a REDUCE header's seed field."""
    return field >> 32, field & 0xFFFFFFFF


def relay(ranks, rank: int) -> tuple:
    """(the rank `rank` takes the table from, the ranks it forwards it to), in a tree over
    `ranks` (recipients) rooted at the manager (rank 0)."""
    at = ranks.index(rank) if rank else -1
    children = tuple(ranks[i] for i in range(FANOUT * (at + 1), FANOUT * (at + 2))
                     if i < len(ranks))
    return (0 if at < FANOUT else ranks[at // FANOUT - 1]) if rank else None, children


SIGNATURE_WORDS = signatures.SIGNATURE_BYTES // 4


def slice_len(a: int, b: int, j: int, n_slices: int) -> int:
    return (b - a) + WORDS * merkle.depth(j, n_slices) + SIGNATURE_WORDS


def slice_message(values: np.ndarray, path, signature: bytes) -> np.ndarray:
    return np.concatenate([np.asarray(values, np.float32), *(words(d) for d in path),
                           words(signature)])


def read_slice(msg: np.ndarray, a: int, b: int) -> tuple:
    """(values, path, signature) of a SLICE of slice [a, b)."""
    n = b - a
    rest = msg[n:len(msg) - SIGNATURE_WORDS]
    return (msg[:n], [digest_of(rest[i:i + WORDS]) for i in range(0, len(rest), WORDS)],
            digest_of(msg[len(msg) - SIGNATURE_WORDS:]))


PER_WORD = 32  # flags in a 32-bit word
_BITS = np.arange(PER_WORD, dtype=np.uint32)


def flag_words(n_leaves: int) -> int:
    return -(-n_leaves // PER_WORD)


def proof_len(a: int, b: int, j: int, n_slices: int, flags) -> int:
    """The length of a PROOF of slice j = [a, b): one input per present leaf (`flags`, in leaf
    order: whether its aggregator flagged it), the signature only on the flagged ones (the
    evidence; an input that opens needs none, and 64 bytes an input of the challenged slices
    put the manager's link past 2x a ring all-reduce's at 1024 ranks of a 1 MB model)."""
    return len(flags) * (slice_len(a, b, j, n_slices) - SIGNATURE_WORDS) + \
        SIGNATURE_WORDS * sum(map(bool, flags))


def proof_message(inputs, flags) -> np.ndarray:
    """A PROOF from the inputs as they came (SLICE messages, in leaf order) and their flags."""
    parts = [x if f else x[:len(x) - SIGNATURE_WORDS] for x, f in zip(inputs, flags)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def read_proof(msg: np.ndarray, a: int, b: int, j: int, n_slices: int, flags) -> list:
    """The inputs of a PROOF as SLICE messages (an unflagged one with a zero signature)."""
    out, at, n = [], 0, slice_len(a, b, j, n_slices)
    for f in flags:
        size = n if f else n - SIGNATURE_WORDS
        part = msg[at:at + size]
        out.append(part if f else np.concatenate([part, np.zeros(SIGNATURE_WORDS, np.float32)]))
        at += size
    return out


def signed_slice(signer, iteration: int, j: int, seed: int, answer, path, a: int,
                 b: int) -> np.ndarray:
    """The SLICE of slice j = [a, b) of `answer` (of fragment `seed`), signed by `signer`."""
    values = answer[a:b]
    statement = signatures.statement(iteration, j, seed, merkle.leaf(values), path)
    return slice_message(values, path, signer.sign(statement))


def opened(msg, leaf: TableLeaf, j: int, n_slices: int, a: int, b: int):
    """The values of a SLICE of slice j = [a, b) from `leaf`'s sender, where it is of the right
    size and opens under the leaf's committed root; else None."""
    if isinstance(msg, str) or len(msg) != slice_len(a, b, j, n_slices):
        return None
    values, path, _ = read_slice(msg, a, b)
    return values if merkle.opens(leaf.slices_root, j, n_slices, merkle.leaf(values),
                                  path) else None


OPENS, UNSIGNED, EQUIVOCAL = "opens", "unsigned", "equivocal"  # what a SLICE is (judge)


def judge(msg: np.ndarray, leaf: TableLeaf, iteration: int, j: int, n_slices: int, a: int,
          b: int) -> str:
    """What a SLICE of slice j = [a, b) from `leaf`'s sender is: OPENS under its committed root
    (its values are the committed ones, whoever sent them on); else EQUIVOCAL, under its
    sender's valid signature (the sender's own word against its commitment), or UNSIGNED (it
    proves nothing about anyone: whoever hands it over could have made it up). Only a slice
    that does not open has its signature checked."""
    if opened(msg, leaf, j, n_slices, a, b) is not None:
        return OPENS
    if len(msg) != slice_len(a, b, j, n_slices):
        return UNSIGNED
    values, path, signature = read_slice(msg, a, b)
    statement = signatures.statement(iteration, j, leaf.seed, merkle.leaf(values), path)
    return EQUIVOCAL if signatures.verifies(leaf.key, signature, statement) else UNSIGNED


def sum_len(a: int, b: int, n_leaves: int) -> int:
    return (b - a) + flag_words(n_leaves)


def sum_message(values, flags) -> np.ndarray:
    """`flags`: one 0 or 1 per leaf, in leaf order."""
    padded = np.zeros(PER_WORD * flag_words(len(flags)), np.uint32)
    padded[:len(flags)] = np.asarray(flags, bool)
    packed = (padded.reshape(-1, PER_WORD) << _BITS).sum(axis=1, dtype=np.uint32)
    return np.concatenate([np.asarray(values, np.float32), packed.view(np.float32)])


def read_sum(msg: np.ndarray, a: int, b: int, n_leaves: int) -> tuple:
    """(values, the leaves flagged, in order) of a SUM, or ValueError where a bit past the
    last leaf is set."""
    values = msg[:b - a]
    packed = np.ascontiguousarray(msg[b - a:]).view(np.uint32)
    bits = ((packed[:, None] >> _BITS) & 1).reshape(-1)
    if bits[n_leaves:].any():
        raise ValueError("it flags leaves past the last")
    return values, [int(i) for i in np.flatnonzero(bits)]
