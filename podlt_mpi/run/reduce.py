"""The manager's side of the ranks' reduction (`--reduce ranks`, core/reduction.py).

Once the iteration's commitments are in and its checks settled, the manager sends every active
rank the table (which rank sums which slice; each leaf's sender, seed, weights and slices'
root), receives one SUM per slice, then challenges slices drawn from the key: the aggregator
sends the slice's inputs, the manager opens each under its sender's root and sums them itself;
a sum that differs is a lie its own inputs prove, and the aggregator is removed. A slice whose
sum did not come, was malformed, or was proven a lie, or whose aggregator flagged an input, is
summed by the manager from the senders' slices, fetched directly: a sender that cannot give a
slice opening under its own root is removed; one that can, flagged by an aggregator, cannot be
told from an aggregator that lies about it, so nobody is removed and the record says so.
Nothing is waited for past the exchange's deadline, and every message's size is checked first.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import looks, merkle, reduction
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages, tags
from podlt_mpi.mpi import reduce_messages as rm

log = logging.getLogger("podlt_mpi")


class Reduced(NamedTuple):
    """What one reduction gave: the slices' sums in slice order (gradient part, change part),
    the ranks to remove and why, and what the ledger keeps (records.Reduction's fields)."""
    parts: list
    refused: dict
    aggregators: tuple
    challenged: tuple
    sums: tuple          # each slice's sum's digest (merkle.leaf, hex), as applied
    fetched: tuple       # slices the manager summed itself
    unattributed: tuple  # (sender, aggregator, slice): flagged, and given to the manager
    senders: frozenset = frozenset()  # the refused that lied as senders, not as aggregators
    looked: tuple = ()   # (leaf, why, None or the manager's Committed): the look's held back
    round: int = 0       # tags.step's: the iteration's reductions, one more per fake it finds


class Reduction:
    def __init__(self, comm, layout: Layout, n_slices: int, exchange, keys, signer,
                 challenges: int = 2):
        """`keys`: every rank's public key, by rank (its start-up report); `signer`: the
        manager's own, whose public key is keys[0]."""
        self.comm, self.layout, self.n_slices, self.exchange = comm, layout, n_slices, exchange
        self.keys, self.signer = keys, signer
        self.n_summed = layout.n_grad + layout.n_float
        self.bounds = reduction.bounds(self.n_summed, n_slices)
        self.challenges = challenges
        self.sends = mpi.Sends(comm, exchange.waiter.mode)
        # this round's (_serve): the ranks that may ask for the table, the table, its tags
        self.requests, self.table, self.iteration, self.step = {}, None, None, None

    # ---- the wire --------------------------------------------------------------------------

    def _post(self, array, dest: int, tag: int):
        self.exchange.cost.bytes_out += array.nbytes
        self.sends.post(array, dest, tag)

    def close(self) -> None:
        """The run is over: the manager's own sends completed, to their deadline."""
        self.sends.close()

    def _receive(self, wanted: dict) -> dict:
        """{key: (source, tag, size)} -> {key: the float32 message, or why there is none},
        to the exchange's deadline."""
        got = {k: mpi.Checked(self.comm, np.empty(n, np.float32), src, tag)
               for k, (src, tag, n) in wanted.items()}
        for r in got.values():
            self.exchange.cost.bytes_in += r.buffer.nbytes
        awaited = {(src, tag) for src, tag, _ in wanted.values()}

        def awaits(rank, tag):
            if tag == tags.TABLE_REQUEST:
                return rank in self.requests
            return (rank, tag) in awaited and any(
                not c.finished for c in got.values() if (c.source, c.tag) == (rank, tag))

        def idle():
            self._serve()
            self.exchange.drain(awaits)
        timeout = self.exchange.timeout()
        mpi.Waiter(self.exchange.waiter.mode).poll(mpi.in_order(got.values()), None, None,
                                                   timeout, idle)
        self.sends.keep(got.values())
        return {k: (c.buffer if c.finished and c.bad is None else
                    c.bad or f"nothing within {timeout:g} s") for k, c in got.items()}

    def _serve(self) -> None:
        """The table, sent directly to each rank that asked for it (once per iteration): its
        relay did not give it one with the header's digest. Who failed it cannot be told (the
        relay, or the rank itself), so nobody is blamed; it costs the manager one table."""
        for r, c in list(self.requests.items()):
            if c.Test():
                del self.requests[r]
                if c.bad is None and int(c.buffer[0]) == self.iteration:
                    log.info("iteration %d: rank %d asked for the table directly",
                             self.iteration, r)
                    self._post(self.table, r, tags.table_tag(self.step))

    # ---- one reduction ---------------------------------------------------------------------

    def __call__(self, iteration: int, key: bytes, members, leaves, weights, mine: dict,
                 recompute, trusted=(), round_: int = 0) -> Reduced:
        """`members`: the active ranks in good standing (they aggregate); `leaves`:
        rm.TableLeaf in line order (their keys filled in here); `weights`: the state the
        answers were computed from; `mine`: seed -> reduction.Committed, the manager's own
        answers among the leaves; `recompute(leaf)`: the manager's answer for a leaf whose
        sender fails it, or that the look holds back; `trusted`: the leaves the look leaves
        alone (checked, or the manager's). `round_` 1: the iteration's reduction
        again, after the look found a fake answer in round 0 (its parts were None)."""
        perm = reduction.aggregators(key, iteration, members)
        agg = tuple(perm[j % len(perm)] for j in range(self.n_slices))
        leaves = [x._replace(key=self.keys[x.rank]) if x.rank >= 0 else x for x in leaves]
        self.step = tags.step(iteration, round_)
        self._send_table(iteration, round_, agg, leaves)
        for leaf in leaves:  # the manager's own answers: slices like any sender's
            c = mine.get(leaf.seed) if leaf.rank == 0 else None
            for j, (a, b) in enumerate(self.bounds if c is not None else ()):
                self._post(rm.signed_slice(self.signer, iteration, j, leaf.seed, c.answer,
                                           c.paths[j], a, b), agg[j], tags.slice_tag(self.step))
        memo = {}

        def again(leaf):  # each fragment computed once, however many slices need it
            if leaf.seed not in memo:
                memo[leaf.seed] = recompute(leaf)
            return memo[leaf.seed]
        n_leaves = len(leaves)
        sums = self._receive({j: (agg[j], tags.SUM, rm.sum_len(a, b, n_leaves))
                              for j, (a, b) in enumerate(self.bounds)})
        refused, values, flagged = {}, {}, {}
        for j, (a, b) in enumerate(self.bounds):
            msg = sums[j]
            if isinstance(msg, str):
                refused.setdefault(agg[j], f"its sum of slice {j}: {msg}")
                continue
            try:
                values[j], flagged[j] = rm.read_sum(msg, a, b, n_leaves)
            except ValueError as e:
                refused.setdefault(agg[j], f"its sum of slice {j}: {e}")
        for j in [j for j in values if agg[j] in refused]:  # a refused rank's sums: none
            del values[j]
        challenged = reduction.challenged(key, iteration, self.n_slices, self.challenges)
        # the drawn slices, and every flagged one: its inputs are the evidence of who lied
        senders = set()  # the refused that lied as senders; the other refused, as aggregators
        outside = {}     # leaf -> why the look holds it back
        proven = self._challenge(iteration, sorted({*(j for j in challenged if j in values),
                                                    *(j for j in values if flagged[j])}),
                                 agg, leaves, weights, values, flagged, refused, senders,
                                 outside)
        looked = []  # (leaf, why, the manager's answer where the sender's differs, else None)
        last = round_ == tags.ROUNDS - 1  # no round after it: what its look finds stands
        for i, why in sorted(x for x in outside.items() if x[0] not in trusted and not last):
            c = reduction.commit(again(leaves[i]), self.n_summed, self.n_slices, mpi.cores())
            same = c.slices_root == leaves[i].slices_root
            looked.append((i, why, None if same else c))
            log.info("iteration %d: rank %d's answer (%s) held back; the manager's "
                     "recomputation is %s", iteration, leaves[i].rank, why,
                     "the same" if same else "different")
        if any(c is not None for *_, c in looked):  # round 1 sums the manager's answer instead
            return Reduced(None, refused, agg, challenged, (), (), (), frozenset(senders),
                           tuple(looked), round_)
        fetch = sorted(j for j in range(self.n_slices) if j not in values or flagged.get(j))
        unattributed = self._fetch(iteration, fetch, agg, leaves, weights, values, flagged,
                                   proven, refused, senders, mine, again)
        parts = [training.slice_parts(self.layout, *self.bounds[j], values[j])
                 for j in range(self.n_slices)]
        return Reduced(parts, refused, agg, challenged,
                       tuple(merkle.leaf(values[j]).hex() for j in range(self.n_slices)),
                       tuple(fetch), tuple(unattributed), frozenset(senders), tuple(looked),
                       round_)

    def _send_table(self, iteration: int, round_: int, agg, leaves) -> None:
        """The REDUCE header to every rank the table names, the table to the first of its
        relay (rm.relay); requests for it are served while the sums come (_serve)."""
        table = rm.table(self.n_slices, agg, leaves)
        wait_ms = int(1000 * self.exchange.timeout() / 2)  # the aggregators' wait for inputs
        digest = rm.table_digest(table)
        told = rm.recipients(agg, leaves)
        for r in told:  # each is told where its table comes from; the manager relays to FANOUT
            parent, _ = rm.relay(told, r)
            self._post(messages.header(rm.REDUCE, iteration, len(table),
                                       rm.relay_field(round_, parent), (wait_ms, digest)),
                       r, tags.HEADER)
        for child in rm.relay(told, 0)[1]:
            self._post(table, child, tags.table_tag(self.step))
        # a rank its relay failed asks for the table directly: once, this iteration
        self.requests = {r: mpi.Checked(self.comm, np.empty(1, np.int64), r, tags.TABLE_REQUEST)
                         for r in told}
        self.table, self.iteration = table, iteration

    def _sum(self, j: int, leaves, inputs: dict, weights) -> np.ndarray:
        """Slice j's sum from opened inputs (leaf index -> values), as an aggregator makes it."""
        a, b = self.bounds[j]
        g = self.layout.n_grad
        s = training.SliceSum(self.layout, len(leaves), a, b,
                              torch.from_numpy(np.ascontiguousarray(weights[g:self.n_summed])))
        for i, leaf in enumerate(leaves):
            s.set(i, inputs.get(i), leaf.count, leaf.lines)
        return s.values()

    def _opened(self, j: int, leaf, msg) -> np.ndarray | None:
        v = rm.opened(msg, leaf, j, self.n_slices, *self.bounds[j])
        return None if v is None else v.copy()

    def _challenge(self, iteration, slices, agg, leaves, weights, values, flagged,
                   refused, senders, outside) -> dict:
        """Each slice in `slices` summed again from its aggregator's inputs (PROOF), which must
        open under their roots, but for those it flagged: a flagged one that opens was flagged
        falsely (the aggregator is removed); one that does not, under its sender's signature,
        is the sender's equivocation (the sender is removed, and added to `senders`); any other
        proves nothing. The manager looks at the inputs itself (looks.slice_outliers): one it
        finds outside is added to `outside`, and an aggregator that flagged one clearly inside,
        or none clearly outside, is removed (clearly: by looks.MARGIN, another processor's
        rounding). Returns {slice: {leaf: values}}, the inputs the proofs opened."""
        g, f = self.layout.n_grad, self.n_summed
        present = [i for i, leaf in enumerate(leaves) if leaf.rank >= 0]
        for j in slices:
            self._post(messages.header(rm.CHALLENGE, iteration, j), agg[j], tags.HEADER)
        flags = {j: [i in flagged.get(j, ()) for i in present] for j in slices}
        proofs = self._receive({j: (agg[j], tags.PROOF,
                                    rm.proof_len(*self.bounds[j], j, self.n_slices, flags[j]))
                                for j in slices})
        opened = {}
        for j in slices:
            msg, why, again = proofs[j], None, None
            if isinstance(msg, str):
                why = f"its inputs of slice {j}: {msg}"
            else:
                parts = dict(zip(present, rm.read_proof(msg, *self.bounds[j], j, self.n_slices,
                                                        flags[j])))
                inputs = {i: self._opened(j, leaves[i], m) for i, m in parts.items()}
                opened[j] = {i: v for i, v in inputs.items() if v is not None}
                marked = set(flagged.get(j, ()))
                for i in sorted(marked & set(present) - set(opened[j])):
                    if rm.judge(parts[i], leaves[i], iteration, j, self.n_slices,
                                *self.bounds[j]) == rm.EQUIVOCAL:
                        senders.add(leaves[i].rank)
                        refused.setdefault(leaves[i].rank, f"its slice {j}, signed, does not "
                                                           f"open under its committed root")
                sizes = {i: training.slice_sizes(self.layout, *self.bounds[j], v, weights[g:f])
                         for i, v in opened[j].items()}
                for i in sorted(looks.slice_outliers(sizes)):
                    outside.setdefault(i, f"slice {j}: " + (
                        "non-finite" if not sizes[i][0] else
                        f"squared norms {sizes[i][1]:.4g}, {sizes[i][2]:.4g} beyond "
                        f"{looks.BOUND:g}^2 x the slice's median"))
                inside = set(opened[j]) - looks.slice_outliers(sizes, -looks.MARGIN)
                if any(i in inside or i not in inputs for i in marked):
                    why = f"it flagged an input of slice {j} that opens and is inside the look"
                elif any(i not in marked for i in looks.slice_outliers(sizes, looks.MARGIN)):
                    why = f"it did not flag an input of slice {j} outside the look"
                elif any(i not in opened[j] and i not in marked for i in inputs):
                    why = f"it summed inputs of slice {j} that do not open under their roots"
                else:
                    again = self._sum(j, leaves, {i: v for i, v in opened[j].items()
                                                  if i not in marked}, weights)
                    if np.array_equal(again.view(np.uint32), values[j].view(np.uint32)):
                        continue
                    why = f"its sum of slice {j} differs from the sum of its own inputs"
            refused.setdefault(agg[j], why)
            if again is not None and not flagged.get(j):
                values[j] = again  # every input proven: the manager's sum stands
            else:
                values.pop(j, None)  # summed from what opened and the senders' slices (_fetch)
            log.warning("iteration %d: rank %d, aggregator of slice %d: %s", iteration,
                        agg[j], j, why)
        return opened

    def _fetch(self, iteration, slices, agg, leaves, weights, values, flagged, proven,
               refused, senders, mine, recompute) -> list:
        """The slices the manager sums itself, from the inputs a proof opened (`proven`) and
        slices fetched from their senders for the rest; a sender that cannot give one is removed
        and the manager computes its fragment instead (`recompute(leaf) -> answer`), as for an
        unchecked answer refused. A flagged input its sender then gives the manager, that no
        signature proved a lie, is recorded: nothing tells whose lie it was."""
        unattributed = []
        for j in slices:
            inputs, wanted = dict(proven.get(j, {})), {}
            for i, leaf in enumerate(leaves):
                if leaf.rank < 0 or i in inputs:
                    continue
                if leaf.rank == 0:
                    inputs[i] = mine[leaf.seed].answer[slice(*self.bounds[j])]
                    continue
                if leaf.rank in senders:
                    continue  # its own signature proved it lied: its fragment is recomputed
                self._post(messages.header(rm.FETCH, iteration, j, leaf.seed), leaf.rank,
                           tags.HEADER)
                wanted[i] = (leaf.rank, tags.slice_tag(self.step),
                             rm.slice_len(*self.bounds[j], j, self.n_slices))
            got = self._receive(wanted)
            for i, msg in got.items():
                v = self._opened(j, leaves[i], msg)
                if v is None:
                    senders.add(leaves[i].rank)
                    refused.setdefault(leaves[i].rank, f"its slice {j}, fetched, does not "
                                                       f"open under its committed root")
                    continue
                inputs[i] = v
                if i in flagged.get(j, ()):
                    unattributed.append((leaves[i].rank, agg[j], j))
            for i, leaf in enumerate(leaves):
                if leaf.rank >= 0 and i not in inputs:
                    inputs[i] = recompute(leaf)[slice(*self.bounds[j])]
            values[j] = self._sum(j, leaves, inputs, weights)
        return unattributed
