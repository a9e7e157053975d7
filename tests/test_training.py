"""The manager's update rule without MPI: the learning-rate schedule and the step it takes."""
import numpy as np
import pytest

from podlt_mpi import training
from podlt_mpi.config import ConfigError, parse_args
from podlt_mpi.models import build


def test_learning_rate_drops_at_the_given_epochs():
    rates = [training.learning_rate(1e-3, [2, 4], 0.5, e) for e in range(6)]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert training.learning_rate(1e-3, [], 0.1, 99) == 1e-3


def test_apply_update_steps_at_the_rate_it_is_given():
    steps = {}
    for lr in (1e-2, 1e-3):
        model = build("mlp", (4,), 3, seed=0)
        before = training.get_flat(model).copy()
        opt = training.make_optimizer("sgd", model.parameters(), 1.0, 0.0)  # overridden per step
        grad = np.ones(training.n_params(model), np.float32)
        training.apply_update(model, opt, [grad], [1], lr)
        steps[lr] = before - training.get_flat(model)
    assert np.allclose(steps[1e-2], 1e-2) and np.allclose(steps[1e-3], 1e-3)


@pytest.mark.parametrize("args,message", [
    (["--lr-drops", "0"], "--lr-drops are epochs from 1 on"),
    (["--lr-gamma", "0"], "--lr-gamma must be positive"),
    (["--lr-drops", "x"], "must be comma-separated integers"),
])
def test_bad_schedule_is_a_config_error(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(args)


def test_schedule_reaches_the_config():
    cfg = parse_args(["--lr-drops", "17,12", "--lr-gamma", "0.2"])
    assert cfg.lr_drops == [12, 17] and cfg.lr_gamma == 0.2
