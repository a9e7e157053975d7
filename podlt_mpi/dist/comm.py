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

import numpy as np
from mpi4py import MPI

SLEEP_MIN = 50e-6
SLEEP_MAX = 2e-3  # measured here: 0.2 ms sleeps gave 2.7k samples/s at N=50 on 2 cores, 2 ms 7.4k


class RankTimeout(RuntimeError):
    def __init__(self, message: str, late=()):
        super().__init__(message)
        self.late = list(late)  # the (request, peer) pairs still pending


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


def host_name() -> str:
    return MPI.Get_processor_name()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose_wait(on_node: int, requested: str) -> str:
    """spin or sleep, for `on_node` ranks of this job on this node (run/startup.py counts them)."""
    if requested != "auto":
        return requested
    return "sleep" if on_node > cores() else "spin"


class Checked:
    """A receive whose size is checked before a byte is read: a matched probe (MPI_Improbe)
    finds the message, its size comes from the probe's status, and only a message of exactly
    `buffer`'s size is received into it (MPI_Imrecv). Any other is received into one scratch
    byte, which MPI truncates, and `bad` says what it was: a rank can send any bytes of any size
    on any tag, and a posted receive of the wrong size ends in MPI_ERR_TRUNCATE, an exception
    and (before this) the job's abort. Polled by Waiter like a request."""

    def __init__(self, comm, buffer, source: int, tag: int):
        self.comm, self.buffer, self.source, self.tag = comm, buffer, source, tag
        self.req = None      # the MPI_Imrecv, once the message is matched
        self.bad = None      # why the message was refused, once it was
        self.finished = False

    @property
    def matched(self) -> bool:
        """Whether the message has arrived (if its data may still be on its way)."""
        return self.req is not None or self.finished

    def Test(self) -> bool:  # noqa: N802 (polled where MPI requests are)
        if self.finished:
            return True
        if self.req is None:
            status = MPI.Status()
            msg = self.comm.Improbe(self.source, self.tag, status)
            if msg is None:
                return False
            size = status.Get_count(MPI.BYTE)
            want = self.buffer.nbytes
            if size != want:
                self.bad = f"a message of {size} bytes where {want} belong"
                refuse(msg)
                self.finished = True
                return True
            self.req = msg.Irecv(self.buffer)
        self.finished = self.req.Test()
        return self.finished


def refuse(msg) -> None:
    """Receive a matched message of the wrong size into one byte, discarding the rest."""
    try:
        msg.Recv(np.empty(1, np.uint8))
    except MPI.Exception:
        pass  # MPI_ERR_TRUNCATE, as intended: the message is consumed


class Waiter:
    """Waits for requests (and Checked receives) by spinning or by polling with backoff, with
    an optional deadline."""

    def __init__(self, mode: str, timeout: float | None = None):
        self.mode, self.timeout = mode, timeout

    def wait(self, reqs, who=None, done=None) -> None:
        """Complete all requests, or raise RankTimeout naming the late peers. `who` names each
        request's peer for the timeout message; `done(request)`, if given, is called for each
        request as soon as it completes (the manager hashes an answer while the others still
        arrive) and may return more (request, peer) pairs to wait for (a window of receive
        buffers)."""
        late = self.poll(reqs, who, done, self.timeout)
        if late:
            peers = sorted({w for _, w in late if w is not None})
            raise RankTimeout(f"no answer within {self.timeout:g} s"
                              + (f" from rank(s) {peers}" if peers else ""), late)

    def poll(self, reqs, who=None, done=None, timeout: float | None = None) -> list:
        """Like wait, but at the deadline return the (request, peer) pairs still pending (an
        empty list when all completed)."""
        items = list(reqs)
        who = list(who) if who else [None] * len(items)
        if (self.mode == "spin" and timeout is None and done is None
                and all(isinstance(r, MPI.Request) for r in items)):
            MPI.Request.Waitall(items)
            return []
        pending = list(zip(items, who, strict=True))
        start, delay = time.monotonic(), SLEEP_MIN
        while pending:
            finished = set(_test_some([r for r, _ in pending]))
            if finished:
                now = [pending[i] for i in sorted(finished)]
                pending = [p for i, p in enumerate(pending) if i not in finished]
                for req, _ in now:
                    pending += list((done(req) if done is not None else None) or ())
                delay = SLEEP_MIN
                continue
            if timeout is not None and time.monotonic() - start > timeout:
                return pending
            if self.mode == "sleep":
                time.sleep(delay)
                delay = min(2 * delay, SLEEP_MAX)
        return []


def _test_some(items) -> list:
    """Indices of the items that are complete now: MPI requests tested together, Checked
    receives probed one by one."""
    reqs = [(i, r) for i, r in enumerate(items) if isinstance(r, MPI.Request)]
    out = []
    if reqs:
        got = MPI.Request.Testsome([r for _, r in reqs]) or ()
        out = [reqs[j][0] for j in got]
        out += [i for i, r in reqs if r == MPI.REQUEST_NULL and i not in out]
    return sorted(out + [i for i, r in enumerate(items)
                         if not isinstance(r, MPI.Request) and r.Test()])


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
