"""The manager's side of the transport: send each assigned rank its work, gather the answers.

Every rank of a plan gets the same form of message (dist/messages.py); a recheck is one more
plan of one assignment, sent the same way. A plan sends the weights once, by a non-blocking
broadcast over a communicator of the manager and the active ranks, rebuilt whenever the active
ranks change (a removal, a resume), or, without the broadcast, with each rank's lines. The answers
come in through window.py, in an order that does not depend on the roles; each is handed to the
digest pool the moment it arrives, so its ledger digest is computed while the other
answers are still on their way. The exchange also keeps the automatic rank timeout (ten times
the slowest exchange so far) and the first stop signal a worker reported with its answer.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from podlt_mpi.core import digests, timing
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import messages, preempt, tags
from podlt_mpi.run.window import Window

log = logging.getLogger("podlt_mpi")

FIRST_TIMEOUT = 120.0  # seconds for the first exchange (cold caches, lazy initialisation)
MIN_TIMEOUT = 20.0     # later: max(this, 10 x the slowest exchange so far),
MAX_TIMEOUT = 600.0    # but never more: a slow rank could otherwise grow it tenfold each time
# Receive buffers for the answers folded as they arrive: at least WINDOW, more while they fit in
# WINDOW_BYTES. Folding in line order through a few buffers serialises the answers; small models
# (50 ranks on 2 cores, sleeping between polls: 2.8x slower training with 4 buffers of 1 MB)
# lose more to that than they save in memory, which stays bounded either way.
WINDOW = 4
WINDOW_BYTES = 256 * 2**20


class Exchange:
    def __init__(self, comm, waiter: mpi.Waiter, answer_size: int, seed: int,
                 rank_timeout: float = 0.0, resume_hint: str = "-",
                 pool: digests.Pool | None = None, broadcast: bool = True):
        self.comm, self.waiter, self.answer_size, self.seed = comm, waiter, answer_size, seed
        self.pool = pool or digests.Pool(digests.WRITTEN, mpi.cores())
        self.rank_timeout = rank_timeout
        self.resume_hint = resume_hint  # the run directory, for the message when a rank is lost
        self.slowest = None             # seconds of the slowest exchange so far
        self.notices = {}               # rank -> the stop signal it reported with its loss
        self.cost = timing.IterationCost()  # the current iteration's, set by the manager
        self.broadcast = broadcast  # off: `everyone` is ignored, the weights go with the lines
        self.group, self.members = None, ()  # the broadcast's communicator and its world ranks
        self.spare = []  # receive buffers kept across iterations (window.py)
        self.abandoned = []  # requests a late rank left incomplete, with what they use
        self.lost = []       # receive buffers a stalled transfer may still write

    def timeout(self) -> float:
        if self.rank_timeout:
            return self.rank_timeout
        if self.slowest is None:
            return FIRST_TIMEOUT
        return min(MAX_TIMEOUT, max(MIN_TIMEOUT, 10 * self.slowest))

    def regroup(self, active) -> None:
        """Make the broadcast's communicator the manager and `active`, if it is not already."""
        members = (0, *sorted(active))
        if members == self.members:
            return
        self.send({r: messages.regroup(members) for r in active})
        self.group, self.members = mpi.subgroup(self.comm, members, self.group), members

    def send(self, outgoing: dict) -> None:
        reqs = self.post(outgoing, [], [])
        self.waiter.wait(reqs)

    def post(self, outgoing: dict, reqs: list, who: list) -> list:
        """Post the sends of {rank: [(tag, array)...]}, counting their bytes. In rank order:
        the plan lists the controls last, and posting in its order would tell them so."""
        for rank, msgs in sorted(outgoing.items()):
            for tag, arr in msgs:
                reqs.append(mpi.isend(self.comm, arr, rank, tag))
                who.append(rank)
                self.cost.bytes_out += arr.nbytes
        return reqs

    def __call__(self, plan, iteration: int, weights, bx, by, everyone=None,
                 fold=None) -> tuple:
        """Send every assigned rank its messages; return (grads, losses, digests) by rank: the
        gradients kept whole, every rank's loss, and futures of the gradients' hex digests. `everyone` (the active ranks): the weights go to all of them by
        the group's broadcast (if `broadcast`), those without lines taking part with a header
        of none; None: with each rank's lines.
        `fold`: (order, streamed, add): the answers come in one at a time in `order` through
        the window (window.py); those of `streamed` go, in that order, to add(rank, gradient,
        answer) and are not returned (the manager's memory stays flat in the ranks). Without
        it every answer is received at once and kept."""
        reqs, who = [], []
        cost = self.cost
        t_start = time.monotonic()
        everyone = everyone if self.broadcast else None
        if everyone is not None:
            self.regroup(everyone)
        outgoing = messages.messages_for_plan(plan, iteration, self.seed,
                                              None if everyone is not None else weights, bx, by,
                                              everyone or ())
        self.post(outgoing, reqs, who)
        if everyone is not None:  # one copy of the weights out, whatever the number of ranks
            reqs.append(mpi.ibcast(self.group, weights))
            who.append(None)
            cost.bytes_out += weights.nbytes
        order, streamed, add = fold or ([a.rank for a in plan.assignments], (), None)
        size = max(WINDOW, WINDOW_BYTES // (4 * self.answer_size)) if fold else len(order)
        window = Window(self.comm, self.answer_size, order, streamed, add, size,
                        lambda rank, buffer: self.pool.submit(buffer), self.spare, cost)
        pending = list(zip(reqs, who)) + window.start()
        t0 = time.monotonic()
        timeout = self.timeout()
        while pending:
            pending = mpi.Waiter(self.waiter.mode).poll(
                [r for r, _ in pending], [w for _, w in pending], window.done, timeout)
            if pending:  # the deadline: who is late is refused, the others go on
                late = window.late()
                more = window.give_up(late, f"no answer within {timeout:g} s")
                gone = set(late) | {w for r, w in pending if isinstance(r, mpi.MPI.Request)}
                self.abandoned += [r for r, w in pending if w in gone or w is None]
                if any(w is None for _, w in pending):
                    self.lose_broadcast(iteration)
                pending = [(r, w) for r, w in pending if w not in gone and w is not None] + more
        self.lost += window.lost
        dt = time.monotonic() - t0
        self.slowest = max(self.slowest or 0.0, dt) if not window.refused else self.slowest
        cost.seconds["exchange"] += time.monotonic() - t_start  # posting the sends, and the wait
        losses = {}
        for r, v in window.answers.items():
            if r in window.refused:
                losses[r] = float("nan")
                window.futures[r] = digests.done(None)
                continue
            cost.compute.append(float(v[2]))
            losses[r] = float(v[0])
            if v[1]:
                self.notices.setdefault(r, preempt.name(int(v[1])))
        return window.kept(), losses, window.futures, dict(window.refused)

    def lose_broadcast(self, iteration: int) -> None:
        """The weights' broadcast did not complete in time (a rank in its tree did not take
        part): the weights go to each rank directly from now on."""
        if self.broadcast:
            self.broadcast = False
            log.warning("iteration %d: the weights' broadcast did not complete within the "
                        "deadline; from now on they go to each rank directly", iteration)

    def reclaim(self, buffers) -> None:
        """Kept gradients the manager is done with: receive buffers for the next iterations
        (window.py: every answer lands in memory already touched)."""
        ids = {id(b) for b in self.spare}
        self.spare += [b for b in buffers if isinstance(b, np.ndarray) and id(b) not in ids
                       and b.shape == (self.answer_size,) and b.dtype == np.float32]

    def stop(self, ranks) -> None:
        """Tell `ranks` the run is over for them (a STOP header; nothing else follows)."""
        self.send({r: [(tags.HEADER, messages.header(messages.STOP))] for r in ranks})
