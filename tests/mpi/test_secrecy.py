"""Secrecy over the real transport: what a rank receives has the same form whatever its role.

Rank 0 runs the manager's real exchange for one iteration; the other ranks run the real worker
loop and record every message they receive.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from podlt_mpi.compute import models
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import schedule
from podlt_mpi.core.config import RunConfig
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import tags
from podlt_mpi.run import worker

pytestmark = pytest.mark.mpi(min_size=4)

LINE_SHAPE = (6,)


def form(messages):
    """What a rank could learn from the shape of what it got: tags, dtypes, header length."""
    return [(tag, str(a.dtype), a.shape if tag != tags.X else a.shape[1:]) for tag, a in messages]


def test_checked_worker_and_controls_receive_the_same_form(tmp_path_factory):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    model = models.build("mlp", LINE_SHAPE, 3, seed=0)
    waiter = mpi.Waiter("sleep", timeout=60)
    seen = []
    if rank == 0:
        from podlt_mpi.run.exchange import Exchange
        exchange = Exchange(comm, waiter, Layout(model).answer_size, seed=0, rank_timeout=60)
        rng = np.random.default_rng(3)
        plan = schedule.plan_iteration(range(1, size), 2, 0, 30, rng)
        bx = np.random.default_rng(4).random((30, 6), dtype=np.float32)
        by = (np.arange(30) % 3).astype(np.int64)
        grads, _, _ = exchange(plan, 0, host(Layout(model).state()), bx, by, range(1, size))
        exchange.stop(range(1, size))
        info = (plan.checked, list(plan.controls), [r for r in plan.workers if r != plan.checked])
    else:
        worker.run(comm, model, Layout(model), LINE_SHAPE, Faker(RunConfig(), rank), waiter,
                   on_message=lambda tag, a: seen.append((tag, a)))
        info = None
    checked, controls, others = comm.bcast(info)
    forms = comm.gather(form(seen) if rank else None)
    contents = comm.gather([a.tobytes() for t, a in seen if t == tags.X] if rank else None)
    heads = comm.gather([a.tobytes() for t, a in seen if t == tags.HEADER] if rank else None)
    if rank == 0:
        reference = forms[checked]
        for r in controls + others:
            assert forms[r] == reference, (r, forms[r], reference)
        # a header holds only (command, iteration, lines, the fragment's seed): no role, no line
        # numbers; the controls' headers are the checked worker's
        # the group's members, then the work, the weights by the group's broadcast
        assert [t for t, _, _ in reference] == [tags.HEADER, tags.MEMBERS, tags.HEADER,
                                                tags.WEIGHTS, tags.X, tags.Y, tags.HEADER]
        # the controls really did receive the checked worker's lines
        assert all(contents[r] == contents[checked] for r in controls)
        assert all(heads[r] == heads[checked] for r in controls)
        assert all(grads[r].tobytes() == grads[checked].tobytes() for r in controls)
    comm.Barrier()
