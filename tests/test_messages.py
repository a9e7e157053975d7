"""Secrecy in the message forms: a rank's messages do not depend on its role."""
import numpy as np

from podlt_mpi.core import schedule
from podlt_mpi.mpi import messages


def test_messages_have_the_same_form_for_every_role():
    plan = schedule.plan_iteration(range(1, 8), 2, 1000, 1100, np.random.default_rng(5))
    bx = np.random.default_rng(0).random((100, 4), dtype=np.float32)
    by = np.arange(100, dtype=np.int64) % 3
    w = np.ones(10, np.float32)
    msgs = messages.messages_for_plan(plan, 4, 9, w, bx, by)
    assert set(msgs) == set(range(1, 8))

    def form(m):
        return [(t, a.dtype, a.shape[1:] if a.ndim > 1 else len(a) if t == messages.tags.HEADER
                 else None) for t, a in m]
    forms = {r: form(m) for r, m in msgs.items()}
    assert len({str(f) for f in forms.values()}) == 1
    for r, m in msgs.items():
        header = m[0][1]
        a = [a for a in plan.assignments if a.rank == r][0]
        # nothing about role or position: the seed is a hash of the lines, not the lines
        seed = messages.fragment_seed(9, 4, a.start, a.stop)
        assert header.tolist() == [messages.WORK, 4, a.lines, seed, 0, 0, 0, 0, 0]
    c = plan.checked
    for k in plan.controls:
        assert msgs[k][2][1].tobytes() == msgs[c][2][1].tobytes()
        assert msgs[k][0][1].tobytes() == msgs[c][0][1].tobytes()  # same lines, same draws


def test_shared_weights_leave_the_messages_and_idle_ranks_get_a_header():
    # 3 lines for 5 workers: two workers idle; the weights go by broadcast, not in any message
    plan = schedule.plan_iteration(range(1, 8), 2, 0, 3, np.random.default_rng(5))
    bx, by = np.zeros((3, 4), np.float32), np.arange(3, dtype=np.int64)
    state = (5000, messages.state_digest(np.ones(10, np.float32)))
    msgs = messages.messages_for_plan(plan, 4, 9, None, bx, by, everyone=range(1, 8),
                                      state=state)
    assert set(msgs) == set(range(1, 8))
    busy = {a.rank for a in plan.assignments}
    assert len(busy) == 5  # three workers with a line each and the two controls
    for r, m in msgs.items():
        assert messages.tags.WEIGHTS not in [t for t, _ in m]
        if r in busy:
            assert [t for t, _ in m] == [messages.tags.HEADER, messages.tags.X, messages.tags.Y]
            assert m[0][1][0] == messages.SHARED and m[0][1][2] == 1
        else:
            assert [(t, a.tolist()[:5]) for t, a in m] == [(messages.tags.HEADER,
                                                            [messages.SHARED, 4, 0, 0, 5000])]
        # every SHARED header names the same state, the one the broadcast must bring
        assert m[0][1][5:].tolist() == state[1].tolist()
    head, members = messages.regroup([0, 2, 5])
    assert head[1].tolist()[:4] == [messages.REGROUP, -1, 3, 0]
    assert members[1].tolist() == [0, 2, 5]


def test_the_state_digest_tells_one_changed_value():
    w = np.arange(1000, dtype=np.float32)
    d = messages.state_digest(w)
    w[500] = np.nextafter(w[500], np.float32(1e9))
    assert d.shape == (4,) and d.dtype == np.int64
    assert not np.array_equal(d, messages.state_digest(w))


def test_fragment_seed_depends_on_run_iteration_and_lines_only():
    seeds = {messages.fragment_seed(s, it, a, b)
             for s, it, a, b in [(0, 0, 0, 10), (1, 0, 0, 10), (0, 1, 0, 10), (0, 0, 1, 10),
                                 (0, 0, 0, 11)]}
    assert len(seeds) == 5 and all(0 <= v < 2**63 for v in seeds)
    assert messages.fragment_seed(3, 4, 5, 6) == messages.fragment_seed(3, 4, 5, 6)
