"""Rank 0: holds the master weights and the optimizer, schedules, checks, applies, records.

One iteration (docs/design.md, docs/protocol.md), `Manager.step`:
  1. take the next block of lines;  2. order the active ranks, the last K are controls;
  3. pick the checked worker c;     4. broadcast the weights, send each rank its own slice,
                                       gather the answers, folding the unchecked ones into the
                                       update as they arrive (exchange.py, training.Fold);
  5. compare c with its controls, referee and settle disagreements (checks.py);
  6. apply the weighted mean of the accepted gradients (rules.applied, training.Fold);
  7. append a hash-chained ledger record (records.py, files.py).
What the run has done so far is a RunState (state.py): what checkpoints save.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from podlt_mpi.compute import kernels, training
from podlt_mpi.compute import losses as task_losses
from podlt_mpi.compute.layout import Layout, device_of, host
from podlt_mpi.mpi import messages
from podlt_mpi.mpi import reduce_messages as rm
from podlt_mpi.core import (
    credits,
    digests,
    ledger,
    looks,
    rates,
    records,
    reduction,
    roles,
    rules,
    schedule,
    sketch,
    timing,
)
from podlt_mpi.core.config import RunConfig, broadcasts, min_active
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import preempt
from podlt_mpi.io.data import Dataset, Reader
from podlt_mpi.run import checkpoint, rundir
from podlt_mpi.run.checks import Checker, Round
from podlt_mpi.run.exchange import Exchange
from podlt_mpi.run.reduce import Reduced, Reduction
from podlt_mpi.run.files import RunFiles
from podlt_mpi.run.progress import Progress, final_table
from podlt_mpi.run.state import RunState

log = logging.getLogger("podlt_mpi")

TOO_FEW = "too few active ranks left for the controls"


class Manager:
    def __init__(self, comm, cfg: RunConfig, ds: Dataset, model, out: str, waiter: mpi.Waiter,
                 meta: dict, resume=None, started: float | None = None, signing=None,
                 exchange=None):
        """`signing`: (every rank's public key, by rank; the manager's core/signatures.Signer),
        for the ranks' reduction. `exchange`: the transport to the ranks, called once a plan
        (exchange.Exchange's interface); None: the MPI exchange over `comm` with `waiter`.
        tests/test_manager_parts.py passes ranks that live in the test's process."""
        self.comm, self.cfg, self.ds, self.out, self.meta = comm, cfg, ds, out, meta
        self.model, self.task, self.resume = model, ds.task, resume
        self.loss_fn = task_losses.loss_function(ds.task)
        self.layout = Layout(model)
        self.opt = training.make_optimizer(cfg, self.layout)
        # The ledger's digests: a resumed run goes on in the format of the record it continues
        self.format, self.digest = ((resume.format, resume.digest) if resume is not None
                                    else (records.FORMAT, digests.WRITTEN))
        self.pool = digests.Pool(self.digest, mpi.cores())
        self.frozen = self.frozen_hash()  # frozen parameters never change: hashed once
        self.weights_digest = None  # the last model_after: the next model_before, hashed once
        self.total = schedule.total_iterations(len(ds.train), cfg.block_lines, cfg.epochs,
                                               cfg.blocks)  # the run's length: fixed per job
        self.state = RunState.fresh(comm.Get_size(), cfg.seed)
        # --reduce ranks: the ranks send commitments, and sum the answers themselves (reduce.py)
        self.reducing = cfg.reduce == reduction.RANKS
        self.exchange = exchange or Exchange(
            comm, waiter, rm.commit_len(self.layout.n_count) if self.reducing
            else self.layout.answer_size, cfg.seed, cfg.rank_timeout, out, self.pool,
            broadcasts(cfg, waiter.mode))
        self.exchange.ordered_fold = self.folding and not self.keyed
        # the votes' fused comparison: the Triton kernel when the manager has a GPU
        three_way = kernels.for_device(device_of(model), self.layout.answer_size)
        self.checker = Checker(model, ds.line_shape, self.loss_fn, three_way, self.exchange,
                               cfg.compare, cfg.rtol, cfg.atol, cfg.seed, self.looking)
        self.mine = {}  # ranks' reduction: seed -> the manager's own answers among the leaves
        self.losses = {}  # ... and seed -> the loss of each fragment it recomputed
        self.looked = []  # ... and the looks its reductions made this iteration (held_back)
        if self.reducing:
            self.reduction = Reduction(comm, self.layout, comm.Get_size() - 1, self.exchange,
                                       *signing, cfg.challenges)
            self.checker.form = lambda grad: self.commitment_of(self.committed(grad))
        self.files = RunFiles(out)
        self.lines = Reader(ds.train.path, cfg.x_key, cfg.y_key)  # ds.train's: the blocks
        self.deadline = preempt.Deadline(cfg.time_limit, started)
        self.ignored = set()  # ranks whose repeated stop signals are not obeyed (stop_reason)
        self.held = {}        # the look's answers held back this iteration (look, looked_again)
        if resume is not None and resume.checkpoint is not None:
            self.restore(resume.checkpoint, resume.active)
        if self.keyed:
            self.choose_key()

    @property
    def keyed(self) -> bool:
        """Whether this run's roles come from the secret key (ledger format 4)."""
        return self.format >= records.KEYED

    def choose_key(self) -> None:
        """The roles' key: the checkpoint's, so a resume is byte-identical, unless the run's end
        revealed it (a completed run continued: a fresh key, committed anew); else a new one
        from the operating system's CSPRNG, or --role-seed's (insecure)."""
        st, cfg = self.state, self.cfg
        if st.role_key is not None and not rundir.revealed(self.out, st.role_key):
            how = "continued from the checkpoint"
        elif cfg.role_seed is not None:
            st.role_key, how = roles.key_from_seed(cfg.role_seed), "from --role-seed"
            log.warning("--role-seed %d: INSECURE, anyone who knows it knows every role "
                        "(tests and demonstrations only)", cfg.role_seed)
        else:
            st.role_key, how = roles.new_key(), "from the operating system"
        self.commitment = roles.commitment(st.role_key)
        self.meta["roles"] = {"commitment": self.commitment,
                              "key": "role-seed" if cfg.role_seed is not None else "secret"}
        log.info("roles committed: %s (key %s; revealed in %s when the run completes)",
                 self.commitment, how, roles.KEY_FILE)

    def plan(self, it: int, start: int, stop: int) -> schedule.Plan:
        """The iteration's roles: from the secret key (format 4), else from the run's seeded
        generator as older formats drew them."""
        cfg, st = self.cfg, self.state
        if self.keyed:
            return roles.plan(st.role_key, it, st.active, cfg.controls, start, stop,
                              cfg.checks_per_iteration)
        order = sorted(st.active) if it == 0 else schedule.shuffle(st.active, st.rng)
        return schedule.plan_iteration(order, cfg.controls, start, stop, st.rng,
                                       cfg.checks_per_iteration)

    def recheck_order(self, it: int):
        """(check index, candidates) -> the order in which they recheck a dispute."""
        if self.keyed:
            key = self.state.role_key
            return lambda i, candidates: roles.recheck_order(key, it, i, candidates)
        return lambda i, candidates: schedule.shuffle(candidates, self.state.rng)

    def committed(self, grad) -> reduction.Committed:
        """The manager's own answer, committed to as a rank commits to it (aggregate.py)."""
        return reduction.commit(np.ascontiguousarray(host(torch.as_tensor(grad)), np.float32),
                                self.reduction.n_summed, self.reduction.n_slices,
                                self.pool.threads)

    def commitment_of(self, c: reduction.Committed) -> np.ndarray:
        """Its commitment, as a rank sends it (`self.commitment` is the roles' key's)."""
        return rm.commitment(c.root, c.slices_root, c.answer[self.reduction.n_summed:])

    def frozen_hash(self):
        return self.layout.frozen_hash(self.digest, self.pool.threads)

    def weights_now(self, state=None) -> str:
        """The model's digest as the ledger writes it, continuing `self.frozen` (its hash and
        the pool's threads)."""
        return self.layout.digest(state, self.frozen)

    @property
    def cost(self) -> timing.IterationCost:
        return self.exchange.cost

    # ---- the schedule ----------------------------------------------------------------------

    def iterations(self, first: int = 0):
        """(iteration, epoch, block, start, stop) from iteration `first` to the end of the run."""
        for item in schedule.run_blocks(len(self.ds.train), self.cfg.block_lines, self.cfg.epochs,
                                        self.cfg.blocks, schedule.shuffle_seed(self.cfg)):
            if item[0] >= first:
                it, epoch, b, s, e = item
                yield it, epoch, b, self.ds.train.start + s, self.ds.train.start + e

    def rate(self, iteration: int, epoch: int) -> float:
        return rates.learning_rate(self.cfg, iteration, epoch, self.total)

    # ---- state: checkpoints and resume ------------------------------------------------------

    def proof(self) -> dict:
        return self.state.proof(self.task.figures())

    def restore(self, ckpt: dict, active: list) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.frozen, self.weights_digest = self.frozen_hash(), None
        self.state.restore(ckpt, active, self.task.figures())

    def checkpoint_due(self, record: records.Record, last: bool, stopping: bool) -> bool:
        every = self.cfg.checkpoint_every
        periodic = every > 0 and (self.state.next_iteration % every == 0 or last)
        return periodic or stopping or bool(record.removed)

    def stop_reason(self) -> str | None:
        """Why to stop after this iteration: a signal here or on a worker, or the deadline."""
        if len(self.state.active) < min_active(self.cfg):
            return TOO_FEW
        if preempt.requested():
            return preempt.requested()
        reported, self.exchange.notices = self.exchange.notices, {}
        for rank, signal in sorted(reported.items()):
            if rank not in self.state.stopped_by:
                self.state.stopped_by.append(rank)
                return f"{signal} on rank {rank}"
            if rank not in self.ignored:
                self.ignored.add(rank)
                log.warning("rank %d reports %s again, after it stopped this run once: not "
                            "obeyed, so that no rank can keep the run from finishing", rank,
                            signal)
        if self.deadline.near():
            return "--time-limit"
        return None

    # ---- one iteration ---------------------------------------------------------------------

    def accepted(self, plan, checks, replaced=()) -> list:
        """(start, stop, rank whose gradient stands) for every fragment applied, in line order
        (rules.applied)."""
        fragments = [(a.rank, (a.start, a.stop)) for a in plan.assignments if a.role == "worker"]
        return [(s, e, r) for (s, e), r in rules.applied(fragments, [c.outcome() for c in checks],
                                                         self.folding, replaced)]

    @property
    def looking(self) -> bool:
        """Whether this run's ledger format looks at every unchecked answer (looks.py)."""
        return self.format >= records.LOOKED

    @property
    def sketching(self) -> bool:
        """Whether the ledger keeps a sketch of every answer: tolerance mode from format 6."""
        return self.format >= records.SKETCHED and self.cfg.compare != "exact"

    @property
    def folding(self) -> bool:
        """Whether this run's ledger format folds the update as the answers arrive."""
        return self.format >= records.FOLDED

    def weight(self, by, start: int, s: int, e: int) -> tuple:
        """(count, lines) of the fragment [s, e) of a block's targets `by` starting at `start`."""
        return self.task.weight(by[s - start:e - start]), e - s

    def step(self, iteration, epoch, block, start, stop) -> records.Record:
        cost, st = self.cost, self.state
        self.exchange.drain()  # what ranks sent unasked since the last exchange
        active = tuple(sorted(st.active))  # the ranks the roles are drawn from
        plan = self.plan(iteration, start, stop)
        if self.sketching:  # the answers' buckets and signs, secret until the key is revealed
            self.pool.codes = sketch.codes(st.role_key, iteration, self.layout.answer_size)
        weights = host(self.layout.state())
        with cost.part("ledger"):
            model_before = self.weights_digest or self.weights_now(weights)
        with cost.part("read"):
            bx, by = self.lines.read(start, stop)
            self.ds.rules.check(bx, by, start)  # a bad line ends the run before it is used
            bx = bx.reshape(len(by), -1)
        data_digest = self.pool.submit(bx, by)  # hashed while the answers arrive
        checked = {plan.fragment_of(c) for c, _ in plan.checks}
        fold, streamed, unchecked = None, None, {}
        workers = [a for a in plan.assignments if a.role == "worker"]  # in line order
        if self.folding:
            unchecked = {a.rank: (i, *self.weight(by, start, a.start, a.stop))
                         for i, a in enumerate(workers) if (a.start, a.stop) not in checked}
        self.mine, self.losses, self.looked = {}, {}, []
        self.folded = []  # format 3: the lines in the order they were summed (apply checks it)
        if self.folding and not self.reducing:  # the unchecked answers fold in as they arrive
            controls = dict(plan.checks)
            # the answers' order (window.py): line order, each control after its checked worker
            order = [r for a in workers for r in (a.rank, *controls.get(a.rank, ()))]
            if self.keyed:  # a tree over every fragment: the checked ones are set later
                fold = training.TreeFold(self.model, self.layout, len(workers))
                add = (self.look(plan, iteration, weights, bx, by, fold, unchecked)
                       if self.looking else  # format 4 folds every unchecked answer on trust
                       lambda r, grad, note: fold.set(unchecked[r][0], grad,
                                                        *unchecked[r][1:]))
                streamed = (order, list(unchecked), add)
            else:  # format 3: summed in arrival order, the unchecked answers as they stream
                fold = training.Fold(self.model, self.layout)
                def add(r, grad, note):
                    a = workers[unchecked[r][0]]
                    self.folded.append((a.start, a.stop))
                    fold.add(grad, *unchecked[r][1:])
                streamed = (order, list(unchecked), add)
        grads, losses, hashed, refused = self.exchange(plan, iteration, weights, bx, by,
                                                      st.active, streamed)
        self.refuse_old_format(refused, iteration)
        # by assignment: a rank recruited for a dispute sends a second gradient in the iteration
        rnd = Round(plan, iteration, weights, bx, by,
                    *({(a.rank, a.start, a.stop): got[a.rank] for a in plan.assignments
                       if a.rank in got} for got in (grads, losses, hashed)))
        if self.looking:  # a refused unchecked answer: the manager computes that fragment
            self.held.update({r: refused[r] for r in refused if r in unchecked})
        with cost.part("verify"):
            checks = self.checker(rnd, [r for r in st.active if r not in refused],
                                  self.recheck_order(iteration))
            self.refuse_old_format(self.checker.refused, iteration)
            refused.update(self.checker.refused)
            held = (self.computed_instead(rnd, unchecked) if self.reducing else
                    self.looked_again(rnd, fold, unchecked, refused) if self.looking else [])
        rechecks = [a for c in checks for a in c.rechecks]
        assigned = (*plan.assignments, *rechecks)
        held += [records.Look(a.rank, (a.start, a.stop), refused[a.rank], "malformed")
                 for a in assigned if a.rank in refused and a.rank not in unchecked]
        replaced = [x.lines for x in held if x.verdict != "same" and x.rank in unchecked]
        applied = self.accepted(plan, checks, replaced)
        fake = sorted({r for c in checks for r in c.decision.fake})
        lying, reduced = {}, None  # the ranks' reduction: ranks it proved lying, what it did
        if applied and self.reducing:
            excluded = {*fake, *refused, *(x.rank for x in held)}
            members = [r for r in st.active if r not in excluded]
            reduced = self.reduced(rnd, applied, members, checked)
            looked = self.held_back(rnd, reduced)
            held += looked
            while reduced.parts is None:  # the look found a fake answer: the reduction again,
                replaced += [x.lines for x in looked if x.verdict != "same"]  # the manager's
                applied = self.accepted(plan, checks, replaced)  # answer in the fake's place
                members = [r for r in members
                           if r not in {*reduced.refused, *(x.rank for x in looked)}]
                before = reduced
                reduced = self.reduced(rnd, applied, members, checked, before.round + 1)
                looked = self.held_back(rnd, reduced)
                held += looked
                reduced = reduced._replace(refused={**before.refused, **reduced.refused},
                                           senders=before.senders | reduced.senders)
            lying = reduced.refused
        loss = self.apply(rnd, applied, epoch, fold, checked, reduced) if applied else None
        for r in fake:
            self.remove(r, iteration, rules.removed_role(r, {c.checked for c in checks},
                                                         plan.controls),
                        *((f"its answer was refused: {refused[r]}",) if r in refused else ()))
        roles_of = {a.rank: a.role for a in assigned}
        for x in held:
            if x.verdict != "same" and x.rank in st.active:
                self.remove(x.rank, iteration, roles_of[x.rank],
                            f"its answer was refused: {x.why}" if x.verdict == "malformed" else
                            f"its answer ({x.why}) differs from the manager's recomputation")
        for r, why in sorted(lying.items()):
            if r in st.active:
                self.remove(r, iteration, "sender" if r in reduced.senders else "aggregator", why)
        fake = sorted({*fake, *(x.rank for x in held if x.verdict != "same"), *lying})
        done = [c.record() for c in checks]
        mine = [schedule.Assignment(rules.MANAGER, "manager", *lines) for lines in replaced]
        with cost.part("ledger"):  # the weights' digest; the rest is mostly done by now
            self.weights_digest = self.weights_now()
            record = records.Record(
                iteration=iteration, epoch=epoch, block=block, lines=(start, stop),
                data_digest=data_digest.result(), model_before=model_before,
                assignments=tuple(self.assignment(rnd, a, refused)
                                  for a in (*plan.assignments, *rechecks, *mine)),
                check=done[0] if done else None, extra_checks=tuple(done[1:]),
                applied=tuple((s, e) for s, e, _ in applied),
                applied_from=tuple(r for _, _, r in applied), removed=tuple(fake),
                loss=ledger.finite_or_none(loss), model_after=self.weights_digest,
                format=self.format, digest=self.digest, looks=tuple(held),
                **({"roles": self.commitment, "active": active} if self.keyed else {}),
                **({"reduction": records.Reduction.of(reduced)} if reduced else {}))
        self.exchange.reclaim(rnd.grads.values())  # every digest has read them by now
        credits.account(st.credits, record)
        for c in checks:
            st.counts[c.decision.verdict] += 1
        return record

    def assignment(self, rnd: Round, a, refused: dict) -> records.Assignment:
        """The ledger's line for one answer of the round: its seal and, from format 5, its loss."""
        key = (a.rank, a.start, a.stop)
        seal = (digests.REFUSED if a.rank in refused and a.rank != rules.MANAGER else
                digests.Seal(rm.read_commitment(rnd.grads[key])[0].hex()) if self.reducing else
                rnd.digests[key].result())
        return records.Assignment(a.rank, a.role, (a.start, a.stop), seal.digest,
                                  ledger.finite_or_none(rnd.losses[key]) if self.looking else None,
                                  seal.sketch)

    def refuse_old_format(self, refused: dict, iteration: int) -> None:
        """Ledger formats before 5 cannot record a refused answer: a run resumed in one ends
        here, as it did, to be resumed (its next resume starts format 5 only with a new run)."""
        if refused and not self.looking:
            r, why = sorted(refused.items())[0]
            raise mpi.PeerLost(f"rank {r}'s answer in iteration {iteration} was refused ({why}), "
                               f"which this run's ledger format {self.format} cannot record; "
                               f"the ledger ends at the last complete iteration: continue with "
                               f"--resume {self.out}")

    def look(self, plan, iteration, weights, bx, by, fold, unchecked):
        """The window's add(rank, gradient, note) for the unchecked answers: each is looked at
        (looks.py) and folded, or held back (returns True: the window keeps its buffer) for
        `looked_again`. Without a reference from the last iteration, the manager's own answer
        for the first fragment gives one."""
        st = self.state
        if st.look_reference is None:
            first = next(a for a in plan.assignments if a.role == "worker")
            grad, loss = self.checker.recompute(Round(plan, iteration, weights, bx, by, {}, {},
                                                      {}), first.start, first.stop)
            st.look_reference = looks.reference(
                [training.answer_sizes(self.layout, grad, loss, fold.before)])
        ref, self.sizes, self.held = st.look_reference, {}, {}

        def add(rank, grad, note):
            i, count, lines = unchecked[rank]
            sizes = training.answer_sizes(self.layout, grad, float(note[0]), fold.before)
            why = looks.why(sizes, ref)
            if why is not None:
                self.held[rank] = why
                return True
            self.sizes[rank] = sizes
            fold.set(i, grad, count, lines)
            return False
        return add

    def looked_again(self, rnd: Round, fold, unchecked, refused) -> list:
        """The held-back answers, in line order: each fragment recomputed by the manager, the
        rank's answer folded if it is the same, else (or if `refused`) the manager's
        (records.Look). Then the next iteration's reference, from this one's standing
        answers."""
        out = []
        for rank, why in sorted(self.held.items(), key=lambda x: unchecked[x[0]][0]):
            a = next(a for a in rnd.plan.assignments if a.rank == rank)
            key, lines = (rank, a.start, a.stop), (a.start, a.stop)
            grad, loss = self.checker.recompute(rnd, *lines)
            same = rank not in refused and self.checker.same_answer(rnd.grads[key],
                                                                    rnd.losses[key], grad, loss)
            if same:
                self.sizes[rank] = training.answer_sizes(self.layout, grad, loss, fold.before)
            else:
                mine = (rules.MANAGER, *lines)
                rnd.grads[mine], rnd.losses[mine] = grad, loss
                rnd.digests[mine] = self.pool.answer(grad)
                key = mine
            i, count, n = unchecked[rank]
            fold.set(i, rnd.grads[key], count, n)
            verdict = "same" if same else "malformed" if rank in refused else "differs"
            out.append(records.Look(rank, lines, why, verdict))
            if verdict != "malformed":
                log.info("iteration %d: rank %d's answer (%s) held back; the manager's "
                         "recomputation is %s", rnd.iteration, rank, why,
                         "the same" if same else "different")
        self.state.look_reference = looks.reference(self.sizes.values()) or \
            self.state.look_reference
        return out

    def computed_instead(self, rnd: Round, unchecked) -> list:
        """The ranks' reduction: the refused unchecked answers (held), each fragment computed by
        the manager, which sends its slices as the rank would have (records.Look,
        `malformed`)."""
        out = []
        for rank, why in sorted(self.held.items(), key=lambda x: unchecked[x[0]][0]):
            a = next(a for a in rnd.plan.assignments if a.rank == rank)
            grad, loss = self.checker.recompute(rnd, a.start, a.stop)
            c = self.committed(grad)
            mine = (rules.MANAGER, a.start, a.stop)
            rnd.grads[mine], rnd.losses[mine] = self.commitment_of(c), loss
            self.mine[messages.fragment_seed(self.cfg.seed, rnd.iteration, a.start, a.stop)] = c
            out.append(records.Look(rank, (a.start, a.stop), why, "malformed"))
        self.held = {}
        return out

    def held_back(self, rnd: Round, reduced: Reduced) -> list:
        """The answers the reduction's look held back (reduce.py), as records.Look: `same`, or
        `differs`, the manager's answer then standing for the fragment (its commitment in
        `rnd`, its slices in `self.mine`)."""
        workers = [a for a in rnd.plan.assignments if a.role == "worker"]  # the leaves' order
        out = []
        for i, why, c in reduced.looked:
            a = workers[i]
            if c is not None:
                mine = (rules.MANAGER, a.start, a.stop)
                seed = messages.fragment_seed(self.cfg.seed, rnd.iteration, a.start, a.stop)
                rnd.grads[mine], rnd.losses[mine] = self.commitment_of(c), self.losses[seed]
                self.mine[seed] = c
            out.append(records.Look(a.rank, (a.start, a.stop), why,
                                    "same" if c is None else "differs"))
        self.looked += out
        return out

    def reduced(self, rnd: Round, applied: list, members, checked, round_: int = 0) -> Reduced:
        """The ranks' reduction of the applied fragments (reduce.py): every worker fragment a
        leaf in line order, the standing rank's answer, or none. `checked`: the lines of the
        checked fragments, which the look leaves alone (as the star's does)."""
        start, it = rnd.plan.start, rnd.iteration
        standing = {(s, e): r for s, e, r in applied}
        leaves, lines_of = [], {}
        for a in (a for a in rnd.plan.assignments if a.role == "worker"):
            lines, r = (a.start, a.stop), standing.get((a.start, a.stop))
            seed = messages.fragment_seed(self.cfg.seed, it, *lines)
            lines_of[seed] = lines
            if r is None:
                leaves.append(rm.TableLeaf(-1, seed, 0, 0, bytes(32)))
                continue
            slices_root = rm.read_commitment(rnd.grads[(r, *lines)])[1]
            leaves.append(rm.TableLeaf(r, seed, *self.weight(rnd.by, start, *lines),
                                       slices_root))

        def recompute(leaf):
            grad, self.losses[leaf.seed] = self.checker.recompute(rnd, *lines_of[leaf.seed])
            return np.ascontiguousarray(host(torch.as_tensor(grad)), np.float32)
        # the look's, as the star's: unchecked only, and each once an iteration (a later round
        # does not hold back again what an earlier one found the same)
        seen = {x.lines for x in self.looked}
        trusted = {i for i, x in enumerate(leaves)
                   if x.rank <= 0 or lines_of[x.seed] in checked or lines_of[x.seed] in seen}
        with self.cost.part("reduce"):
            return self.reduction(it, self.state.role_key, members, leaves, rnd.weights,
                                  self.mine, recompute, trusted, round_)

    def apply(self, rnd: Round, applied: list, epoch: int, fold, checked,
              reduced: Reduced | None = None) -> float:
        """The optimizer's step from the applied fragments, weighed by their counted targets;
        returns their combined loss. With a `fold` (format 3), the unchecked fragments are in it
        already: the checked ones that stand follow, in line order (rules.fold_order)."""
        start = rnd.plan.start
        counts = [self.weight(rnd.by, start, s, e)[0] for s, e, _ in applied]
        lr, clip = self.rate(rnd.iteration, epoch), self.cfg.clip_grad_norm
        with self.cost.part("update"):
            if reduced is not None:  # the slices' sums side by side: TreeFold's bits
                total, change = training.joined(reduced.parts, self.layout.n_grad,
                                                self.layout.n_float)
                counters = [torch.from_numpy(rm.read_commitment(rnd.grads[(r, s, e)])[2].copy())
                            for s, e, r in applied]
                training.step_from_sums(self.model, self.opt, self.layout, total, change,
                                        counters, sum(counts), sum(e - s for s, e, _ in applied),
                                        lr, clip)
            elif fold is None:
                training.apply_update(self.model, self.opt, self.layout,
                                      [rnd.grads[(r, s, e)] for s, e, r in applied], counts,
                                      lr, clip, [e - s for s, e, _ in applied])
            elif self.keyed:  # the checked leaves: the answer that stands, or none
                standing = {(s, e): r for s, e, r in applied}
                workers = [a for a in rnd.plan.assignments if a.role == "worker"]
                for i, a in enumerate(workers):
                    lines = (a.start, a.stop)
                    if lines not in checked:
                        continue
                    r = standing.get(lines)
                    if r is None:  # a dispute's fragment: dropped
                        fold.set(i, None)
                    else:
                        fold.set(i, rnd.grads[(r, *lines)], *self.weight(rnd.by, start, *lines))
                fold.apply(self.opt, lr, clip)
            else:  # the checked ones that stand, in line order: the unchecked are in already
                for s, e, r in applied:
                    if (s, e) in checked:
                        self.folded.append((s, e))
                        fold.add(rnd.grads[(r, s, e)], *self.weight(rnd.by, start, s, e))
                lines = [(s, e) for s, e, _ in applied]
                if self.folded != [lines[i] for i in rules.fold_order(lines, checked)]:
                    # the replay sums in rules.fold_order: a record summed otherwise fails it
                    raise AssertionError(f"iteration {rnd.iteration} summed {self.folded}, not "
                                         f"in rules.fold_order")
                fold.apply(self.opt, lr, clip)
        return training.combined_loss([rnd.losses[(r, s, e)] for s, e, r in applied], counts)

    def remove(self, rank: int, iteration: int, role: str,
               why: str = "its gradient differs from the majority") -> None:
        """For good: out of the active set, told to stop, never sent work again."""
        self.state.active.remove(rank)
        self.state.removed.append({"rank": rank, "iteration": iteration, "role": role})
        log.warning("rank %d removed at iteration %d as %s: %s", rank, iteration, role, why)
        self.exchange.stop([rank])

    def evaluate(self) -> dict:
        """The task's test figures (losses.evaluate); {} without test data."""
        t = self.ds.test
        if t is None:
            return {}
        reader = Reader(t.path, self.cfg.x_key, self.cfg.y_key)
        try:
            x, y = reader.read(t.start, t.stop)
        finally:
            reader.close()
        if t.path == self.ds.train.path:  # held-out lines: a separate test file was read whole
            self.ds.rules.check(x, y, t.start)
        self.model.eval()
        result = task_losses.evaluate(self.model, self.task, x, y)
        self.model.train()
        return result

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Open the files, stop ranks removed before a resume, run the iterations, write the
        summary and tell everyone left to stop."""
        st, files = self.state, self.files
        files.open({**asdict(self.cfg), **self.meta}, self.model, self.resume)
        # ranks removed before a resume still run: they get no work in this job, so stop them now
        self.exchange.stop([r for r in range(1, st.world_size) if r not in st.active])
        progress = Progress(self.total, self.cfg.log_every, done=st.next_iteration)
        t_start = time.monotonic()
        last_of_epoch = {epoch: it for it, epoch, *_ in self.iterations()}
        stop = None
        try:
            for it, epoch, block, s, e in self.iterations(st.next_iteration):
                stop = self.iteration(it, epoch, block, s, e, it == last_of_epoch[epoch],
                                      t_start, progress)
                if stop:
                    break
        except ConfigError as e:  # a bad line: the ledger ends at the last complete iteration
            self.exchange.stop(st.active)
            self.lines.close()
            self.pool.close()
            raise ConfigError(f"{e} (read for iteration {st.next_iteration}; the run's files "
                              f"end at the iteration before)") from None
        finally:
            progress.close()
            files.close()
        self.exchange.stop(st.active)
        if self.reducing:
            self.reduction.close()
        self.exchange.drain()  # the count of unsolicited messages, complete
        summary = self.summary(stop, st.elapsed_before + time.monotonic() - t_start)
        if stop is None and self.keyed:  # the run is over: its roles may be audited now
            rundir.reveal(self.out, self.state.role_key)
        files.finish(summary, self.model if stop is None else None)
        self.lines.close()
        self.pool.close()
        self.say_how_it_ended(stop, summary)
        return summary

    def iteration(self, it, epoch, block, s, e, epoch_ends, t_start, progress) -> str | None:
        """One iteration and its bookkeeping: the step, metrics, test figures when due, the
        ledger record (vouching for a checkpoint written after it). Returns why to stop, if so."""
        st, cfg = self.state, self.cfg
        t0 = time.monotonic()
        self.exchange.cost = timing.IterationCost()
        record = self.step(it, epoch, block, s, e)
        st.next_iteration = it + 1
        lines = sum(b - a for a, b in record.applied)
        st.useful += lines
        st.last_loss = record.loss if record.loss is not None else st.last_loss
        row = {"iteration": it, "epoch": epoch, "loss": record.loss, "lr": self.rate(it, epoch),
               "applied_lines": lines, "verdict": record.check.verdict if record.check else None}
        if (cfg.eval_every and (it + 1) % cfg.eval_every == 0) or epoch_ends:
            with self.cost.part("eval"):
                st.test = self.evaluate()
            row.update(st.test)
        # Decided before the record is sealed, so the record can vouch for the checkpoint.
        stop = self.stop_reason() if it + 1 < self.total else None
        save = self.checkpoint_due(record, it + 1 == self.total, stop is not None)
        with self.cost.part("ledger"):
            if save:
                if record.removed:
                    st.protected.append(st.next_iteration)  # the audit restarts here
                record.checkpoint = checkpoint.fingerprint(
                    self.model.state_dict(), self.opt.state_dict(), self.proof())
            record = self.files.append(record)
        dt = time.monotonic() - t0
        row.update(seconds=dt, samples_per_s=lines / dt if dt > 0 else None, **self.cost.row())
        self.files.metric(row)
        if save:
            elapsed = st.elapsed_before + time.monotonic() - t_start
            self.files.checkpoint(st.next_iteration, self.model.state_dict(),
                                  self.opt.state_dict(), self.proof(),
                                  st.position(self.files.written, record.hash, elapsed),
                                  cfg.keep_checkpoints, st.protected)
        self.deadline.note(time.monotonic() - t0)
        progress.update(it, record.loss or float("nan"), st.counts, lines / max(dt, 1e-9))
        return stop

    def summary(self, stop: str | None, wall: float) -> dict:
        st, out = self.state, self.out
        summary = {
            "out": out, "status": "complete" if stop is None else "stopped",
            "stopped_by": stop, "ranks": st.world_size, "iterations": st.next_iteration,
            "total_iterations": self.total, "removed": st.removed,
            "unsolicited_messages": {str(r): n for r, n in
                                     sorted(self.exchange.unsolicited.items())},
            "disputes": st.counts["dispute"], "checks": st.counts, "credits": st.credits,
            "final_loss": st.last_loss, **{k: st.test.get(k) for k in self.task.figures()},
            "wall_time_s": wall, "useful_samples": st.useful,
            "useful_samples_per_s": st.useful / wall if wall > 0 else None,
            **({"useful_tokens_per_s": st.useful * math.prod(self.task.target_shape) / wall
                if wall > 0 else None} if self.task.language_model else {}),
            "ledger_head": self.files.head,
        }
        if stop:
            summary["resume"] = f"mpiexec -n {st.world_size} python -m podlt_mpi --resume {out}"
        return summary

    def say_how_it_ended(self, stop: str | None, summary: dict) -> None:
        last = self.state.next_iteration - 1
        if stop == TOO_FEW:
            log.error("%s after iteration %d: resume on more ranks to go on (--resume %s)",
                      stop, last, self.out)
        elif stop:
            print(f"podlt_mpi: stopped by {stop} after iteration {last} of {self.total}; "
                  f"checkpoint written. Resume with: {summary['resume']}", flush=True)
        else:
            print(final_table(summary), flush=True)
