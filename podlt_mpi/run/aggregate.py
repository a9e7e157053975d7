"""A rank's part in the ranks' reduction (`--reduce ranks`, core/reduction.py): it commits to
every answer it computes instead of sending it, sends the slices of the answers the manager's
table names to their aggregators, sums the slices it aggregates in the table's order, and
answers the manager's challenges (a slice's inputs) and fetches (one of its slices).

What it receives from other ranks is checked before use: a slice must be exactly the size the
table implies and open under its sender's committed root, or it is flagged to the manager and
left out; nothing is waited for past the deadline the REDUCE header names.
"""
from __future__ import annotations

import numpy as np
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import looks, reduction
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import reduce_messages as rm
from podlt_mpi.mpi import tags


RELAY_SHARE = 0.25  # of the aggregators' wait, for the table from its relay before asking rank 0


class Aggregator:
    def __init__(self, comm, layout: Layout, n_slices: int, waiter: mpi.Waiter, signer):
        self.comm, self.layout, self.n_slices, self.waiter = comm, layout, n_slices, waiter
        self.signer = signer  # core/signatures.Signer: its public key is in its report
        self.n_summed = layout.n_grad + layout.n_float
        self.bounds = reduction.bounds(self.n_summed, n_slices)
        self.iteration, self.step = None, None  # the last round's (tags.step)
        self.kept = {}     # fragment seed -> reduction.Committed, this iteration's answers
        self.inputs = {}   # slice -> (its inputs as received, SLICE messages, their flags)
        self.sends = mpi.Sends(comm, waiter.mode)

    def commit(self, iteration: int, seed: int, answer: np.ndarray) -> np.ndarray:
        """The commitment to send in place of `answer`; the answer is kept for the table."""
        self._at(iteration)
        c = reduction.commit(answer, self.n_summed, self.n_slices, mpi.cores())
        self.kept[seed] = c
        return rm.commitment(c.root, c.slices_root, answer[self.n_summed:])

    def _at(self, iteration: int) -> None:
        """What was kept of an earlier iteration is dropped when a new one begins."""
        if iteration != self.iteration:
            self.iteration, self.kept, self.inputs = iteration, {}, {}

    def receive_table(self, iteration: int, round_: int, parent: int, size: int,
                      digest: np.ndarray, wait_s: float):
        """The table the REDUCE header names (by its digest and size), from `parent` in the
        relay (rm.relay) or, where that does not bring it within RELAY_SHARE of the wait,
        from the manager, asked with TABLE_REQUEST; forwarded to this rank's own children in
        the relay. (raw int64 table, rm.Table), or None: not even the manager's came, and this
        rank sits the reduction out (its slices are fetched from it, its sums made by the
        manager)."""
        tag, me = tags.table_tag(tags.step(iteration, round_)), self.comm.Get_rank()
        for source, share in ((parent, RELAY_SHARE), (0, 1 - RELAY_SHARE))[parent == 0:]:
            got = mpi.Checked(self.comm, np.empty(max(size, 0), np.int64), source, tag)
            mpi.Waiter(self.waiter.mode).poll([got], None, None, wait_s * share)
            table = None
            if got.finished and got.bad is None and \
                    np.array_equal(rm.table_digest(got.buffer), digest):
                try:
                    table = rm.read_table(got.buffer, self.comm.Get_size())
                except ValueError:
                    pass  # the manager's digest names it, so only the manager could send it
            self.sends.keep([got])
            if table is not None:
                _, children = rm.relay(rm.recipients(table.aggregators, table.leaves), me)
                for child in children:
                    self.sends.post(got.buffer, child, tag)
                return got.buffer, table
            if source:
                self.sends.post(np.array([iteration], np.int64), 0, tags.TABLE_REQUEST)
        return None

    def reduce(self, iteration: int, round_: int, table: rm.Table, weights: np.ndarray,
               wait_s: float) -> None:
        """Send this rank's leaves' slices, then sum the slices it aggregates and send the
        manager each SUM: of the inputs that came, opened under their roots and are inside the
        look (looks.slice_outliers), the others flagged."""
        me = self.comm.Get_rank()
        self._at(iteration)  # a rank that computed nothing this iteration keeps nothing
        self.step = tags.step(iteration, round_)
        for leaf in table.leaves:
            c = self.kept.get(leaf.seed) if leaf.rank == me else None
            for j, (a, b) in enumerate(self.bounds if c is not None else ()):
                self.sends.post(self.slice(iteration, j, leaf.seed, c), table.aggregators[j],
                                tags.slice_tag(self.step))
        mine = [j for j, r in enumerate(table.aggregators) if r == me]
        receives = {}  # in the order a sender sends them: by leaf, then by slice
        for i, leaf in enumerate(table.leaves):
            for j in mine if leaf.rank >= 0 else ():
                a, b = self.bounds[j]
                buffer = np.empty(rm.slice_len(a, b, j, self.n_slices), np.float32)
                receives[(j, i)] = mpi.Checked(self.comm, buffer, leaf.rank,
                                                tags.slice_tag(self.step))
        if receives:
            mpi.Waiter(self.waiter.mode).poll(mpi.in_order(receives.values()), None, None,
                                              wait_s)
            self.sends.keep(receives.values())
        g, f = self.layout.n_grad, self.n_summed
        before = torch.from_numpy(np.ascontiguousarray(weights[g:f]))
        for j in mine:
            a, b = self.bounds[j]
            s = training.SliceSum(self.layout, len(table.leaves), a, b, before)
            got, opened, present = [], {}, []
            for i, leaf in enumerate(table.leaves):
                r = receives.get((j, i))
                if r is not None:
                    present.append(i)
                came = r is not None and r.finished and r.bad is None
                values = rm.opened(r.buffer, leaf, j, self.n_slices, a, b) if came else None
                if values is not None:
                    opened[i] = values
                if r is not None:  # one that came but does not open is the manager's to judge
                    got.append(r.buffer if came else None)
            sizes = {i: training.slice_sizes(self.layout, a, b, v, weights[g:f])
                     for i, v in opened.items()}
            outside = looks.slice_outliers(sizes)
            flags = [0 if leaf.rank < 0 or i in opened and i not in outside else 1
                     for i, leaf in enumerate(table.leaves)]
            for i, leaf in enumerate(table.leaves):
                s.set(i, None if flags[i] else opened.get(i), leaf.count, leaf.lines)
            self.inputs[j] = got, [flags[i] for i in present]
            self.sends.post(rm.sum_message(s.values(), flags), 0, tags.SUM)

    def slice(self, iteration: int, j: int, seed: int, c) -> np.ndarray:
        """Slice j of the kept answer `c` of fragment `seed`, signed (a SLICE)."""
        return rm.signed_slice(self.signer, iteration, j, seed, c.answer, c.paths[j],
                               *self.bounds[j])

    def prove(self, j: int) -> None:
        """A challenge: slice j's inputs as they came, in leaf order, those that do not open
        as well (under their sender's signature, they are evidence against it), a missing one
        as zeros of its size (which opens under no root, and is signed by nobody); the
        signature only on those it flagged (rm.proof_len)."""
        a, b = self.bounds[j]
        size = rm.slice_len(a, b, j, self.n_slices)
        got, flags = self.inputs.get(j, ([], []))
        parts = [x if x is not None else np.zeros(size, np.float32) for x in got]
        self.sends.post(rm.proof_message(parts, flags), 0, tags.PROOF)

    def fetch(self, iteration: int, j: int, seed: int) -> None:
        """The manager asks for slice j of the answer of `seed` directly (a slice an aggregator
        did not get, or whose aggregator is gone)."""
        c = self.kept.get(seed) if iteration == self.iteration else None
        a, b = self.bounds[j]
        msg = (self.slice(iteration, j, seed, c) if c is not None
               else np.zeros(rm.slice_len(a, b, j, self.n_slices), np.float32))
        self.sends.post(msg, 0, tags.slice_tag(self.step))
