"""Secrecy over the real transport: what a rank receives has the same form whatever its role.

Rank 0 runs the manager's real exchange: several iterations with roles from a secret key and a
recheck after each (a dispute's further rank), first with the weights' broadcast, then without;
the other ranks run the real worker loop and record every message they receive, in order.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from podlt_mpi.compute import models
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import roles, schedule
from podlt_mpi.core.config import RunConfig
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages, tags
from podlt_mpi.run import worker

pytestmark = pytest.mark.mpi(min_size=4)

LINE_SHAPE = (6,)
ITERATIONS = 3
LINES = 30  # a multiple of every worker count here: every fragment has the same size


def rounds(seen):
    """A rank's messages cut into rounds, one per header: [(header, [(tag, array)...])...]."""
    out = []
    for tag, a in seen:
        if tag == tags.HEADER:
            out.append((a, []))
        else:
            out[-1][1].append((tag, a))
    return out


def form(rnd):
    """What a rank could learn from the shape of one round: the header's command and line
    count, then the tags, dtypes and shapes, in the order they came."""
    head, msgs = rnd
    return (int(head[0]), int(head[2]), [(t, str(a.dtype), a.shape) for t, a in msgs])


def manager(comm, model, size):
    from podlt_mpi.run.exchange import Exchange
    layout = Layout(model)
    key, active = roles.new_key(), range(1, size)
    done = []
    for broadcast in (True, False):
        exchange = Exchange(comm, mpi.Waiter("sleep", timeout=60), layout.answer_size, seed=0,
                            rank_timeout=60, broadcast=broadcast)
        for it in range(ITERATIONS):
            it += 10 * broadcast
            plan = roles.plan(key, it, active, 2 if size > 5 else 1, 0, LINES)
            bx = np.random.default_rng(it).random((LINES, 6), dtype=np.float32)
            by = (np.arange(LINES) % 3).astype(np.int64)
            weights = host(layout.state()) + it  # each iteration's weights differ
            grads, _, _, _ = exchange(plan, it, weights, bx, by, active)
            # a dispute's recheck: the checked lines again, on a rank drawn from the others
            s, e = plan.fragment_of(plan.checked)
            others = [r for r in active if r != plan.checked and r not in plan.controls]
            again = roles.recheck_order(key, it, 0, others)[0]
            one = schedule.Plan(0, LINES, (), (), None,
                                (schedule.Assignment(again, "recheck", s, e),))
            got, _, _, _ = exchange(one, it, weights, bx, by, active)
            assert got[again].tobytes() == grads[plan.checked].tobytes()
            done.append((broadcast, plan.checked, list(plan.controls), list(plan.workers),
                         again, it))
        exchange.pool.close()
    exchange.stop(active)
    return done


def test_every_role_receives_the_same_messages_in_the_same_sequence():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    model = models.build("mlp", LINE_SHAPE, 3, seed=0)
    seen = []
    if rank == 0:
        info = manager(comm, model, size)
    else:
        worker.run(comm, model, Layout(model), LINE_SHAPE, Faker(RunConfig(), rank),
                   mpi.Waiter("sleep", timeout=60), on_message=lambda t, a: seen.append((t, a)))
        info = None
    info = comm.bcast(info)
    got = comm.gather(rounds(seen) if rank else None)
    if rank:
        comm.Barrier()
        return
    ranks = range(1, size)
    by_iteration = {r: {} for r in ranks}  # rank -> iteration -> its rounds, in order
    for r in ranks:
        for h, msgs in got[r]:
            if int(h[0]) in (messages.WORK, messages.SHARED):
                by_iteration[r].setdefault(int(h[1]), []).append((h, msgs))
    for broadcast, checked, controls, workers, again, it in info:
        command = messages.SHARED if broadcast else messages.WORK
        mine = {r: by_iteration[r][it] for r in ranks}
        forms = {r: form(mine[r][0]) for r in ranks}
        # checked, controls and plain workers: one form, in one order of messages
        assert len(set(map(repr, forms.values()))) == 1, (it, forms)
        reference = forms[checked]
        assert reference[0] == command and reference[1] == LINES // len(workers)
        assert again not in (checked, *controls)
        assert [t for t, _, _ in reference[2]] == [tags.WEIGHTS, tags.X, tags.Y]
        # the controls' headers and lines are the checked worker's: they cannot tell whose
        heads = {r: mine[r][0][0].tobytes() for r in ranks}
        xs = {r: mine[r][0][1][1][1].tobytes() for r in ranks}
        assert all(heads[r] == heads[checked] and xs[r] == xs[checked] for r in controls)
        # the recheck's rank gets an iteration's form, with the checked worker's header again
        assert len(mine[again]) == 2
        assert repr(form(mine[again][1])) == repr(reference)
        assert mine[again][1][0].tobytes() == heads[checked]
        for r in ranks:
            if r == again:
                continue
            if broadcast:  # every active rank takes part in the recheck's broadcast, with no lines
                assert len(mine[r]) == 2
                h, msgs = mine[r][1]
                assert (int(h[0]), int(h[2])) == (messages.SHARED, 0)
                assert [t for t, _ in msgs] == [tags.WEIGHTS]
            else:  # the weights go with the lines: nothing for the others
                assert len(mine[r]) == 1
    comm.Barrier()
