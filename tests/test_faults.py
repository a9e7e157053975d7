"""Fault injection without MPI: which rank cheats how, from --fake-ranks and --fake-mode."""
import numpy as np
import pytest
import torch

from podlt_mpi import training
from podlt_mpi.config import ConfigError, fake_modes, parse_args
from podlt_mpi.faults import Faker
from podlt_mpi.models import build


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
    grad, _ = training.gradient(model, x, y)
    sent = {r: Faker(cfg, r).send(grad, 0, model, x, y) for r in (2, 3, 4)}
    assert np.array_equal(sent[3], grad)  # honest
    assert np.array_equal(sent[4], -grad)
    assert np.array_equal(sent[2], training.gradient(model, x[:4], y[:4])[0])  # half the lines
