"""The protocol rules that the manager, the audit, the simulator, the report and resume share."""
import pytest

from podlt_mpi.core import ledger, records, rules
from podlt_mpi.core.rules import Outcome


@pytest.mark.parametrize("controls, checks, active, workers8", [
    (2, 1, 3, 5), (2, 2, 6, 3), (3, 1, 4, 4), (0, 1, 1, 7), (0, 3, 1, 7)])
def test_how_many_ranks(controls, checks, active, workers8):
    assert rules.min_active(controls, checks) == active
    assert rules.workers(8, controls, checks) == workers8


FRAGMENTS = [(1, (0, 10)), (2, (10, 20)), (3, (20, 30))]


def test_honest_iterations_apply_every_fragment_as_sent():
    out = rules.applied(FRAGMENTS, [Outcome(2, "agree", (), (4, 5))])
    assert out == [((0, 10), 1), ((10, 20), 2), ((20, 30), 3)]


def test_a_fake_checked_worker_is_replaced_by_the_first_vote_not_found_fake():
    out = rules.applied(FRAGMENTS, [Outcome(2, "fake", (2, 4), (4, 5, 6))])
    assert out[1] == ((10, 20), 5)  # control 4 was fake too: control 5 stands in
    settled = rules.applied(FRAGMENTS, [Outcome(2, "fake", (2, 4, 5), (4, 5, 6, 7))])
    assert settled[1] == ((10, 20), 6)  # a dispute settled by rechecks 6 and 7: the first


def test_a_dispute_drops_its_fragment_and_a_rank_caught_elsewhere_loses_its_own():
    out = rules.applied(FRAGMENTS, [Outcome(2, "dispute", (), (4, 5))])
    assert [r for _, r in out] == [1, 3]
    out = rules.applied(FRAGMENTS, [Outcome(2, "fake", (3,), (4, 5, 3, 6))])
    assert out == [((0, 10), 1), ((10, 20), 2)]  # 3 lied on a recheck of 2's fragment


def test_folded_fragments_stay_applied_when_their_rank_is_caught_on_a_recheck():
    # format 3: 3's fragment went into the update as it arrived, before 3 lied on a recheck
    out = rules.applied(FRAGMENTS, [Outcome(2, "fake", (3,), (4, 5, 3, 6))], folded=True)
    assert out == [((0, 10), 1), ((10, 20), 2), ((20, 30), 3)]
    # the checked fragment's rules do not change: a dispute drops it, a fake is replaced
    out = rules.applied(FRAGMENTS, [Outcome(2, "dispute", (), (4, 5))], folded=True)
    assert [r for _, r in out] == [1, 3]
    out = rules.applied(FRAGMENTS, [Outcome(2, "fake", (2,), (4, 5))], folded=True)
    assert out[1] == ((10, 20), 4)


def test_the_fold_order_is_unchecked_in_line_order_then_checked_in_line_order():
    applied = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]
    assert rules.fold_order(applied, [(30, 40), (10, 20)]) == [0, 2, 4, 1, 3]
    assert rules.fold_order(applied, []) == [0, 1, 2, 3, 4]
    assert rules.fold_order(applied, [[0, 10]]) == [1, 2, 3, 4, 0]  # lines as the ledger's lists
    # a dropped checked fragment (a dispute) is simply not among the applied
    assert rules.fold_order([(0, 10), (20, 30)], [(10, 20)]) == [0, 1]


def test_the_role_of_a_removed_rank():
    assert rules.removed_role(2, {2}, (4, 5)) == "worker"
    assert rules.removed_role(4, {2}, (4, 5)) == "control"
    assert rules.removed_role(7, {2}, (4, 5)) == "recheck"


def minimal(i, **fields) -> records.Record:
    """A record of iteration i without checks, enough for the rules on checkpoints."""
    return records.Record(iteration=i, epoch=0, block=i, lines=(0, 10), data_digest="d",
                          model_before="before", assignments=(), check=None, applied=(),
                          applied_from=(), removed=(), loss=None, model_after="after",
                          roles="c", **fields)


def chain(n):
    raw, prev = [], ledger.GENESIS
    for i in range(n):
        rec = ledger.seal(minimal(i, checkpoint="fp" if i == 1 else None).to_json(), prev)
        raw.append(rec)
        prev = rec["hash"]
    return raw


def test_a_checkpoint_is_vouched_for_by_its_record_its_position_and_the_chain():
    raw = chain(4)
    recs, hashes = records.parse(raw), [r["hash"] for r in raw]
    assert rules.unvouched(2, "fp", hashes[1], recs) is None
    assert "does not hold" in rules.unvouched(5, "fp", hashes[1], recs)
    assert "contents differ" in rules.unvouched(2, "other", hashes[1], recs)
    assert "different ledger" in rules.unvouched(2, "fp", hashes[0], recs)
    raw[0]["block"] = 9  # an edit before the checkpoint breaks what vouches for it
    assert "chain is broken at iteration 0" in rules.unvouched(2, "fp", hashes[1],
                                                               records.parse(raw))
    raw[1]["loss"] = "low"  # a record that is not one vouches for nothing
    assert "malformed" in rules.unvouched(2, "fp", hashes[1], records.parse(raw))
