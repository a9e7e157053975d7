"""Stop requests: SIGTERM, SIGINT, SIGUSR1 and the --time-limit deadline. Pure, no MPI.

Slurm signals a job before killing it (`sbatch --signal=B:USR1@120`, `scancel --signal`), and
mpiexec forwards SIGINT and SIGTERM to every rank. A handler only sets a flag: the manager looks at
it once per iteration, finishes that iteration, checkpoints and exits 0.
"""
from __future__ import annotations

import signal
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_received: list = []


def _handler(signum, frame):
    _received.append(signum)


def install() -> None:
    for s in SIGNALS:
        signal.signal(s, _handler)


def requested() -> str | None:
    """The first signal received, by name, or None."""
    return name(_received[0]) if _received else None


def number() -> int | None:
    return _received[0] if _received else None


def name(signum: int) -> str:
    return signal.Signals(signum).name


class Deadline:
    """--time-limit: stop early enough to finish an iteration and write a checkpoint in time."""

    def __init__(self, minutes: float, start: float | None = None):
        self.limit = minutes * 60 if minutes else None
        self.start = time.monotonic() if start is None else start
        self.slowest = 0.0  # longest iteration (with its checkpoint) so far

    def note(self, seconds: float) -> None:
        self.slowest = max(self.slowest, seconds)

    def near(self, now: float | None = None) -> bool:
        """True when one more iteration might not fit: stop after the one in progress."""
        if self.limit is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.start + 2 * self.slowest + 1.0 > self.limit
