"""Communication helpers, run inside an MPI world of at least 4 ranks.

usage:: mpiexec -n 4 python -m mpi4py -m pytest -x --with-mpi --timeout=120 --timeout-method=thread tests/mpi
Every rank runs each test and computes its expected value locally.
"""
import numpy as np
import pytest
from mpi4py import MPI

from podlt_mpi.dist import comm as mpi

pytestmark = pytest.mark.mpi(min_size=4)


@pytest.fixture(params=["spin", "sleep"])
def waiter(request):
    return mpi.Waiter(request.param, timeout=30)


def test_point_to_point_round_trip(waiter):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        bufs = {r: np.empty(5, np.float32) for r in range(1, size)}
        waiter.wait([mpi.irecv(comm, bufs[r], r, 7) for r in range(1, size)])
        for r in range(1, size):
            np.testing.assert_array_equal(bufs[r], np.full(5, r, np.float32))
    else:
        waiter.wait([mpi.isend(comm, np.full(5, rank, np.float32), 0, 7)])


@pytest.mark.parametrize("mode,timeout", [("spin", None), ("spin", 30), ("sleep", 30)])
def test_done_sees_each_request_once_as_it_completes(mode, timeout):
    """The manager hashes each answer from `done`: it must run once per request, after the
    request's buffer is filled, whichever way the rank waits."""
    import time
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        bufs = [np.zeros(3, np.float32) for _ in range(1, size)]
        seen = []

        def done(i):
            seen.append((i, bufs[i].copy()))
        mpi.Waiter(mode, timeout).wait([mpi.irecv(comm, b, r, 8) for r, b in
                                        zip(range(1, size), bufs, strict=True)], done=done)
        assert sorted(i for i, _ in seen) == list(range(size - 1))
        for i, got in seen:
            np.testing.assert_array_equal(got, np.full(3, i + 1, np.float32))
    else:
        time.sleep(0.05 * (size - rank))  # the last rank answers first
        mpi.Waiter("sleep").wait([mpi.isend(comm, np.full(3, rank, np.float32), 0, 8)])
    mpi.quiet_barrier(comm, mpi.Waiter("sleep"))


def test_fail_together_spreads_one_ranks_error(waiter):
    comm = MPI.COMM_WORLD
    mine = "rank 2 is unhappy" if comm.Get_rank() == 2 else None
    assert mpi.fail_together(comm, mine, waiter) == "rank 2 is unhappy"
    assert mpi.fail_together(comm, None, waiter) is None


def test_waiter_times_out_and_names_the_silent_rank():
    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 0:
        buf = np.empty(1, np.int64)
        req = mpi.irecv(comm, buf, 1, 99)  # rank 1 never sends on tag 99
        with pytest.raises(mpi.RankTimeout, match=r"rank\(s\) \[1\]"):
            mpi.Waiter("sleep", timeout=0.2).wait([req], who=[1])
        req.Cancel()
        req.Wait()
    mpi.quiet_barrier(comm, mpi.Waiter("sleep"))


def test_choose_wait_is_collective_and_consistent():
    comm = MPI.COMM_WORLD
    assert mpi.choose_wait(comm, "spin") == "spin"
    auto = mpi.choose_wait(comm, "auto")
    expected = "sleep" if mpi.local_ranks(comm) > mpi.cores() else "spin"
    assert auto == expected
    assert len(set(comm.allgather(auto))) == 1


def test_bcast_object():
    comm = MPI.COMM_WORLD
    got = mpi.bcast(comm, {"shape": (1, 28, 28)} if comm.Get_rank() == 0 else None)
    assert got == {"shape": (1, 28, 28)}
