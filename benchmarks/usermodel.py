"""A model as a user brings it, for benchmarks/user_model.py: `--model usermodel:mlp_bn_dropout`
with benchmarks/ on PYTHONPATH."""
import math

from torch import nn


def mlp_bn_dropout(input_shape, n_classes):
    """The 256-128 MLP with BatchNorm and dropout after each hidden layer."""
    n_in = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, n_classes))


def wide(input_shape, n_classes):
    """One hidden layer of 4096: 3.3M parameters, a 13 MB answer (benchmarks/role_timing.py:
    large enough that folding and moving an answer take measurable time here)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 4096), nn.ReLU(),
                         nn.Linear(4096, n_classes))
