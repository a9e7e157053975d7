"""The job's start and end between rank 0 and every other rank: typed point-to-point messages
with deadlines (mpi/messages.py, mpi/tags.py).

No rank unpickles another's data (mpi4py's lowercase calls would), and none waits in a
collective that one rank can hang by never joining: rank 0 takes every rank's message with a
deadline, and says who missed it. What a rank sends rank 0 is a fixed-size record whose size
is checked before it is read (comm.Checked); what rank 0 sends the others (the run's options)
is JSON of a bounded size, sent to each rank directly, never forwarded through another.

  hello    rank -> 0: its host name;  0 -> rank: [its index among the job's ranks on its node, their number]
  inputs   0 -> rank: [length] then the options and the data's shapes as JSON; length -1: exit 2
  report   rank -> 0: built or failed (and why), its device, whether its model draws random
           numbers, its compute configuration and processor (core/portable.py)
  verdict  0 -> rank: [exit code]: 0 goes on to the protocol
  finish   rank -> 0: [peak memory in MB, bytes in, bytes out];  0 -> rank: [0], leave
"""
from __future__ import annotations

import json

import numpy as np

from podlt_mpi.mpi import comm as mpi
from podlt_mpi.core import signatures
from podlt_mpi.mpi import messages, tags

WAIT_FOR_ZERO = 3600.0  # seconds a rank waits for rank 0 at start-up (it may be generating data)
FINISH_TIMEOUT = 20.0   # seconds rank 0 waits for the ranks' last word at the end (the others
                        # are idle by then, waiting to send it)
_kept: list = []        # send buffers whose sends may not complete (to a rank that never reads)


class Missing(RuntimeError):
    """Ranks that sent nothing in time, or something malformed: {rank: why}."""

    def __init__(self, what: str, problems: dict):
        self.problems = problems
        shown = "; ".join(f"rank {r}: {why}" for r, why in sorted(problems.items()))
        super().__init__(f"{what}: {shown}")


def take(comm, ranks, tag: int, size: int, dtype, timeout: float) -> tuple:
    """Rank 0 receives one message of `size` values from each of `ranks`: ({rank: array},
    {rank: why not}): sent late, or of the wrong size."""
    items = [mpi.Checked(comm, np.empty(size, dtype), r, tag) for r in ranks]
    mpi.Waiter("sleep").poll(items, ranks, None, timeout)
    got, problems = {}, {}
    for it in items:
        if it.bad:
            problems[it.source] = it.bad
        elif not it.finished:
            problems[it.source] = f"nothing within {timeout:g} s"
        else:
            got[it.source] = it.buffer
    return got, problems


def tell(comm, outgoing: dict, tag: int, timeout: float = 10.0) -> None:
    """Rank 0 sends {rank: array}, waiting at most `timeout` for the sends to complete: one
    that does not (a rank that never receives) is left, its buffer kept alive."""
    sends = [(mpi.isend(comm, a, r, tag), r) for r, a in sorted(outgoing.items())]
    _kept.extend((req, outgoing[r]) for req, r in mpi.Waiter("sleep").poll(
        [s for s, _ in sends], [r for _, r in sends], None, timeout))


def expect(comm, size: int, dtype, tag: int, timeout: float = WAIT_FOR_ZERO) -> np.ndarray:
    """A rank other than 0 receives one message of `size` values from rank 0."""
    item = mpi.Checked(comm, np.empty(size, dtype), 0, tag)
    mpi.Waiter("sleep").poll([item], [0], None, timeout)
    if not item.finished or item.bad:
        raise mpi.PeerLost(f"rank {comm.Get_rank()} heard nothing usable from rank 0 for "
                           f"{timeout:g} s at the job's start or end")
    return item.buffer


def send(comm, array, tag: int) -> None:
    """A rank other than 0 sends rank 0 one message (small: it completes locally)."""
    mpi.Waiter("sleep").wait([mpi.isend(comm, array, 0, tag)])


# ---- the phases ---------------------------------------------------------------------------------

def hello(comm, timeout: float) -> tuple:
    """(this rank's index among the job's ranks on its node, their number), from the host
    names every rank sends rank 0. Raises Missing on rank 0."""
    rank, size = comm.Get_rank(), comm.Get_size()
    name = messages.text_field(mpi.host_name(), messages.HOST_BYTES)
    if rank:
        send(comm, name, tags.HELLO)
        where = expect(comm, 2, np.int64, tags.PLACE)
        return int(where[0]), int(where[1])
    got, problems = take(comm, range(1, size), tags.HELLO, messages.HOST_BYTES, np.uint8,
                         timeout)
    hosts = [bytes(name)] + [bytes(got.get(r, np.zeros(1, np.uint8))) for r in range(1, size)]
    places = {r: np.array([hosts[:r].count(hosts[r]), hosts.count(hosts[r])], np.int64)
              for r in range(size)}
    if problems:
        raise Missing("ranks missing at the job's start", problems)
    tell(comm, {r: places[r] for r in range(1, size)}, tags.PLACE)
    return tuple(int(v) for v in places[0])


def share_inputs(comm, payload: dict | None) -> dict | None:
    """Rank 0 sends every rank `payload` (JSON-able; None: exit 2); every rank returns it."""
    if comm.Get_rank():
        n = int(expect(comm, 1, np.int64, tags.INPUTS_LEN)[0])
        if n < 0:
            return None
        if n > messages.INPUTS_MAX:
            raise mpi.PeerLost(f"rank {comm.Get_rank()} was sent {n} bytes of inputs")
        return json.loads(bytes(expect(comm, n, np.uint8, tags.INPUTS)).decode("utf-8"))
    data = b"" if payload is None else json.dumps(payload).encode("utf-8")
    others = range(1, comm.Get_size())
    tell(comm, {r: np.array([len(data) if payload is not None else -1], np.int64)
                for r in others}, tags.INPUTS_LEN)
    if payload is not None:
        body = np.frombuffer(data, np.uint8)
        tell(comm, {r: body for r in others}, tags.INPUTS)
    return payload


def reports(comm, error: str | None, stochastic: bool, device: str, compute: dict,
            processor: dict, timeout: float, key: bytes = signatures.NO_KEY) -> list:
    """Rank 0: [(error, stochastic, device, compute, processor, key)] of every rank in rank order,
    its own first (its configuration read back as the others' are, so that all compare alike). Raises Missing for
    ranks that sent nothing in time or a malformed report. Other ranks send theirs and return
    []."""
    mine = messages.report(error, stochastic, device, compute, processor, key)
    if comm.Get_rank():
        send(comm, mine, tags.REPORT)
        return []
    got, problems = take(comm, range(1, comm.Get_size()), tags.REPORT, messages.REPORT_LEN,
                         np.uint8, timeout)
    out = [(error, stochastic, device, *messages.read_report(mine)[3:])]  # its key too
    for r in range(1, comm.Get_size()):
        if r in got:
            try:
                out.append(messages.read_report(got[r]))
            except ValueError as e:
                problems[r] = f"a malformed report ({e})"
    if problems:
        raise Missing("ranks that did not start", problems)
    return out


def verdict(comm, code: int | None = None) -> int:
    """Rank 0 tells every rank how to go on (0: the protocol; else exit with `code`); every
    rank returns the code."""
    if comm.Get_rank():
        return int(expect(comm, 1, np.int64, tags.VERDICT)[0])
    tell(comm, {r: np.array([code], np.int64) for r in range(1, comm.Get_size())}, tags.VERDICT)
    return code


def finish(comm, peak: float, timeout: float = FINISH_TIMEOUT, said=None) -> tuple:
    """The job's last word. Rank 0: ([every rank's peak memory in MB], [every rank's counted
    bytes (in, out)], {rank: why} of the ranks that did not say it in time), None where a rank
    said nothing or nothing finite (they are the ranks' own word, for benchmarks). The others
    send theirs and wait for rank 0's leave, sleeping: a removed rank waits here from its
    removal on, and spinning would steal a core from ranks still computing. `said`: {rank:
    its last word} rank 0 has taken already."""
    mine = np.array([peak, mpi.counted["in"], mpi.counted["out"]], np.float64)
    if comm.Get_rank():
        send(comm, mine, tags.FINISH)
        expect(comm, 1, np.int64, tags.BYE, float("inf"))
        return [], [], {}
    said = dict(said or {})
    got, problems = take(comm, [r for r in range(1, comm.Get_size()) if r not in said],
                         tags.FINISH, messages.LAST_WORD_LEN, np.float64, timeout)
    got.update(said)
    got[0] = mine
    tell(comm, {r: np.zeros(1, np.int64) for r in got if r}, tags.BYE)
    words = [got.get(r) if r in got and np.isfinite(got[r]).all() else None
             for r in range(comm.Get_size())]
    return ([None if w is None else float(w[0]) for w in words],
            [None if w is None else [int(w[1]), int(w[2])] for w in words], problems)
