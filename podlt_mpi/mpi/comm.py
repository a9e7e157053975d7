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
IDLE_EVERY = 0.05  # seconds between a waiting manager's drains of unsolicited messages
SLEEP_MAX = 2e-3  # at N=50 on 2 cores the default job trained faster with this than a tenth of it


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
    `buffer`'s size is received into it (MPI_Imrecv). Any other is refused (refuse) and `bad`
    says what it was: a rank can send any bytes of any size on any tag, and a posted receive
    of the wrong size ends in MPI_ERR_TRUNCATE, an exception and (before this) the job's abort.
    Polled by Waiter like a request."""

    def __init__(self, comm, buffer, source: int, tag: int):
        self.comm, self.buffer, self.source, self.tag = comm, buffer, source, tag
        self.req = None      # the MPI_Imrecv, once the message is matched
        self.bad = None      # why the message was refused, once it was
        self.finished = False

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
                refuse(msg, size)
                self.finished = True
                return True
            self.req = msg.Irecv(self.buffer)
            counted["in"] += size
        self.finished = self.req.Test()
        return self.finished


class InOrder:
    """Checked receives of one source and tag, matched in the order they were made: MPI keeps
    one source's messages of a tag in order, but two receives probing at once could each take
    the other's message. Polled by Waiter like a request."""

    def __init__(self, items):
        self.items, self.at = list(items), 0

    def Test(self) -> bool:  # noqa: N802
        while self.at < len(self.items) and self.items[self.at].Test():
            self.at += 1
        return self.at == len(self.items)


def in_order(receives) -> list:
    """Checked receives grouped by (source, tag), each group an InOrder in the given order."""
    groups = {}
    for r in receives:
        groups.setdefault((r.source, r.tag), []).append(r)
    return [InOrder(g) for g in groups.values()]


def drain(comm, sources, expected, known, keep=None) -> dict:
    """Receive and discard the messages from `sources` that nobody asked for: {source: how
    many}. `expected(source, tag)` says whether a message is awaited (its receive will come);
    `known`: the tags to look for behind an awaited one; `keep(source, tag, nbytes)`, if given,
    may return a buffer of that size to receive the message into instead (counted as kept,
    not as unsolicited). A rank that floods rank 0 with
    messages it never receives would otherwise grow MPI's queue of unexpected messages in rank
    0's memory without bound (refuse says how each is taken)."""
    out = {}
    status = MPI.Status()
    if not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
        return out  # nothing waiting at all: the usual case, one call
    for r in sources:
        if not comm.Iprobe(r, MPI.ANY_TAG, status):
            continue
        for tag in (MPI.ANY_TAG, *(t for t in known if not expected(r, t))):
            # the first message, then each unawaited tag behind an awaited one. Iprobe only
            # looks; the matched probe of the same source and tag then takes that very message
            # (MPI keeps one source's messages of one tag in order)
            while comm.Iprobe(r, tag, status) and not expected(r, status.Get_tag()):
                msg = comm.Improbe(r, status.Get_tag(), status)
                if msg is None:
                    break
                size = status.Get_count(MPI.BYTE)
                buffer = keep(r, status.Get_tag(), size) if keep is not None else None
                if buffer is not None and buffer.nbytes == size:
                    msg.Recv(buffer)
                    continue
                refuse(msg, size)
                out[r] = out.get(r, 0) + 1
    return out


REFUSE_MAX = 64 * 2**20  # bytes: a refused message up to this size is received and dropped
_unreceived: list = []   # larger ones: matched, never received (their data stays with the sender)


def refuse(msg, size: int) -> None:
    """Take a matched message nobody will use. Up to REFUSE_MAX it is received into scratch
    memory and dropped. A larger one is left unreceived: every MPI sends a message that size
    by rendezvous, so its data waits with its sender and costs rank 0 nothing; receiving it
    truncated would be cheaper still, but Open MPI 4.1's shared-memory transport then copies
    the whole message into the small buffer (a segmentation fault, measured)."""
    if size > REFUSE_MAX:
        _unreceived.append(msg)
        return
    msg.Recv(np.empty(max(size, 1), np.uint8))


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

    def poll(self, reqs, who=None, done=None, timeout: float | None = None,
             idle=None) -> list:
        """Like wait, but at the deadline return the (request, peer) pairs still pending (an
        empty list when all completed). `idle()`, if given, is called while nothing completes,
        at most every IDLE_EVERY seconds (the manager drains unsolicited messages there)."""
        items = list(reqs)
        who = list(who) if who else [None] * len(items)
        if (self.mode == "spin" and timeout is None and done is None
                and all(isinstance(r, MPI.Request) for r in items)):
            MPI.Request.Waitall(items)
            return []
        pending = list(zip(items, who, strict=True))
        start, delay = time.monotonic(), SLEEP_MIN
        idled = start
        while pending:
            finished = set(_test_some([r for r, _ in pending]))
            if finished:
                now = [pending[i] for i in sorted(finished)]
                pending = [p for i, p in enumerate(pending) if i not in finished]
                for req, _ in now:
                    pending += list((done(req) if done is not None else None) or ())
                delay = SLEEP_MIN
                continue
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                return pending
            if idle is not None and now - idled > IDLE_EVERY:
                idle()
                idled = now
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


counted = {"in": 0, "out": 0}  # the bytes this rank handed MPI and asked of it (benchmarks)


def isend(comm, array, dest: int, tag: int):
    counted["out"] += array.nbytes
    return comm.Isend(array, dest=dest, tag=tag)


def irecv(comm, buffer, source: int, tag: int):
    counted["in"] += buffer.nbytes
    return comm.Irecv(buffer, source=source, tag=tag)


def ibcast(group, buffer, root: int = 0):
    """A non-blocking broadcast over `group`, waited on like any other request."""
    counted["out" if group.Get_rank() == root else "in"] += buffer.nbytes
    return group.Ibcast(buffer, root=root)


class Sends:
    """Sends in flight, each with its buffer kept alive until MPI has completed it (a send's
    buffer must outlive its request), finished to a deadline when the run ends."""

    def __init__(self, comm, mode: str):
        self.comm, self.mode, self.pending = comm, mode, []

    def post(self, array, dest: int, tag: int) -> None:
        self.pending = [(r, b) for r, b in self.pending if not r.Test()]
        self.pending.append((isend(self.comm, array, dest, tag), array))

    def keep(self, receives) -> None:
        """Checked receives past their deadline with a receive under way: MPI may still write
        their buffers, which are kept alive with the sends."""
        self.pending += [(r, r.buffer) for r in receives if r.req is not None and not r.finished]

    def close(self, timeout: float = 10.0) -> None:
        """Complete what is still in flight, to `timeout`, so that MPI finalizes with none
        pending (a send to a rank that never receives is left)."""
        Waiter(self.mode).poll([r for r, _ in self.pending], None, None, timeout)
        self.pending = []


stuck: list = []  # threads left in a group's creation that never completed (subgroup)


def subgroup(comm, members, old=None, timeout: float | None = None, give_up=None):
    """A communicator of the world ranks `members` (in that order: the first is its rank 0),
    replacing `old`, or None if it was not formed within `timeout` seconds or before
    `give_up()` said to stop waiting. Collective over the
    members only (MPI_Comm_create_group): ranks outside, removed ones that have already left
    their loop included, take no part. MPI has no non-blocking form of it, and one member that
    never joins would hold the others in it for ever: it runs in a thread (MPI is initialised
    with MPI_THREAD_MULTIPLE) that the caller stops waiting for at the deadline, left in
    `stuck`."""
    import threading
    group = comm.Get_group().Incl([int(m) for m in members])
    got = []
    thread = threading.Thread(target=lambda: got.append(comm.Create_group(group)), daemon=True,
                              name="podlt-create-group")
    thread.start()
    start, delay = time.monotonic(), SLEEP_MIN
    while thread.is_alive():
        if (timeout is not None and time.monotonic() - start > timeout or
                give_up is not None and give_up()):
            stuck.append((thread, got, old))
            return None
        time.sleep(delay)
        delay = min(2 * delay, SLEEP_MAX)
    if old is not None:
        old.Free()
    return got[0] if got else None


def late_group(timeout: float):
    """The group whose creation subgroup stopped waiting for, if it forms within `timeout`
    (a rank that stopped waiting for work that turned out to come by that group), else None."""
    if not stuck:
        return None
    thread, got, old = stuck[-1]
    thread.join(timeout)
    if thread.is_alive() or not got:
        return None
    stuck.pop()
    if old is not None:
        old.Free()
    return got[0]


def finish(code: int) -> None:
    """Finalize MPI and leave through C's exit(), skipping the interpreter's teardown.

    Tearing down torch in 50 processes on 2 cores took most of the time from the last iteration
    to exit (measured: benchmarks/RESULTS.md, "The default 50-rank job (issue 2)"); every file
    the job writes is closed by now, so there is nothing left for it to do. Not os._exit: it
    skips MPICH's exit handlers, and under load Hydra then often killed the job after a clean
    finish (rc 9), where C's exit() did not (measured: benchmarks/RESULTS.md, "Preemption,
    resume and audit at 50 ranks (issue 3)"), nor did a normal exit.
    """
    import ctypes
    sys.stdout.flush()
    sys.stderr.flush()
    if not stuck:  # a thread inside an MPI call would hold MPI_Finalize for ever
        world = MPI.COMM_WORLD
        # MPICH's MPI_Finalize fails on a communicator that still holds unmatched messages: a
        # flood's last ones, a lying rank's extra answer. Nothing is awaited any more.
        drain(world, range(world.Get_size()), lambda r, t: False, ())
        try:
            MPI.Finalize()
        except MPI.Exception:
            pass  # what arrived after the drain: the job's work is done and written
    ctypes.CDLL(None).exit(code)


def abort(comm, code: int = 1) -> None:
    """End the whole job now: no rank may be left waiting for one that failed."""
    sys.stderr.flush()
    comm.Abort(code)
