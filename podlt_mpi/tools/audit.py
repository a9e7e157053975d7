"""python -m podlt_mpi audit RUN_DIR: prove a run to someone who did not watch it.

One process, no MPI, with the kernels the run recorded (core/portable.py). Exit 0 only if
everything holds, 1 if something does not (the report says what, and at which iteration), 2 on
bad input, 3 where everything holds but the replay, which this machine computes otherwise than
the run's ranks agreed on: the cause is the machine, never a rank. The checks:
  chain       every record's hash and its link to the previous one;
  structure   each record follows the protocol: the schedule's lines, fragments covering the
              block, controls shadowing the checked worker, removals matching the verdict, no
              work for removed ranks, applied fragments as the verdict implies;
  roles       (format 4) the revealed key opens the commitment the records name, and every
              role, check and recheck is the one the key draws (roles.py);
  weights     model_init.pt -> model_before -> model_after -> ... -> model_final.pt;
  checkpoints each checkpoint's fingerprint equals the one its iteration's record vouches for;
  replay      sampled iterations recomputed from the nearest checkpoint (replay.py);
  credits     summary.json's table equals the one recomputed from the ledger, and its
              ledger_head is the last record's hash (also printed at the end of the job's log).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys

import numpy as np

from podlt_mpi.core import credits, digests, portable, records, roles, rules, schedule
from podlt_mpi.core.config import RunConfig, model_kwargs, saved_options
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task

# torch is imported once the run's kernel settings are in the environment (main); checkpoint
# and replay import it


def named_code(cfg: RunConfig, task: Task) -> list:
    """(option, "module:function") of the code a run's config.json names, which the replay
    would import and run: a user's model and loss (the fault plugin is never replayed)."""
    return [(opt, spec) for opt, spec in (("--model", cfg.model), ("--loss", task.loss))
            if ":" in spec]


def refused_code(named: list, allow) -> str | None:
    """The sentence refusing the code of `named` that `allow` ((option, spec) pairs the auditor
    named: a model is not allowed by naming it as the loss; or TRUST_CONFIG) does not allow, or
    None."""
    if allow == TRUST_CONFIG:
        return None
    left = [(opt, spec) for opt, spec in named if (opt, spec) not in set(allow)]
    if not left:
        return None
    what = ", ".join(f"{opt.lstrip('-')} {spec}" for opt, spec in left)
    flags = " ".join(f"{opt} {spec}" for opt, spec in left)
    return (f"the run names its {what}: code that the audit would import and run, which a run "
            f"directory from someone else may use to run anything here. Name it to allow it "
            f"({flags}), or pass --trust-config")


TRUST_CONFIG = "trust-config"
PASSED, FAILED = "passed", "failed"
CANNOT_REPRODUCE, NOT_HERE = "cannot reproduce on this machine", "not reproducible here"
EXIT = {PASSED: 0, NOT_HERE: 0, FAILED: 1, CANNOT_REPRODUCE: 3}


class Audit:
    def __init__(self, run_dir: str, data: str | None = None, allow=()):
        """`allow`: the (option, "module:function") pairs of user code the auditor allows the
        replay to import (named_code), or TRUST_CONFIG for whatever the run's config names."""
        self.run_dir, self.allow = run_dir, allow
        self.problems = []
        self.notes = []
        if not os.path.isdir(run_dir):
            raise ConfigError(f"{run_dir} is not a directory")
        try:
            with open(self._path("config.json"), encoding="utf-8") as f:
                saved = json.load(f)
            self.ledger = records.load(self._path("ledger.jsonl"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{run_dir} is not a readable run directory: {e}") from None
        self.cfg = RunConfig(**saved_options(saved))
        self.meta = saved
        self.data = data or saved.get("data")
        if not self.data or not os.path.exists(self.data):
            raise ConfigError(f"the training data {self.data} is not there; pass --data PATH")
        self.summary = None
        if os.path.exists(self._path("summary.json")):
            with open(self._path("summary.json"), encoding="utf-8") as f:
                self.summary = json.load(f)
        self.records = self.ledger.records  # records.Record, None where unreadable
        self.keys = {}  # the revealed role keys, by commitment (check_roles)
        self.drift = {}  # tolerance mode: checkpoint -> the replay's relative distance from it
        self.removed_at = {}
        for rec in self.ledger.readable():
            for r in rec.removed:
                self.removed_at.setdefault(r, rec.iteration)

    def _path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def problem(self, iteration, check: str, message: str) -> None:
        self.problems.append({"iteration": iteration, "check": check, "message": message})

    # ---- the ledger alone --------------------------------------------------------------------

    def check_chain(self) -> None:
        for where, msg in self.ledger.chain_problems():
            self.problem(where, "chain", msg)
        if self.ledger.torn:
            self.notes.append("the ledger's last line was cut off by a crash; it is not part of "
                              "the chain")

    def check_structure(self) -> None:
        cfg, (first, last) = self.cfg, self.meta["train_lines"]
        plan = {it: (ep, b, first + s, first + e) for it, ep, b, s, e in
                schedule.run_blocks(last - first, cfg.block_lines, cfg.epochs, cfg.blocks,
                                    schedule.shuffle_seed(cfg))}
        gone = {}
        for i, rec in enumerate(self.records):
            if rec is None:
                self.problem(i, "structure", f"the record is malformed: {self.ledger.errors[i]}")
                continue
            for msg in _record_problems(rec, i, plan, gone, cfg):
                self.problem(i, "structure", msg)
            for r in rec.removed:
                gone.setdefault(r, i)

    def check_roles(self) -> None:
        """Every keyed record's roles against the key the run revealed at its end."""
        keyed = [(i, r) for i, r in enumerate(self.records) if r is not None and r.roles]
        if not keyed:
            return
        keys, path = {}, self._path(roles.KEY_FILE)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    keys = roles.read_revealed(json.load(f))
            except (OSError, ValueError) as e:
                self.problem(None, "roles", f"{roles.KEY_FILE} cannot be read: {e}")
                return
        elif (self.summary or {}).get("status") == "complete":
            self.problem(None, "roles", f"the run is complete but revealed no key "
                         f"({roles.KEY_FILE}): its roles cannot be checked")
            return
        else:
            self.notes.append(f"the roles are not checked: the key is revealed in "
                              f"{roles.KEY_FILE} when the run completes")
            return
        self.keys = keys
        said = self.meta.get("roles", {}).get("commitment")
        if said != keyed[-1][1].roles:
            self.problem(None, "roles", f"config.json commits to the key {said}, the ledger's "
                         f"last record to {keyed[-1][1].roles}")
        gone = {}
        for i, rec in keyed:
            key = keys.get(rec.roles)
            if key is None:
                self.problem(i, "roles", f"no revealed key opens the record's commitment "
                             f"{rec.roles}")
            else:
                for msg in _role_problems(rec, key, self.cfg, gone):
                    self.problem(i, "roles", msg)
            for r in rec.removed:
                gone.setdefault(r, i)

    # ---- weights and checkpoints --------------------------------------------------------------

    def build(self, replays: bool = True):
        """The run's model (user models must be importable here too) and the replay engine, on
        the kind of device the run computed on."""
        import torch

        from podlt_mpi.compute import devices, machine, models, training
        from podlt_mpi.io.data import Reader
        from podlt_mpi.tools.replay import Replayer
        here = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        dev, note = devices.for_replay(self.meta.get("device_kind", "cpu"),
                                       devices.gpu_models(self.meta.get("devices", [])), here,
                                       replays)
        if note:
            self.notes.append(note)
        training.set_determinism(self.cfg.threads, exact=self.cfg.compare == "exact")
        self.compare_kernels(machine.compute(self.cfg.kernels, dev), portable.processor())
        task = Task.from_meta(self.meta)
        model = models.build(self.cfg.model, self.meta["line_shape"], self.meta["n_classes"],
                             self.cfg.seed, task, model_kwargs(self.cfg.model_args)).to(dev)
        self.reader = Reader(self.data, self.cfg.x_key, self.cfg.y_key)
        first, last = self.meta["train_lines"]
        total = schedule.total_iterations(last - first, self.cfg.block_lines, self.cfg.epochs,
                                          self.cfg.blocks)
        self.replayer = Replayer(model, self.cfg, self.reader, total, task,
                                 same_kernels=self.kernels_differ == [], keys=self.keys,
                                 same_here=self.same_here)
        try:
            self.init_state = torch.load(self._path("model_init.pt"), map_location="cpu",
                                         weights_only=True)
            self.replayer.load(self.init_state, None)
        except Exception as e:  # a missing, foreign or tampered file fails in many ways
            raise ConfigError(f"model_init.pt cannot be loaded: {e}") from None
        ours = self.meta.get("versions", {}).get("torch")
        if ours and ours != torch.__version__:
            self.notes.append(f"the run used torch {ours}, this audit {torch.__version__}: "
                              "bitwise replay may differ")

    def compare_kernels(self, here: dict, processor: dict) -> None:
        """What in this machine's compute configuration differs from the one the run's manager
        computed with (`kernels_differ`; None: the run recorded none), said in a note, and the
        ranks that computed with this machine's (`same_here`: [(first iteration, ranks)] for
        each part of the run, its first job's and each resume's: their bits replay here)."""
        ranks = self.meta.get("compute") or [None]
        self.same_here = []
        if not isinstance(ranks[0], dict):
            self.kernels_differ = None
            self.notes.append("the run recorded no compute configuration (written before "
                              "portable kernels): where its replay fails on fragments that its "
                              "ranks agreed on, this machine's kernels are the cause")
            return
        self.kernels_differ = _kernels_differ(ranks[0], here, processor)
        # by the iteration each part of the run started from: the first job's, then each
        # resume's (an entry without a record leaves the ranks' kernels unknown)
        parts = [(0, ranks)] + [(e.get("from_iteration", 0), e.get("compute") or [])
                                for e in self.meta.get("resumed", []) if isinstance(e, dict)]
        self.same_here = [(start, {r for r, run in enumerate(part) if isinstance(run, dict)
                                   and _kernels_differ(run, here, processor) == []})
                          for start, part in parts]
        if self.kernels_differ:
            self.notes.append("this machine computes with other kernels than the run's manager "
                              f"({'; '.join(self.kernels_differ)}): bitwise replay may differ")

    def check_weights(self) -> None:
        import torch
        recs = self.ledger.raw  # the digests are compared even where a record is malformed
        if not recs:
            return
        if self.replayer.weights_digest(_alg(recs[0])) != recs[0].get("model_before"):
            self.problem(0, "weights", "model_init.pt is not the model the first record starts from")
        for i in range(1, len(recs)):
            if recs[i].get("model_before") != recs[i - 1].get("model_after"):
                self.problem(i, "weights", "model_before differs from the previous model_after")
        final = self._path("model_final.pt")
        if os.path.exists(final):
            state = torch.load(final, map_location="cpu", weights_only=True)
            self.replayer.model.load_state_dict(state)
            if self.replayer.weights_digest(_alg(recs[-1])) != recs[-1].get("model_after"):
                self.problem(len(recs) - 1, "weights",
                             "model_final.pt is not the model the last record ends with")
            self.replayer.load(self.init_state, None)
        elif self.summary and self.summary.get("status") == "complete":
            self.problem(None, "weights", "the run says it is complete but has no model_final.pt")

    def check_checkpoints(self) -> dict:
        """Checkpoints the ledger vouches for, by the iteration they come before."""
        from podlt_mpi.run import checkpoint
        anchors = {}
        for n, path in checkpoint.available(self._path("checkpoints")):
            try:
                ckpt = checkpoint.load(path)
            except checkpoint.CheckpointError as e:
                self.problem(n - 1, "checkpoint", str(e))
                continue
            why = rules.unvouched(n, ckpt["fingerprint"], ckpt["position"]["ledger_hash"],
                                  self.ledger)
            if why:
                self.problem(n - 1, "checkpoint", f"{os.path.basename(path)} cannot be trusted: "
                             f"{why}")
            else:
                anchors[n] = ckpt
        return anchors

    # ---- replay --------------------------------------------------------------------------------

    def replay(self, targets: list, anchors: dict) -> dict:
        from podlt_mpi.tools.replay import Outcome
        rp, recs = self.replayer, self.records
        outcomes, skipped, pos, broken = {}, [], None, None
        starts = sorted({0, *anchors})
        for t in targets:
            if t in outcomes:
                continue
            best = max(a for a in starts if a <= t)
            if broken is not None and best <= broken < t:
                skipped.append(t)  # the weights before t are not known: no checkpoint since
                continue
            if pos is None or not best <= pos <= t:
                if best == 0:
                    rp.load(self.init_state, None)
                else:
                    rp.load(anchors[best]["model"], anchors[best]["optimizer"])
                pos = best
            while pos is not None and pos <= t:
                try:
                    if recs[pos] is None:
                        raise ValueError("it is malformed")
                    out = rp.step(recs[pos])
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    # a record can be well-formed yet name lines or ranks the run never had
                    out = Outcome(pos, in_sync=False, problems=[
                        f"the record cannot be replayed: {e}"])
                outcomes[pos] = out
                for msg in out.problems:
                    self.problem(pos, "replay", msg)
                if not out.in_sync:
                    broken, pos = pos, None
                    break
                nxt = anchors.get(pos + 1)
                if nxt is not None and rp.drifted:  # within tolerance: measured, then its bits
                    self.drift[pos + 1] = rp.distance(nxt["model"])
                    rp.load(nxt["model"], nxt["optimizer"])
                elif nxt is not None and not rp.same_state(nxt["model"], nxt["optimizer"]):
                    self.problem(pos, "checkpoint", f"checkpoint {pos + 1}'s weights or optimizer "
                                 "state differ from the replayed ones")
                pos += 1
        return {"outcomes": outcomes, "skipped": skipped}

    def attribute(self, outcomes: dict) -> list:
        """Applied fragments that replay shows were not honest, with the rank that sent them."""
        found = []
        for it, out in sorted(outcomes.items()):
            for f in out.fake_fragments:
                caught = self.removed_at.get(f["rank"])
                found.append({"iteration": it, **f, "removed_at": caught})
                if caught is None or caught < it:
                    what = "was never caught" if caught is None else f"was removed at {caught}"
                    part = (f"sum of slice {f['slice']}" if "slice" in f else
                            f"{f.get('what', 'gradient')} for lines {f['lines']}")
                    msg = f"rank {f['rank']}'s {part} differs from the replay, and the rank {what}"
                    if self.cfg.compare == "exact":
                        self.problem(it, "replay", msg)
                    elif "why" in f:  # format 6: by its sketch, or its bits where they replay
                        self.problem(it, "replay", f"{msg}, {f['why']}")
                    else:  # before sketches only the bits were known
                        self.notes.append(f"iteration {it}: {msg} (tolerance mode: may be "
                                          "hardware noise)")
        return found

    def unverified_from_removed(self, found: list, outcomes: dict) -> list:
        """Fragments of later-removed ranks applied without a check, and what replay says."""
        shown = {(f["iteration"], f["rank"]) for f in found}
        out = []
        for rec in self.ledger.readable():
            it, check = rec.iteration, rec.check
            verified = {*check.controls, check.worker} \
                if check and check.verdict == "agree" else set()
            for lines, r in zip(rec.applied, rec.applied_from, strict=False):
                caught = self.removed_at.get(r)
                if caught is None or caught < it or r in verified:
                    continue
                replay = ("shown fake" if (it, r) in shown else
                          "honest" if it in outcomes and outcomes[it].in_sync else "not replayed")
                out.append({"iteration": it, "lines": list(lines), "rank": r, "removed_at": caught,
                            "replay": replay})
        return out

    def check_credits(self) -> dict:
        table = credits.from_ledger(self.ledger.readable())
        if self.summary is None:
            self.notes.append("no summary.json (the run did not finish): credits not compared")
            return table
        if self.summary.get("ledger_head") != self.head():
            self.problem(None, "summary", "summary.json's ledger_head is not the ledger's last "
                         "hash: records were changed and the chain rebuilt, or cut")
        for d in credits.differences(table, self.summary.get("credits", {})):
            self.problem(None, "credits", f"summary.json and the ledger disagree: {d}")
        return table

    def verdict(self, unrep: list, outcomes: dict) -> str:
        """PASSED, FAILED (a problem), or, where only this machine's bits are in question,
        CANNOT_REPRODUCE (the run recorded its kernels) or NOT_HERE (an older run, which did
        not: its structure holds, and that is its audit)."""
        if self.problems:
            return FAILED
        if not unrep:
            return PASSED
        what = [f"iteration {it}: {', '.join(map(str, outcomes[it].unreproducible))}"
                for it in unrep[:5]]
        said = (f"{len(unrep)} replayed iteration(s) give other bits than the ranks that agreed "
                f"on them ({'; '.join(what)}{'; ...' if len(unrep) > 5 else ''})")
        if self.kernels_differ is None:
            self.notes.append(f"not reproducible here: {said}; the run recorded no kernels")
            return NOT_HERE
        differ = "; ".join(self.kernels_differ) or "no difference recorded"
        self.notes.append(f"cannot reproduce on this machine: {said}; this machine against "
                          f"the run's manager: {differ}")
        return CANNOT_REPRODUCE

    # ---- all of it -----------------------------------------------------------------------------

    def head(self) -> str:
        return self.ledger.head

    def check_head(self, expected: str) -> None:
        """Against the head published from the job's log, which no edit of the files can reach."""
        head = self.head()
        if head != expected:
            self.problem(None, "ledger_head", f"the ledger ends in {head}, not in the published "
                         f"{expected}")

    def run(self, sample: int | None = 10, seed: int | None = None,
            expect_head: str | None = None) -> dict:
        """`sample`: how many iterations to replay, None for all; `seed`: of their choice
        (None: a fresh one, so that a forger cannot know which; the report gives it)."""
        refused = refused_code(named_code(self.cfg, Task.from_meta(self.meta)), self.allow)
        if refused:
            raise ConfigError(refused)
        if seed is None:
            seed = secrets.randbits(32)
        if expect_head:
            self.check_head(expect_head)
        self.check_chain()
        self.check_structure()
        self.check_roles()
        self.build(replays=sample != 0)
        self.check_weights()
        anchors = self.check_checkpoints()
        n = len(self.records)
        if sample is None or sample >= n:
            targets = list(range(n))
        else:
            targets = sorted(np.random.default_rng(seed).choice(n, size=sample, replace=False).tolist())
        rep = self.replay(targets, anchors)
        outcomes = rep["outcomes"]
        found = self.attribute(outcomes)
        table = self.check_credits()
        self.reader.close()
        unrep = sorted(it for it, o in outcomes.items() if o.unreproducible)
        verdict = self.verdict(unrep, outcomes)
        return {
            "run": self.run_dir, "passed": verdict in (PASSED, NOT_HERE), "verdict": verdict,
            "iterations": n, "kernels_differ": self.kernels_differ,
            "status": (self.summary or {}).get("status", "unfinished"),
            "problems": self.problems, "notes": self.notes,
            "replay": {
                "targets": targets, "seed": seed, "replayed": len(outcomes),
                "verified": sum(o.in_sync and not o.within_tolerance
                                for o in outcomes.values()),
                "within_tolerance": sum(o.within_tolerance for o in outcomes.values()),
                "checkpoint_drift": {str(k): v for k, v in sorted(self.drift.items())},
                "tolerance_used": max((o.used for o in outcomes.values()), default=0.0),
                "verdicts_confirmed": sum(bool(o.verdict_confirmed) for o in outcomes.values()),
                "skipped": rep["skipped"], "checkpoints": sorted(anchors),
                "unreproducible": unrep,
            },
            "removed": [{"rank": r, "iteration": it} for r, it in sorted(self.removed_at.items())],
            "fake_contributions": found,
            "unverified_from_removed": self.unverified_from_removed(found, outcomes),
            "credits": table,
        }


def _role_problems(rec: records.Record, key: bytes, cfg, gone: dict) -> list:
    """Where a keyed record's roles depart from those the key draws from its active ranks."""
    out = []
    stale = sorted(r for r in rec.active if r in gone)
    if stale:
        out.append(f"ranks {stale} are listed active after their removal")
    plan = roles.plan(key, rec.iteration, rec.active, cfg.controls, *rec.lines,
                      cfg.checks_per_iteration)
    drawn = [(a.rank, a.role, (a.start, a.stop)) for a in plan.assignments]
    logged = [(a.rank, a.role, a.lines) for a in rec.assignments
              if a.role not in ("recheck", "manager")]
    if logged != drawn:
        out.append("the workers and controls are not the ones the key draws")
    if [(c.worker, c.controls) for c in rec.checks] != [(c, tuple(k)) for c, k in plan.checks]:
        out.append("the checked workers or their controls are not the ones the key draws")
    for i, check in enumerate(rec.checks):
        if not check.rechecks:
            continue
        votes = {check.worker, *check.controls}
        order = roles.recheck_order(key, rec.iteration, i, [r for r in rec.active
                                                            if r not in votes])
        if list(check.rechecks) != order[:len(check.rechecks)]:
            out.append(f"the rechecks {list(check.rechecks)} of lines {list(check.lines)} are "
                       f"not the ones the key draws ({order[:len(check.rechecks)]})")
    return out


def _record_problems(rec: records.Record, i, plan, gone, cfg) -> list:
    """Where one record departs from the protocol (see the module docstring)."""
    out = []
    if rec.iteration != i:
        out.append(f"record {i} says it is iteration {rec.iteration}")
    want = plan.get(i)
    if want is None:
        out.append("the configuration's schedule has no such iteration")
    elif (rec.epoch, rec.block, *rec.lines) != want:
        out.append(f"epoch, block and lines {[rec.epoch, rec.block, list(rec.lines)]} are not "
                   f"the schedule's {list(want)}")
    workers, ctrl, again = rec.role_of("worker"), rec.role_of("control"), rec.role_of("recheck")
    ranks = [a.rank for a in (*workers, *ctrl)]
    if len(set(ranks)) != len(ranks) or len({a.rank for a in again}) != len(again):
        out.append("a rank has two assignments")
    for r in ranks:
        if r in gone:
            out.append(f"rank {r} was given work after its removal at iteration {gone[r]}")
    bounds = [a.lines for a in workers]
    sizes = [e - s for s, e in bounds]
    covered = bool(bounds) and bounds[0][0] == rec.lines[0] and bounds[-1][1] == rec.lines[1] \
        and all(bounds[k][1] == bounds[k + 1][0] for k in range(len(bounds) - 1))
    if not covered or max(sizes) - min(sizes) > 1:
        out.append("the workers' fragments do not split the block evenly")
    checks = rec.checks
    expected = min(cfg.checks_per_iteration, len(workers)) if cfg.controls else 0
    if len(checks) != expected:
        out.append(f"{len(checks)} checks where the configuration makes {expected}")
    frag = {a.rank: a.lines for a in workers}
    fake, later = set(), {}
    for check in checks:
        mine = [a for a in ctrl if a.lines == check.lines]
        redo = [a for a in again if a.lines == check.lines]
        later[check.worker] = [*check.controls, *(a.rank for a in redo)]
        fake |= set(check.fake)
        if frag.get(check.worker) != check.lines:
            out.append("the checked lines are not the checked worker's fragment")
        if sorted(a.rank for a in mine) != sorted(check.controls) or \
                len(check.controls) != cfg.controls:
            out.append("the controls did not receive the checked fragment")
        if (check.verdict == "fake") != bool(check.fake):
            out.append(f"verdict {check.verdict} with fake ranks {list(check.fake)}")
        if tuple(a.rank for a in redo) != check.rechecks or \
                {a.rank for a in redo} & {check.worker, *check.controls}:
            out.append("the dispute's rechecks are not the ones its check lists")
    if len(ctrl) != sum(len(c.controls) for c in checks) or \
            len(again) != sum(len(c.rechecks) for c in checks):
        out.append("a control or recheck belongs to no check")
    replaced = [x.lines for x in rec.looks if x.verdict == "differs" or
                x.verdict == "malformed" and frag.get(x.rank) == x.lines and x.rank not in later]
    if sorted(a.lines for a in rec.role_of("manager")) != sorted(replaced) or \
            any(a.rank != rules.MANAGER for a in rec.role_of("manager")):
        out.append("the manager's recomputations are not those of the looks that differ")
    if any((frag.get(x.rank) != x.lines or x.rank in later) for x in rec.looks
           if x.verdict != "malformed"):
        out.append("a look names a fragment that is not an unchecked worker's")
    refused = {(x.rank, x.lines) for x in rec.looks if x.verdict == "malformed"}
    if refused != {(a.rank, a.lines) for a in rec.assignments if a.grad_digest is None}:
        out.append("the refused answers are not those of the assignments without a digest")
    fake |= {x.rank for x in rec.looks if x.verdict in ("differs", "malformed")}
    if rec.reduction is not None:  # ranks the reduction refused: aggregators, senders
        fake |= {r for r, _ in rec.reduction.refused}
    if sorted(rec.removed) != sorted(fake):
        out.append(f"removed {list(rec.removed)} but the checks and looks found {sorted(fake)} "
                   "fake")
    outcomes = [rules.Outcome(c.worker, c.verdict, c.fake, tuple(later[c.worker]))
                for c in checks]
    kept = rules.applied([(a.rank, a.lines) for a in workers], outcomes,
                         rec.format >= records.FOLDED, replaced)
    applied, source = tuple(lines for lines, _ in kept), tuple(r for _, r in kept)
    if rec.applied != applied:
        out.append("the applied fragments are not the accepted ones")
    elif rec.applied_from != source:
        out.append(f"applied_from {list(rec.applied_from)} should be {list(source)}")
    return out


def _kernels_differ(run: dict, here: dict, processor: dict) -> list:
    """How this machine's compute configuration (`here`, and its `processor`) differs from a
    rank's recorded one: in native mode the processor chose the kernels too."""
    keys = portable.COMPUTE_KEYS
    if run.get("kernels") == "native":
        here, keys = {**here, **processor}, keys + portable.NATIVE_KEYS
        run = {**run, **(run.get("processor") or {})}
    here = portable.decode(portable.encode({k: here.get(k) for k in keys}), keys)
    return portable.differences(run, here, keys)


def text(report: dict) -> str:
    rp = report["replay"]
    lines = [f"audit of {report['run']}: {report['verdict'].upper()}",
             f"  ledger: {report['iterations']} iterations, run {report['status']}",
             f"  replay: {len(rp['targets'])} iterations asked, {rp['replayed']} replayed, "
             f"{rp['verified']} reproduced bit for bit, {rp['within_tolerance']} within the "
             f"run's tolerance, {rp['verdicts_confirmed']} verdicts "
             f"confirmed, {len(rp['unreproducible'])} not reproducible on this machine, "
             f"{len(rp['skipped'])} not replayable; checkpoints vouched for: "
             f"{len(rp['checkpoints'])}",
             f"  sample: iterations chosen with seed {rp['seed']} (repeat with --seed "
             f"{rp['seed']})"]
    removed = ", ".join(f"rank {r['rank']} at {r['iteration']}" for r in report["removed"])
    lines.append(f"  removed: {removed or 'none'}")
    u = report["unverified_from_removed"]
    if u:
        by = {k: sum(1 for x in u if x["replay"] == k) for k in ("shown fake", "honest", "not replayed")}
        lines.append(f"  unverified contributions later shown to come from removed ranks: {len(u)} "
                     f"({by['shown fake']} shown fake by replay, {by['honest']} honest, "
                     f"{by['not replayed']} not replayed)")
    for n in report["notes"]:
        lines.append(f"  note: {n}")
    for p in report["problems"][:50]:
        where = f"iteration {p['iteration']}" if p["iteration"] is not None else "run"
        lines.append(f"  PROBLEM {where} [{p['check']}]: {p['message']}")
    if len(report["problems"]) > 50:
        lines.append(f"  ... and {len(report['problems']) - 50} more (see --json)")
    return "\n".join(lines)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m podlt_mpi audit",
                                description="Check a run from its files alone: hash chain, "
                                "weights chain, checkpoints, replay, credits. Exit 0: all holds; "
                                "1: something does not; 2: bad input; 3: everything holds but "
                                "the replay, which this machine computes otherwise than the "
                                "run's ranks agreed (its kernels differ).")
    p.add_argument("run_dir", help="the run directory (--out of the run)")
    p.add_argument("--data", help="training data file, if it moved since the run")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sample", type=int, default=10, help="replay this many iterations, "
                     "chosen at random (each from its nearest checkpoint)")
    how.add_argument("--all", action="store_true", help="replay every iteration")
    p.add_argument("--seed", type=int, help="seed for choosing the sample (default: a fresh "
                   "one, printed with the report so the audit can be repeated)")
    p.add_argument("--model", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="allow the replay to import the user's model the run names")
    p.add_argument("--loss", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="allow the replay to import the user's loss the run names")
    p.add_argument("--trust-config", action="store_true", help="allow whatever code the run's "
                   "config.json names (only for a run directory you trust)")
    p.add_argument("--expect-head", metavar="HASH", help="the ledger head printed at the end "
                   "of the job's log: proves the files were not rewritten as a whole")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON ('-': stdout)")
    a = p.parse_args(argv)
    kept = portable.recorded(a.run_dir)  # before torch is imported: the run's kernels
    if kept is not None:
        portable.enter(kept["settings"], ["audit", *argv])
    try:
        if a.sample < 0:
            raise ConfigError(f"--sample must be >= 0, got {a.sample}")
        allow = TRUST_CONFIG if a.trust_config else [*(("--model", m) for m in a.model),
                                                      *(("--loss", m) for m in a.loss)]
        report = Audit(a.run_dir, a.data, allow).run(None if a.all else a.sample, a.seed,
                                                     a.expect_head)
    except ConfigError as e:
        print(f"podlt_mpi audit: error: {e}", file=sys.stderr)
        return 2
    if a.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(text(report))
        if a.json:
            from podlt_mpi.run.rundir import write_json
            write_json(a.json, report)
    return EXIT[report["verdict"]]


def _alg(raw: dict) -> str:
    """The hash of a raw record's digests (a malformed record's: sha256; its parse error is
    reported on its own)."""
    alg = raw.get("digest", digests.SHA256)
    return alg if alg in digests.ALGORITHMS else digests.SHA256
