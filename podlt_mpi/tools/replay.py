"""Verification by replay: recompute iterations of a run from its ledger, in one process. No MPI.

Starting from weights the ledger vouches for (model_init.pt, or a checkpoint whose fingerprint
sits in the ledger), each iteration's applied fragments are recomputed from the logged line
ranges and compared bit for bit with the gradients the ranks sent (their digests); then the
manager's update is redone and must give `model_after`. A fragment that differs from the
recomputation is attributed to the rank whose gradient was applied. After such a fragment the
run's weights are no longer known, so replay can only go on from the next checkpoint.

Tolerance mode, from ledger format 6: honest answers differ in their bits, so each answer is
compared by its sketch (sketch.py) with the replay's, within the run's tolerance. The replay
then goes on from its own update, which is within tolerance of the run's but not its bits:
model_before and model_after cannot be compared until the next checkpoint, whose weights the
audit measures against its own and goes on from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.compute.losses import loss_function
from podlt_mpi.core import digests, ledger, merkle, rates, records, reduction, rules, sketch, verify
from podlt_mpi.core.tasks import Task, classification
from podlt_mpi.mpi import messages
from podlt_mpi.io.data import Reader


@dataclass
class Outcome:
    """What replaying one iteration showed."""
    iteration: int
    in_sync: bool                    # the replayed weights equal model_after: replay can go on
    problems: list = field(default_factory=list)       # unexplained: the audit fails
    fake_fragments: list = field(default_factory=list)  # [{lines, rank}] applied, not honest
    verdict_confirmed: bool | None = None
    # what this machine computes otherwise than the run: the lines of fragments whose replay
    # differs from the answer the run's ranks agreed on, or "update"
    unreproducible: list = field(default_factory=list)
    # tolerance mode: the answers were within tolerance of the replay, not its bits, and the
    # replay went on from its own update; `used`: the largest distance accepted, as a fraction
    # of its limit (HIGH x the bound)
    within_tolerance: bool = False
    used: float = 0.0


class Replayer:
    def __init__(self, model, cfg, reader: Reader, total: int, task: Task | None = None,
                 same_kernels: bool = True, keys: dict | None = None, same_here=()):
        """`total`: the run's iterations (a cosine rate depends on them); `task`: the run's
        (default: one class per line, cross-entropy); `same_kernels`: whether this machine is
        known to compute with the kernels of the run's manager (the audit compares them);
        `keys`: the run's revealed role keys by commitment (the sketches' codes come from
        them); `same_here`: [(first iteration, ranks)], the ranks that computed with this
        machine's kernels in each part of the run (a resume starts a part)."""
        self.model, self.cfg, self.reader, self.total = model, cfg, reader, total
        self.same_kernels, self.keys, self.same_here = same_kernels, keys or {}, same_here
        self.drifted = False  # tolerance mode: the weights are the replay's, not the run's bits
        self.task = task or classification()
        self.loss_fn = loss_function(self.task)
        self.layout = Layout(model)
        self.opt = training.make_optimizer(cfg, self.layout)

    def load(self, model_state: dict, optimizer_state: dict | None) -> None:
        """Start from these weights and buffers (and optimizer state; None: a fresh one)."""
        self.model.load_state_dict(model_state)
        self.drifted = False
        self.opt = training.make_optimizer(self.cfg, self.layout)
        if optimizer_state is not None:
            self.opt.load_state_dict(optimizer_state)

    def weights_digest(self, alg: str) -> str:
        """The model's digest as the ledger writes it (weights and buffers), with hash `alg`."""
        return self.layout.digest(alg=alg)

    def same_state(self, model_state: dict, optimizer_state: dict) -> bool:
        """Bitwise equality of the replayed model and optimizer with a checkpoint's."""
        return _equal(self.model.state_dict(), model_state) and \
            _equal(self.opt.state_dict(), optimizer_state)

    def same_at(self, iteration: int) -> set:
        """The ranks that computed iteration `iteration` with this machine's kernels: by the
        last part, in the order the run's resumes came, that started at or before it (a later
        resume from an earlier checkpoint rewrote what followed)."""
        found = set()
        for start, ranks in self.same_here:
            if start <= iteration:
                found = ranks
        return found

    def distance(self, model_state: dict) -> float:
        """||replayed weights - model_state|| / ||model_state|| over the floating tensors."""
        diff = total = 0.0
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                ref = model_state[k].detach().double()
                diff += float((v.detach().double() - ref).pow(2).sum())
                total += float(ref.pow(2).sum())
        return math.sqrt(diff / total) if total else math.sqrt(diff)

    def _fragment(self, x, y, start: int, s: int, e: int, iteration: int) -> tuple:
        xt = torch.from_numpy(x[s - start:e - start])
        yt = torch.from_numpy(y[s - start:e - start])
        seed = messages.fragment_seed(self.cfg.seed, iteration, s, e)
        return training.gradient(self.model, xt, yt, seed, self.layout, self.loss_fn)

    def answer_digest(self, rec: records.Record):
        """answer -> its digest as `rec` keeps it: the hash of its bytes, or under the ranks'
        reduction (format 7) its Merkle root, the commitment its rank sent."""
        if rec.reduction is None:
            return lambda g: digests.of_arrays(rec.digest, g)
        n_summed, n = self.layout.n_grad + self.layout.n_float, rec.reduction.slices
        return lambda g: reduction.commit(np.ascontiguousarray(g, np.float32), n_summed,
                                          n).root.hex()

    def reduced(self, rec: records.Record, grads, counts, lines, out: Outcome) -> bool:
        """The ranks' reduction replayed: each slice of the tree summed as its aggregator had to
        (training.SliceSum), its digest against the record's, then the step from the slices.
        A slice whose sum differs names its aggregator, as a fake fragment names its rank."""
        red, layout = rec.reduction, self.layout
        n_summed = layout.n_grad + layout.n_float
        leaves = [a.lines for a in rec.assignments if a.role == "worker"]
        at = dict(zip(rec.applied, range(len(grads)), strict=True))
        before = torch.cat([b.reshape(-1).float() for b in layout.float_buffers()]) \
            if layout.n_float else None
        parts, honest = [], True
        for j, (a, b) in enumerate(reduction.bounds(n_summed, red.slices)):
            s = training.SliceSum(layout, len(leaves), a, b, before)
            for leaf, lines_of in enumerate(leaves):
                i = at.get(lines_of)
                s.set(leaf, None if i is None else np.asarray(grads[i])[a:b],
                      *((counts[i], lines[i]) if i is not None else ()))
            values = s.values()
            parts.append(training.slice_parts(layout, a, b, values))
            if merkle.leaf(values).hex() != red.sums[j]:
                out.fake_fragments.append({"slice": j, "rank": red.aggregators[j],
                                           "what": "sum"})
                honest = False
        if not honest:
            return False  # the run applied other sums: its weights after are unknown here
        total, change = training.joined(parts, layout.n_grad, layout.n_float)
        training.step_from_sums(self.model, self.opt, layout, total, change,
                                [torch.as_tensor(np.asarray(g)[n_summed:]) for g in grads],
                                sum(counts), sum(lines),
                                rates.learning_rate(self.cfg, rec.iteration, rec.epoch,
                                                    self.total), self.cfg.clip_grad_norm)
        return True

    def step(self, rec: records.Record) -> Outcome:
        """Replay `rec` from the current state, which must be the weights before it."""
        it = rec.iteration
        out = Outcome(it, in_sync=False)
        alg = rec.digest
        if not self.drifted and self.weights_digest(alg) != rec.model_before:
            out.problems.append("the weights before it are not the ones the ledger names")
            return out
        start, stop = rec.lines
        x, y = self.reader.read(start, stop)
        if digests.of_arrays(alg, x.reshape(len(y), -1), y) != rec.data_digest:
            out.problems.append(f"lines [{start}, {stop}) of the data differ from those trained on "
                                "(wrong --data file?)")
            return out
        digests_sent = {(a.rank, a.lines): a.grad_digest for a in rec.assignments}
        digest = self.answer_digest(rec)
        said = {(a.rank, a.lines): a.loss for a in rec.assignments}  # format 5: their losses
        looked = rec.format >= records.LOOKED
        cache = {}

        def fragment(s, e):
            if (s, e) not in cache:
                cache[(s, e)] = self._fragment(x, y, start, s, e, it)
            return cache[(s, e)]

        near = None
        if rec.format >= records.SKETCHED and self.cfg.compare != "exact":
            key = self.keys.get(rec.roles)
            if key is None:
                out.problems.append("no revealed key opens the record's commitment, so its "
                                    "sketches cannot be compared")
                return out
            near = Near(rec, sketch.codes(key, it, self.layout.answer_size), fragment,
                        self.cfg)
        confirmed = []
        for check in rec.checks:
            ok = (near.confirm(check, out) if near else
                  _confirm(check, digests_sent, fragment, out, self.cfg.compare, digest,
                           said if looked else None))
            if ok == UNREPRODUCIBLE:
                out.unreproducible.append(list(check.lines))
            elif ok is not None:
                confirmed.append(ok)
        if out.unreproducible:
            out.problems.clear()  # this machine's bits, not the ranks', are in question
            return out
        for look in rec.looks:  # the same answer as the replay's, or a rank rightly removed
            ok = (near.confirm_look(look) if near else
                  _confirm_look(look, digests_sent, said, fragment, digest, self.cfg.compare))
            if ok is not None:
                confirmed.append(ok)
            if ok is False:
                out.problems.append(f"the look's verdict {look.verdict} for rank {look.rank}'s "
                                    f"lines {list(look.lines)} does not follow from its answer")
        if confirmed:
            out.verdict_confirmed = all(confirmed)

        grads, losses, counts, lines, honest = [], [], [], [], True
        bitwise = not self.drifted
        for (s, e), r in zip(rec.applied, rec.applied_from, strict=True):
            g, loss = fragment(s, e)
            digest_same = digest(g) == digests_sent.get((r, (s, e)))
            # tolerance mode: from the run's weights, on the rank's own kernels, the bits are
            # the rank's, so its digest and sketch must be the replay's
            exact_here = near is not None and not self.drifted and r in self.same_at(it)
            if digest_same and near is not None and near.sent(r, (s, e)) != near.replay((s, e))[0]:
                out.problems.append(f"the sketch of rank {r}'s answer for lines {[s, e]} is not "
                                    "that of the answer its digest names")
            if not digest_same and not exact_here and near is not None and near.near(r, (s, e)):
                bitwise = False  # within tolerance: the replay goes on from its own answer
                loss = said.get((r, (s, e)))
                loss = float("nan") if loss is None else loss
            elif not digest_same:
                out.fake_fragments.append({"lines": [s, e], "rank": r, "what": "gradient"})
                if near is not None:
                    out.fake_fragments[-1]["why"] = (
                        "in its bits, from the run's weights on the rank's own kernels"
                        if exact_here else "beyond the run's tolerance")
                honest = False
            elif looked and said.get((r, (s, e))) != ledger.finite_or_none(loss):
                # its gradient was honest, so the update replays; the logged loss does not
                out.fake_fragments.append({"lines": [s, e], "rank": r, "what": "loss"})
                if near is not None:
                    out.fake_fragments[-1]["why"] = "whose gradient replays bit for bit"
                loss = said.get((r, (s, e)))
                loss = float("nan") if loss is None else loss
            grads.append(g)
            losses.append(loss)
            counts.append(self.task.weight(y[s - start:e - start]))
            lines.append(e - s)
        if not honest:
            return out  # the run applied something else: its weights after are unknown here
        if grads:
            cfg = self.cfg
            lr = rates.learning_rate(cfg, it, rec.epoch, self.total)
            if rec.reduction is not None:  # the same tree, summed by the ranks in slices
                if not self.reduced(rec, grads, counts, lines, out):
                    return out
            elif rec.format >= records.KEYED:  # a tree over the workers' fragments
                leaves = [a.lines for a in rec.assignments if a.role == "worker"]
                fold = training.TreeFold(self.model, self.layout, len(leaves))
                at = dict(zip(rec.applied, range(len(grads)), strict=True))
                for leaf, lines_of in enumerate(leaves):
                    i = at.get(lines_of)
                    if i is None:  # not applied
                        fold.set(leaf, None)
                    else:
                        fold.set(leaf, grads[i], counts[i], lines[i])
                fold.apply(self.opt, lr, cfg.clip_grad_norm)
            elif rec.format >= records.FOLDED:  # summed in the order the manager folded them
                fold = training.Fold(self.model, self.layout)
                for i in rules.fold_order(rec.applied, [c.lines for c in rec.checks]):
                    fold.add(grads[i], counts[i], lines[i])
                fold.apply(self.opt, lr, cfg.clip_grad_norm)
            else:
                training.apply_update(self.model, self.opt, self.layout, grads, counts, lr,
                                      cfg.clip_grad_norm, lines)
            loss = ledger.finite_or_none(training.combined_loss(losses, counts))
            if loss != rec.loss:
                out.problems.append(f"the logged loss {rec.loss} differs from the replayed {loss}")
        if near is not None:
            out.used = near.used
        if not bitwise:  # model_after is the run's bits, which the replay does not have
            self.drifted = out.in_sync = out.within_tolerance = True
            return out
        if self.weights_digest(alg) != rec.model_after:
            if self.same_kernels:
                out.problems.append("the manager's update does not give the logged model_after")
            else:  # the optimizer's arithmetic runs on this machine's kernels too
                out.unreproducible.append("update")
            return out
        out.in_sync = True
        return out


UNREPRODUCIBLE = "unreproducible"


class Near:
    """Tolerance mode from format 6: one record's answers, by their sketches, against the
    replay's (sketch.within), and the verdicts that follow."""

    def __init__(self, rec: records.Record, code, fragment, cfg):
        self.code, self.fragment, self.cfg = code, fragment, cfg
        self.alg = rec.digest
        self.answers = {(a.rank, a.lines): a for a in rec.assignments}
        self.replays = {}
        self.used = 0.0  # the largest sketch distance accepted, as a fraction of its limit

    def replay(self, lines) -> tuple:
        """The replay's (sketch, loss) for `lines`."""
        if lines not in self.replays:
            g, loss = self.fragment(*lines)
            self.replays[lines] = (sketch.of(g, self.code,
                                             lambda *a: digests.of_arrays(self.alg, *a)),
                                   ledger.finite_or_none(loss))
        return self.replays[lines]

    def sent(self, rank, lines):
        """The rank's answer's sketch, None where there is none (a refused answer)."""
        a = self.answers.get((rank, tuple(lines)))
        return a.sketch if a is not None else None

    def distance(self, rank, lines) -> float:
        got = self.sent(rank, lines)
        return math.inf if got is None else sketch.distance(got, self.replay(tuple(lines))[0])

    def near(self, rank, lines) -> bool:
        """Whether the rank's answer (gradient and loss) is within the run's tolerance of the
        replay."""
        lines = tuple(lines)
        got = self.sent(rank, lines)
        if got is None:
            return False
        ref, ref_loss = self.replay(lines)
        loss = self.answers[(rank, lines)].loss
        cfg = self.cfg
        same_loss = loss == ref_loss or None not in (loss, ref_loss) and \
            verify.same_loss(loss, ref_loss, cfg.compare, cfg.rtol, cfg.atol)
        ok = same_loss and sketch.within(got, ref, cfg.rtol, cfg.atol)
        if ok:  # how much of the tolerance an accepted answer used: the replay's drift shows here
            used = sketch.distance(got, ref) / (sketch.HIGH * sketch.bound(got, ref, cfg.rtol,
                                                                           cfg.atol) or 1)
            self.used = max(self.used, used)
        return ok

    def confirm(self, check: records.CheckRecord, out: Outcome) -> bool | None | str:
        """A check's verdict against the replay: those it let stand within tolerance of it, and
        those it found fake further from it than any of them. UNREPRODUCIBLE where two that
        stood are beyond tolerance of the replay: their agreement, not this machine, stands."""
        lines = check.lines
        if check.verdict == "dispute":
            return None  # nobody removed, nothing applied on it: nothing to confirm
        ranks = (check.worker, *check.controls, *check.rechecks)
        standing = [r for r in ranks if r not in check.fake and self.sent(r, lines)]
        far = [r for r in standing if not self.near(r, lines)]
        if len(far) >= 2:
            return UNREPRODUCIBLE
        said = [f"rank {r}'s answer for lines {list(lines)}, which the check let stand, is "
                f"beyond the run's tolerance of the replay" for r in far]
        furthest = max((self.distance(r, lines) for r in standing), default=None)
        said += [f"rank {r} was found fake for lines {list(lines)}, but its answer is no "
                 f"further from the replay than those that stood" for r in check.fake
                 if furthest is not None and self.distance(r, lines) <= furthest]
        out.problems.extend(said)
        return not said

    def confirm_look(self, look: records.Look) -> bool:
        """A look's verdict against the replay: `same`, the rank's answer within tolerance of
        it; `differs`, the manager's answer within it and the rank's further away."""
        if look.verdict == "malformed":
            return self.sent(look.rank, look.lines) is None
        if look.verdict == "same":
            return self.near(look.rank, look.lines)
        return self.near(rules.MANAGER, look.lines) and \
            self.distance(look.rank, look.lines) > self.distance(rules.MANAGER, look.lines)


def _confirm(check: records.CheckRecord, digests_sent, fragment, out, mode: str,
             digest, said=None) -> bool | None | str:
    """Re-derive one check's verdict from the hashes the ranks sent (and from format 5 their
    losses, `said`) and the replayed answer (None where tolerance mode makes bits
    insufficient). UNREPRODUCIBLE where the replay differs from an answer that two ranks the
    check did not find fake agreed on: honest ranks agree bit for bit, so this machine computes
    otherwise than they did, and the check's verdict cannot be judged here."""
    s, e = check.lines
    g, loss = fragment(s, e)
    rechecks = check.rechecks
    if said is None:  # before format 5 the votes were on the gradients alone
        ref = digest(g)
        answer = lambda r: digests_sent.get((r, (s, e)))  # noqa: E731
    else:
        ref = (digest(g), ledger.finite_or_none(loss))
        answer = lambda r: (None if digests_sent.get((r, (s, e))) is None  # noqa: E731
                            else (digests_sent.get((r, (s, e))), said.get((r, (s, e)))))
    votes = {r: answer(r) for r in (check.worker, *check.controls)}
    extra = {r: answer(r) for r in rechecks}
    accepted = [h for r, h in {**votes, **extra}.items() if r not in check.fake and h is not None]
    if mode == "exact" and ref not in accepted and \
            any(accepted.count(h) >= 2 for h in accepted):
        return UNREPRODUCIBLE
    if mode != "exact" and not all(h == ref for h in votes.values()):
        return None
    expected = verify.by_hashes(votes, ref)
    if rechecks:  # a dispute: settled the way the manager settles it
        every = {**votes, **extra}
        expected = verify.settle(list(every), [r for r, h in every.items() if h == ref])
    ok = expected.verdict == check.verdict and sorted(expected.fake) == sorted(check.fake)
    if not ok:
        out.problems.append(f"the logged verdict {check.verdict} (fake {list(check.fake)}) for "
                            f"lines {list(check.lines)} does not follow from the gradients: replay "
                            f"gives {expected.verdict} (fake {expected.fake})")
    return ok


def _confirm_look(look: records.Look, digests_sent, said, fragment, digest,
                  mode: str) -> bool | None:
    """Whether a look's verdict follows from the rank's answer and the replay (None where
    tolerance mode makes bits insufficient). A malformed answer has no digest to replay."""
    key = (look.rank, look.lines)
    if look.verdict == "malformed":
        return digests_sent.get(key) is None
    g, loss = fragment(*look.lines)
    same = digests_sent.get(key) == digest(g) and said.get(key) == \
        ledger.finite_or_none(loss)
    if mode != "exact" and not same:
        return None
    return same == (look.verdict == "same")


def _equal(a, b) -> bool:
    """Structural, bitwise equality of two state dicts."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a.detach().cpu().reshape(-1).view(torch.uint8).numpy(),
                                   b.detach().cpu().reshape(-1).view(torch.uint8).numpy()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b, strict=True))
    return a == b
