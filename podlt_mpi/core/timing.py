"""Where one iteration's time goes on the manager, and how many bytes it moves. Pure, no MPI.

Written to metrics.jsonl, so overhead benchmarks and the report read a run's own costs instead of
guessing them: time waiting for the ranks (their compute plus the messages), verifying, applying
the update and keeping the ledger, and the compute the ranks themselves report.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class IterationCost:
    def __init__(self):
        self.seconds = defaultdict(float)
        self.bytes_out = self.bytes_in = 0
        self.compute = []  # seconds each rank spent computing its fragment(s)

    @contextmanager
    def part(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t

    def row(self) -> dict:
        """For the iteration's metrics row. `compute_max` is the critical path of the exchange:
        exchange - compute_max is what messages and waiting cost."""
        return {"time": {k: round(v, 6) for k, v in sorted(self.seconds.items())},
                "compute_max": round(max(self.compute, default=0.0), 6),
                "compute_sum": round(sum(self.compute), 6),
                "bytes_out": self.bytes_out, "bytes_in": self.bytes_in}
