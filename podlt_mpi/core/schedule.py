"""Who does what in one iteration: roles, fragments and the checked worker. Pure, no MPI.

All randomness comes from the numpy Generator the caller passes, so a seed fixes the schedule
and a checkpoint can store the generator's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHUFFLE_STREAM = 0x5B  # block order draws from its own stream: the roles' RNG is not touched


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
    """One iteration's layout. `checked` is the (first) worker whose fragment controls recompute;
    `checks` pairs every checked worker with its own controls (--checks-per-iteration)."""
    start: int
    stop: int
    workers: tuple
    controls: tuple
    checked: int | None
    assignments: tuple
    checks: tuple = ()  # ((checked worker, (its controls...)), ...)

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


def run_blocks(n_lines: int, block_lines: int, epochs: int, limit: int | None = None,
               shuffle: int | None = None):
    """(iteration, epoch, block, start, stop) for a whole run, relative to the training split.

    With `shuffle` (a seed), each epoch visits the blocks in its own order, drawn from the seed
    and the epoch alone. A function of the configuration alone, so a resumed run and the audit
    see the same schedule, and the ledger needs nothing new: it records each block's lines.
    """
    spans = blocks(n_lines, block_lines)
    it = 0
    for epoch in range(epochs):
        order = (np.random.default_rng([shuffle, SHUFFLE_STREAM, epoch]).permutation(len(spans))
                 if shuffle is not None else range(len(spans)))
        for b in order:
            if limit is not None and it >= limit:
                return
            yield it, epoch, int(b), *spans[b]
            it += 1


def shuffle_seed(cfg) -> int | None:
    """run_blocks' `shuffle` for a configuration."""
    return cfg.seed if cfg.shuffle_blocks else None


def total_iterations(n_lines: int, block_lines: int, epochs: int, limit: int | None = None) -> int:
    total = len(blocks(n_lines, block_lines)) * epochs
    return min(total, limit) if limit is not None else total


def smallest_fragment(n_lines: int, block_lines: int, workers: int) -> int:
    """The fewest lines any fragment of the run can have with `workers` workers (fewer workers,
    after a removal, only make fragments larger). The model probe trains on this many."""
    smallest = min(e - s for s, e in blocks(n_lines, block_lines))
    return smallest // min(workers, smallest)


def roles(order, n_controls: int, n_lines: int, rng: np.random.Generator, checks: int = 1) -> tuple:
    """(busy workers, controls, checked workers) from an already-ordered list of active ranks.

    The last checks*n_controls are controls, n_controls per check in turn; workers beyond the
    block's line count get nothing; the checked workers are drawn uniformly, without repeats,
    among the busy ones. O(1) draws, so the simulation (simulate.py) runs this same code for
    10,000 ranks.
    """
    order = list(order)
    k = n_controls * checks
    if k:
        workers, controls = order[:-k], order[-k:]
    else:
        workers, controls = order, []
    busy = workers[:min(len(workers), n_lines)]
    if not n_controls:
        return busy, controls, []
    checks = min(checks, len(busy))  # a short last block may have fewer busy workers
    if checks == 1:
        return busy, controls, [busy[int(rng.integers(len(busy)))]]
    return busy, controls, [busy[int(i)] for i in rng.choice(len(busy), size=checks, replace=False)]


def plan_iteration(order, n_controls: int, start: int, stop: int, rng: np.random.Generator,
                   checks: int = 1) -> Plan:
    """Roles (see `roles`) and every rank's lines for the block [start, stop)."""
    busy, controls, checked = roles(order, n_controls, stop - start, rng, checks)
    frags = split_lines(start, stop, len(busy))
    assignments = [Assignment(r, "worker", s, e) for r, (s, e) in zip(busy, frags, strict=True)]
    pairs = []
    for i, c in enumerate(checked):
        s, e = frags[busy.index(c)]
        mine = tuple(controls[i * n_controls:(i + 1) * n_controls])
        assignments += [Assignment(r, "control", s, e) for r in mine]
        pairs.append((c, mine))
    return Plan(start, stop, tuple(busy), tuple(controls), checked[0] if checked else None,
                tuple(assignments), tuple(pairs))


def shuffle(active, rng: np.random.Generator) -> list:
    order = list(active)
    rng.shuffle(order)
    return order
