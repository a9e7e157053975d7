"""The manager's side of the transport: send each assigned rank its work, gather the answers.

Every rank of a plan gets the same form of message (dist/messages.py); a recheck is one more
plan of one assignment. An iteration's plan sends the weights once, by a non-blocking broadcast
over a communicator of the manager and the active ranks, rebuilt whenever the active ranks change
(a removal, a resume); a recheck sends them point to point with its lines. Each answer is handed
to the digest pool the moment it arrives, so its ledger digest is computed while the other
answers are still on their way. The exchange also keeps the automatic rank timeout (ten times
the slowest exchange so far) and the first stop signal a worker reported with its answer.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from podlt_mpi.core import digests, timing
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import messages, preempt, tags

FIRST_TIMEOUT = 120.0  # seconds for the first exchange (cold caches, lazy initialisation)
MIN_TIMEOUT = 20.0     # later: max(this, 10 x the slowest exchange so far)
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
        self.notice = None              # a stop signal that a worker reported with its loss
        self.cost = timing.IterationCost()  # the current iteration's, set by the manager
        self.broadcast = broadcast  # off: `everyone` is ignored, the weights go with the lines
        self.group, self.members = None, ()  # the broadcast's communicator and its world ranks

    def timeout(self) -> float:
        if self.rank_timeout:
            return self.rank_timeout
        if self.slowest is None:
            return FIRST_TIMEOUT
        return max(MIN_TIMEOUT, 10 * self.slowest)

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
        """Send every assigned rank its messages; return (grads, losses, digests) by rank, the
        digests as futures of the answers' hex digests. `everyone` (the active ranks): the
        weights go to all of them by the group's broadcast (if `broadcast`); None: with each
        rank's lines.
        `fold`: (ranks, add): the answers of `ranks` come in through a window of receive buffers
        (WINDOW, or more in WINDOW_BYTES) and go, in that order, to add(rank, answer) as soon
        as they are in; they are not returned (the manager's memory stays flat in the ranks)."""
        reqs, who, grads, losses = [], [], {}, {}
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
        on_done = [None] * len(reqs)  # what to do when request i completes
        futures = {}

        def receive(rank, buffer, then):
            on_done.append(lambda: then(rank, buffer))
            cost.bytes_in += buffer.nbytes
            return mpi.irecv(self.comm, buffer, rank, tags.GRAD), rank

        def hash_it(rank, buffer):
            futures[rank] = self.pool.submit(buffer)

        folded = list(fold[0]) if fold else []
        streamed = set(folded)
        for a in plan.assignments:
            rank = a.rank
            losses[rank] = np.empty(messages.ANSWER_LEN, np.float64)
            reqs.append(mpi.irecv(self.comm, losses[rank], rank, tags.LOSS))
            who.append(rank)
            on_done.append(None)
            cost.bytes_in += losses[rank].nbytes
            if rank not in streamed:
                grads[rank] = np.empty(self.answer_size, np.float32)
                req, peer = receive(rank, grads[rank], hash_it)
                reqs.append(req)
                who.append(peer)
        if folded:
            queue, order, ready = iter(folded), deque(folded), {}

            def arrived(rank, buffer):
                """Hash it; fold every answer now at the front of the order; reuse their
                buffers for the next ranks."""
                hash_it(rank, buffer)
                ready[rank] = buffer
                more = []
                while order and order[0] in ready:
                    r = order.popleft()
                    b = ready.pop(r)
                    with cost.part("fold"):
                        fold[1](r, b)
                    futures[r].result()  # its digest has read it too: the buffer is free
                    nxt = next(queue, None)
                    if nxt is not None:
                        more.append(receive(nxt, b, arrived))
                return more
            size = max(WINDOW, WINDOW_BYTES // (4 * self.answer_size))
            for _ in range(min(size, len(folded))):
                req, peer = receive(next(queue), np.empty(self.answer_size, np.float32), arrived)
                reqs.append(req)
                who.append(peer)
        t0 = time.monotonic()
        try:
            mpi.Waiter(self.waiter.mode, self.timeout()).wait(
                reqs, who, lambda i: on_done[i]() if on_done[i] else None)
        except mpi.RankTimeout as e:
            raise mpi.PeerLost(f"{e} in iteration {iteration} (dead or hung); the ledger ends "
                               f"at the last complete iteration: continue with --resume "
                               f"{self.resume_hint}") from None
        finally:
            # The callbacks and the window's closures refer to each other: a cycle that holds
            # the receive buffers and the fold until the garbage collector, which counts
            # objects, not bytes, runs (measured: +0.7 GB an iteration on the 24.2M MLP).
            on_done.clear()
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
        self.send({r: [(tags.HEADER, messages.header(messages.STOP))] for r in ranks})
