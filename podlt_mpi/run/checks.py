"""The manager's checks: compare each checked worker with its controls, referee a disagreement
with the manager's own recomputation, and settle a dispute with rechecks on further ranks.

The verdicts are verify.py's (pure); this module supplies what they need from the running job:
the manager's reference gradient and, for a dispute, more votes through the exchange.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core import ledger, records, rules, schedule, verify
from podlt_mpi.mpi import messages


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


@dataclass
class Round:
    """One iteration as the checks see it. `grads`, `losses` and `digests` (futures of the
    answers' ledger seals, digests.Seal), by (rank, start, stop), gain the rechecks' answers."""
    plan: schedule.Plan
    iteration: int
    weights: object   # the flat state every rank computed from
    bx: object        # the block's lines, flat
    by: object
    grads: dict
    losses: dict
    digests: dict

    def lines(self, s: int, e: int) -> tuple:
        a, b = s - self.plan.start, e - self.plan.start
        return self.bx[a:b], self.by[a:b]


class Checker:
    def __init__(self, model, line_shape, loss_fn, three_way, exchange, compare: str,
                 rtol: float, atol: float, seed: int, losses: bool = False):
        """`losses`: the votes compare the losses the ranks sent too (ledger format 5)."""
        self.losses = losses
        self.referee_model = copy.deepcopy(model)  # recomputes a fragment before any removal
        self.referee_layout = Layout(self.referee_model)
        self.line_shape, self.loss_fn, self.three_way = line_shape, loss_fn, three_way
        self.exchange = exchange
        self.compare_mode, self.rtol, self.atol, self.seed = compare, rtol, atol, seed
        self.refused = {}
        self.form = lambda grad: grad  # a vote's form of an answer (the ranks' reduction: its
        # commitment, so votes are compared by their roots)

    def same(self, a, b) -> bool:
        return verify.compare(a, b, self.compare_mode, self.rtol, self.atol).same

    def same_answer(self, grad, loss, reference, reference_loss) -> bool:
        """A vote against the manager's own answer: the gradient, and from format 5 the loss."""
        return self.same(grad, reference) and (not self.losses or verify.same_loss(
            loss, reference_loss, self.compare_mode, self.rtol, self.atol))

    def __call__(self, rnd: Round, active, recheck_order) -> list:
        """One Check per checked worker of the plan. `recheck_order(i, candidates)`: the order
        in which check i asks further ranks to settle a dispute (the manager's secret roles)."""
        self.refused = {}  # rank -> why, for the rechecks' refused answers
        return [self.check_one(rnd, c, ctrl, active, lambda rs, i=i: recheck_order(i, rs))
                for i, (c, ctrl) in enumerate(rnd.plan.checks)]

    def recompute(self, rnd: Round, s: int, e: int) -> tuple:
        """The manager's own answer for lines [s, e), from the weights the ranks had:
        (gradient, loss)."""
        self.referee_layout.load_state(rnd.weights)
        bx, by = rnd.lines(s, e)
        x = torch.from_numpy(bx).view(e - s, *self.line_shape)
        seed = messages.fragment_seed(self.seed, rnd.iteration, s, e)
        return training.gradient(self.referee_model, x, torch.from_numpy(by), seed,
                                 self.referee_layout, self.loss_fn)

    def check_one(self, rnd: Round, checked: int, controls, active, recheck_order) -> Check:
        s, e = rnd.plan.fragment_of(checked)
        votes = {r: rnd.grads[(r, s, e)] for r in (checked, *controls)}
        said = {r: rnd.losses[(r, s, e)] for r in votes} if self.losses else None
        decision = verify.decide(votes, self.compare_mode, self.rtol, self.atol, self.three_way,
                                 said)
        done = Check(checked, tuple(controls), (s, e), decision, [])
        if decision.verdict == "agree":
            return done
        grad, loss = self.recompute(rnd, s, e)
        reference = (self.form(grad), loss)
        if decision.verdict == "fake":
            done.decision = verify.referee(decision, votes, reference[0], self.compare_mode,
                                           self.rtol, self.atol, said, reference[1])
        if done.decision.verdict == "dispute":
            self.resolve(rnd, done, votes, reference, active,
                         recheck_order([r for r in active if r not in votes]))
        return done

    def resolve(self, rnd: Round, done: Check, votes: dict, reference, active,
                candidates) -> None:
        """A dispute: the fragment goes to further ranks (`candidates`, those not yet involved,
        in the secret order drawn for them), until two ranks agree with the manager's own
        result; every other vote loses.
        Each recruited rank receives an ordinary work message, by the broadcast to every active
        rank as in an iteration's plan: it cannot tell whose lines."""
        s, e = done.lines
        agrees = [r for r in votes if self.same_answer(votes[r], rnd.losses[(r, s, e)],
                                                       *reference)]
        for r in candidates:
            if len(agrees) >= 2:
                break
            one = schedule.Plan(rnd.plan.start, rnd.plan.stop, (), (), None,
                                (schedule.Assignment(r, "recheck", s, e),))
            got, loss, digest, refused = self.exchange(one, rnd.iteration, rnd.weights, rnd.bx,
                                                       rnd.by, [a for a in active
                                                                if a not in self.refused])
            self.refused.update(refused)
            votes[r] = rnd.grads[(r, s, e)] = got[r]
            rnd.losses[(r, s, e)] = loss[r]
            rnd.digests[(r, s, e)] = digest[r]
            done.rechecks.append(one.assignments[0])
            if self.same_answer(got[r], loss[r], *reference):
                agrees.append(r)
        step = {"by": "manager", "agrees": agrees, "rechecks": [a.rank for a in done.rechecks]}
        done.decision = verify.settle(list(votes), agrees, done.decision.rel_dist, step)
        step["resolved"] = done.decision.verdict == "fake"
