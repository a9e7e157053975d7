"""The manager's side of the transport: send each assigned rank its work, gather the answers.

Every rank of a plan gets the same form of message (mpi/messages.py); a recheck is one more
plan of one assignment, sent the same way. A plan sends the weights once, by a non-blocking
broadcast over a communicator of the manager and the active ranks, rebuilt whenever the active
ranks change (a removal, a resume), or, without the broadcast, with each rank's lines. The answers
come in through window.py, in an order that does not depend on the roles; each is handed to the
digest pool the moment it arrives, so its ledger digest is computed while the other
answers are still on their way.

Nothing a rank sends can stop the exchange: an answer of the wrong size or fields is refused
(window.py, comm.Checked), one not in by the deadline too (ten times the slowest exchange so
far, at least MIN_TIMEOUT, at most MAX_TIMEOUT), and the refused ones go back to the manager,
which removes their ranks. What ranks send unasked is drained and counted. A broadcast that
did not bring a rank the state its header names, or did not complete, or whose group did not
form, is given up for the run, and the rank's work sent again directly. The exchange also keeps
the stop signals the workers reported with their answers.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from podlt_mpi.core import digests, schedule, timing
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages, preempt, tags
from podlt_mpi.run.window import Window

log = logging.getLogger("podlt_mpi")

FIRST_TIMEOUT = 120.0  # seconds for the first exchange (cold caches, lazy initialisation)
MIN_TIMEOUT = 20.0     # later: max(this, 10 x the slowest exchange so far),
MAX_TIMEOUT = 600.0    # but never more: a slow rank could otherwise grow it tenfold each time
# Receive buffers for the answers folded as they arrive: at least WINDOW, more while they fit in
# WINDOW_BYTES. Folding in line order through a few buffers serialises the answers; small models
# (50 ranks on 2 cores, sleeping between polls, trained much slower through 4 buffers of 1 MB)
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
        self.unsolicited = {}  # rank -> messages it sent unasked, discarded (drain)
        self.last_words = {}   # rank -> its last word (FINISH), if it said it early (drain)
        self.misbehaved = set()  # ranks refused or sending unasked: ended with the job
        self.ordered_fold = False  # format 3: answers folded in arrival order (no redo)

    def timeout(self) -> float:
        if self.rank_timeout:
            return self.rank_timeout
        if self.slowest is None:
            return FIRST_TIMEOUT
        return min(MAX_TIMEOUT, max(MIN_TIMEOUT, 10 * self.slowest))

    def regroup(self, active, iteration: int = -1) -> None:
        """Make the broadcast's communicator the manager and `active`, if it is not already."""
        members = (0, *sorted(active))
        if members == self.members:
            return
        self.send({r: messages.regroup(members) for r in active})
        group = mpi.subgroup(self.comm, members, self.group, self.timeout())
        if group is None:  # a member never joined: no broadcast from here on
            self.lose_broadcast(iteration, why=f"the broadcast's group of {len(members)} ranks was "
                                        f"not formed within {self.timeout():g} s (a rank did "
                                        f"not join)")
            self.group, self.members = None, ()
            return
        self.group, self.members = group, members

    def send(self, outgoing: dict) -> None:
        """Post the sends and wait for them to their deadline: one to a rank that never
        receives is left (its buffer kept alive), not waited on for ever."""
        who = []
        reqs = self.post(outgoing, [], who)
        self.abandoned += mpi.Waiter(self.waiter.mode).poll(reqs, who, None, self.timeout())

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
        """Send every assigned rank its messages; return (grads, losses, digests, refused) by
        rank: the gradients kept whole (None: refused), every rank's loss, futures of the
        answers' seals (digests.Seal: the digest, and the sketch in tolerance mode), and why
        each refused answer was. `everyone` (the active ranks): the weights go to all of them
        by the group's broadcast (if `broadcast`), those without lines taking part with a
        header of none; None: with each rank's lines.
        `fold`: (order, streamed, add): the answers come in one at a time in `order` through
        the window (window.py); those of `streamed` go, in that order, to add(rank, gradient,
        answer) and are not returned (the manager's memory stays flat in the ranks). Without
        it every answer is received at once and kept.
        A rank that says it did not get the state its header names (the broadcast passes
        through other ranks, which may alter or withhold it) is sent its work again with the
        weights, directly, and the broadcast is not used again (lose_broadcast)."""
        t_start = time.monotonic()
        order, streamed, add = fold or ([a.rank for a in plan.assignments], (), None)
        window = self.round(plan, iteration, weights, bx, by, everyone, order, streamed, add,
                            fold is not None)
        grads, losses, futures, refused = self.collect(window)
        if window.unseen and self.ordered_fold:
            raise mpi.PeerLost(f"rank(s) {sorted(window.unseen)} did not get the weights by the "
                               f"broadcast in iteration {iteration}, which this run's ledger "
                               f"format (3: an update summed in arrival order) cannot redo; "
                               f"continue with --resume {self.resume_hint} --broadcast off")
        if window.unseen:
            self.lose_broadcast(iteration, sorted(window.unseen))
            again = schedule.Plan(plan.start, plan.stop, (), (), None,
                                  tuple(a for a in plan.assignments if a.rank in window.unseen))
            redo = self.round(again, iteration, weights, bx, by, None,
                              [r for r in order if r in window.unseen], streamed, add,
                              fold is not None)
            more = self.collect(redo)
            for mine, theirs in zip((grads, losses, futures, refused), more, strict=True):
                mine.update(theirs)
            for r in redo.unseen:  # the weights came directly: a false claim is a lie
                refused[r], grads[r] = "it claimed not to get the weights sent to it", None
        self.cost.seconds["exchange"] += time.monotonic() - t_start  # the sends and the waits
        self.misbehaved |= set(refused)
        return grads, losses, futures, refused

    def round(self, plan, iteration, weights, bx, by, everyone, order, streamed, add,
              folding: bool) -> Window:
        """One sending of the plan's work and the receipt of its answers, to their deadline."""
        reqs, who = [], []
        cost = self.cost
        everyone = everyone if self.broadcast else None
        state = None
        if everyone is not None:
            self.regroup(everyone, iteration)
            everyone = everyone if self.broadcast else None  # the group may not have formed
        if everyone is not None:
            wait_ms = int(1000 * self.timeout() / 2)  # a rank says so before its deadline
            state = (wait_ms, messages.state_digest(weights))
        outgoing = messages.messages_for_plan(plan, iteration, self.seed,
                                              None if everyone is not None else weights, bx, by,
                                              everyone or (), state)
        self.post(outgoing, reqs, who)
        if everyone is not None:  # one copy of the weights out, whatever the number of ranks
            reqs.append(mpi.ibcast(self.group, weights))
            who.append(None)
            cost.bytes_out += weights.nbytes
        size = max(WINDOW, WINDOW_BYTES // (4 * self.answer_size)) if folding else len(order)
        window = Window(self.comm, self.answer_size, order, streamed, add, size,
                        lambda rank, buffer: self.pool.answer(buffer), self.spare, cost)
        pending = list(zip(reqs, who)) + window.start()
        t0 = time.monotonic()
        timeout = self.timeout()
        while pending:
            pending = mpi.Waiter(self.waiter.mode).poll(
                [r for r, _ in pending], [w for _, w in pending], window.done, timeout,
                lambda: self.drain(window.awaits))
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
        if not window.refused and not window.unseen:  # a deadline met is no measure
            self.slowest = max(self.slowest or 0.0, dt)
        return window

    def collect(self, window: Window) -> tuple:
        """(grads, losses, futures, refused) of a round's window."""
        losses = {}
        for r, v in window.notes.items():
            if r in window.refused or r in window.unseen:
                losses[r] = float("nan")
                window.futures[r] = digests.done(digests.REFUSED)
                continue
            self.cost.compute.append(float(v[2]))
            losses[r] = float(v[0])
            if v[1]:
                self.notices.setdefault(r, preempt.name(int(v[1])))
        grads = {r: g for r, g in window.kept().items() if r not in window.unseen}
        return grads, losses, window.futures, dict(window.refused)

    def drain(self, awaits=lambda rank, tag: False) -> None:
        """Discard what ranks sent unasked (comm.drain), counting it per rank, with one warning
        per rank. A rank's first last word (FINISH) is kept in `last_words`: a removed rank
        says it early, and the job's end (startup.finish) takes it from there."""
        def keep(r, tag, nbytes):
            if tag == tags.TABLE_REQUEST and nbytes == 8:
                # an honest rank whose relay failed it asks late, once the reduction that
                # served requests is over: taken and dropped, not counted against it
                return np.empty(1, np.int64)
            if tag == tags.FINISH and r not in self.last_words and \
                    nbytes == 8 * messages.LAST_WORD_LEN:
                self.last_words[r] = np.empty(messages.LAST_WORD_LEN, np.float64)
                return self.last_words[r]
            return None
        got = mpi.drain(self.comm, range(1, self.comm.Get_size()), awaits, tags.KNOWN, keep)
        for r, n in got.items():
            if r not in self.unsolicited:
                log.warning("rank %d sends messages nobody asked for: discarded and counted",
                            r)
            self.unsolicited[r] = self.unsolicited.get(r, 0) + n
            self.misbehaved.add(r)

    def lose_broadcast(self, iteration: int, unseen=(), why: str | None = None) -> None:
        """The weights' broadcast did not complete in time, or ranks say it brought them other
        weights than the header names: a rank on its way (MPI's broadcast has ranks forward
        to ranks) withheld or altered them, and nothing tells which. The weights go to each
        rank directly from now on, said once."""
        if self.broadcast:
            self.broadcast = False
            why = why or (f"rank(s) {list(unseen)} did not get the weights by the broadcast as "
                          "sent (withheld or altered by a rank that forwards them)" if unseen
                          else "the weights' broadcast did not complete within the deadline")
            log.warning("iteration %d: %s; from now on the weights go to each rank directly",
                        iteration, why)

    def reclaim(self, buffers) -> None:
        """Kept gradients the manager is done with: receive buffers for the next iterations
        (window.py: every answer lands in memory already touched)."""
        ids = {id(b) for b in self.spare}
        self.spare += [b for b in buffers if isinstance(b, np.ndarray) and id(b) not in ids
                       and b.shape == (self.answer_size,) and b.dtype == np.float32]

    def stop(self, ranks) -> None:
        """Tell `ranks` the run is over for them (a STOP header; nothing else follows)."""
        self.send({r: [(tags.HEADER, messages.header(messages.STOP))] for r in ranks})
