"""Verdicts: agreement, each single fake position, disputes, tolerance, NaN bit patterns."""
import numpy as np
import pytest

from podlt_mpi.core import verify


def g(seed, n=1000):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_all_equal_agree():
    a = g(0)
    d = verify.decide({1: a, 2: a.copy(), 3: a.copy()})
    assert d.verdict == "agree" and d.fake == []
    assert all(r == 0 for _, _, r in d.rel_dist)


@pytest.mark.parametrize("odd", [1, 2, 3])
def test_single_fake_in_each_position(odd):
    a = g(0)
    votes = {r: (g(9) if r == odd else a.copy()) for r in (1, 2, 3)}
    d = verify.decide(votes)
    assert d.verdict == "fake" and d.fake == [odd]
    assert odd not in d.majority and len(d.majority) == 2


def test_three_different_is_a_dispute_and_removes_nobody():
    d = verify.decide({1: g(0), 2: g(1), 3: g(2)})
    assert d.verdict == "dispute" and d.fake == []


def test_exact_mode_rejects_one_ulp():
    a = g(0)
    b = a.copy()
    b[17] = np.nextafter(b[17], np.float32(np.inf))
    assert not verify.compare(a, b, "exact").same
    assert verify.compare(a, b, "tolerance", rtol=1e-5).same


def test_tolerance_bounds():
    a = g(0)
    b = a * np.float32(1 + 1e-3)  # rel dist 1e-3: a bf16-sized cheat
    assert not verify.compare(a, b, "tolerance", rtol=1e-5).same
    assert verify.compare(a, b, "tolerance", rtol=1e-2).same
    assert verify.compare(a, b, "tolerance", rtol=0, atol=1.0).same  # ||a-b|| ~ 0.03


def test_same_nan_bits_agree_and_nan_against_finite_differs():
    a = g(0)
    a[5] = np.nan
    b = a.copy()
    for mode in ("exact", "tolerance"):
        assert verify.compare(a, b, mode).same
        c = g(0)  # finite where a has NaN
        assert not verify.compare(a, c, mode).same
    d = verify.decide({1: a, 2: b, 3: g(0)})
    assert d.verdict == "fake" and d.fake == [3]


def test_nan_payloads_and_infinities_compare_by_bits():
    a = g(0)
    b = a.copy()
    a.view(np.uint32)[3] = 0x7FC00000
    b.view(np.uint32)[3] = 0x7FC00001  # another NaN payload
    assert not verify.compare(a, b, "tolerance").same
    a[3], b[3] = np.inf, -np.inf
    assert not verify.compare(a, b, "exact").same
    b[3] = np.inf
    assert verify.compare(a, b, "tolerance").same


def test_shape_mismatch_differs():
    assert not verify.compare(g(0, 10), g(0, 11)).same


def test_referee_overturns_colluding_majority():
    honest, wrong = g(0), -g(0)
    votes = {1: wrong, 2: wrong.copy(), 3: honest}  # fake worker 1 and fake control 2 collude
    d = verify.decide(votes)
    assert d.verdict == "fake" and d.fake == [3]  # the plain vote would remove the honest rank
    d = verify.referee(d, votes, honest.copy())
    assert d.verdict == "fake" and sorted(d.fake) == [1, 2] and d.majority == [3]
    assert d.referee["overturned"] is True


def test_referee_confirms_a_true_fake():
    honest = g(0)
    votes = {1: honest, 2: honest.copy(), 3: g(5)}
    d = verify.referee(verify.decide(votes), votes, honest.copy())
    assert d.fake == [3] and d.referee["overturned"] is False


def test_referee_matching_nobody_removes_nobody():
    votes = {1: g(0), 2: g(0), 3: g(5)}
    d = verify.referee(verify.decide(votes), votes, g(7))
    assert d.verdict == "dispute" and d.fake == []


def test_more_controls_need_a_strict_majority():
    a = g(0)
    d = verify.decide({1: a, 2: a.copy(), 3: g(1), 4: g(2), 5: a.copy()})
    assert d.verdict == "fake" and d.fake == [3, 4]
    d = verify.decide({1: a, 2: a.copy(), 3: g(1), 4: g(1)})  # 2-2: no majority of 4
    assert d.verdict == "dispute"


def test_a_dispute_is_settled_by_two_votes_equal_to_the_managers():
    d = verify.settle([2, 4, 5, 1], [4, 1])
    assert d.verdict == "fake" and d.fake == [2, 5] and d.majority == [4, 1]
    assert verify.settle([2, 4, 5], [4]).verdict == "dispute"       # one is not a majority
    assert verify.settle([2, 4, 5], [2, 4, 5]).verdict == "dispute"  # nobody to lose


@pytest.mark.parametrize("k", [3, 4])
def test_identical_bits_shortcut_decides_what_the_full_comparison_decides(k):
    from itertools import combinations
    a = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    a[7] = np.nan
    grads = {r: a.copy() for r in range(1, k + 1)}
    fast = verify.decide(grads)
    full = [[r, s, verify.compare(grads[r], grads[s]).rel_dist] for r, s in combinations(grads, 2)]
    assert fast.verdict == "agree" and fast.fake == [] and fast.rel_dist == full
    grads[2] = grads[2].copy()
    grads[2][0] = np.nextafter(grads[2][0], np.float32(np.inf))  # one ulp: no shortcut
    assert verify.decide(grads).fake == [2]
