"""A user's model that fails in any way is bad input: one sentence naming the model and the
cause (ConfigError), found by models.build, models.place or models.probe before iteration 0."""
import os
import sys

import pytest
import torch
from torch import nn

from podlt_mpi.compute import models, probe, training
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import schedule
from podlt_mpi.core.config import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
import badmodels  # noqa: E402


class Lin(nn.Module):
    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.lin(x.flatten(1))


class Picky(Lin):
    def forward(self, x):
        assert x.shape[1] == 5, "wants 5 features"  # any exception, not only torch's
        return super().forward(x)


class Meta(Lin):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3, device="meta"))


def factory(make):
    return lambda shape, n_classes: make()


def raises(*_):
    raise KeyError("weights.bin")


def frozen_all(shape, n_classes):
    return Lin().requires_grad_(False)


@pytest.mark.parametrize("make,message", [
    (raises, "model 'm:f' could not be built for input [4] and 3 classes: 'weights.bin'"),
    (lambda s, c: "a string", "returned str, not a torch nn.Module"),
    (lambda s, c: Lin(4, 5), "outputs [5] per line, expected [3] class scores"),
    (lambda s, c: Lin(7, 3), "fails on input of shape [4] on cpu: mat1 and mat2"),
    (frozen_all, "has no trainable parameters"),
    (lambda s, c: Lin().double(), "has parameter 'lin.weight' of type torch.float64"),
    (lambda s, c: Picky(), "fails on input of shape [4] on cpu: wants 5 features"),
])
def test_building_a_bad_model_is_bad_input(make, message, monkeypatch):
    monkeypatch.setattr(models, "load_function", lambda spec, what, builtin=(): make)
    with pytest.raises(ConfigError, match=None) as e:
        models.build("m:f", (4,), 3, seed=0)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model,lines,message", [
    (badmodels.no_backward((4,), 3), 2, "model 'm:f' fails a training pass on 2 line(s) on cpu: this layer has no "
                      "backward"),
    (badmodels.clock((4,), 3), 2, "model 'm:f' is not deterministic on cpu"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), 1,
     "fails a training pass on 1 line(s) on cpu: Expected more than 1 value per channel"),
])
def test_a_model_that_cannot_train_is_bad_input(model, lines, message):
    with pytest.raises(ConfigError) as e:
        probe.probe(model, "m:f", (4,), 3, "cpu", lines, exact=True)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_clock_model_passes_in_tolerance_mode():
    assert probe.probe(badmodels.clock((4,), 3), "m:f", (4,), 3, "cpu", 2, exact=False)


def test_the_probe_tells_whether_a_model_draws_random_numbers():
    torch.manual_seed(0)
    drops = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    assert probe.probe(drops, "m:f", (4,), 3, "cpu", 4, exact=True)
    assert not probe.probe(Lin(), "m:f", (4,), 3, "cpu", 4, exact=True)


def test_a_tensor_on_another_device_is_bad_input():
    with pytest.raises(ConfigError, match="model 'm:f' cannot move to cpu"):
        models.place(Meta(), "m:f", "cpu")
    model = Lin()
    model.register_buffer("table", torch.zeros(2, device="meta"))
    with pytest.raises(ConfigError, match="keeps 'table' on meta, but this rank computes on cpu"):
        probe.probe(model, "m:f", (4,), 3, "cpu", 2, exact=True)


def test_the_probe_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    layout = Layout(model)
    before = host(layout.state()).copy()
    rng = torch.get_rng_state()
    probe.probe(model, "m:f", (4,), 3, "cpu", 8, exact=True)
    assert host(layout.state()).tobytes() == before.tobytes()
    assert torch.equal(torch.get_rng_state(), rng)  # the fragment's generators are put back
    assert all(p.grad is None for p in model.parameters())


def test_dropout_masks_follow_the_fragment_seed_not_the_process():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    x, y = torch.randn(6, 4), torch.arange(6) % 3
    a = training.gradient(model, x, y, seed=11)[0]
    torch.manual_seed(99)  # whatever the process drew before
    torch.rand(5)
    assert training.gradient(model, x, y, seed=11)[0].tobytes() == a.tobytes()
    assert training.gradient(model, x, y, seed=12)[0].tobytes() != a.tobytes()


def test_the_smallest_fragment_of_a_run():
    assert schedule.smallest_fragment(2400, 200, 3) == 66  # 200 = 67 + 67 + 66
    assert schedule.smallest_fragment(2410, 200, 3) == 3   # the last block has 10 lines
    assert schedule.smallest_fragment(2401, 200, 3) == 1   # ... or 1
