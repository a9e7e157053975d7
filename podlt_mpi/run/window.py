"""The manager's receive of one iteration's answers, in an order that does not depend on roles.

An answer is two messages: the gradient (GRAD) and [loss, signal, seconds] (LOSS). The small
LOSS receives are all posted at once. The gradients are received one answer per turn, in line
order (the fold's order), each control right after the worker it checks, at most `size` turns
open at a time: an answer's turn passes on once it is complete and every answer before it has
been dealt with, whether it is folded or kept. Every turn is the same, so when a rank's receive
is posted (which a rank can observe: a rendezvous send starts when it is) and how many answers
the manager is taking in at once depend on its place in that order alone, never on whether the
answer is checked. (Posting a checked fragment's K+1 receives together, at the fragment's own
turn, made the posting times exact but shared the manager's copy bandwidth K+1 ways for exactly
the watched ranks: benchmarks/role_timing.py measured their sends slower, AUC 0.72.)

A streamed answer (an unchecked worker's) goes to `add(rank, gradient, answer)` in line order
and its buffer then serves the next turn, unless `add` returns True (the look held it back,
manager.py): that one is kept and returned with the others. Every buffer comes from `spare`,
which the caller keeps across iterations and gets the kept ones back into (Exchange.reclaim):
every role's gradient lands in memory already touched, so none is slower to receive for the
page faults of a fresh buffer.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import messages, tags


class Window:
    def __init__(self, comm, answer_size: int, order, streamed, add, size: int, hash_it,
                 spare: list, cost):
        """`order`: the ranks in the order their answers are received (Exchange's caller:
        line order, controls after their checked worker); `streamed`: the ranks whose answers
        go to `add`; `hash_it(rank, buffer)`: a future of the buffer's digest, waited on before
        a streamed buffer is reused."""
        self.comm, self.answer_size, self.add, self.hash_it = comm, answer_size, add, hash_it
        self.order, self.streamed, self.spare, self.cost = list(order), set(streamed), spare, cost
        self.size = max(1, size)
        self.callbacks = []                    # request i -> what to do when it completes
        self.answers, self.grads, self.futures = {}, {}, {}  # by rank
        self.loss_in, self.grad_in = set(), set()
        self.front = deque()                   # the open turns' ranks, in order
        self.opened = 0

    def start(self) -> list:
        """The first (request, peer) pairs to wait for."""
        out = []
        for r in self.order:
            self.answers[r] = np.empty(messages.ANSWER_LEN, np.float64)
            self.cost.bytes_in += self.answers[r].nbytes
            out.append(self._post(mpi.irecv(self.comm, self.answers[r], r, tags.LOSS), r,
                                  lambda r=r: self._arrived(self.loss_in, r)))
        while self.opened < min(self.size, len(self.order)):
            out.append(self._open())
        return out

    def done(self, i: int) -> list:
        """Request i completed: what follows from it, as more (request, peer) pairs."""
        return self.callbacks[i]()

    def _post(self, req, rank, then) -> tuple:
        self.callbacks.append(then)
        return req, rank

    def _open(self) -> tuple:
        r = self.order[self.opened]
        self.opened += 1
        self.front.append(r)
        buffer = self.spare.pop() if self.spare else np.empty(self.answer_size, np.float32)
        self.grads[r] = buffer
        self.cost.bytes_in += buffer.nbytes
        return self._post(mpi.irecv(self.comm, buffer, r, tags.GRAD), r,
                          lambda: self._hashed(r))

    def _hashed(self, rank) -> list:
        self.futures[rank] = self.hash_it(rank, self.grads[rank])
        return self._arrived(self.grad_in, rank)

    def _arrived(self, parts: set, rank) -> list:
        """One of rank's two messages is in: deal with every answer now complete at the front,
        in order, and open the next turns."""
        parts.add(rank)
        out = []
        while self.front and self.front[0] in self.grad_in and self.front[0] in self.loss_in:
            r = self.front.popleft()
            if r in self.streamed and not self.add(r, self.grads[r], self.answers[r]):
                self.futures[r].result()  # its digest has read it too: the buffer is free
                self.spare.append(self.grads.pop(r))
            if self.opened < len(self.order):
                out.append(self._open())
        return out

    def kept(self) -> dict:
        """rank -> gradient, for every rank whose answer was not streamed."""
        return dict(self.grads)
