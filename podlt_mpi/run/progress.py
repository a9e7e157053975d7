"""What rank 0 shows while training: a bar on a terminal, periodic log lines otherwise (Slurm
logs), and a short final table."""
from __future__ import annotations

import logging
import sys
import time

from podlt_mpi.core.tasks import figures_text

log = logging.getLogger("podlt_mpi")


class Progress:
    def __init__(self, total: int, every_s: float, stream=sys.stderr, done: int = 0):
        self.total, self.every_s = total, every_s
        self._last = time.monotonic()
        self._bar = None
        if stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=done, unit="it", file=stream, dynamic_ncols=True)

    def update(self, iteration: int, loss: float, counts: dict, samples_s: float) -> None:
        text = (f"loss {loss:.4f} verified {counts['agree']} fake {counts['fake']} "
                f"dispute {counts['dispute']} {samples_s:,.0f} samples/s")
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or iteration + 1 == self.total or iteration == 0:
            self._last = now
            log.info("iteration %d/%d %s", iteration + 1, self.total, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def final_table(summary: dict) -> str:
    lines = [f"run {summary['out']}: {summary['iterations']} iterations on {summary['ranks']} ranks "
             f"in {summary['wall_time_s']:.1f} s"]
    test = figures_text(summary)
    lines.append(f"final loss {summary['final_loss']:.4f}" if summary.get("final_loss") is not None
                 else "final loss n/a")
    lines[-1] += f"; test {test}" if test else "; no test data"
    tokens = summary.get("useful_tokens_per_s")
    lines.append(f"useful throughput {summary['useful_samples_per_s']:,.0f} samples/s"
                 + (f" ({tokens:,.0f} tokens/s)" if tokens else "") + "; checks: "
                 f"{summary['checks']['agree']} verified, {summary['checks']['fake']} fake, "
                 f"{summary['disputes']} disputes")
    if summary["removed"]:
        lines.append("removed: " + ", ".join(f"rank {r['rank']} (iteration {r['iteration']}, as {r['role']})"
                                              for r in summary["removed"]))
    else:
        lines.append("removed: none")
    lines.append(f"ledger head {summary['ledger_head']} (publish it: the audit checks it)")
    credits = sorted(summary["credits"].items(), key=lambda kv: int(kv[0]))
    shown = credits if len(credits) <= FULL_TABLE else \
        [(r, c) for r, c in credits if c["removed_at"] is not None]
    if shown:
        lines.append(f"{'rank':>6} {'computed':>9} {'verified':>9} {'rejected':>9}  status")
    for rank, c in shown:
        status = f"removed at {c['removed_at']}" if c["removed_at"] is not None else "active"
        lines.append(f"{rank:>6} {c['computed']:>9} {c['verified']:>9} {c['rejected']:>9}  {status}")
    if len(shown) < len(credits):  # many ranks: the removed ones, then the rest in one line
        rest = [c for _, c in credits if c["removed_at"] is None]
        lines.append(f"{len(rest)} active ranks: " + "; ".join(
            f"{what} {_spread([c[what] for c in rest])}" for what in ("computed", "verified"))
            + f"; rejected {sum(c['rejected'] for c in rest)} in all (every rank's credits: "
            "summary.json, and `report`)")
    return "\n".join(lines)


FULL_TABLE = 64  # ranks up to which the final table lists every rank


def _spread(values) -> str:
    """min / median / max of integers."""
    v = sorted(values)
    return f"min {v[0]}, median {v[len(v) // 2]}, max {v[-1]}" if v else "none"
