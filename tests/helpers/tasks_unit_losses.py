"""Losses that fail, for tests/test_tasks_unit.py (--loss tasks_unit_losses:NAME)."""


def vector(output, y):
    return ((output - y) ** 2).mean(0)  # one value per output column: not a mean loss


def broken(output, y):
    raise RuntimeError("shapes disagree")
