"""Secret roles (core/roles.py): drawn from the manager's key alone, recomputable from it."""
import json

import pytest

from podlt_mpi.core import roles


def test_keys_come_from_the_operating_system_and_the_seed_only_when_asked():
    assert len(roles.new_key()) == roles.KEY_BYTES
    assert roles.new_key() != roles.new_key()
    assert roles.key_from_seed(3) == roles.key_from_seed(3) != roles.key_from_seed(4)
    key = roles.new_key()
    assert roles.commitment(key) == roles.commitment(key) != roles.commitment(roles.new_key())
    assert key.hex() not in roles.commitment(key)


def who(key, it, active=range(1, 11)):
    plan = roles.plan(key, it, active, 2, 0, 100)
    return plan.checked, plan.controls


def test_the_same_key_draws_the_same_roles_and_another_key_others():
    a, b = roles.new_key(), roles.new_key()
    assert [who(a, it) for it in range(50)] == [who(a, it) for it in range(50)]
    same = sum(who(a, it) == who(b, it) for it in range(50))
    assert same <= 5  # 1 in 10 x 9 x 8 / 2 = 360 per iteration by chance


def test_every_rank_is_checked_and_controls_from_the_first_iteration_on():
    # the first iteration's controls used to be the last ranks: anyone knew them
    firsts = [who(roles.new_key(), 0) for _ in range(300)]
    assert {c for c, _ in firsts} == set(range(1, 11))
    assert {r for _, ctrl in firsts for r in ctrl} == set(range(1, 11))
    # and iterations are independent draws: the roles of one tell nothing of the next
    key = roles.new_key()
    checked = [who(key, it)[0] for it in range(2000)]
    assert all(150 < checked.count(r) < 260 for r in range(1, 11))  # 200 expected each
    after = [checked[i + 1] for i in range(1999) if checked[i] == 1]
    assert after.count(1) < len(after) / 4


def test_the_plan_covers_the_active_ranks_only_and_rechecks_come_from_their_own_stream():
    key = roles.new_key()
    plan = roles.plan(key, 7, [2, 5, 9, 11, 12], 2, 10, 40)
    assert {a.rank for a in plan.assignments} == {2, 5, 9, 11, 12}
    assert sum(a.lines for a in plan.assignments if a.role == "worker") == 30
    order = roles.recheck_order(key, 7, 0, [12, 2, 9])
    assert sorted(order) == [2, 9, 12] and order == roles.recheck_order(key, 7, 0, [2, 9, 12])
    assert len({tuple(roles.recheck_order(key, 7, i, range(1, 9))) for i in range(4)}) > 1


def test_revealed_keys_must_open_their_commitments():
    key = roles.new_key()
    good = {"keys": [{"commitment": roles.commitment(key), "key": key.hex()}]}
    assert roles.read_revealed(json.loads(json.dumps(good))) == {roles.commitment(key): key}
    other = roles.new_key()
    with pytest.raises(ValueError, match="does not open its commitment"):
        roles.read_revealed({"keys": [{"commitment": roles.commitment(key), "key": other.hex()}]})
    for bad in ({}, {"keys": [1]}, {"keys": [{"commitment": "c", "key": "00"}]}):
        with pytest.raises(ValueError):
            roles.read_revealed(bad)
