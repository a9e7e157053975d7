"""The manager's receive of one iteration's answers, in an order that does not depend on roles.

An answer is two messages: the gradient (GRAD) and its note, [loss, signal, seconds] (LOSS;
messages.loss_note: "answer" is the pair, never the note alone). The small
LOSS receives are all posted at once. The gradients are received one answer per turn, in line
order (the fold's order), each control right after the worker it checks, at most `size` turns
open at a time: an answer's turn passes on once it is complete and every answer before it has
been dealt with, whether it is folded or kept. Every turn is the same, so when a rank's receive
is posted (which a rank can observe: a rendezvous send starts when it is) and how many answers
the manager is taking in at once depend on its place in that order alone, never on whether the
answer is checked. (Posting a checked fragment's K+1 receives together, at the fragment's own
turn, made the posting times exact but shared the manager's copy bandwidth K+1 ways for exactly
the watched ranks: their sends took longer, which gave their roles away (benchmarks/role_timing.py;
measured: benchmarks/RESULTS.md, "Same messages for every role, the look, the loss (issue 26,
second part)").)

A streamed answer (an unchecked worker's) goes to `add(rank, gradient, note)` in line order
and its buffer then serves the next turn, unless `add` returns True (the look held it back,
manager.py): that one is kept and returned with the others. Every buffer comes from `spare`,
which the caller keeps across iterations and gets the kept ones back into (Exchange.reclaim):
every role's gradient lands in memory already touched, so none is slower to receive for the
page faults of a fresh buffer.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages, tags


class Window:
    def __init__(self, comm, answer_size: int, order, streamed, add, size: int, hash_it,
                 spare: list, cost):
        """`order`: the ranks in the order their answers are received (Exchange's caller:
        line order, controls after their checked worker); `streamed`: the ranks whose answers
        go to `add`; `hash_it(rank, buffer)`: a future of the buffer's seal (digests.Seal),
        waited on before a streamed buffer is reused."""
        self.comm, self.answer_size, self.add, self.hash_it = comm, answer_size, add, hash_it
        self.order, self.streamed, self.spare, self.cost = list(order), set(streamed), spare, cost
        self.size = max(1, size)
        self.callbacks = {}                    # id(receive) -> what to do when it completes
        self.notes, self.grads, self.futures = {}, {}, {}  # by rank
        self.receives = {}                     # rank -> its open GRAD receive
        self.refused = {}                      # rank -> why its answer is not one
        self.unseen = set()                    # ranks that did not get the state (UNSEEN)
        self.lost = []                         # buffers a stalled receive may still write
        self.loss_in, self.grad_in = set(), set()
        self.front = deque()                   # the open turns' ranks, in order
        self.opened = 0

    def start(self) -> list:
        """The first (receive, peer) pairs to wait for."""
        out = []
        for r in self.order:
            self.notes[r] = np.empty(messages.LOSS_NOTE_LEN, np.float64)
            self.cost.bytes_in += self.notes[r].nbytes
            out.append(self._post(mpi.Checked(self.comm, self.notes[r], r, tags.LOSS), r,
                                  lambda it, r=r: self._loss(it, r)))
        while self.opened < min(self.size, len(self.order)):
            out += self._open()
        return out

    def done(self, item) -> list:
        """A receive completed: what follows from it, as more (receive, peer) pairs."""
        return self.callbacks.pop(id(item), lambda it: None)(item) or []

    def _post(self, item, rank, then) -> tuple:
        self.callbacks[id(item)] = then
        return item, rank

    def _open(self) -> list:
        """The next turn's receive (none for a rank already refused, or past the last)."""
        while self.opened < len(self.order) and self.order[self.opened] in self.refused:
            self.opened += 1
        if self.opened == len(self.order):
            return []
        r = self.order[self.opened]
        self.opened += 1
        self.front.append(r)
        buffer = self.spare.pop() if self.spare else np.empty(self.answer_size, np.float32)
        self.grads[r] = buffer
        self.cost.bytes_in += buffer.nbytes
        self.receives[r] = mpi.Checked(self.comm, buffer, r, tags.GRAD)
        return [self._post(self.receives[r], r, lambda it: self._grad(it, r))]

    def _loss(self, item, rank) -> list:
        why = item.bad or messages.loss_note_problem(self.notes[rank])
        if why:
            self.refused.setdefault(rank, f"its [loss, signal, seconds] message: {why}")
        elif self.notes[rank][1] == messages.UNSEEN:  # its gradient is no answer
            self.unseen.add(rank)
        return self._arrived(self.loss_in, rank)

    def _grad(self, item, rank) -> list:
        if item.bad:
            self.refused.setdefault(rank, f"its gradient message: {item.bad}")
        else:
            self.futures[rank] = self.hash_it(rank, self.grads[rank])
        return self._arrived(self.grad_in, rank)

    def awaits(self, rank, tag) -> bool:
        """Whether this window still waits for rank's message of `tag` (comm.drain)."""
        if rank not in self.notes or rank in self.refused:
            return False
        return (tag == tags.LOSS and rank not in self.loss_in or
                tag == tags.GRAD and rank not in self.grad_in)

    def late(self) -> list:
        """The ranks whose answers are not in and not arriving: a part not sent, or a
        gradient's transfer that has stalled (a turn not yet open counts as arriving if its
        message is there)."""
        out = []
        for r in self.order:
            if r in self.loss_in and r in self.grad_in:
                continue
            grad = self.receives.get(r)
            grad_there = (grad.finished if grad is not None
                          else self.comm.Iprobe(source=r, tag=tags.GRAD))
            if r not in self.loss_in or not grad_there:
                out.append(r)
        return out

    def give_up(self, ranks, why: str) -> list:
        """Late ranks' answers are refused and the turns go on without them; the caller stops
        waiting for their receives."""
        out = []
        for r in ranks:
            self.refused.setdefault(r, why)
            grad = self.receives.get(r)
            if grad is not None and grad.req is not None and not grad.finished:
                self.lost.append(self.grads.pop(r))  # MPI may still write it: never reused
            self.loss_in.add(r)
            out += self._arrived(self.grad_in, r)
        return out

    def _arrived(self, parts: set, rank) -> list:
        """One of rank's two messages is in: deal with every answer now complete at the front,
        in order, and open the next turns."""
        parts.add(rank)
        out = []
        while self.front and self.front[0] in self.grad_in and self.front[0] in self.loss_in:
            r = self.front.popleft()
            if r in self.refused or r in self.unseen:
                self._free(r)
            elif r in self.streamed and not self.add(r, self.grads[r], self.notes[r]):
                self._free(r)
            out += self._open()
        return out

    def _free(self, rank) -> None:
        """The rank's buffer serves the next turn, once its digest (if any) has read it."""
        if rank in self.futures:
            self.futures[rank].result()
        if rank in self.grads:
            self.spare.append(self.grads.pop(rank))

    def kept(self) -> dict:
        """rank -> gradient, for every rank whose answer was not streamed (None: refused)."""
        return {**dict(self.grads), **{r: None for r in self.refused}}
