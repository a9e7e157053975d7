"""Who does what in one iteration: roles, fragments and the checked worker. Pure, no MPI.

All randomness comes from the numpy Generator the caller passes, so a seed fixes the schedule
and a checkpoint can store the generator's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Assignment:
    rank: int
    role: str  # "worker" or "control"
    start: int
    stop: int

    @property
    def lines(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    """One iteration's layout. `checked` is the worker whose fragment the controls recompute."""
    start: int
    stop: int
    workers: tuple
    controls: tuple
    checked: int | None
    assignments: tuple

    def fragment_of(self, rank: int) -> tuple:
        for a in self.assignments:
            if a.rank == rank and a.role == "worker":
                return (a.start, a.stop)
        raise KeyError(rank)


def split_lines(start: int, stop: int, parts: int) -> list:
    """Contiguous fragments covering [start, stop) whose sizes differ by at most one."""
    n = stop - start
    parts = min(parts, n)  # a short last block gives fewer, never empty, fragments
    base, extra = divmod(n, parts)
    out, s = [], start
    for i in range(parts):
        e = s + base + (1 if i < extra else 0)
        out.append((s, e))
        s = e
    assert s == stop
    return out


def blocks(n_lines: int, block_lines: int) -> list:
    """The training set as consecutive blocks [s, e); the last may be short."""
    return [(s, min(s + block_lines, n_lines)) for s in range(0, n_lines, block_lines)]


def run_blocks(n_lines: int, block_lines: int, epochs: int, limit: int | None = None):
    """(iteration, epoch, block, start, stop) for a whole run, relative to the training split.

    A function of the configuration alone, so a resumed run and the audit see the same schedule.
    """
    it = 0
    for epoch in range(epochs):
        for b, (s, e) in enumerate(blocks(n_lines, block_lines)):
            if limit is not None and it >= limit:
                return
            yield it, epoch, b, s, e
            it += 1


def total_iterations(n_lines: int, block_lines: int, epochs: int, limit: int | None = None) -> int:
    total = len(blocks(n_lines, block_lines)) * epochs
    return min(total, limit) if limit is not None else total


def roles(order, n_controls: int, n_lines: int, rng: np.random.Generator) -> tuple:
    """(busy workers, controls, checked worker) from an already-ordered list of active ranks.

    The last n_controls are controls; workers beyond the block's line count get nothing; the
    checked worker is drawn uniformly among the busy ones. O(1) draws, so the simulation
    (simulate.py) runs this same code for 10,000 ranks.
    """
    order = list(order)
    if n_controls:
        workers, controls = order[:-n_controls], order[-n_controls:]
    else:
        workers, controls = order, []
    busy = workers[:min(len(workers), n_lines)]
    checked = busy[int(rng.integers(len(busy)))] if n_controls else None
    return busy, controls, checked


def plan_iteration(order, n_controls: int, start: int, stop: int, rng: np.random.Generator) -> Plan:
    """Roles (see `roles`) and every rank's lines for the block [start, stop)."""
    busy, controls, checked = roles(order, n_controls, stop - start, rng)
    frags = split_lines(start, stop, len(busy))
    assignments = [Assignment(r, "worker", s, e) for r, (s, e) in zip(busy, frags, strict=True)]
    if checked is not None:
        s, e = frags[busy.index(checked)]
        assignments += [Assignment(r, "control", s, e) for r in controls]
    return Plan(start, stop, tuple(busy), tuple(controls), checked, tuple(assignments))


def shuffle(active, rng: np.random.Generator) -> list:
    order = list(active)
    rng.shuffle(order)
    return order
