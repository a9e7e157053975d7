"""The ranks' reduction end to end (--reduce ranks: run/reduce.py, run/aggregate.py): honest runs
are the star's bits and single-process training's, and an owned rank that lies as an aggregator
or a sender (tests/adversaries/aggregate.py, at the message level and in a patched worker) is
removed, or its lie kept out of every sum, with no honest rank removed and the audit passing."""
import os
import re

import pytest
import single_process
from jobs import ROOT, read_json, read_jsonl, run_job

from podlt_mpi.core import reduction, roles

pytestmark = pytest.mark.slow
# the first tier runs the ranks' reduction (issue 29) honest and with one lying aggregator
ADVERSARY = os.path.join(ROOT, "tests", "adversaries", "aggregate.py")
PATH = [os.path.join(ROOT, "tests", "adversaries")]
WORLD = 6
LIAR = 5


def audit(out, **kw):
    from podlt_mpi.tools.audit import Audit
    return Audit(str(out), **kw).run(sample=None)


def reductions(out) -> list:
    return [rec.get("reduction") for rec in read_jsonl(out / "ledger.jsonl")]


# full tier: the first tier runs the reduction end to end with a lying aggregator (below),
# against single-process training and the audit
@pytest.mark.full
@pytest.mark.parametrize("model", ["mlp", "usermodels:combined"])
def test_an_honest_reduction_gives_the_star_s_bits_and_single_process_training(
        model, mpi, job_args, small_data, tmp_path):
    """Every record's weights are the star's; each names a permutation of the active ranks as
    its aggregators and two challenged slices; the manager takes in less than the star's; the
    model equals single-process training's; the audit replays every slice's sum. `combined`:
    a frozen layer, BatchNorm (float buffers and a counter in the answer), dropout and an
    unused branch."""
    helpers = [os.path.join(ROOT, "tests", "helpers")]
    for how in ("star", "ranks"):
        r = run_job(WORLD, job_args(out=how, blocks=5, reduce=how, model=model), path=helpers)
        assert r.returncode == 0, r.stdout + r.stderr
    star, ranks = (read_jsonl(tmp_path / h / "ledger.jsonl") for h in ("star", "ranks"))
    assert [x["model_after"] for x in star] == [x["model_after"] for x in ranks]
    assert all("reduction" not in x for x in star)
    for rec in ranks:
        red = rec["reduction"]
        assert red["slices"] == WORLD - 1 and sorted(red["aggregators"]) == rec["active"]
        assert len(red["challenged"]) == 2 and red["fetched"] == red["refused"] == []
        assert rec["looks"] == []  # honest answers: inside every slice's look
        # the ledger's digest of an answer is its commitment, not the hash of its bytes
        assert all(len(a["grad_digest"]) == 64 for a in rec["assignments"])
    assert star[0]["assignments"][0]["grad_digest"] != ranks[0]["assignments"][0]["grad_digest"]
    into = {h: [m["bytes_in"] for m in read_jsonl(tmp_path / h / "metrics.jsonl")]
            for h in ("star", "ranks")}
    assert all(b < a for a, b in zip(into["star"], into["ranks"])), into
    cfg = read_json(tmp_path / "ranks" / "config.json")
    assert cfg["reduce"] == "ranks"
    single_process.assert_matches(tmp_path / "ranks", small_data["train"], cfg, ranks)
    rep = audit(tmp_path / "ranks", allow=[("--model", model)] if ":" in model else ())
    assert rep["passed"], rep["problems"]
    assert rep["replay"]["verified"] == len(ranks) and rep["fake_contributions"] == []


@pytest.mark.full  # auto's rule is test_reduction.py's, in the first tier
def test_auto_keeps_the_star_where_ranks_sleep_or_in_tolerance_mode(mpi, job_args, tmp_path):
    r = run_job(WORLD, job_args(out="auto", blocks=1, reduce="auto"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(tmp_path / "auto" / "config.json")["reduce"] == reduction.choose(
        "auto", True, False, WORLD) == "star"  # 6 ranks on 2 cores sleep
    r = run_job(WORLD, job_args(out="tol", blocks=1, reduce="ranks", compare="tolerance"))
    assert r.returncode == 2 and "--reduce ranks" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("lie,why", [
    ("wrong-sum", "differs from the sum of its own inputs"),
    pytest.param("drop-input", "differs from the sum of its own inputs", marks=pytest.mark.full),
    pytest.param("double-input", "differs from the sum of its own inputs", marks=pytest.mark.full),
    pytest.param("bad-proof", "do not open under their roots", marks=pytest.mark.full),
    pytest.param("withhold", "nothing within", marks=pytest.mark.full),
])
def test_a_lying_aggregator_is_removed_and_no_lie_reaches_the_model(lie, why, mpi, job_args,
                                                                    small_data, tmp_path):
    """Caught at the first challenge of its slice (or its deadline): removed alone, the
    manager's own sum of the slice applied in its place, so the model is single-process
    training's on the applied fragments; the audit passes."""
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=8, reduce="ranks", rank_timeout=10), path=PATH,
                adversary=(LIAR, ADVERSARY), env={"LIE": lie})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    s = read_json(out / "summary.json")
    assert [x["rank"] for x in s["removed"]] == [LIAR] and s["status"] == "complete"
    (when,) = [i for i, red in enumerate(reductions(out)) if red and red["refused"]]
    red = reductions(out)[when]
    assert [r for r, _ in red["refused"]] == [LIAR] and why in red["refused"][0][1]
    if lie != "withhold":  # its slice was challenged, and every earlier one it summed was not
        assert red["aggregators"].index(LIAR) in red["challenged"]
    ledger = read_jsonl(out / "ledger.jsonl")
    if when == 0:  # no unchallenged lie applied before it was caught
        single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                      ledger)
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    assert {f["rank"] for f in rep["fake_contributions"]} <= {LIAR}


@pytest.mark.full
def test_a_lie_no_challenge_saw_is_applied_and_the_audit_names_its_aggregator(mpi, job_args,
                                                                            tmp_path):
    """From an iteration whose challenges miss its slice on, the liar's sums are wrong; those of slices nobody challenged are
    applied, as unchecked answers are, until a challenge catches it; the audit's replay of
    each slice's sum attributes them to it."""
    key, active = roles.key_from_seed(0), range(1, WORLD)  # job_args' --role-seed 0
    first = next(i for i in range(1, 50) if reduction.aggregators(key, i, active).index(LIAR)
                 not in reduction.challenged(key, i, WORLD - 1, 2))
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=first + 10, reduce="ranks"), path=PATH,
                adversary=(LIAR, ADVERSARY), env={"LIE": "wrong-sum", "LIE_FROM": str(first)})
    assert r.returncode == 0, r.stdout + r.stderr
    reds = reductions(out)
    caught = next(i for i, red in enumerate(reds) if red["refused"])
    unseen = [i for i in range(first, caught)
              if reds[i]["aggregators"].index(LIAR) not in reds[i]["challenged"]]
    assert unseen, "the liar was caught at its first lie: pick another seed for this test"
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    named = [f for f in rep["fake_contributions"] if f.get("what") == "sum"]
    assert named and {f["rank"] for f in named} == {LIAR}
    assert all(f["removed_at"] == caught and f["iteration"] in unseen for f in named)


@pytest.mark.full
def test_an_equivocating_sender_s_slices_enter_no_sum(mpi, job_args, small_data, tmp_path):
    """It sends the aggregators slices other than those it committed to, under no valid
    signature: each aggregator flags them, the manager fetches the true ones from it and sums
    those slices itself. Nothing tells such a sender from an aggregator that makes up a slice
    against it, so nobody is removed, and the record names both; the model is single-process
    training's, the audit passes."""
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=6, reduce="ranks"), path=PATH,
                adversary=(LIAR, ADVERSARY), env={"LIE": "equivocate"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(out / "summary.json")["removed"] == []
    flagged = [(i, x) for i, red in enumerate(reductions(out)) for x in red["unattributed"]]
    assert flagged and all(x[0] == LIAR for _, x in flagged)
    for i, (sender, aggregator, j) in flagged:
        red = reductions(out)[i]
        assert red["aggregators"][j] == aggregator and j in red["fetched"]
    single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                  read_jsonl(out / "ledger.jsonl"))
    rep = audit(out)
    assert rep["passed"], rep["problems"]


@pytest.mark.full
def test_a_sender_that_signs_slices_it_did_not_commit_to_is_removed_on_its_own_word(
        mpi, job_args, small_data, tmp_path):
    """It signs and sends the aggregators slices other than those it committed to: each
    aggregator flags them, the manager asks for the flagged slices' inputs, and the sender's
    signature under a slice that does not open under its committed root removes it in the
    first iteration it sends one, as a sender; no aggregator is blamed, nothing is left unattributed, and
    the model is single-process training's (its fragment recomputed by the manager)."""
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=5, reduce="ranks"), path=PATH,
                adversary=(LIAR, ADVERSARY), env={"LIE": "equivocate-signed"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adversary: lied at iteration 0" in r.stderr
    ledger = read_jsonl(out / "ledger.jsonl")
    first = next(i for i, rec in enumerate(ledger)  # its first iteration as a leaf's sender
                 if LIAR in rec["applied_from"])
    s = read_json(out / "summary.json")
    assert [(x["rank"], x["iteration"], x["role"]) for x in s["removed"]] == \
        [(LIAR, first, "sender")]
    red = reductions(out)[first]
    assert [r for r, _ in red["refused"]] == [LIAR] and "signed" in red["refused"][0][1]
    assert red["unattributed"] == [] and red["fetched"]
    single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                  read_jsonl(out / "ledger.jsonl"))
    rep = audit(out)
    assert rep["passed"], rep["problems"]


@pytest.mark.full
@pytest.mark.parametrize("lie", ["relay-alter", "relay-withhold"])
def test_a_rank_that_fails_the_table_s_relay_costs_the_manager_one_table_per_rank_below_it(
        lie, mpi, job_args, small_data, tmp_path):
    """Rank 1 relays the table to the ranks below it (reduce_messages.relay) altered, so that
    the header's digest no longer names it, or not at all: each of them asks the manager and
    takes part as if nothing had happened. Who failed whom cannot be told, so nobody is
    removed; no slice is fetched, and the model is single-process training's."""
    from podlt_mpi.mpi import reduce_messages as rm
    relay = 1
    below = rm.relay(tuple(range(1, WORLD)), relay)[1]
    assert below  # the tree of 5 ranks has rank 1 relay to two
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=3, reduce="ranks"), path=PATH,
                adversary=(relay, ADVERSARY), env={"LIE": lie})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adversary: lied at iteration 0" in r.stderr
    asked = re.findall(r"iteration (\d+): rank (\d+) asked for the table directly", r.stderr)
    assert sorted((int(i), int(k)) for i, k in asked) == [(i, k) for i in range(3)
                                                           for k in below]
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["unsolicited_messages"] == {}
    assert all(red["fetched"] == [] and red["refused"] == [] for red in reductions(out))
    single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                  read_jsonl(out / "ledger.jsonl"))


@pytest.mark.full
def test_a_run_continued_under_the_reduction_is_byte_identical(mpi, job_args, tmp_path):
    """Three iterations, then three more by --resume, give the bytes of six in one go, record
    by record, and the continued run audits."""
    r = run_job(WORLD, job_args(out="once", blocks=6, reduce="ranks"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_job(WORLD, job_args(out="twice", blocks=3, reduce="ranks"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_job(WORLD, ["--resume", str(tmp_path / "twice"), "--blocks", "6"])
    assert r.returncode == 0, r.stdout + r.stderr
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert (once / "model_final.pt").read_bytes() == (twice / "model_final.pt").read_bytes()
    a, b = (read_jsonl(x / "ledger.jsonl") for x in (once, twice))
    assert [x["model_after"] for x in a] == [x["model_after"] for x in b]
    assert len(b) == 6 and all(x["reduction"] for x in b)
    rep = audit(twice)
    assert rep["passed"], rep["problems"]


# full tier: the first tier has the look (test_e2e_lies, under the star) and the reduction
# with a lying rank (the aggregator above)
@pytest.mark.full
@pytest.mark.parametrize("lie", ["1000x", "nan"])
def test_the_look_holds_back_an_unchecked_answer_outside_it_and_removes_its_rank(
        lie, mpi, job_args, small_data, tmp_path):
    """An unchecked worker commits to 1000 times its honest answer, or to NaN, and sends its
    slices as committed (they open): an aggregator's look at its slice (the slice's median,
    looks.slice_outliers) flags it, the manager asks for the slice's inputs, looks itself,
    recomputes the fragment, finds it differs, removes the rank and runs the iteration's
    reduction again with its own answer in the fake's place. No honest rank is removed, the
    model is single-process training's, and the audit confirms the look's verdict."""
    from staging import first_plan
    plan = first_plan(WORLD)
    liar = next(r for r in plan.workers if r != plan.checked)
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=3, reduce="ranks"), path=PATH,
                adversary=(liar, ADVERSARY), env={"LIE": lie})
    assert r.returncode == 0, r.stdout + r.stderr
    first = read_jsonl(out / "ledger.jsonl")[0]
    assert first["removed"] == [liar]
    (look,) = first["looks"]
    assert look["rank"] == liar and look["verdict"] == "differs"
    assert ("non-finite" if lie == "nan" else "beyond") in look["why"]
    assert [a["lines"] for a in first["assignments"] if a["role"] == "manager"] == [look["lines"]]
    assert first["applied_from"][first["applied"].index(look["lines"])] == 0
    assert first["reduction"]["refused"] == []
    assert read_json(out / "summary.json")["removed"] == [
        {"rank": liar, "iteration": 0, "role": "worker"}]
    single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                  read_jsonl(out / "ledger.jsonl"))
    rep = audit(out)
    assert rep["passed"], rep["problems"]
    assert rep["replay"]["verified"] == 3


@pytest.mark.full
def test_a_malformed_commitment_is_refused_and_the_manager_sends_that_fragment_s_slices(
        mpi, job_args, small_data, tmp_path):
    """An unchecked worker's commitment one value short: refused, the rank removed, and the
    manager computes its fragment and is that leaf's sender; the model is single-process
    training's."""
    from staging import first_plan
    plan = first_plan(WORLD)
    liar = next(r for r in plan.workers if r != plan.checked)
    out = tmp_path / "run"
    r = run_job(WORLD, job_args(blocks=3, reduce="ranks"), path=PATH,
                adversary=(liar, os.path.join(ROOT, "tests", "adversaries", "lie.py")),
                env={"LIE": "short"})
    assert r.returncode == 0, r.stdout + r.stderr
    first = read_jsonl(out / "ledger.jsonl")[0]
    assert first["removed"] == [liar]
    (look,) = first["looks"]
    assert look["rank"] == liar and look["verdict"] == "malformed"
    assert [a["lines"] for a in first["assignments"] if a["role"] == "manager"] == [look["lines"]]
    assert first["applied_from"][first["applied"].index(look["lines"])] == 0
    assert first["reduction"]["refused"] == [] and first["reduction"]["fetched"] == []
    single_process.assert_matches(out, small_data["train"], read_json(out / "config.json"),
                                  read_jsonl(out / "ledger.jsonl"))
    rep = audit(out)
    assert rep["passed"], rep["problems"]
