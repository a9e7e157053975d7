"""The look at unchecked answers (core/looks.py) and what it feeds: pure parts, no MPI."""
import math

import numpy as np
import pytest
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import looks, records, rules


def sizes(grad=1.0, buffers=0.0, finite=True):
    return looks.Sizes(finite, grad, buffers)


def test_the_bound_is_ten_times_the_median():
    ref = looks.reference([sizes(1.0), sizes(2.0), sizes(100.0)])  # one liar cannot move it
    assert ref == looks.Reference(2.0, 0.0)
    assert looks.why(sizes(20.0), ref) is None
    assert looks.why(sizes(20.1), ref).startswith("gradient norm 20.1 > 10 x median 2")
    assert looks.why(sizes(1.0, finite=False), ref) == "non-finite"
    assert looks.why(sizes(1.0, finite=False), None) == "non-finite"  # even before a reference
    assert looks.why(sizes(1e9), None) is None
    assert looks.why(sizes(1.0, 5.0), looks.Reference(2.0, 0.4)).startswith("buffers norm 5")
    assert looks.why(sizes(0.0), looks.Reference(0.0, 0.0)) is None  # all honest zeros
    assert looks.reference([sizes(finite=False)]) is None
    assert looks.Reference.from_json(ref.to_json()) == ref and looks.Reference.from_json(None) is None


def test_answer_sizes_read_the_gradient_the_buffers_and_the_loss():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 3))
    layout = Layout(model)
    before = torch.cat([b.reshape(-1).float() for b in layout.float_buffers()])
    answer = np.zeros(layout.answer_size, np.float32)
    answer[:layout.n_grad] = 3.0
    answer[layout.n_grad:layout.n_grad + layout.n_float] = before.numpy() + 2.0
    got = training.answer_sizes(layout, answer, 0.5, before)
    assert got.finite
    assert math.isclose(got.grad, 3.0 * math.sqrt(layout.n_grad), rel_tol=1e-6)
    assert math.isclose(got.buffers, 2.0 * math.sqrt(layout.n_float), rel_tol=1e-6)
    assert not training.answer_sizes(layout, answer, float("nan"), before).finite
    answer[-1] = np.inf  # a counter
    assert not training.answer_sizes(layout, answer, 0.5, before).finite
    answer[-1], answer[0] = 0.0, np.nan
    assert not training.answer_sizes(layout, answer, 0.5, before).finite


def test_a_replaced_fragment_is_applied_from_the_manager():
    fragments = [(3, (0, 10)), (1, (10, 20)), (2, (20, 30))]
    outcome = rules.Outcome(2, "agree", (), (4, 5))
    assert rules.applied(fragments, [outcome], True, [(10, 20)]) == [
        ((0, 10), 3), ((10, 20), rules.MANAGER), ((20, 30), 2)]


def test_a_look_and_a_loss_survive_the_record():
    look = records.Look(3, (10, 20), "non-finite", "differs")
    assert records.Look.from_json(look.to_json()) == look
    with pytest.raises(records.RecordError, match="a look's verdict is 'maybe'"):
        records.Look.from_json({**look.to_json(), "verdict": "maybe"})
    a = records.Assignment(0, "manager", (10, 20), "ab", 0.25)
    assert records.Assignment.from_json(a.to_json(5), 5) == a
    assert "loss" not in a.to_json(4)
    with pytest.raises(records.RecordError, match="lacks loss"):
        records.Assignment.from_json(a.to_json(4) | {"role": "worker"}, 5)


def test_the_reduction_s_look_holds_back_a_slice_input_beyond_the_slice_s_median():
    """Per slice, against the median of the slice's finite inputs of this iteration: a
    minority cannot move it, a 10x norm (100x squared) is out, NaN is out, and the manager's
    margin widens or narrows the bound by its fraction (another processor's rounding)."""
    honest = {i: (True, 1.0 + 0.1 * i, 0.5) for i in range(5)}
    assert looks.slice_outliers(honest) == set()
    big = {**honest, 5: (True, 100.0 * 1.25 * 1.01, 0.5), 6: (False, float("nan"), 0.0)}
    assert looks.slice_outliers(big) == {5, 6}
    edge = {**honest, 5: (True, 100.0 * 1.25 * (1 + 5e-4), 0.5)}  # median of 6: 1.25
    assert looks.slice_outliers(edge) == {5}
    assert looks.slice_outliers(edge, looks.MARGIN) == set()       # not clearly out
    assert looks.slice_outliers(edge, -looks.MARGIN) == {5}
    buffers = {**honest, 5: (True, 1.0, 0.5 * 100 * 1.5)}  # the buffers' change alone
    assert looks.slice_outliers(buffers) == {5}
    assert looks.slice_outliers({0: (True, 0.0, 0.0), 1: (True, 0.0, 0.0)}) == set()
    assert looks.slice_outliers({0: (False, 1.0, 0.0)}) == {0}


def test_a_slice_s_sizes_are_its_gradient_and_its_change_of_the_float_buffers():
    import numpy as np
    import torch
    from podlt_mpi.compute import training
    from podlt_mpi.compute.layout import Layout
    layout = Layout(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)))
    g = layout.n_grad
    before = np.arange(layout.n_float, dtype=np.float32)
    values = np.concatenate([np.full(g, 2, np.float32), before + 3])[g - 4:]  # across the cut
    ok, grad, buffers = training.slice_sizes(layout, g - 4, g + layout.n_float, values, before)
    assert ok and grad == 4 * 4.0 and buffers == 9.0 * layout.n_float
    values[0] = np.inf
    assert not training.slice_sizes(layout, g - 4, g + layout.n_float, values, before)[0]
