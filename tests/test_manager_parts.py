"""The manager's parts, built directly without MPI: the checks (with a stand-in exchange), the
run state that checkpoints save, and the run files."""
import json
import os
import pathlib
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from podlt_mpi.compute import losses, models, training
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import digests, ledger, records, schedule, tasks
from podlt_mpi.mpi import messages
from podlt_mpi.run.checks import Checker, Round
from podlt_mpi.run.files import RunFiles
from podlt_mpi.run.resume import Resume
from podlt_mpi.run.state import RunState

SHAPE, SEED, IT = (6,), 5, 3


class World:
    """An iteration's block and plan, and what an honest rank answers for any lines."""

    def __init__(self, ranks=6):
        torch.manual_seed(0)
        self.model = models.build("mlp", SHAPE, 3, seed=0)
        self.layout = Layout(self.model)
        self.loss_fn = losses.loss_function(tasks.classification(3))
        rng = np.random.default_rng(1)
        self.bx = rng.standard_normal((30, 6)).astype(np.float32)
        self.by = (np.arange(30) % 3).astype(np.int64)
        self.plan = schedule.plan_iteration(list(range(1, ranks)), 2, 100, 130,
                                            np.random.default_rng(2))
        self.weights = host(self.layout.state())
        self.recruited = []

    def honest(self, s, e):
        x = torch.from_numpy(self.bx[s - 100:e - 100])
        seed = messages.fragment_seed(SEED, IT, s, e)
        return training.gradient(models.build("mlp", SHAPE, 3, seed=0), x,
                                 torch.from_numpy(self.by[s - 100:e - 100]), seed,
                                 None, self.loss_fn)

    def round(self, lie=lambda rank, g: g) -> Round:
        grads, loss, digest = {}, {}, {}
        for a in self.plan.assignments:
            g, l_ = self.honest(a.start, a.stop)
            grads[(a.rank, a.start, a.stop)] = lie(a.rank, g)
            loss[(a.rank, a.start, a.stop)] = l_
            digest[(a.rank, a.start, a.stop)] = hashed(grads[(a.rank, a.start, a.stop)])
        return Round(self.plan, IT, self.weights, self.bx, self.by, grads, loss, digest)

    def exchange(self, plan, iteration, weights, bx, by, everyone):
        """A recheck: the recruited rank answers honestly. It goes out as an iteration's plan
        does, to every active rank (the broadcast, where it is on)."""
        (a,) = plan.assignments
        assert a.role == "recheck" and iteration == IT and weights is self.weights
        assert a.rank in everyone
        self.recruited.append(a.rank)
        g, l_ = self.honest(a.start, a.stop)
        return {a.rank: g}, {a.rank: l_}, {a.rank: hashed(g)}, {}

    def checker(self) -> Checker:
        return Checker(self.model, SHAPE, self.loss_fn, None, self.exchange, "exact", 0.0, 0.0,
                       SEED)


def recheck_order(index, candidates):
    """The manager's draw of who rechecks a dispute (here from a fixed generator)."""
    return schedule.shuffle(candidates, np.random.default_rng(7))


def hashed(g) -> Future:
    """The exchange's digest future, already done."""
    f = Future()
    f.set_result(digests.of_arrays(digests.WRITTEN, g))
    return f


def off(g):
    return g + np.float32(1e-3)


def test_honest_votes_agree_without_the_referee():
    w = World()
    (check,) = w.checker()(w.round(), list(range(1, 6)), recheck_order)
    assert check.decision.verdict == "agree" and check.rechecks == [] and w.recruited == []
    assert check.lines == w.plan.fragment_of(w.plan.checked)
    rec = check.record()
    assert rec.worker == w.plan.checked and rec.controls == w.plan.controls and rec.fake == ()


def test_a_lying_control_is_found_and_the_referee_confirms_it():
    w = World()
    liar = w.plan.controls[0]
    (check,) = w.checker()(w.round(lambda r, g: off(g) if r == liar else g), list(range(1, 6)),
                             recheck_order)
    d = check.decision
    assert d.verdict == "fake" and d.fake == [liar]
    assert sorted(d.referee["agrees"]) == sorted([w.plan.checked, w.plan.controls[1]])
    assert check.outcome().voters == w.plan.controls


def test_colluders_are_overturned_by_the_managers_recomputation():
    """The checked worker and a control send the same wrong gradient: they outvote the honest
    control two to one, and the manager's own gradient overturns the majority."""
    w = World()
    bad = {w.plan.checked, w.plan.controls[0]}
    (check,) = w.checker()(w.round(lambda r, g: off(g) if r in bad else g), list(range(1, 6)),
                             recheck_order)
    d = check.decision
    assert d.verdict == "fake" and sorted(d.fake) == sorted(bad) and d.referee["overturned"]


def test_a_dispute_recruits_further_ranks_until_two_agree_with_the_manager():
    """All three votes differ: the fragment goes to ranks outside the check, in the order the
    manager's generator draws, each by an ordinary work message, until two agree."""
    w = World(ranks=8)
    voters = [w.plan.checked, *w.plan.controls]
    rnd = w.round(lambda r, g: g + np.float32(1e-3 * (1 + voters.index(r)))
                  if r in voters else g)
    active = list(range(1, 8))
    (check,) = w.checker()(rnd, active, recheck_order)
    d = check.decision
    others = schedule.shuffle([r for r in active if r not in voters], np.random.default_rng(7))
    assert w.recruited == others[:2]                      # the generator's order, two needed
    assert [a.rank for a in check.rechecks] == others[:2]
    assert d.verdict == "fake" and sorted(d.fake) == sorted(voters)
    assert d.referee["rechecks"] == others[:2] and d.referee["resolved"]
    s, e = check.lines
    assert all((r, s, e) in rnd.grads and (r, s, e) in rnd.losses for r in others[:2])
    assert check.outcome().voters == (*w.plan.controls, *others[:2])


def test_the_run_state_round_trips_through_a_checkpoint():
    st = RunState.fresh(6, seed=3)
    st.rng.random(5)
    st.next_iteration, st.useful, st.last_loss, st.test = 4, 120, 0.5, {"test_loss": 0.7}
    st.removed.append({"rank": 2, "iteration": 1, "role": "control"})
    st.active.remove(2)
    st.protected.append(2)
    figures = ["test_loss", "test_accuracy"]
    ckpt = {"proof": json.loads(json.dumps(st.proof(figures))),
            "position": st.position(4, "h", 9.5)}
    back = RunState.fresh(6, seed=99)
    back.restore(ckpt, [1, 3, 4, 5], figures)
    assert back.proof(figures) == st.proof(figures)
    assert back.rng.random() == st.rng.random()  # the schedule goes on where it stopped
    assert back.elapsed_before == 9.5 and back.protected == [2]
    assert back.test == {"test_loss": 0.7}       # figures the run never had stay absent


def minimal(i) -> records.Record:
    return records.Record(iteration=i, epoch=0, block=i, lines=(10 * i, 10 * i + 10),
                          data_digest="d", model_before="b", assignments=(), check=None,
                          applied=(), applied_from=(), removed=(), loss=0.5, model_after="a",
                          roles="c", active=(1,))


def test_run_files_write_a_run_and_a_resume_cuts_it_back(tmp_path):
    model = models.build("mlp", SHAPE, 3, seed=0)
    files = RunFiles(str(tmp_path))
    files.open({"seed": 1}, model)
    sealed = [files.append(minimal(i)) for i in range(3)]
    for i in range(3):
        files.metric({"iteration": i})
    files.checkpoint(1, model.state_dict(), {}, {"next_iteration": 1},
                     {"ledger_records": 1, "ledger_hash": sealed[0].hash, "elapsed_s": 0.0,
                      "protected": []}, keep=2, protected=())
    files.close()
    files.finish({"status": "complete"}, model)
    kept = records.load(os.path.join(tmp_path, "ledger.jsonl"))
    assert [r.hash for r in kept.records] == [r.hash for r in sealed]
    assert kept.chain_problems() == [] and files.written == 3 and files.head == sealed[-1].hash
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json", "ledger.jsonl",
                                            "metrics.jsonl", "model_final.pt", "model_init.pt",
                                            "summary.json"]
    again = RunFiles(str(tmp_path))
    again.open({"seed": 1}, model, Resume(str(tmp_path), None, 1, sealed[0].hash, [1], ["x"]))
    assert again.written == 1 and again.head == sealed[0].hash
    assert again.append(minimal(1)).prev == sealed[0].hash
    again.close()
    assert len(records.load(os.path.join(tmp_path, "ledger.jsonl"))) == 2
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        assert [json.loads(line)["iteration"] for line in f] == [0]
    assert not os.path.exists(os.path.join(tmp_path, "summary.json"))
    assert not os.path.exists(os.path.join(tmp_path, "model_final.pt"))
    with open(os.path.join(tmp_path, "config.json")) as f:
        assert json.load(f)["resumed"] == ["x"]


@pytest.mark.parametrize("first", [0, 1])
def test_sealing_matches_the_ledgers_own(tmp_path, first):
    """RunFiles.append is ledger.seal of the record's JSON, whatever came before."""
    files = RunFiles(str(tmp_path))
    files.open({}, models.build("mlp", SHAPE, 3, seed=0))
    prev = ledger.GENESIS
    for i in range(first + 1):
        got = files.append(minimal(i))
        assert got.to_json() == ledger.seal(minimal(i).to_json(), prev)
        prev = got.hash
    files.close()


def test_the_manager_posts_its_sends_in_rank_order_whatever_the_roles(monkeypatch):
    # the plan lists the controls last; posting in its order would tell a control its role by
    # when its messages leave (without the broadcast, each rank's weights go with its lines)
    from podlt_mpi.mpi import comm as mpi
    from podlt_mpi.mpi import messages
    from podlt_mpi.run.exchange import Exchange
    posted = []
    monkeypatch.setattr(mpi, "isend", lambda comm, arr, dest, tag: posted.append(dest))
    plan = schedule.plan_iteration([5, 1, 4, 2, 3], 2, 0, 30, np.random.default_rng(0))
    assert [a.rank for a in plan.assignments][-2:] == [2, 3]  # controls 2 and 3 come last
    outgoing = messages.messages_for_plan(plan, 0, 0, np.zeros(4, np.float32),
                                          np.zeros((30, 6), np.float32), np.zeros(30, np.int64))
    Exchange(None, None, 4, 0, pool=object()).post(outgoing, [], [])
    assert posted == sorted(posted) and set(posted) == {1, 2, 3, 4, 5}


# ---- a whole run in this process: the manager with ranks that live here ---------------------

class Ranks:
    """The exchange's interface (run/exchange.py), served by ranks in this process: each computes
    its lines as run/worker.py does (the weights loaded, the fragment's seed), and `lie(rank,
    iteration, gradient)` may change what a rank sends. Answers stream to the fold in the
    order the manager gives, as the window (run/window.py) hands them over."""

    def __init__(self, cfg, ds, lie=lambda rank, it, g: g):
        self.cfg, self.lie = cfg, lie
        self.model = models.build(cfg.model, ds.line_shape, ds.n_classes, cfg.seed, ds.task)
        self.layout, self.loss_fn = Layout(self.model), losses.loss_function(ds.task)
        self.line_shape = ds.line_shape
        self.pool = digests.Pool(digests.WRITTEN, 1)
        self.cost, self.notices, self.unsolicited, self.misbehaved = None, {}, {}, set()
        self.ordered_fold, self.stopped, self.plans = False, [], []

    def __call__(self, plan, iteration, weights, bx, by, everyone=None, fold=None):
        self.plans.append(plan)
        order, streamed, add = fold or ([a.rank for a in plan.assignments], (), None)
        work = {a.rank: a for a in plan.assignments}
        grads, losses_, futures = {}, {}, {}
        for r in order:
            a = work[r]
            self.layout.load_state(weights)
            lines = slice(a.start - plan.start, a.stop - plan.start)
            x = torch.from_numpy(bx[lines].copy()).view(-1, *self.line_shape)
            grad, loss = training.fragment(self.model, self.layout, x,
                                           torch.from_numpy(by[lines].copy()),
                                           messages.fragment_seed(self.cfg.seed, iteration,
                                                                  a.start, a.stop),
                                           self.loss_fn)
            grad = self.lie(r, iteration, host(grad).copy())
            losses_[r], futures[r] = loss, self.pool.answer(grad)
            if r in streamed and not add(r, grad, messages.loss_note(loss, 0, 0.0)):
                continue  # folded: the window reuses its buffer
            grads[r] = grad
        return grads, losses_, futures, {}

    def drain(self, awaits=None):
        pass

    def reclaim(self, buffers):
        pass

    def stop(self, ranks):
        self.stopped += list(ranks)


class OneRank:
    """What the manager asks of its communicator when another object carries the messages."""

    def __init__(self, size):
        self.size = size

    def Get_size(self):
        return self.size


def in_process_run(tmp_path, ranks=5, lie=lambda rank, it, g: g, **options):
    """A run of the manager (run/manager.py) over `ranks` - 1 stand-in ranks, to the end."""
    from podlt_mpi.core.config import parse_args
    from podlt_mpi.io import data
    from podlt_mpi.mpi import comm as mpi
    from podlt_mpi.run.manager import Manager
    path = str(tmp_path / "small.h5")
    data.prepare_synthetic(path, lines=600, test_lines=100)
    argv = ["--data", path, "--test-data", data.test_path_for(path), "--out",
            str(tmp_path / "run"), "--block-lines", "120", "--role-seed", "3", "--epochs", "2"]
    for k, v in options.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    cfg = parse_args(argv)
    training.set_determinism(cfg.threads, exact=True)  # as run/job.py sets it on every rank
    ds = data.resolve(cfg)
    model = models.build(cfg.model, ds.line_shape, ds.n_classes, cfg.seed, ds.task)
    stand_in = Ranks(cfg, ds, lie)
    meta = {"data": path, "line_shape": list(ds.line_shape), "n_classes": ds.n_classes,
            "task": ds.task.to_meta(), "world_size": ranks}
    manager = Manager(OneRank(ranks), cfg, ds, model, cfg.out, mpi.Waiter("sleep"), meta,
                      exchange=stand_in)
    summary = manager.run()
    return manager, stand_in, summary, records.load(os.path.join(cfg.out, "ledger.jsonl")).records


def equals_single_process(out) -> dict:
    """The run in `out` ends with single_process.py's model, bit for bit; returns its config."""
    import single_process
    cfg = json.load(open(os.path.join(out, "config.json")))
    single_process.assert_matches(
        pathlib.Path(out), cfg["data"], cfg,
        [json.loads(line) for line in open(os.path.join(out, "ledger.jsonl"))])
    return cfg


def test_a_run_of_the_manager_with_ranks_in_this_process_is_single_process_training(tmp_path):
    """step, iteration and apply without mpiexec: every iteration's plan goes to the stand-in
    ranks, the unchecked answers fold in as they stream, every check agrees, and the final
    model is tests/single_process.py's, bit for bit."""
    manager, ranks, summary, ledger = in_process_run(tmp_path)
    assert summary["status"] == "complete" and summary["iterations"] == 10
    assert summary["checks"] == {"agree": 10, "fake": 0, "dispute": 0}
    assert summary["removed"] == [] and len(ledger) == 10 == len(ranks.plans)
    assert all(sum(e - s for s, e in rec.applied) == 120 for rec in ledger)
    assert ranks.stopped and set(ranks.stopped) == {1, 2, 3, 4}  # told at the end
    equals_single_process(manager.out)


def test_a_model_that_returns_a_model_output_trains_as_single_process_training(tmp_path):
    """A model returning what a transformers model returns (tests/helpers/usermodels.py's
    Output: a dict of logits and hidden states, also attributes): the ranks, the manager's
    checks and figures take its logits, and single-process training gives the same bits."""
    manager, _, summary, _ = in_process_run(tmp_path, model="usermodels:logits_output")
    assert summary["checks"] == {"agree": 10, "fake": 0, "dispute": 0}
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_loss"] > 0
    cfg = equals_single_process(manager.out)
    assert cfg["task"]["output_key"] is None and cfg["model"] == "usermodels:logits_output"


def test_a_lying_rank_in_this_process_is_removed_and_its_lie_never_applied(tmp_path):
    """A rank that scales its gradient whenever it answers: the checks find it, the manager
    removes it and tells it to stop, and no record applies its fragment."""
    liar = 2
    manager, ranks, summary, ledger = in_process_run(
        tmp_path, lie=lambda rank, it, g: g * 3 if rank == liar else g)
    assert [x["rank"] for x in summary["removed"]] == [liar]
    caught = next(rec for rec in ledger if rec.removed)
    assert caught.removed == (liar,) and liar in ranks.stopped
    assert all(liar not in rec.applied_from for rec in ledger)
    assert all(liar not in (a.rank for a in p.assignments)
               for p in ranks.plans[caught.iteration + 1:])
    assert summary["checks"]["dispute"] == 0 and summary["checks"]["fake"] >= 1


def test_a_format_3_run_folds_in_rules_fold_order_as_the_replay_does(tmp_path, monkeypatch):
    """A run resumed in ledger format 3 sums in arrival order: the unchecked answers as they
    stream, then the checked ones (rules.fold_order, which the replay calls too). Its final
    model is single-process training's, summed in that order, bit for bit."""
    monkeypatch.setattr(records, "FORMAT", 3)  # what a resume of a format 3 run continues in
    manager, ranks, summary, ledger = in_process_run(tmp_path)
    assert {rec.format for rec in ledger} == {3} and manager.folding and not manager.keyed
    assert summary["checks"] == {"agree": 10, "fake": 0, "dispute": 0}
    equals_single_process(manager.out)
