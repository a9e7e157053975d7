"""Models as users write them, for the end-to-end tests: `--model usermodels:NAME` with
tests/helpers on PYTHONPATH. Each takes (input_shape, n_classes) like any model factory."""
import math

import torch
from torch import nn


def dropout(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 64), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(64, n_classes))


def bn1d(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 64),
                         nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, n_classes))


def bn2d(input_shape, n_classes):
    """Lines of 784 features seen as 1x28x28 images."""
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)) if len(input_shape) == 1 else nn.Identity(),
                         nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 13 * 13, n_classes))


def frozen(input_shape, n_classes):
    """A fine-tuning set-up: the first layer is frozen, only the head trains."""
    body = nn.Linear(math.prod(input_shape), 64)
    for p in body.parameters():
        p.requires_grad = False
    return nn.Sequential(nn.Flatten(), body, nn.ReLU(), nn.Linear(64, n_classes))


class Unused(nn.Module):
    """A module with a branch its forward pass never takes."""

    def __init__(self, n_in, n_classes):
        super().__init__()
        self.body = nn.Linear(n_in, 64)
        self.head = nn.Linear(64, n_classes)
        self.aux = nn.Linear(64, n_classes)  # an auxiliary head nobody calls

    def forward(self, x):
        return self.head(torch.relu(self.body(x.flatten(1))))


def unused(input_shape, n_classes):
    return Unused(math.prod(input_shape), n_classes)


class Combined(nn.Module):
    """Frozen layer, BatchNorm, dropout and an unused branch in one."""

    def __init__(self, n_in, n_classes):
        super().__init__()
        self.stem = nn.Linear(n_in, 64)
        self.stem.requires_grad_(False)
        self.bn = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(64, n_classes)
        self.aux = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.stem(x.flatten(1))))))


def combined(input_shape, n_classes):
    return Combined(math.prod(input_shape), n_classes)


def regressor(input_shape, n_classes, outputs=2):
    """A regression head: BatchNorm and dropout in the body, `outputs` values per line out
    (n_classes is 0 for float targets; --model-args outputs=K sets the width)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, outputs))


def huber(output, y):
    """A user's loss (--loss usermodels:huber): the mean Huber loss per line, delta 0.5."""
    return nn.functional.huber_loss(output, y, delta=0.5)


class Output(dict):
    """What Hugging Face models return (transformers' ModelOutput): a dict whose items are also
    attributes, the scores under `logits`, beside what the loss does not take."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class LogitsOutput(nn.Module):
    """A model that returns an Output, as a transformers model does, with dropout."""

    def __init__(self, n_in, n_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 32), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(32, n_classes)

    def forward(self, x):
        hidden = self.body(x.flatten(1))
        return Output(logits=self.head(hidden), hidden_states=(hidden,))


def logits_output(input_shape, n_classes):
    return LogitsOutput(math.prod(input_shape), n_classes)
