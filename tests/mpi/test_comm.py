"""Communication helpers, run inside an MPI world of at least 4 ranks.

usage:: mpiexec -n 4 python -m mpi4py -m pytest -x --with-mpi --timeout=120 --timeout-method=thread tests/mpi
Every rank runs each test and computes its expected value locally.
"""
import numpy as np
import pytest
from mpi4py import MPI

from podlt_mpi.core import portable
from podlt_mpi.mpi import comm as mpi

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

        reqs = [mpi.irecv(comm, b, r, 8) for r, b in zip(range(1, size), bufs, strict=True)]
        index = {id(r): i for i, r in enumerate(reqs)}

        def done(req):
            i = index[id(req)]
            seen.append((i, bufs[i].copy()))
        mpi.Waiter(mode, timeout).wait(list(reqs), done=done)
        assert sorted(i for i, _ in seen) == list(range(size - 1))
        for i, got in seen:
            np.testing.assert_array_equal(got, np.full(3, i + 1, np.float32))
    else:
        time.sleep(0.05 * (size - rank))  # the last rank answers first
        mpi.Waiter("sleep").wait([mpi.isend(comm, np.full(3, rank, np.float32), 0, 8)])
    comm.Barrier()


def test_waiter_times_out_and_names_the_silent_rank():
    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 0:
        buf = np.empty(1, np.int64)
        req = mpi.irecv(comm, buf, 1, 99)  # rank 1 never sends on tag 99
        with pytest.raises(mpi.RankTimeout, match=r"rank\(s\) \[1\]"):
            mpi.Waiter("sleep", timeout=0.2).wait([req], who=[1])
        req.Cancel()
        req.Wait()
    comm.Barrier()


def test_choose_wait_follows_the_ranks_on_the_node():
    assert mpi.choose_wait(3, "spin") == "spin"
    assert mpi.choose_wait(mpi.cores() + 1, "auto") == "sleep"
    assert mpi.choose_wait(1, "auto") == "spin"


def test_a_checked_receive_refuses_a_message_of_the_wrong_size_and_goes_on():
    """Too long, too short, far too long (a rendezvous send), then right: the first three are
    refused without a byte read into the buffer, and the communicator still works."""
    comm = MPI.COMM_WORLD
    sizes = (11, 9, 2**20, 10)
    if comm.Get_rank() == 1:
        sends = [mpi.isend(comm, np.full(n, 7, np.float32), 0, 21) for n in sizes]
        mpi.Waiter("sleep", 30).wait(sends)
    elif comm.Get_rank() == 0:
        for n in sizes:
            buf = np.zeros(10, np.float32)
            item = mpi.Checked(comm, buf, 1, 21)
            mpi.Waiter("sleep", 30).wait([item])
            if n == 10:
                assert item.bad is None and (buf == 7).all()
            else:
                assert item.bad == f"a message of {4 * n} bytes where 40 belong"
                assert (buf == 0).all()
    comm.Barrier()


def test_start_up_messages_between_rank_0_and_the_others():
    from podlt_mpi.run import startup
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local, on_node = startup.hello(comm, 30)
    assert (local, on_node) == (rank, size)  # one host here
    got = startup.share_inputs(comm, {"cfg": {"seed": 3}, "shape": [1, 28, 28]} if rank == 0
                               else None)
    assert got == {"cfg": {"seed": 3}, "shape": [1, 28, 28]}
    compute = dict.fromkeys(portable.COMPUTE_KEYS, "x")
    processor = {"vendor": "V", "model": f"rank {rank}'s", "flags": "avx2"}
    said = startup.reports(comm, "out of memory" if rank == 2 else None, rank == 3,
                           "cpu", {**compute, "threads": rank}, processor, 30,
                           bytes([rank]) * 32)
    if rank == 0:
        assert [s[:3] for s in said] == [(None, False, "cpu"), (None, False, "cpu"),
                                         ("out of memory", False, "cpu"), (None, True, "cpu")] + \
            [(None, False, "cpu")] * (size - 4)
        # each rank's configuration and processor, as it sent them (text: rank 0's too)
        assert [s[3] for s in said] == [{**compute, "threads": str(r)} for r in range(size)]
        assert [s[4]["model"] for s in said] == [f"rank {r}'s" for r in range(size)]
        assert [s[5] for s in said] == [bytes([r]) * 32 for r in range(size)]  # its key
    assert startup.verdict(comm, 0 if rank == 0 else None) == 0


def test_rank_0_names_a_rank_whose_report_is_malformed_or_missing():
    from podlt_mpi.mpi import messages, tags
    from podlt_mpi.run import startup
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if rank == 1:  # a pickle where a report belongs
        import pickle
        junk = np.frombuffer(pickle.dumps({"x": 1}), np.uint8)
        mpi.Waiter("sleep").wait([mpi.isend(comm, junk, 0, tags.REPORT)])
    elif rank == 2:  # the right size, flags that are none
        mpi.Waiter("sleep").wait([mpi.isend(comm, np.full(messages.REPORT_LEN, 9, np.uint8), 0,
                                            tags.REPORT)])
    elif rank == 0:
        with pytest.raises(startup.Missing) as e:
            startup.reports(comm, None, False, "cpu", dict.fromkeys(portable.COMPUTE_KEYS),
                            portable.processor(), 2)
        assert sorted(e.value.problems) == [1, 2, *range(3, comm.Get_size())]
        assert "bytes where" in e.value.problems[1] and "flags" in e.value.problems[2]
        assert "nothing within 2 s" in e.value.problems[3]
    comm.Barrier()
