"""Format 4's summation order (core/pairwise.py, training.TreeFold): one tree per number of
fragments, whatever order the leaves arrive in and whichever were checked."""
import itertools

import numpy as np
import pytest
import torch
from single_process import tree_sum

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core.pairwise import PairwiseSum


def shape(n, order=None, absent=()):
    """The tree PairwiseSum builds over leaves 0..n-1, as a nested string."""
    s = PairwiseSum(n, lambda a, b: f"({a}+{b})")
    for i in order or range(n):
        s.set(i, None if i in absent else str(i))
    return s.result()


def test_the_tree_splits_off_the_largest_power_of_two_below_n():
    assert shape(1) == "0"
    assert shape(2) == "(0+1)"
    assert shape(3) == "((0+1)+2)"
    assert shape(4) == "((0+1)+(2+3))"
    assert shape(5) == "(((0+1)+(2+3))+4)"
    assert shape(7) == "(((0+1)+(2+3))+((4+5)+6))"
    for n in range(1, 40):  # and it is the tree the single-process reference writes out
        assert shape(n) == str(tree_sum([Leaf(str(i)) for i in range(n)]))


class Leaf:
    """A value whose sum shows where the parentheses fall."""

    def __init__(self, text):
        self.text = text

    def __add__(self, other):
        return Leaf(f"({self.text}+{other.text})")

    def __str__(self):
        return self.text


@pytest.mark.parametrize("n", [1, 2, 3, 6, 9, 16])
def test_the_order_of_arrival_and_absent_leaves_do_not_change_the_tree(n):
    want = shape(n)
    rng = np.random.default_rng(n)
    for _ in range(10):
        assert shape(n, rng.permutation(n).tolist()) == want
    # an absent leaf leaves its sibling to stand for the pair
    assert shape(3, absent={1}) == "(0+2)"
    assert shape(4, absent={0, 3}) == "(1+2)"
    assert shape(2, absent={0, 1}) is None


def test_a_leaf_set_twice_or_one_missing_is_an_error():
    s = PairwiseSum(3, lambda a, b: a + b)
    s.set(0, 1)
    with pytest.raises(ValueError, match="set twice"):
        s.set(0, 1)
    s.set(2, 1)  # leaf 1 becomes a hole
    with pytest.raises(ValueError, match=r"leaves \[1\] of 3"):
        s.result()
    with pytest.raises(IndexError):
        s.set(3, 1)


def test_streaming_holds_logarithmic_partial_sums_and_a_hole_one_sibling_per_level():
    n, peak = 1000, 0
    s = PairwiseSum(n, lambda a, b: a + b)
    s.set(500, None)  # ... leaves 0-499 and 500 are holes until set below
    for i in range(501, n):
        s.set(i, 1)
        peak = max(peak, s.held)
    for i in range(500):
        s.set(i, 1)
        peak = max(peak, s.held)
    assert peak <= 3 * 10  # log2(1000) ~ 10 levels: stack + the holes' siblings
    s2 = PairwiseSum(n, lambda a, b: a + b)
    peak2 = 0
    for i in range(n):
        s2.set(i, None if i == 500 else 1)
        peak2 = max(peak2, s2.held)
    assert peak2 <= 11 and s2.result() == n - 1


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(),
                               torch.nn.Linear(7, 3))


def test_the_tree_fold_gives_the_same_bits_whatever_order_the_answers_come_in():
    model = small_model()
    layout = Layout(model)
    rng = np.random.default_rng(1)
    answers = [rng.standard_normal(layout.answer_size).astype(np.float32) for _ in range(7)]
    for a in answers:  # a counter change of 1, as one forward pass makes
        a[-layout.n_count:] = 1
    counts, lines = [3, 0, 4, 4, 5, 2, 4], [3, 4, 4, 4, 5, 2, 4]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fold(order, absent=()):
        model.load_state_dict(state)
        opt = torch.optim.SGD(layout.params, lr=0.1)
        f = training.TreeFold(model, layout, len(answers))
        for i in order:
            f.set(i, None) if i in absent else f.set(i, answers[i], counts[i], lines[i])
        f.apply(opt, 0.1)
        return layout.digest()

    want = fold(range(7))
    for order in itertools.islice(itertools.permutations(range(7)), 0, 5040, 97):
        assert fold(order) == want
    assert fold(range(7), absent={2}) != want  # a dropped fragment is not in the sum
    # against a left-to-right sum, the tree is a different rounding: the format says which
    model.load_state_dict(state)
    opt = torch.optim.SGD(layout.params, lr=0.1)
    f = training.Fold(model, layout)
    for i in range(7):
        f.add(answers[i], counts[i], lines[i])
    f.apply(opt, 0.1)
    assert layout.digest() != want
