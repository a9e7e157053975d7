"""Rank 0: holds the master weights and the optimizer, schedules, checks, applies, records.

One iteration (docs/design.md, docs/protocol.md):
  1. take the next block of lines;  2. order the active ranks, the last K are controls;
  3. pick the checked worker c;     4. send weights + each rank's own slice, gather gradients;
  5. compare c with its controls;   6. apply the line-weighted mean of the accepted gradients;
  7. append a hash-chained ledger record.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from podlt_mpi.compute import kernels, training
from podlt_mpi.compute import losses as task_losses
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import (
    credits,
    ledger,
    rates,
    records,
    rules,
    schedule,
    timing,
    verify,
)
from podlt_mpi.core.config import RunConfig, min_active
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import messages, preempt, tags
from podlt_mpi.io.data import Dataset, Reader
from podlt_mpi.run import checkpoint, rundir
from podlt_mpi.run.progress import Progress, final_table

log = logging.getLogger("podlt_mpi")


@dataclass
class Check:
    """One checked worker, its controls, what they decided and who rechecked a dispute."""
    checked: int
    controls: tuple
    lines: tuple
    decision: verify.Decision
    rechecks: list

    def outcome(self) -> rules.Outcome:
        """The check as rules.applied reads it: the votes in the order they were taken."""
        d = self.decision
        return rules.Outcome(self.checked, d.verdict, tuple(d.fake),
                             (*self.controls, *(a.rank for a in self.rechecks)))

    def record(self) -> records.CheckRecord:
        d = self.decision
        return records.CheckRecord(
            tuple(self.lines), self.checked, tuple(self.controls), d.verdict, tuple(sorted(d.fake)),
            tuple((a, b, ledger.finite_or_none(x)) for a, b, x in d.rel_dist),
            records.Referee.from_json(d.referee) if d.referee else None)

FIRST_TIMEOUT = 120.0  # seconds for the first exchange (cold caches, lazy initialisation)
MIN_TIMEOUT = 20.0     # later: max(this, 10 x the slowest exchange so far)
TOO_FEW = "too few active ranks left for the controls"


class Manager:
    def __init__(self, comm, cfg: RunConfig, ds: Dataset, model, out: str, waiter: mpi.Waiter,
                 meta: dict, resume=None, started: float | None = None):
        self.comm, self.cfg, self.ds, self.out, self.meta = comm, cfg, ds, out, meta
        self.model = model
        self.task = ds.task
        self.loss_fn = task_losses.loss_function(ds.task)
        self.layout = Layout(model)
        self.opt = training.make_optimizer(cfg, self.layout)
        self.frozen = self.layout.frozen_hash()  # frozen parameters never change: hashed once
        self.referee_model = copy.deepcopy(model)  # recomputes a fragment before any removal
        self.referee_layout = Layout(self.referee_model)
        # the votes' fused comparison: the Triton kernel when the manager has a GPU
        self.three_way = kernels.for_device(training.device_of(model), self.layout.answer_size)
        self.total = schedule.total_iterations(len(ds.train), cfg.block_lines, cfg.epochs,
                                               cfg.blocks)  # the run's length: fixed per job
        self.line_shape = ds.line_shape
        self.waiter = waiter
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.active = list(range(1, comm.Get_size()))
        self.removed = []
        self.counts = credits.verdict_counts([])
        self.credits = credits.table(self.active)
        self.train = Reader(ds.train.path, cfg.x_key, cfg.y_key)
        self.deadline = preempt.Deadline(cfg.time_limit, started)
        self.slowest_exchange = None  # seconds; sets the automatic rank timeout
        self.cost = timing.IterationCost()  # this iteration's, for metrics.jsonl
        self.notice = None  # a stop signal that a worker reported with its loss
        # What the run has done so far: zero, or restored from a checkpoint.
        self.next_iteration, self.useful, self.last_loss, self.test = 0, 0, None, {}
        self.elapsed_before, self.protected = 0.0, []
        self.resume = resume
        if resume is not None and resume.checkpoint is not None:
            self.restore(resume.checkpoint, resume.active)

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
        """Everything after an iteration that decides what the run does next (fingerprinted)."""
        return {"next_iteration": self.next_iteration, "active": self.active,
                "removed": self.removed, "counts": self.counts, "credits": self.credits,
                "rng": self.rng.bit_generator.state, "useful": self.useful,
                "last_loss": self.last_loss,
                "test": [self.test.get(k) for k in self.task.figures()],
                "world_size": self.comm.Get_size()}

    def restore(self, ckpt: dict, active: list) -> None:
        proof = ckpt["proof"]
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.frozen = self.layout.frozen_hash()
        self.rng.bit_generator.state = proof["rng"]
        self.active = active
        self.removed = proof["removed"]
        self.counts = proof["counts"]
        self.credits = proof["credits"]
        for r in active:
            self.credits.setdefault(str(r), credits.entry())
        self.next_iteration, self.useful = proof["next_iteration"], proof["useful"]
        self.last_loss = proof["last_loss"]
        self.test = {k: v for k, v in zip(self.task.figures(), proof["test"]) if v is not None}
        self.elapsed_before = ckpt["position"]["elapsed_s"]
        self.protected = ckpt["position"]["protected"]

    def checkpoint_due(self, record: records.Record, last: bool, stopping: bool) -> bool:
        every = self.cfg.checkpoint_every
        periodic = every > 0 and (self.next_iteration % every == 0 or last)
        return periodic or stopping or bool(record.removed)

    def write_checkpoint(self, record_hash: str, written: int, elapsed: float) -> str:
        folder = os.path.join(self.out, "checkpoints")
        position = {"ledger_records": written, "ledger_hash": record_hash, "elapsed_s": elapsed,
                    "protected": self.protected}
        path = checkpoint.save(folder, self.next_iteration, self.model.state_dict(),
                               self.opt.state_dict(), self.proof(), position)
        checkpoint.prune(folder, self.cfg.keep_checkpoints, set(self.protected))
        return path

    def stop_reason(self) -> str | None:
        """Why to stop after this iteration: a signal here or on a worker, or the deadline."""
        if len(self.active) < min_active(self.cfg):
            return TOO_FEW
        if preempt.requested():
            return preempt.requested()
        if self.notice:
            return self.notice
        if self.deadline.near():
            return "--time-limit"
        return None

    # ---- one iteration ---------------------------------------------------------------------

    def exchange(self, plan, iteration: int, weights, bx, by) -> tuple:
        """Send every assigned rank its messages; return (grads, losses) by rank."""
        n = self.layout.answer_size
        reqs, who, grads, losses = [], [], {}, {}
        cost = self.cost
        t_start = time.monotonic()
        outgoing = messages.messages_for_plan(plan, iteration, self.cfg.seed, weights, bx, by)
        for rank, msgs in outgoing.items():
            for tag, arr in msgs:
                reqs.append(mpi.isend(self.comm, arr, rank, tag))
                who.append(rank)
                cost.bytes_out += arr.nbytes
            grads[rank] = np.empty(n, np.float32)
            losses[rank] = np.empty(messages.ANSWER_LEN, np.float64)
            reqs += [mpi.irecv(self.comm, grads[rank], rank, tags.GRAD),
                     mpi.irecv(self.comm, losses[rank], rank, tags.LOSS)]
            who += [rank, rank]
            cost.bytes_in += grads[rank].nbytes + losses[rank].nbytes
        t0 = time.monotonic()
        try:
            mpi.Waiter(self.waiter.mode, self.exchange_timeout()).wait(reqs, who)
        except mpi.RankTimeout as e:
            raise mpi.PeerLost(f"{e} in iteration {iteration} (dead or hung); the ledger ends "
                               f"at the last complete iteration: continue with --resume "
                               f"{self.out}") from None
        dt = time.monotonic() - t0
        self.slowest_exchange = max(self.slowest_exchange or 0.0, dt)
        cost.seconds["exchange"] += time.monotonic() - t_start  # posting the sends, and the wait
        for r, v in losses.items():
            cost.compute.append(float(v[2]))
            if v[1] and self.notice is None:
                self.notice = f"{preempt.name(int(v[1]))} on rank {r}"
        return grads, {r: float(v[0]) for r, v in losses.items()}

    def exchange_timeout(self) -> float:
        if self.cfg.rank_timeout:
            return self.cfg.rank_timeout
        if self.slowest_exchange is None:
            return FIRST_TIMEOUT
        return max(MIN_TIMEOUT, 10 * self.slowest_exchange)

    def check(self, plan, grads, losses, weights, bx, by, iteration) -> list:
        """One Check per checked worker. `grads` and `losses`, by (rank, start, stop), gain the
        rechecks' results."""
        return [self.check_one(c, ctrl, plan, grads, losses, weights, bx, by, iteration)
                for c, ctrl in plan.checks]

    def check_one(self, checked, controls, plan, grads, losses, weights, bx, by, iteration):
        s, e = plan.fragment_of(checked)
        votes = {r: grads[(r, s, e)] for r in (checked, *controls)}
        cfg = self.cfg
        decision = verify.decide(votes, cfg.compare, cfg.rtol, cfg.atol, self.three_way)
        done = Check(checked, tuple(controls), (s, e), decision, [])
        if decision.verdict == "agree":
            return done
        self.referee_layout.load_state(weights)
        x = torch.from_numpy(bx[s - plan.start:e - plan.start]).view(e - s, *self.line_shape)
        y = torch.from_numpy(by[s - plan.start:e - plan.start])
        seed = messages.fragment_seed(cfg.seed, iteration, s, e)
        reference, _ = training.gradient(self.referee_model, x, y, seed, self.referee_layout,
                                         self.loss_fn)
        if decision.verdict == "fake":
            done.decision = verify.referee(decision, votes, reference, cfg.compare, cfg.rtol,
                                           cfg.atol)
        if done.decision.verdict == "dispute":
            self.resolve(done, plan, votes, reference, grads, losses, weights, bx, by, iteration)
        return done

    def resolve(self, done, plan, votes, reference, grads, losses, weights, bx, by, iteration):
        """A dispute: the fragment goes to further ranks, drawn at random among those not yet
        involved, until two ranks agree with the manager's own result; every other vote loses.
        Each recruited rank receives an ordinary work message: it cannot tell whose lines."""
        cfg, (s, e) = self.cfg, done.lines
        agrees = [r for r in votes if verify.compare(votes[r], reference, cfg.compare,
                                                     cfg.rtol, cfg.atol).same]
        for r in schedule.shuffle([r for r in self.active if r not in votes], self.rng):
            if len(agrees) >= 2:
                break
            one = schedule.Plan(plan.start, plan.stop, (), (), None,
                                (schedule.Assignment(r, "recheck", s, e),))
            got, loss = self.exchange(one, iteration, weights, bx, by)
            votes[r] = grads[(r, s, e)] = got[r]
            losses[(r, s, e)] = loss[r]
            done.rechecks.append(one.assignments[0])
            if verify.compare(got[r], reference, cfg.compare, cfg.rtol, cfg.atol).same:
                agrees.append(r)
        step = {"by": "manager", "agrees": agrees, "rechecks": [a.rank for a in done.rechecks]}
        done.decision = verify.settle(list(votes), agrees, done.decision.rel_dist, step)
        step["resolved"] = done.decision.verdict == "fake"

    def accepted(self, plan, checks) -> list:
        """(start, stop, rank whose gradient stands) for every fragment applied, in line order
        (rules.applied)."""
        fragments = [(a.rank, (a.start, a.stop)) for a in plan.assignments if a.role == "worker"]
        return [(s, e, r) for (s, e), r in rules.applied(fragments, [c.outcome() for c in checks])]

    def step(self, iteration, epoch, block, start, stop, order) -> records.Record:
        cfg = self.cfg
        plan = schedule.plan_iteration(order, cfg.controls, start, stop, self.rng,
                                       cfg.checks_per_iteration)
        cost = self.cost
        weights = host(self.layout.state())
        with cost.part("ledger"):
            model_before = self.layout.digest(weights, self.frozen)
        with cost.part("read"):
            bx, by = self.train.read(start, stop)
            bx = bx.reshape(len(by), -1)
        sent, losses = self.exchange(plan, iteration, weights, bx, by)
        # by assignment: a rank recruited for a dispute sends a second gradient in the iteration
        grads = {(a.rank, a.start, a.stop): sent[a.rank] for a in plan.assignments}
        losses = {(a.rank, a.start, a.stop): losses[a.rank] for a in plan.assignments}
        with cost.part("verify"):
            checks = self.check(plan, grads, losses, weights, bx, by, iteration)
        applied = self.accepted(plan, checks)
        fake = sorted({r for c in checks for r in c.decision.fake})

        loss = None
        if applied:
            lines = [e - s for s, e, _ in applied]
            counts = [self.task.weight(by[s - start:e - start]) for s, e, _ in applied]
            with cost.part("update"):
                training.apply_update(self.model, self.opt, self.layout,
                                      [grads[(r, s, e)] for s, e, r in applied], counts,
                                      self.rate(iteration, epoch), cfg.clip_grad_norm, lines)
            loss = training.combined_loss([losses[(r, s, e)] for s, e, r in applied], counts)

        for r in fake:
            self.remove(r, iteration, rules.removed_role(r, {c.checked for c in checks},
                                                         plan.controls))
        rechecks = [a for c in checks for a in c.rechecks]
        done = [c.record() for c in checks]
        with cost.part("ledger"):  # hashing the block, the gradients and the weights
            record = records.Record(
                iteration, epoch, block, (start, stop), ledger.sha256_arrays(bx, by), model_before,
                tuple(records.Assignment(a.rank, a.role, (a.start, a.stop),
                                         ledger.sha256_array(grads[(a.rank, a.start, a.stop)]))
                      for a in (*plan.assignments, *rechecks)),
                done[0] if done else None, tuple((s, e) for s, e, _ in applied),
                tuple(r for _, _, r in applied), tuple(fake), ledger.finite_or_none(loss),
                self.layout.digest(frozen=self.frozen), extra_checks=tuple(done[1:]))
        credits.account(self.credits, record)
        for c in checks:
            self.counts[c.decision.verdict] += 1
        return record

    def remove(self, rank: int, iteration: int, role: str) -> None:
        """For good: out of the active set, told to stop, never sent work again."""
        self.active.remove(rank)
        self.removed.append({"rank": rank, "iteration": iteration, "role": role})
        log.warning("rank %d removed at iteration %d: its gradient as %s differs from the majority",
                    rank, iteration, role)
        self.stop_ranks([rank])

    def stop_ranks(self, ranks) -> None:
        stop = messages.header(messages.STOP)
        self.waiter.wait([mpi.isend(self.comm, stop, r, tags.HEADER) for r in ranks])

    # ---- the run ---------------------------------------------------------------------------

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
        self.model.eval()
        result = task_losses.evaluate(self.model, self.task, x, y)
        self.model.train()
        return result

    def open_files(self):
        """A fresh run writes its config and initial model; a resumed one cuts back its files to
        the checkpoint it continues from, so nothing after it is duplicated."""
        out, res = self.out, self.resume
        config = {**asdict(self.cfg), **self.meta}
        if res is None:
            rundir.write_json(os.path.join(out, "config.json"), config)
            rundir.save_model(os.path.join(out, "model_init.pt"), self.model)
            prev = ledger.GENESIS
        else:
            config["resumed"] = res.history
            rundir.write_json(os.path.join(out, "config.json"), config)
            ledger.truncate(os.path.join(out, "ledger.jsonl"), res.records)
            rundir.keep_metrics_before(os.path.join(out, "metrics.jsonl"), self.next_iteration)
            for name in ("model_final.pt", "summary.json"):  # they described the run's old end
                if os.path.exists(os.path.join(out, name)):
                    os.unlink(os.path.join(out, name))
            prev = res.prev
        writer = ledger.LedgerWriter(os.path.join(out, "ledger.jsonl"), prev)
        metrics = open(os.path.join(out, "metrics.jsonl"), "a", encoding="utf-8")
        return writer, metrics

    def run(self) -> dict:
        cfg, out = self.cfg, self.out
        writer, metrics = self.open_files()
        # ranks removed before a resume still run: they get no work in this job, so stop them now
        self.stop_ranks([r for r in range(1, self.comm.Get_size()) if r not in self.active])
        written = self.next_iteration  # records in the ledger
        total = self.total
        progress = Progress(total, cfg.log_every, done=self.next_iteration)
        t_start = time.monotonic()
        last_epoch_iteration = {}
        for it, epoch, _, _, _ in self.iterations():
            last_epoch_iteration[epoch] = it
        stop = None
        try:
            for it, epoch, block, s, e in self.iterations(self.next_iteration):
                t0 = time.monotonic()
                self.cost = timing.IterationCost()
                order = sorted(self.active) if it == 0 else schedule.shuffle(self.active, self.rng)
                record = self.step(it, epoch, block, s, e, order)
                self.next_iteration = it + 1
                lines = sum(b - a for a, b in record.applied)
                self.useful += lines
                self.last_loss = record.loss if record.loss is not None else self.last_loss
                row = {"iteration": it, "epoch": epoch, "loss": record.loss,
                       "lr": self.rate(it, epoch), "applied_lines": lines,
                       "verdict": record.check.verdict if record.check else None}
                due = (cfg.eval_every and (it + 1) % cfg.eval_every == 0) or \
                    it == last_epoch_iteration[epoch]
                if due:
                    with self.cost.part("eval"):
                        self.test = self.evaluate()
                    row.update(self.test)
                # Decided before the record is sealed, so the record can vouch for the checkpoint.
                stop = self.stop_reason() if it + 1 < total else None
                save = self.checkpoint_due(record, it + 1 == total, stop is not None)
                with self.cost.part("ledger"):
                    if save:
                        if record.removed:
                            self.protected.append(self.next_iteration)  # the audit restarts here
                        record.checkpoint = checkpoint.fingerprint(
                            self.model.state_dict(), self.opt.state_dict(), self.proof())
                    record = records.Record.from_json(writer.append(record.to_json()))
                written += 1
                dt = time.monotonic() - t0
                row.update(seconds=dt, samples_per_s=lines / dt if dt > 0 else None,
                           **self.cost.row())
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if save:
                    elapsed = self.elapsed_before + time.monotonic() - t_start
                    self.write_checkpoint(record.hash, written, elapsed)
                self.deadline.note(time.monotonic() - t0)
                progress.update(it, record.loss or float("nan"), self.counts, lines / max(dt, 1e-9))
                if stop:
                    break
        finally:
            progress.close()
            writer.close()
            metrics.close()
        self.stop_ranks(self.active)
        wall = self.elapsed_before + time.monotonic() - t_start
        if stop is None:
            rundir.save_model(os.path.join(out, "model_final.pt"), self.model)
        summary = {
            "out": out, "status": "complete" if stop is None else "stopped",
            "stopped_by": stop, "ranks": self.comm.Get_size(), "iterations": self.next_iteration,
            "total_iterations": total, "removed": self.removed, "disputes": self.counts["dispute"],
            "checks": self.counts, "credits": self.credits, "final_loss": self.last_loss,
            **{k: self.test.get(k) for k in self.task.figures()}, "wall_time_s": wall,
            "useful_samples": self.useful,
            "useful_samples_per_s": self.useful / wall if wall > 0 else None,
            **({"useful_tokens_per_s": self.useful * math.prod(self.task.target_shape) / wall
                if wall > 0 else None} if self.task.language_model else {}),
            "ledger_head": writer.prev,
        }
        if stop:
            summary["resume"] = (f"mpiexec -n {self.comm.Get_size()} python -m podlt_mpi "
                                 f"--resume {out}")
        rundir.write_json(os.path.join(out, "summary.json"), summary)
        self.train.close()
        if stop == TOO_FEW:
            log.error("%s after iteration %d: resume on more ranks to go on (--resume %s)",
                      stop, self.next_iteration - 1, out)
        elif stop:
            print(f"podlt_mpi: stopped by {stop} after iteration {self.next_iteration - 1} of "
                  f"{total}; checkpoint written. Resume with: {summary['resume']}", flush=True)
        else:
            print(final_table(summary), flush=True)
        return summary
