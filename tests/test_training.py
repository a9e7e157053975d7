"""The manager's update rule without MPI: the learning-rate schedules, the optimizers and the
step it takes from fragments' answers (gradients and buffers)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.compute.models import build
from podlt_mpi.core import rates
from podlt_mpi.core.config import ConfigError, parse_args


def rate_of(argv, iteration, epoch=0, total=10):
    return rates.learning_rate(parse_args(argv), iteration, epoch, total)


def test_learning_rate_drops_at_the_given_epochs():
    got = [rate_of(["--lr-drops", "2,4", "--lr-gamma", "0.5"], 0, e) for e in range(6)]
    assert got == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert parse_args(["--lr-drops", "2"]).lr_schedule == "step"
    assert parse_args([]).lr_schedule == "constant" and rate_of([], 99, 99) == 1e-3


def test_cosine_with_warmup_is_a_function_of_the_iteration():
    argv = ["--lr", "1", "--lr-schedule", "cosine", "--warmup", "4"]
    got = [rate_of(argv, i, total=14) for i in range(14)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after the warm-up: half a cosine over the 10 remaining iterations, from 1 towards 0
    assert got[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert all(a > b for a, b in zip(got[4:], got[5:]))
    assert rate_of(["--lr", "1", "--warmup", "2"], 0) == 0.5  # warm-up on a constant rate


@pytest.mark.parametrize("args,message", [
    (["--lr-drops", "0"], "--lr-drops are epochs from 1 on"),
    (["--lr-gamma", "0"], "--lr-gamma must be positive"),
    (["--lr-drops", "x"], "must be comma-separated integers"),
    (["--lr-drops", "2", "--lr-schedule", "cosine"], "--lr-drops belong to --lr-schedule step"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--nesterov"], "--nesterov needs --optimizer sgd and a --momentum above 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--clip-grad-norm", "nan"], "--clip-grad-norm must be a finite number >= 0"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
])
def test_bad_schedule_or_optimizer_is_a_config_error(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(args)


def test_schedule_reaches_the_config():
    cfg = parse_args(["--lr-drops", "17,12", "--lr-gamma", "0.2"])
    assert cfg.lr_drops == [12, 17] and cfg.lr_gamma == 0.2


@pytest.mark.parametrize("argv,kind,group", [
    (["--optimizer", "sgd", "--momentum", "0.9", "--nesterov", "--weight-decay", "0.01"],
     torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (["--optimizer", "adamw", "--weight-decay", "0.05"], torch.optim.AdamW,
     {"weight_decay": 0.05}),
    (["--optimizer", "adam"], torch.optim.Adam, {"weight_decay": 0.0}),
])
def test_optimizers_take_their_options(argv, kind, group):
    model = build("mlp", (4,), 3, seed=0)
    opt = training.make_optimizer(parse_args(argv), Layout(model))
    assert type(opt) is kind
    assert {k: opt.param_groups[0][k] for k in group} == group


def test_apply_update_steps_at_the_rate_it_is_given():
    steps = {}
    for lr in (1e-2, 1e-3):
        model = build("mlp", (4,), 3, seed=0)
        layout = Layout(model)
        before = host(layout.state()).copy()
        opt = training.make_optimizer(parse_args(["--optimizer", "sgd"]), layout)
        grad = np.ones(layout.answer_size, np.float32)
        training.apply_update(model, opt, layout, [grad], [1], lr)
        steps[lr] = before - host(layout.state())
    assert np.allclose(steps[1e-2], 1e-2) and np.allclose(steps[1e-3], 1e-3)


def test_clipping_scales_the_mean_gradient_to_the_norm():
    model = build("mlp", (4,), 3, seed=0)
    layout = Layout(model)
    before = host(layout.state()).copy()
    opt = training.make_optimizer(parse_args(["--optimizer", "sgd"]), layout)
    grad = np.full(layout.answer_size, 3.0, np.float32)
    training.apply_update(model, opt, layout, [grad], [1], 1.0, clip=2.0)
    step = before - host(layout.state())
    assert np.linalg.norm(step.astype(np.float64)) == pytest.approx(2.0, rel=1e-5)


class Net(nn.Module):
    """Trainable, frozen and unused parameters, float buffers that the pass changes and one it
    does not, and a counter."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 6)
        self.frozen.requires_grad_(False)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)
        self.unused = nn.Linear(6, 3)
        self.register_buffer("constant", torch.full((5,), 0.1))

    def forward(self, x):
        return self.head(self.bn(self.frozen(x)))


def test_layout_of_trainable_frozen_unused_and_buffers():
    torch.manual_seed(0)
    model = Net()
    layout = Layout(model)
    assert layout.n_grad == 6 * 2 + 3 * 6 + 3 + 3 * 6 + 3  # bn, head, unused; not frozen
    assert layout.floats == ["constant", "bn.running_mean", "bn.running_var"]  # module order
    assert layout.counters == ["bn.num_batches_tracked"]
    assert layout.state_size == layout.n_grad + 17 + 2 and layout.answer_size == layout.n_grad + 18
    x, y = torch.randn(7, 4, generator=torch.Generator().manual_seed(1)), torch.arange(7) % 3
    before = host(layout.state()).copy()
    answer, _ = training.fragment(model, layout, x, y, seed=3)
    answer = host(answer)
    grad, floats, counters = layout.split(answer)
    unused = slice(layout.n_grad - 21, layout.n_grad)
    assert not grad[unused].any() and grad[:layout.n_grad - 21].any()  # zeros, not a crash
    assert counters.tolist() == [1.0]
    stats = slice(5, 17)  # after the constant
    assert np.array_equal(floats[:5], np.full(5, 0.1, np.float32))
    assert not np.array_equal(floats[stats], before[layout.n_grad:][stats])
    assert np.array_equal(host(layout.state()), before)  # the model is left as it was


def test_update_means_buffers_keeps_constants_and_advances_counters():
    torch.manual_seed(0)
    model = Net()
    layout = Layout(model)
    opt = training.make_optimizer(parse_args(["--optimizer", "sgd"]), layout)
    x, y = torch.randn(9, 4, generator=torch.Generator().manual_seed(1)), torch.arange(9) % 3
    answers = [host(training.fragment(model, layout, x[s:e], y[s:e], seed=s)[0])
               for s, e in ((0, 3), (3, 6), (6, 9))]
    answers[2] = answers[2].copy()
    answers[2][-1] = 1000.0  # one liar's counter cannot move the median
    before = model.bn.running_mean.clone()
    frozen = model.frozen.weight.clone()
    training.apply_update(model, opt, layout, answers, [4, 3, 2], 0.1)
    means = [layout.split(a)[1][5:11] for a in answers]  # running_mean, after the constant
    expect = before + sum(n / 9 * (torch.from_numpy(m) - before) for n, m in zip([4, 3, 2], means))
    # the same mean in another order of float32 operations: |values| < 1 here, 4 roundings of
    # at most 2^-24 each apart, so within 2.4e-7
    assert float(model.bn.running_mean.abs().max()) < 1
    torch.testing.assert_close(model.bn.running_mean, expect, rtol=0, atol=2.4e-7)
    assert torch.equal(model.constant, torch.full((5,), 0.1))  # bit for bit: 0.1 * (4+3+2)/9 is not
    assert int(model.bn.num_batches_tracked) == 1
    assert torch.equal(model.frozen.weight, frozen)


def test_the_fold_sums_in_the_order_given_and_divides_once():
    """Format 3's update, bit for bit against the same float32 operations written out: the sum
    of count x gradient in the order of `add`, one division by the total count; the buffers'
    changes weighted by lines; counters by the median (a liar's 1000 cannot move it)."""
    torch.manual_seed(0)
    model = Net()
    layout = Layout(model)
    opt = torch.optim.SGD(layout.params, lr=1.0)
    x, y = torch.randn(9, 4, generator=torch.Generator().manual_seed(1)), torch.arange(9) % 3
    answers = [host(training.fragment(model, layout, x[s:e], y[s:e], seed=s)[0])
               for s, e in ((0, 3), (3, 6), (6, 9))]
    answers[2] = answers[2].copy()
    answers[2][-1] = 1000.0
    counts, lines, order = [0, 3, 2], [3, 3, 3], [2, 0, 1]  # fragment 0 counts no target
    params = torch.cat([p.detach().reshape(-1) for p in layout.params])
    start = torch.cat([b.reshape(-1).float() for b in layout.float_buffers()])  # before
    fold = training.Fold(model, layout)
    for i in order:
        fold.add(answers[i], counts[i], lines[i])
    fold.apply(opt, 1.0)
    g = torch.zeros(layout.n_grad)
    for i in order:
        if counts[i]:
            g.add_(torch.from_numpy(answers[i][:layout.n_grad]), alpha=counts[i])
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in layout.params]),
                       params - g / 5)
    floats = layout.n_float
    change = torch.zeros(floats)
    for i in order:
        f = torch.from_numpy(answers[i][layout.n_grad:layout.n_grad + floats])
        change.add_(f - start, alpha=lines[i])
    assert torch.equal(model.bn.running_mean, (start + change / 9)[5:11])
    assert torch.equal(model.constant, torch.full((5,), 0.1))
    assert int(model.bn.num_batches_tracked) == 1


def test_the_mean_of_fragment_gradients_is_the_batch_gradient_within_rounding():
    """The manager's combination against one batch of the same lines, where bits cannot agree
    (different kernels sum in different orders). The bound, per coordinate j: every per-line
    term reaches the gradient through the forward and backward chains, whose dot products run
    over the layers' input widths (784+256+128+100 for the mlp), and the mean adds a sum over n
    lines; float32 rounding bounds each by (length x u x the sum of absolute terms) to first
    order, so |combined - batch| <= 4 (n + sum of widths) u S_j, with S_j the mean absolute
    per-line gradient (4: forward and backward, on both sides). Measured on an Intel x86-64:
    at most 0.20 of the bound (1126 u S_j of 5472); a combination weighting the fragments
    equally instead of by their lines is 31x over it."""
    from podlt_mpi.io import data
    torch.set_num_threads(1)
    x, y = (torch.from_numpy(a) for a in data.synthetic(200, 0))
    model = build("mlp", (784,), 10, seed=0)
    frags = [(0, 67), (67, 134), (134, 200)]
    parts = [training.gradient(model, x[s:e], y[s:e])[0] for s, e in frags]
    batch = training.gradient(model, x, y)[0].astype(np.float64)
    per_line = np.stack([training.gradient(model, x[i:i + 1], y[i:i + 1])[0] for i in range(200)])
    bound = 4 * (200 + 784 + 256 + 128 + 100) * 2.0**-24 * np.abs(per_line).mean(0)
    combined = training.weighted_mean(parts, [e - s for s, e in frags]).numpy()
    assert (np.abs(combined - batch) <= bound).all()
    unweighted = training.weighted_mean(parts, [1, 1, 1]).numpy()
    assert not (np.abs(unweighted - batch) <= bound).all()
