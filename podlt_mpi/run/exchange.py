"""The manager's side of the transport: send each assigned rank its work, gather the answers.

Every rank of a plan gets the same form of message (dist/messages.py); a recheck is one more
plan of one assignment. Each answer is handed to the digest pool the moment it arrives, so its
ledger digest is computed while the other answers are still on their way. The exchange also keeps
the automatic rank timeout (ten times the slowest exchange so far) and the first stop signal a
worker reported with its answer.
"""
from __future__ import annotations

import time

import numpy as np

from podlt_mpi.core import digests, timing
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import messages, preempt, tags

FIRST_TIMEOUT = 120.0  # seconds for the first exchange (cold caches, lazy initialisation)
MIN_TIMEOUT = 20.0     # later: max(this, 10 x the slowest exchange so far)


class Exchange:
    def __init__(self, comm, waiter: mpi.Waiter, answer_size: int, seed: int,
                 rank_timeout: float = 0.0, resume_hint: str = "-",
                 pool: digests.Pool | None = None):
        self.comm, self.waiter, self.answer_size, self.seed = comm, waiter, answer_size, seed
        self.pool = pool or digests.Pool(digests.WRITTEN, mpi.cores())
        self.rank_timeout = rank_timeout
        self.resume_hint = resume_hint  # the run directory, for the message when a rank is lost
        self.slowest = None             # seconds of the slowest exchange so far
        self.notice = None              # a stop signal that a worker reported with its loss
        self.cost = timing.IterationCost()  # the current iteration's, set by the manager

    def timeout(self) -> float:
        if self.rank_timeout:
            return self.rank_timeout
        if self.slowest is None:
            return FIRST_TIMEOUT
        return max(MIN_TIMEOUT, 10 * self.slowest)

    def __call__(self, plan, iteration: int, weights, bx, by) -> tuple:
        """Send every assigned rank its messages; return (grads, losses, digests) by rank, the
        digests as futures of the answers' hex digests."""
        reqs, who, grads, losses, hashed = [], [], {}, {}, {}
        cost = self.cost
        t_start = time.monotonic()
        outgoing = messages.messages_for_plan(plan, iteration, self.seed, weights, bx, by)
        for rank, msgs in outgoing.items():
            for tag, arr in msgs:
                reqs.append(mpi.isend(self.comm, arr, rank, tag))
                who.append(rank)
                cost.bytes_out += arr.nbytes
            grads[rank] = np.empty(self.answer_size, np.float32)
            losses[rank] = np.empty(messages.ANSWER_LEN, np.float64)
            hashed[len(reqs)] = rank  # the answer's request: hash it once it is in
            reqs += [mpi.irecv(self.comm, grads[rank], rank, tags.GRAD),
                     mpi.irecv(self.comm, losses[rank], rank, tags.LOSS)]
            who += [rank, rank]
            cost.bytes_in += grads[rank].nbytes + losses[rank].nbytes
        t0 = time.monotonic()
        futures = {}

        def arrived(i):
            if i in hashed:
                futures[hashed[i]] = self.pool.submit(grads[hashed[i]])
        try:
            mpi.Waiter(self.waiter.mode, self.timeout()).wait(reqs, who, arrived)
        except mpi.RankTimeout as e:
            raise mpi.PeerLost(f"{e} in iteration {iteration} (dead or hung); the ledger ends "
                               f"at the last complete iteration: continue with --resume "
                               f"{self.resume_hint}") from None
        dt = time.monotonic() - t0
        self.slowest = max(self.slowest or 0.0, dt)
        cost.seconds["exchange"] += time.monotonic() - t_start  # posting the sends, and the wait
        for r, v in losses.items():
            cost.compute.append(float(v[2]))
            if v[1] and self.notice is None:
                self.notice = f"{preempt.name(int(v[1]))} on rank {r}"
        return grads, {r: float(v[0]) for r, v in losses.items()}, futures

    def stop(self, ranks) -> None:
        """Tell `ranks` the run is over for them (a STOP header; nothing else follows)."""
        stop = messages.header(messages.STOP)
        self.waiter.wait([mpi.isend(self.comm, stop, r, tags.HEADER) for r in ranks])
