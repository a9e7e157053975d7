"""The only module that imports mpi4py: message tags, waiting, and failing together.

How ranks wait is a first-order cost here. With more ranks than cores (a laptop, a shared node,
our 2-core CI machine) a rank that spins in MPI_Wait steals the core from a rank that computes,
so idle ranks poll with MPI_Testall and sleep, backing off to `SLEEP_MAX`. With one rank per core
(a real cluster) they spin in MPI_Waitall for the lowest latency. `auto` picks from the ranks on
this node vs the cores this process may use.
"""
from __future__ import annotations

import os
import sys
import time

from mpi4py import MPI

SLEEP_MIN = 50e-6
SLEEP_MAX = 2e-3  # measured here: 0.2 ms sleeps gave 2.7k samples/s at N=50 on 2 cores, 2 ms 7.4k


class RankTimeout(RuntimeError):
    pass


class PeerLost(RuntimeError):
    """A rank stopped answering (died or hangs): the job must end instead of waiting forever."""


def world():
    return MPI.COMM_WORLD


def library() -> str:
    """The MPI library's name and version, e.g. 'MPICH Version: 5.0.2'."""
    first = MPI.Get_library_version().strip().split("\n", 1)[0].split(",", 1)[0]
    return " ".join(first.split())


def cuda_support() -> bool | None:
    """What the loaded MPI library says of CUDA buffers: MPIX_Query_cuda_support() (Open MPI,
    MPICH), or None where it has no such call. Only a hint: Open MPI over UCX answers 0 even
    where UCX moves device memory, so a 0 is worth a warning, not a refusal."""
    import ctypes
    try:  # the libmpi that mpi4py loaded, not any other on the path
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libmpi." in line}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        if query is not None:
            return bool(query())
    return None


def node_position(comm) -> tuple[int, int]:
    """(this rank's index among the job's ranks on its node, how many there are). Collective."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    where = node.Get_rank(), node.Get_size()
    node.Free()
    return where


def local_ranks(comm) -> int:
    """How many ranks of this job share this node. Collective."""
    return node_position(comm)[1]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose_wait(comm, requested: str) -> str:
    """spin or sleep. Collective: every rank must call it (it splits the communicator)."""
    on_node = local_ranks(comm)
    if requested != "auto":
        return requested
    return "sleep" if on_node > cores() else "spin"


class Waiter:
    """Waits for requests by spinning or by polling with backoff, with an optional deadline."""

    def __init__(self, mode: str, timeout: float | None = None):
        self.mode, self.timeout = mode, timeout

    def wait(self, reqs, who=None, done=None) -> None:
        """Complete all requests. `who` names each request's peer for the timeout message;
        `done(i)`, if given, is called for each request i as soon as it completes (the manager
        hashes an answer while the others still arrive) and may return more (request, peer)
        pairs to wait for, numbered on from the last (a window of receive buffers)."""
        reqs = list(reqs)  # completed requests become null in place
        if self.mode == "spin" and self.timeout is None and done is None:
            MPI.Request.Waitall(reqs)
            return
        who = list(who) if who else [None] * len(reqs)
        start, delay, left = time.monotonic(), SLEEP_MIN, len(reqs)
        while left:
            if done is None:
                finished = range(left) if MPI.Request.Testall(reqs) else ()
            elif self.mode == "spin" and self.timeout is None:
                finished = MPI.Request.Waitsome(reqs) or ()
            else:
                finished = MPI.Request.Testsome(reqs) or ()
            for i in finished:
                left -= 1
                for req, peer in (done(i) if done is not None else None) or ():
                    reqs.append(req)
                    who.append(peer)
                    left += 1
            if finished:
                delay = SLEEP_MIN
                continue
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                # Testall completes all or nothing: ask each request to find the late peers.
                late = sorted({w for r, w in zip(reqs, who, strict=True)
                               if w is not None and not r.Test()})
                raise RankTimeout(f"no answer within {self.timeout:g} s"
                                  + (f" from rank(s) {late}" if late else ""))
            if self.mode == "sleep":
                time.sleep(delay)
                delay = min(2 * delay, SLEEP_MAX)


def isend(comm, array, dest: int, tag: int):
    return comm.Isend(array, dest=dest, tag=tag)


def irecv(comm, buffer, source: int, tag: int):
    return comm.Irecv(buffer, source=source, tag=tag)


def ibcast(group, buffer, root: int = 0):
    """A non-blocking broadcast over `group`, waited on like any other request."""
    return group.Ibcast(buffer, root=root)


def subgroup(comm, members, old=None):
    """A communicator of the world ranks `members` (in that order: the first is its rank 0),
    replacing `old`. Collective over the members only (MPI_Comm_create_group): ranks outside,
    removed ones that have already left their loop included, take no part."""
    new = comm.Create_group(comm.Get_group().Incl([int(m) for m in members]))
    if old is not None:
        old.Free()
    return new


def quiet_barrier(comm, waiter: Waiter) -> None:
    """A barrier whose waiting ranks sleep, for when one rank does long work (data generation)."""
    waiter.wait([comm.Ibarrier()])


def fail_together(comm, error: str | None, waiter: Waiter) -> str | None:
    """Every rank calls this at the same point; returns the first rank's error, if any rank has one.

    Used before the first message of the protocol, so bad input on any rank makes every rank
    stop together (exit 2) instead of leaving the others blocked in a receive.
    """
    quiet_barrier(comm, waiter)
    errors = comm.allgather(error)
    return next((e for e in errors if e), None)


def bcast(comm, obj, root: int = 0):
    return comm.bcast(obj, root=root)


def finish(code: int) -> None:
    """Finalize MPI and leave through C's exit(), skipping the interpreter's teardown.

    Tearing down torch in 50 processes on 2 cores took about 30 s after the last iteration;
    every file the job writes is closed by now, so there is nothing left for it to do. Not
    os._exit: it skips MPICH's exit handlers, and under load Hydra then killed the job after a
    clean finish (rc 9 in 41 of 60 tries of a bare mpi4py script on a busy machine; C's exit(),
    0 of 40; a normal exit, 0 of 40).
    """
    import ctypes
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    ctypes.CDLL(None).exit(code)


def abort(comm, code: int = 1) -> None:
    """End the whole job now: no rank may be left waiting for one that failed."""
    sys.stderr.flush()
    comm.Abort(code)
