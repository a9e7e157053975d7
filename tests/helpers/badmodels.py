"""Models that cannot train verifiably, for the bad-input tests: `--model badmodels:NAME` with
tests/helpers on PYTHONPATH."""
import math
import time

import torch
from torch import nn


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise ValueError("this layer has no backward")


class Net(nn.Module):
    def __init__(self, n_in, n_classes, clock=False):
        super().__init__()
        self.lin, self.clock = nn.Linear(n_in, n_classes), clock

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if self.clock:  # a generator seeded by the clock: no two passes agree
            return out * torch.rand(1, generator=torch.Generator().manual_seed(time.time_ns()))
        return NoBackward.apply(out)


def no_backward(shape, n_classes):
    return Net(math.prod(shape), n_classes)


def clock(shape, n_classes):
    return Net(math.prod(shape), n_classes, clock=True)


def batchnorm(shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 8), nn.BatchNorm1d(8),
                         nn.Linear(8, n_classes))
