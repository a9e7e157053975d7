"""The ranks' reduction's pure parts (core/merkle.py, core/reduction.py) and its sums
(training.SliceSum): the commitments open only what was committed, the slices cover the answer,
the draws come from the key, the slices' sums are the manager's tree bit for bit, and the
cluster model keeps the busiest link within 2x a ring all-reduce's."""
import math

import numpy as np
import pytest
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import merkle, reduction, roles

# ---- Merkle commitments -------------------------------------------------------------------------


def digests(n, seed=0):
    rng = np.random.default_rng(seed)
    return [merkle.leaf(rng.standard_normal(17).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 33])
def test_every_leaf_opens_under_the_root_and_nothing_else_does(n):
    leaves = digests(n)
    top, paths = merkle.tree(leaves)
    assert top == merkle.root(leaves)
    other = digests(1, seed=99)[0]
    for i in range(n):
        assert paths[i] == merkle.path(leaves, i)
        assert len(paths[i]) == merkle.depth(i, n) <= max(0, (n - 1).bit_length())
        assert merkle.opens(top, i, n, leaves[i], paths[i])
        assert not merkle.opens(top, i, n, other, paths[i])          # another slice
        if n > 1:
            assert not merkle.opens(top, (i + 1) % n, n, leaves[i], paths[i])  # another place
            bent = [bytes(32)] + paths[i][1:]
            assert not merkle.opens(top, i, n, leaves[i], bent)      # a forged sibling
        assert not merkle.opens(merkle.root(digests(n, seed=5)), i, n, leaves[i], paths[i])


def test_an_inner_node_cannot_pass_for_a_leaf():
    """RFC 6962's prefixes: the digest of two leaves' node, opened as one leaf of a smaller tree
    with the rest of the path, does not reach the root."""
    leaves = digests(4)
    top, paths = merkle.tree(leaves)
    inner = merkle.node(leaves[0], leaves[1])
    assert merkle.opens(top, 0, 2, inner, paths[0][1:]) is True  # the tree of two nodes ...
    # ... but as a leaf's data it is hashed with the leaf prefix, which no node has
    assert merkle.leaf(np.frombuffer(leaves[0] + leaves[1], np.uint8)) != inner


def test_a_changed_value_changes_the_root():
    a = np.arange(100, dtype=np.float32)
    b = a.copy()
    b[37] = np.nextafter(b[37], np.float32(1e9))
    assert merkle.leaf(a) != merkle.leaf(b)


# ---- slices and draws ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(1000, 7), (16, 4), (10, 30), (247_786, 49), (5, 1)])
def test_the_slices_cover_the_summed_region_in_aligned_near_equal_pieces(n, k):
    cuts = reduction.bounds(n, k)
    assert len(cuts) == k and cuts[0][0] == 0 and cuts[-1][1] == n
    assert all(a <= b for a, b in cuts)
    assert all(cuts[i][1] == cuts[i + 1][0] for i in range(k - 1))
    assert all(a % reduction.ALIGN == 0 for a, _ in cuts)
    sizes = [b - a for a, b in cuts[:-1]]
    if n >= k * reduction.ALIGN and sizes:
        assert max(sizes) - min(sizes) <= reduction.ALIGN


def test_aggregators_and_challenges_come_from_the_key_alone():
    key, other = roles.key_from_seed(1), roles.key_from_seed(2)
    active = [3, 1, 7, 4, 9, 2]
    a = reduction.aggregators(key, 5, active)
    assert sorted(a) == sorted(active)
    assert a == reduction.aggregators(key, 5, sorted(active))  # rank order, not the caller's
    draws = {reduction.aggregators(k, i, active) for k in (key, other) for i in range(8)}
    assert len(draws) > 10
    c = reduction.challenged(key, 5, 6, 2)
    assert len(c) == 2 and len(set(c)) == 2 and all(0 <= j < 6 for j in c) and list(c) == sorted(c)
    assert reduction.challenged(key, 5, 3, 9) == (0, 1, 2)
    seen = {j for i in range(60) for j in reduction.challenged(key, i, 6, 2)}
    assert seen == set(range(6))  # every slice can be challenged


def test_auto_takes_the_reduction_only_where_it_can_win():
    assert reduction.choose("ranks", False, False, 3) == reduction.RANKS
    assert reduction.choose("star", True, True, 64) == reduction.STAR
    assert reduction.choose("auto", True, True, 16) == reduction.RANKS
    assert reduction.choose("auto", False, True, 16) == reduction.STAR  # tolerance mode
    assert reduction.choose("auto", True, False, 16) == reduction.STAR  # ranks that sleep
    assert reduction.choose("auto", True, True, 4) == reduction.STAR


# ---- the sums ------------------------------------------------------------------------------------


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(),
                               torch.nn.Linear(7, 3))


@pytest.mark.parametrize("n_slices", [1, 2, 3, 7, 40])
def test_the_slices_sums_side_by_side_are_the_manager_s_tree_bit_for_bit(n_slices):
    model = small_model()
    layout = Layout(model)
    rng = np.random.default_rng(3)
    n = 9
    answers = [(rng.standard_normal(layout.answer_size) * 10.0 ** rng.integers(-3, 4))
               .astype(np.float32) for _ in range(n)]
    counts, lines = [3, 0, 4, 4, 5, 2, 4, 1, 6], [3, 4, 4, 4, 5, 2, 4, 1, 6]
    absent = {2, 6}
    whole = training.TreeFold(model, layout, n)
    for i in range(n):
        whole.set(i, None) if i in absent else whole.set(i, answers[i], counts[i], lines[i])
    want_total, want_change = whole.grads.result(), whole.changes.result()
    summed = layout.n_grad + layout.n_float
    parts = []
    for a, b in reduction.bounds(summed, n_slices):
        s = training.SliceSum(layout, n, a, b, whole.before)
        for i in reversed(range(n)):  # any order: the tree is fixed
            s.set(i, None if i in absent else answers[i][a:b], counts[i], lines[i])
        parts.append(s.result())
    total, change = training.joined(parts, layout.n_grad, layout.n_float)
    assert torch.equal(total, want_total) and torch.equal(change, want_change)
    # the same leaves in plain line order are another rounding: the tree is what is matched
    plain = sum(torch.as_tensor(answers[i][:layout.n_grad]) * counts[i]
                for i in range(n) if i not in absent)
    assert not torch.equal(plain, want_total)


# ---- the cluster model -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [247_786, 24_200_000])
def test_the_busiest_link_stays_within_twice_a_ring_all_reduce_from_4_to_1024_ranks(values):
    for ranks in (4, 8, 16, 64, 256, 1024):
        t = reduction.traffic(values, ranks)
        assert reduction.busiest(t["ranks"]) <= 2 * t["ring"], ranks
        # the manager's link carries about one model in and out, not one per rank
        assert t["ranks"]["manager_in"] < 4 * 4 * values + 64 * ranks * ranks
    star = reduction.traffic(24_200_000, 256)
    assert 100 < star["star"]["manager_in"] / star["ring"] < 160  # the 128x


# ---- the wire ---------------------------------------------------------------------------------------

def test_a_table_travels_as_int64_and_is_checked_on_arrival():
    from podlt_mpi.mpi import reduce_messages as rm
    leaves = [rm.TableLeaf(3, 2**62 + 5, 7, 9, bytes(range(32))),
              rm.TableLeaf(-1, 11, 0, 0, bytes(32))]
    arr = rm.table(4, (1, 3, 2, 1), leaves)
    assert arr.dtype == np.int64
    got = rm.read_table(arr, world=5)
    assert got.n_slices == 4 and got.aggregators == (1, 3, 2, 1) and list(got.leaves) == leaves
    for bad in (arr[:-1], np.concatenate([arr, arr[:1]]), arr[:1]):
        with pytest.raises(ValueError):
            rm.read_table(bad, world=5)
    with pytest.raises(ValueError, match="outside"):
        rm.read_table(arr, world=3)  # rank 3 is not in a world of 3


def test_a_commitment_a_slice_and_a_sum_say_what_they_carry():
    from podlt_mpi.mpi import reduce_messages as rm
    rng = np.random.default_rng(0)
    answer = rng.standard_normal(103).astype(np.float32)
    c = reduction.commit(answer, 100, 4)
    root, slices_root, counters = rm.read_commitment(rm.commitment(c.root, c.slices_root,
                                                                   answer[100:]))
    assert (root, slices_root) == (c.root, c.slices_root) and np.array_equal(counters, answer[100:])
    assert root == reduction.commitment([slices_root], merkle.leaf(answer[100:]))
    for j, (a, b) in enumerate(reduction.bounds(100, 4)):
        msg = rm.slice_message(answer[a:b], c.paths[j], bytes(range(64)))
        assert len(msg) == rm.slice_len(a, b, j, 4)
        values, path, signature = rm.read_slice(msg, a, b)
        assert signature == bytes(range(64)) and len(path) == merkle.depth(j, 4)
        assert reduction.opens(slices_root, j, 4, values, path)
        assert not reduction.opens(slices_root, (j + 1) % 4, 4, values, path)
    flags = [0, 1, 0] + [0] * 30 + [1]  # two words, the second padded
    msg = rm.sum_message(answer[:16], flags)
    assert len(msg) == rm.sum_len(0, 16, len(flags)) == 18
    values, flagged = rm.read_sum(msg, 0, 16, len(flags))
    assert np.array_equal(values, answer[:16]) and flagged == [1, 33]
    with pytest.raises(ValueError, match="past the last"):
        rm.read_sum(msg, 0, 16, 33)  # leaf 33's flag lies in the padding of 33 leaves


def test_a_proof_carries_a_signature_only_on_the_inputs_its_aggregator_flagged():
    from podlt_mpi.mpi import reduce_messages as rm
    answer = np.arange(100, dtype=np.float32)
    c = reduction.commit(answer, 100, 4)
    j, (a, b) = 2, reduction.bounds(100, 4)[2]
    inputs = [rm.slice_message(answer[a:b] + k, c.paths[j], bytes([k]) * 64) for k in range(3)]
    flags = [False, True, False]
    msg = rm.proof_message(inputs, flags)
    n = rm.slice_len(a, b, j, 4)
    assert len(msg) == rm.proof_len(a, b, j, 4, flags) == 3 * n - 2 * rm.SIGNATURE_WORDS
    back = rm.read_proof(msg, a, b, j, 4, flags)
    assert np.array_equal(back[1], inputs[1])  # the flagged one whole: the evidence
    for k in (0, 2):
        values, path, signature = rm.read_slice(back[k], a, b)
        assert np.array_equal(values, answer[a:b] + k) and path == c.paths[j]
        assert signature == bytes(64)


def test_a_slice_that_does_not_open_is_its_sender_s_lie_only_under_its_signature():
    """judge, the manager's rule for a flagged input: a slice that opens is the committed one
    whoever hands it over; one that does not, signed by its sender, is the sender's own word
    against its commitment; unsigned, or signed by another key, or for another iteration,
    slice or fragment, it proves nothing (an aggregator could have made it up)."""
    from podlt_mpi.core import signatures
    from podlt_mpi.mpi import reduce_messages as rm
    answer = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    c = reduction.commit(answer, 100, 4)
    sender, other = signatures.Signer(), signatures.Signer()
    leaf = rm.TableLeaf(2, 77, 5, 5, c.slices_root, sender.public)
    j, (a, b) = 1, reduction.bounds(100, 4)[1]

    def judged(values, signer=sender, it=3, jj=j, seed=77):
        path = c.paths[j]
        sig = signer.sign(signatures.statement(it, jj, seed, merkle.leaf(values), path))
        return rm.judge(rm.slice_message(values, path, sig), leaf, 3, j, 4, a, b)
    lie = answer[a:b].copy()
    lie[0] += 1
    assert judged(answer[a:b]) == judged(answer[a:b], other) == rm.OPENS
    assert judged(lie) == rm.EQUIVOCAL
    assert {judged(lie, other), judged(lie, it=4), judged(lie, jj=2), judged(lie, seed=78)} \
        == {rm.UNSIGNED}
    assert rm.judge(np.zeros(rm.slice_len(a, b, j, 4), np.float32), leaf, 3, j, 4, a, b) \
        == rm.UNSIGNED  # what a PROOF holds for an input that never came
    assert rm.judge(rm.signed_slice(sender, 3, j, 77, answer, c.paths[j], a, b), leaf, 3, j, 4,
                    a, b) == rm.OPENS


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 49, 1023])
def test_the_table_s_relay_reaches_every_rank_once_from_a_rank_that_has_it(n):
    """A tree rooted at the manager: every recipient has one parent, which is the manager or
    a recipient earlier in the order (it has the table by then), and nobody sends more than
    FANOUT copies; the depth grows as log(n)."""
    from podlt_mpi.mpi import reduce_messages as rm
    ranks = tuple(range(3, 3 + 2 * n, 2))  # not 1..n: ranks are looked up, not computed
    parent_of, sent = {}, {}
    for r in (0, *ranks):
        parent, children = rm.relay(ranks, r)
        sent[r] = children
        assert len(children) <= rm.FANOUT and (parent is None) == (r == 0)
        if r:
            parent_of[r] = parent
    assert sorted(c for cs in sent.values() for c in cs) == sorted(ranks)
    for r, p in parent_of.items():
        assert r in sent[p] and (p == 0 or ranks.index(p) < ranks.index(r))
    depth = {0: 0}
    for r in ranks:
        depth[r] = depth[parent_of[r]] + 1
    assert max(depth.values()) <= 1 + math.log2(n + 1)


def test_a_late_table_or_slice_is_never_taken_for_a_later_iteration():
    from podlt_mpi.mpi import tags
    for it in (0, 5, 63, 64, 1000):
        t, s = tags.table_tag(it), tags.slice_tag(it)
        assert tags.is_table(t) and tags.is_slice(s) and not tags.is_slice(t)
        assert t not in tags.KNOWN and s not in tags.KNOWN and t != tags.table_tag(it + 1)
        assert tags.ahead(t, it - 1) and tags.ahead(s, it - 1)  # the next one's: kept
        assert not tags.ahead(t, it) and not tags.ahead(s, it + 3)  # late: discarded
    assert not tags.ahead(tags.SUM, 0)
