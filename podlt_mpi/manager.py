"""Rank 0: holds the master weights and the optimizer, schedules, checks, applies, records.

One iteration (DESIGN.md):
  1. take the next block of lines;  2. order the active ranks, the last K are controls;
  3. pick the checked worker c;     4. send weights + each rank's own slice, gather gradients;
  5. compare c with its controls;   6. apply the line-weighted mean of the accepted gradients;
  7. append a hash-chained ledger record.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from . import comm as mpi
from . import comm_tags as tags
from . import ledger, protocol, rundir, schedule, training, verify
from .config import RunConfig
from .data import Dataset, Reader
from .progress import Progress, final_table

log = logging.getLogger("podlt_mpi")


class Manager:
    def __init__(self, comm, cfg: RunConfig, ds: Dataset, model, out: str, waiter: mpi.Waiter,
                 meta: dict):
        self.comm, self.cfg, self.ds, self.out, self.meta = comm, cfg, ds, out, meta
        self.model = model
        self.opt = training.make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum)
        self.referee_model = copy.deepcopy(model)  # recomputes a fragment before any removal
        self.line_shape = ds.line_shape
        self.waiter = waiter
        self.gather_waiter = mpi.Waiter(waiter.mode, cfg.rank_timeout)
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.active = list(range(1, comm.Get_size()))
        self.removed = []
        self.counts = {"agree": 0, "fake": 0, "dispute": 0}
        self.credits = {r: {"computed": 0, "verified": 0, "rejected": 0, "as_worker": 0,
                            "as_control": 0, "checked": 0, "removed_at": None} for r in self.active}
        self.train = Reader(ds.train.path, cfg.x_key, cfg.y_key)

    # ---- the schedule ----------------------------------------------------------------------

    def iterations(self):
        """(iteration, epoch, block, start, stop) for the whole run."""
        it = 0
        for epoch in range(self.cfg.epochs):
            for b, (s, e) in enumerate(schedule.blocks(len(self.ds.train), self.cfg.block_lines)):
                if self.cfg.blocks is not None and it >= self.cfg.blocks:
                    return
                yield it, epoch, b, self.ds.train.start + s, self.ds.train.start + e
                it += 1

    def total_iterations(self) -> int:
        per_epoch = len(schedule.blocks(len(self.ds.train), self.cfg.block_lines))
        total = per_epoch * self.cfg.epochs
        return min(total, self.cfg.blocks) if self.cfg.blocks is not None else total

    # ---- one iteration ---------------------------------------------------------------------

    def exchange(self, plan, iteration: int, weights, bx, by) -> tuple:
        """Send every assigned rank its messages; return (grads, losses) by rank."""
        n = training.n_params(self.model)
        reqs, who, grads, losses = [], [], {}, {}
        for rank, msgs in protocol.messages_for_plan(plan, iteration, weights, bx, by).items():
            for tag, arr in msgs:
                reqs.append(mpi.isend(self.comm, arr, rank, tag))
                who.append(rank)
            grads[rank] = np.empty(n, np.float32)
            losses[rank] = np.empty(1, np.float64)
            reqs += [mpi.irecv(self.comm, grads[rank], rank, tags.GRAD),
                     mpi.irecv(self.comm, losses[rank], rank, tags.LOSS)]
            who += [rank, rank]
        self.gather_waiter.wait(reqs, who)
        return grads, {r: float(v[0]) for r, v in losses.items()}

    def check(self, plan, grads, weights, bx, by) -> verify.Decision | None:
        if plan.checked is None:
            return None
        votes = {r: grads[r] for r in (plan.checked, *plan.controls)}
        cfg = self.cfg
        decision = verify.decide(votes, cfg.compare, cfg.rtol, cfg.atol)
        if decision.verdict == "fake":
            s, e = plan.fragment_of(plan.checked)
            training.set_flat(self.referee_model, weights)
            x = torch.from_numpy(bx[s - plan.start:e - plan.start]).view(e - s, *self.line_shape)
            y = torch.from_numpy(by[s - plan.start:e - plan.start])
            reference, _ = training.gradient(self.referee_model, x, y)
            decision = verify.referee(decision, votes, reference, cfg.compare, cfg.rtol, cfg.atol)
        return decision

    def accepted(self, plan, decision) -> list:
        """(start, stop, rank whose gradient stands) for every fragment applied, in line order."""
        out = []
        for a in plan.assignments:
            if a.role != "worker":
                continue
            source = a.rank
            if decision is not None and a.rank == plan.checked:
                if decision.verdict == "dispute":
                    continue  # no majority: nothing from this fragment is applied
                if a.rank in decision.fake:
                    source = decision.majority[0]  # the controls' agreed gradient takes c's place
            out.append((a.start, a.stop, source))
        return out

    def step(self, iteration, epoch, block, start, stop, order) -> dict:
        cfg = self.cfg
        plan = schedule.plan_iteration(order, cfg.controls, start, stop, self.rng)
        weights = training.get_flat(self.model)
        model_before = ledger.sha256_array(weights)
        bx, by = self.train.read(start, stop)
        bx = bx.reshape(len(by), -1)
        grads, losses = self.exchange(plan, iteration, weights, bx, by)
        decision = self.check(plan, grads, weights, bx, by)
        applied = self.accepted(plan, decision)
        fake = decision.fake if decision else []

        loss = None
        if applied:
            counts = [e - s for s, e, _ in applied]
            mean = training.weighted_mean([grads[r] for _, _, r in applied], counts)
            training.set_flat_grad(self.model, mean)
            self.opt.step()
            loss = sum(losses[r] * n for (_, _, r), n in zip(applied, counts)) / sum(counts)

        self.account(plan, decision, iteration)
        for r in fake:
            self.remove(r, iteration, "worker" if r == plan.checked else "control")
        record = {
            "iteration": iteration, "epoch": epoch, "block": block, "lines": [start, stop],
            "model_before": model_before,
            "assignments": [{"rank": a.rank, "role": a.role, "lines": [a.start, a.stop],
                             "grad_sha256": ledger.sha256_array(grads[a.rank])}
                            for a in plan.assignments],
            "check": None if decision is None else {
                "lines": list(plan.fragment_of(plan.checked)), "worker": plan.checked,
                "controls": list(plan.controls), "verdict": decision.verdict,
                "fake": sorted(fake),
                "rel_dist": [[a, b, ledger.finite_or_none(d)] for a, b, d in decision.rel_dist],
                "referee": decision.referee},
            "applied": [[s, e] for s, e, _ in applied],
            "removed": sorted(fake),
            "loss": ledger.finite_or_none(loss),
            "model_after": ledger.sha256_array(training.get_flat(self.model)),
        }
        return record

    def account(self, plan, decision, iteration) -> None:
        """Credits: a fragment counts for its rank unless the rank was caught or it was disputed."""
        checked = set() if decision is None else {plan.checked, *plan.controls}
        for a in plan.assignments:
            c = self.credits[a.rank]
            c["as_worker" if a.role == "worker" else "as_control"] += 1
            if a.rank not in checked:
                c["computed"] += 1
                continue
            c["checked"] += 1
            if a.rank in decision.fake:
                c["rejected"] += 1
            elif decision.verdict != "dispute":
                c["computed"] += 1
                c["verified"] += 1
        if decision is not None:
            self.counts[decision.verdict] += 1

    def remove(self, rank: int, iteration: int, role: str) -> None:
        """For good: out of the active set, told to stop, never sent work again."""
        self.active.remove(rank)
        self.removed.append({"rank": rank, "iteration": iteration, "role": role})
        self.credits[rank]["removed_at"] = iteration
        log.warning("rank %d removed at iteration %d: its gradient as %s differs from the majority",
                    rank, iteration, role)
        self.stop_ranks([rank])

    def stop_ranks(self, ranks) -> None:
        stop = protocol.header(protocol.STOP)
        self.waiter.wait([mpi.isend(self.comm, stop, r, tags.HEADER) for r in ranks])

    # ---- the run ---------------------------------------------------------------------------

    def evaluate(self) -> tuple:
        t = self.ds.test
        if t is None:
            return None, None
        reader = Reader(t.path, self.cfg.x_key, self.cfg.y_key)
        try:
            x, y = reader.read(t.start, t.stop)
        finally:
            reader.close()
        self.model.eval()
        result = training.evaluate(self.model, x, y)
        self.model.train()
        return result

    def run(self) -> dict:
        cfg, out = self.cfg, self.out
        rundir.write_json(os.path.join(out, "config.json"), {**asdict(cfg), **self.meta})
        rundir.save_model(os.path.join(out, "model_init.pt"), self.model)
        writer = ledger.LedgerWriter(os.path.join(out, "ledger.jsonl"))
        metrics = open(os.path.join(out, "metrics.jsonl"), "a", encoding="utf-8")
        total = self.total_iterations()
        progress = Progress(total, cfg.log_every)
        t_start = time.monotonic()
        useful, iterations, last_loss, test = 0, 0, None, (None, None)
        last_epoch_iteration = {}
        for it, epoch, block, s, e in self.iterations():
            last_epoch_iteration[epoch] = it
        try:
            for it, epoch, block, s, e in self.iterations():
                t0 = time.monotonic()
                order = sorted(self.active) if it == 0 else schedule.shuffle(self.active, self.rng)
                record = writer.append(self.step(it, epoch, block, s, e, order))
                dt = time.monotonic() - t0
                lines = sum(b - a for a, b in record["applied"])
                useful += lines
                iterations += 1
                last_loss = record["loss"] if record["loss"] is not None else last_loss
                row = {"iteration": it, "epoch": epoch, "loss": record["loss"], "seconds": dt,
                       "samples_per_s": lines / dt if dt > 0 else None, "applied_lines": lines,
                       "verdict": record["check"]["verdict"] if record["check"] else None}
                due = (cfg.eval_every and (it + 1) % cfg.eval_every == 0) or \
                    it == last_epoch_iteration[epoch]
                if due:
                    test = self.evaluate()
                    row.update(test_loss=test[0], test_accuracy=test[1])
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                progress.update(it, record["loss"] or float("nan"), self.counts, lines / max(dt, 1e-9))
        finally:
            progress.close()
            writer.close()
            metrics.close()
        self.stop_ranks(self.active)
        wall = time.monotonic() - t_start
        rundir.save_model(os.path.join(out, "model_final.pt"), self.model)
        summary = {
            "out": out, "ranks": self.comm.Get_size(), "iterations": iterations,
            "removed": self.removed, "disputes": self.counts["dispute"], "checks": self.counts,
            "credits": {str(r): c for r, c in self.credits.items()},
            "final_loss": last_loss, "test_loss": test[0], "test_accuracy": test[1],
            "wall_time_s": wall, "useful_samples": useful,
            "useful_samples_per_s": useful / wall if wall > 0 else None,
        }
        rundir.write_json(os.path.join(out, "summary.json"), summary)
        self.train.close()
        print(final_table(summary), flush=True)
        return summary
