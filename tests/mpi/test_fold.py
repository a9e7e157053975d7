"""The windowed fold over the real transport: rank 0 runs the manager's exchange with a fold of
every worker's answer (no checks), through a window of one receive buffer; the other ranks run
the real worker loop."""
import gc
import weakref

import numpy as np
import pytest
import torch
from mpi4py import MPI

from podlt_mpi.compute import models, training
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout, host
from podlt_mpi.core import digests, schedule
from podlt_mpi.core.config import RunConfig
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages
from podlt_mpi.run import exchange as exchange_module
from podlt_mpi.run import worker

pytestmark = pytest.mark.mpi(min_size=4)

LINE_SHAPE = (6,)


def test_answers_are_folded_in_line_order_through_the_window(monkeypatch):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    model = models.build("mlp", LINE_SHAPE, 3, seed=0)
    layout = Layout(model)
    waiter = mpi.Waiter("sleep", timeout=60)
    if rank == 0:
        monkeypatch.setattr(exchange_module, "WINDOW", 1)
        monkeypatch.setattr(exchange_module, "WINDOW_BYTES", 0)
        exchange = exchange_module.Exchange(comm, waiter, layout.answer_size, seed=5,
                                            rank_timeout=60)
        # the workers in a shuffled order: line order is not rank order
        order = schedule.shuffle(range(1, size), np.random.default_rng(2))
        plan = schedule.plan_iteration(order, 0, 0, 30, np.random.default_rng(3))
        bx = np.random.default_rng(4).random((30, 6), dtype=np.float32)
        by = (np.arange(30) % 3).astype(np.int64)
        line_order = [a.rank for a in sorted(plan.assignments, key=lambda a: a.start)]
        seen, buffers = [], []

        def add(r, answer, loss):
            seen.append((r, id(answer), digests.of_arrays(digests.WRITTEN, answer)))
            buffers.append(weakref.ref(answer))
        gc.disable()  # the buffers must go when the exchange returns, not when a collection runs
        try:
            grads, losses, hashed, _ = exchange(plan, 7, host(layout.state()), bx, by,
                                             range(1, size),
                                             (line_order, line_order, add))
            # nothing holds the window but the exchange's one spare buffer for the next
            assert [id(b) for b in exchange.spare] == [id(r()) for r in buffers[:1]]
            del exchange.spare[:]
            assert all(ref() is None for ref in buffers)
        finally:
            gc.enable()
        exchange.stop(range(1, size))
        exchange.pool.close()
        assert grads == {} and sorted(losses) == sorted(line_order)  # nothing kept whole
        assert [r for r, _, _ in seen] == line_order
        assert len({b for _, b, _ in seen}) == 1  # one buffer, reused for every answer
        for r, _, digest in seen:  # each digest was taken before its buffer was reused
            assert hashed[r].result() == digests.Seal(digest)
        for a in plan.assignments:  # and each is the fragment's own gradient
            s, e = a.start, a.stop
            mine, _ = training.fragment(model, layout, torch.from_numpy(bx[s:e]),
                                        torch.from_numpy(by[s:e]),
                                        messages.fragment_seed(5, 7, s, e))
            assert dict((r, d) for r, _, d in seen)[a.rank] == \
                digests.of_arrays(digests.WRITTEN, host(mine))
    else:
        worker.run(comm, model, layout, LINE_SHAPE, Faker(RunConfig(), rank), waiter)
    comm.Barrier()
