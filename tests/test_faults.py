"""Fault injection without MPI: which rank cheats how, from --fake-ranks and --fake-mode."""
import numpy as np
import pytest
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.compute.models import build
from podlt_mpi.core.config import ConfigError, fake_modes, parse_args


def test_one_mode_for_all_or_one_per_rank():
    assert fake_modes("zero", [2, 5]) == {2: "zero", 5: "zero"}
    assert fake_modes("2=lazy,5=sign-flip", [2, 5]) == {2: "lazy", 5: "sign-flip"}
    assert fake_modes("5=sign-flip,noise", [2, 5, 7]) == {2: "noise", 5: "sign-flip", 7: "noise"}
    assert fake_modes("5=zero", [2, 5]) == {2: "random", 5: "zero"}


@pytest.mark.parametrize("spec,message", [
    ("teleport", "names 'teleport', which is not a fake mode"),
    ("2=teleport", "names 'teleport'"),
    ("x=zero", "must be MODE or RANK=MODE"),
    ("3=zero", "gives rank 3 a mode, but --fake-ranks does not name it"),
])
def test_bad_fake_mode_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--fake-ranks", "2", "--fake-mode", spec])


def test_each_rank_cheats_its_own_way():
    cfg = parse_args(["--fake-ranks", "2,4", "--fake-mode", "2=lazy,4=sign-flip"])
    model = build("mlp", (1, 4, 4), 3, seed=0)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3
    layout = Layout(model)
    grad = host(training.fragment(model, layout, x, y, seed=5)[0])
    sent = {r: Faker(cfg, r).send(grad, 0, model, x, y, seed=5) for r in (2, 3, 4)}
    assert np.array_equal(sent[3], grad)  # honest
    assert np.array_equal(sent[4], -grad)
    half = host(training.fragment(model, layout, x[:4], y[:4], seed=5)[0])
    assert np.array_equal(sent[2], half)  # half the lines


def bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8),
                               torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.3),
                               torch.nn.Linear(8, 3))


def test_buffers_mode_sends_the_honest_gradient_with_poisoned_statistics():
    cfg = parse_args(["--fake-ranks", "2", "--fake-mode", "buffers"])
    model = bn_model()
    layout = Layout(model)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3
    honest = host(training.fragment(model, layout, x, y, seed=5)[0])
    sent = Faker(cfg, 2, layout).send(honest, 0, model, x, y, seed=5)
    g, f = layout.n_grad, layout.n_grad + layout.n_float
    assert np.array_equal(sent[:g], honest[:g]) and np.array_equal(sent[f:], honest[f:])
    assert not np.array_equal(sent[g:f], honest[g:f])


def test_buffers_mode_needs_a_model_with_buffers():
    cfg = parse_args(["--fake-ranks", "2", "--fake-mode", "buffers"])
    with pytest.raises(ConfigError, match="poisons float buffers, but model 'mlp' has none"):
        Faker(cfg, 2, Layout(build("mlp", (4,), 3, seed=0)))


@pytest.mark.parametrize("mode", ["lazy", "label-flip", "alie", "lowprec"])
def test_recomputing_modes_leave_the_model_as_it_was(mode):
    """A fake's extra passes run under the fragment's seed and put the buffers back: the model
    a fake rank computes with is the one the manager sent (BatchNorm statistics untouched)."""
    cfg = parse_args(["--fake-ranks", "2", "--fake-mode", mode])
    model = bn_model()
    layout = Layout(model)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3
    before = host(layout.state()).copy()
    honest = host(training.fragment(model, layout, x, y, seed=5)[0])
    sent = Faker(cfg, 2, layout).send(honest, 0, model, x, y, seed=5)
    assert sent.shape == honest.shape and not np.array_equal(sent, honest)
    assert np.array_equal(host(layout.state()), before)
    assert np.array_equal(host(training.fragment(model, layout, x, y, seed=5)[0]), honest)
