"""Schedule: every line covered once, controls placed last, the checked worker uniform."""
import collections

import numpy as np
import pytest

from podlt_mpi.core import schedule


@pytest.mark.parametrize("start,stop,parts", [(0, 1000, 47), (1000, 2000, 48), (0, 7, 7),
                                              (5, 6, 3), (0, 999, 10), (100, 1100, 1)])
def test_fragments_cover_every_line_once_and_differ_by_at_most_one(start, stop, parts):
    frags = schedule.split_lines(start, stop, parts)
    lines = [i for s, e in frags for i in range(s, e)]
    assert lines == list(range(start, stop))
    sizes = [e - s for s, e in frags]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(frags) == min(parts, stop - start)


def test_first_iteration_controls_are_the_last_ranks():
    rng = np.random.default_rng(0)
    plan = schedule.plan_iteration(range(1, 50), 2, 0, 1000, rng)
    assert plan.controls == (48, 49)
    assert set(plan.workers) == set(range(1, 48))
    checked = plan.fragment_of(plan.checked)
    ctl = [(a.start, a.stop) for a in plan.assignments if a.role == "control"]
    assert ctl == [checked, checked]  # both controls get exactly c's fragment
    worker_lines = sorted((a.start, a.stop) for a in plan.assignments if a.role == "worker")
    assert worker_lines == schedule.split_lines(0, 1000, 47)


def test_checked_worker_is_uniform():
    rng = np.random.default_rng(1)
    n, trials = 6, 12000
    seen = collections.Counter(schedule.plan_iteration(range(1, n + 3), 2, 0, 100, rng).checked
                               for _ in range(trials))
    assert set(seen) == set(range(1, n + 1))
    expected = trials / n
    chi2 = sum((seen[r] - expected) ** 2 / expected for r in range(1, n + 1))
    assert chi2 < 20.5  # p ~ 0.001 for 5 degrees of freedom


def test_shuffle_puts_every_rank_in_the_control_seat():
    rng = np.random.default_rng(2)
    seats = collections.Counter()
    for _ in range(3000):
        plan = schedule.plan_iteration(schedule.shuffle(range(1, 8), rng), 2, 0, 100, rng)
        seats.update(plan.controls)
    assert set(seats) == set(range(1, 8))
    assert min(seats.values()) > 0.7 * max(seats.values())


def test_no_controls_means_plain_data_parallel():
    plan = schedule.plan_iteration([3, 1, 2], 0, 0, 10, np.random.default_rng(0))
    assert plan.checked is None and plan.controls == ()
    assert all(a.role == "worker" for a in plan.assignments)


def test_short_last_block_gives_no_empty_fragment():
    plan = schedule.plan_iteration(range(1, 12), 2, 995, 1000, np.random.default_rng(0))
    assert len(plan.workers) == 5
    assert all(a.stop > a.start for a in plan.assignments)
    assert plan.checked in plan.workers


def test_blocks():
    assert schedule.blocks(2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]


def test_several_checks_per_iteration_have_their_own_controls():
    rng = np.random.default_rng(5)
    plan = schedule.plan_iteration(range(1, 12), 2, 0, 70, rng, checks=3)
    assert len(plan.checks) == 3 and len({c for c, _ in plan.checks}) == 3
    seats = [r for _, ctrl in plan.checks for r in ctrl]
    assert sorted(seats) == sorted(plan.controls) == list(range(6, 12))  # the last 3*2 ranks
    for c, ctrl in plan.checks:
        assert c in plan.workers
        lines = plan.fragment_of(c)
        got = [(a.start, a.stop) for a in plan.assignments if a.role == "control" and a.rank in ctrl]
        assert got == [lines] * 2
    # one check draws exactly as before: the same schedule for the same seed
    a = schedule.plan_iteration(range(1, 8), 2, 0, 50, np.random.default_rng(1))
    b = schedule.plan_iteration(range(1, 8), 2, 0, 50, np.random.default_rng(1), checks=1)
    assert a == b and a.checks == ((a.checked, a.controls),)


def test_shuffled_blocks_visit_every_block_once_per_epoch_in_a_seeded_order():
    spans = schedule.blocks(1050, 100)  # 11 blocks, the last one short
    run = list(schedule.run_blocks(1050, 100, 3, shuffle=5))
    assert [it for it, *_ in run] == list(range(33))
    orders = []
    for epoch in range(3):
        rows = [r for r in run if r[1] == epoch]
        assert sorted(b for _, _, b, _, _ in rows) == list(range(11))
        assert all((s, e) == spans[b] for _, _, b, s, e in rows)  # contiguous, as in the file
        orders.append([b for _, _, b, _, _ in rows])
    assert orders[0] != orders[1] and orders[0] != list(range(11))
    assert run == list(schedule.run_blocks(1050, 100, 3, shuffle=5))
    assert run != list(schedule.run_blocks(1050, 100, 3, shuffle=6))
    # file order without a seed; --blocks cuts the same sequence short
    assert [b for _, _, b, _, _ in schedule.run_blocks(1050, 100, 1)] == list(range(11))
    assert list(schedule.run_blocks(1050, 100, 3, limit=15, shuffle=5)) == run[:15]


def test_runs_from_before_the_option_keep_file_order():
    from podlt_mpi.core.config import RunConfig, saved_options
    assert RunConfig().shuffle_blocks is True
    old = RunConfig(**saved_options({"seed": 3, "epochs": 2}))
    assert schedule.shuffle_seed(old) is None
    assert schedule.shuffle_seed(RunConfig(**saved_options({"seed": 3, "shuffle_blocks": True}))) == 3
