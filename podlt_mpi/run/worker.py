"""Every rank but 0: receive the model's state and a slice, return the answer (gradient and
buffers, layout.py), until told to stop. The state comes by the group's broadcast or, for a
recheck, with the lines (mpi/messages.py).

A rank does not know its role; it computes whatever it is sent. A removed rank is sent STOP.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from podlt_mpi.compute import training
from podlt_mpi.compute.faults import Faker
from podlt_mpi.compute.layout import Layout, device_of, host
from podlt_mpi.compute.losses import loss_function
from podlt_mpi.core.tasks import Task, classification
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import messages, preempt, tags
from podlt_mpi.mpi import reduce_messages as rm

IDLE_MIN = 600.0  # seconds without a word from the manager before a rank gives up on it


def run(comm, model, layout: Layout, line_shape, faker: Faker, waiter: mpi.Waiter,
        on_message=None, idle_timeout: float = 0.0, cuda_aware: bool = False,
        task: Task | None = None, aggregator=None) -> int:
    """Serve the manager; return how many fragments this rank computed.

    `task`: the kinds of x and y that arrive and the loss (default: features and one class per
    line, cross-entropy).
    `on_message(tag, array)` sees everything the rank receives (used by the secrecy test).
    `idle_timeout`: seconds to wait for the manager (0: max(IDLE_MIN, 10 x the longest pause so
    far); evaluation, checkpoints and the manager's deadline for a silent rank (up to
    exchange.MAX_TIMEOUT) make some pauses long).
    `cuda_aware`: weights arrive in, and the gradient leaves from, GPU memory (a CUDA-aware MPI
    moves them); otherwise both travel through host buffers. The manager's side stays on the
    host either way: it hashes every byte it receives into the ledger.
    `aggregator` (run/aggregate.py, `--reduce ranks`): each answer is committed to instead of
    sent, and its slices go where the manager's table says.
    """
    line_size = math.prod(line_shape)
    task = task or classification()
    loss_fn = loss_function(task)
    dev = device_of(model)
    weights = (torch.empty(layout.state_size, dtype=torch.float32, device=dev) if cuda_aware
               else np.empty(layout.state_size, np.float32))
    head = np.empty(messages.HEADER_LEN, np.int64)
    pending, done, longest, group = [], 0, 0.0, None
    others = [r for r in range(1, comm.Get_size()) if r != comm.Get_rank()]
    stalled = []  # broadcasts that never completed, with their buffers, kept alive
    while True:
        # Wait for the next header while our last answer drains: the manager may still be
        # receiving it, and the buffers it reads must stay alive until it has.
        limit = max(idle_timeout or IDLE_MIN, 10 * longest)
        t0 = time.monotonic()
        reqs = pending + [mpi.irecv(comm, head, 0, tags.HEADER)]
        while True:
            try:
                mpi.Waiter(waiter.mode, 1.0).wait(reqs)
                break
            except mpi.RankTimeout:
                # only rank 0 speaks to a worker, and the reduction's senders send slices:
                # anything else other ranks send it is discarded
                mpi.drain(comm, others, lambda r, t: aggregator is not None and
                          tags.ahead(t, aggregator.step if aggregator.step is not None
                                     else -1), ())
                if time.monotonic() - t0 > limit:
                    raise mpi.PeerLost(f"rank {comm.Get_rank()} heard nothing from the manager "
                                       f"for {limit:.0f} s") from None
        longest = max(longest, time.monotonic() - t0)
        if on_message:
            on_message(tags.HEADER, head.copy())
        command, iteration, lines, seed, wait_ms = (int(v) for v in head[:5])
        digest = head[5:].copy()
        if command == messages.STOP:
            if aggregator is not None:
                aggregator.sends.close()
            return done
        if aggregator is not None and command in (rm.REDUCE, rm.CHALLENGE, rm.FETCH):
            _reduce(aggregator, command, iteration, lines, seed, wait_ms, digest,
                    host(weights) if cuda_aware else weights, on_message)
            continue
        if command == messages.REGROUP:
            members = np.empty(lines, np.int32)
            waiter.wait([mpi.irecv(comm, members, 0, tags.MEMBERS)])
            if on_message:
                on_message(tags.MEMBERS, members.copy())
            # the manager, if it gives up on the group (a member did not join), sends work
            group = mpi.subgroup(comm, members, group, limit,
                                 lambda: comm.Iprobe(source=0, tag=tags.HEADER))
            continue
        x = np.empty((lines, line_size), task.x_dtype)
        y = np.empty((lines, *task.target_shape), task.y_dtype)
        shared = command == messages.SHARED
        if shared and group is None or shared and mpi.stuck:
            # work by a group this rank stopped waiting for (a header came first): it forms
            group = mpi.late_group(limit) or group
        reqs = [None if shared and group is None else mpi.ibcast(group, weights) if shared
                else mpi.irecv(comm, weights, 0, tags.WEIGHTS)]
        if lines:
            reqs += [mpi.irecv(comm, x, 0, tags.X), mpi.irecv(comm, y, 0, tags.Y)]
        waiter.wait(reqs[1:])  # from rank 0 itself
        if shared and (reqs[0] is None or not _got_state(reqs[0], weights, digest, wait_ms,
                                                         waiter, cuda_aware, stalled)):
            # the broadcast, which passes through other ranks, did not bring the state the
            # header names: say so instead of computing (the manager sends it directly)
            if stalled and stalled[-1][1] is weights:
                weights = (torch.empty_like(weights) if cuda_aware
                           else np.empty(layout.state_size, np.float32))
            if lines:  # grad and loss_buf stay referenced until the sends complete
                grad = np.zeros(layout.answer_size, np.float32)
                loss_buf = messages.loss_note(float("nan"), messages.UNSEEN, 0.0)
                pending = [mpi.isend(comm, grad, 0, tags.GRAD),
                           mpi.isend(comm, loss_buf, 0, tags.LOSS)]
            continue
        if not shared:
            waiter.wait(reqs[:1])
        if on_message:
            seen = host(weights) if cuda_aware else weights
            for tag, arr in ((tags.WEIGHTS, seen), (tags.X, x), (tags.Y, y))[:len(reqs)]:
                on_message(tag, arr.copy())
        if not lines:  # no work in this plan: it only took part in the weights' broadcast
            continue
        layout.load_state(weights)
        xt = torch.from_numpy(x).view(lines, *line_shape).to(dev)
        yt = torch.from_numpy(y).to(dev)
        t_compute = time.perf_counter()
        grad, loss = training.fragment(model, layout, xt, yt, seed, loss_fn)
        if faker.active or not cuda_aware or aggregator is not None:
            grad = np.ascontiguousarray(faker.send(host(grad), iteration, model, xt, yt, seed),
                                        dtype=np.float32)
        if aggregator is not None:  # the commitment goes to the manager, the answer stays
            grad = aggregator.commit(iteration, seed, grad)
        elif cuda_aware:
            grad = torch.as_tensor(grad).to(dev)
            torch.cuda.synchronize(dev)  # MPI reads the buffer outside torch's stream order
        # A stop signal seen here rides along with the loss: the manager may not have had one.
        loss_buf = messages.loss_note(loss, preempt.number() or 0, time.perf_counter() - t_compute)
        pending = [mpi.isend(comm, grad, 0, tags.GRAD), mpi.isend(comm, loss_buf, 0, tags.LOSS)]
        done += 1  # grad and loss_buf stay referenced until the next wait completes the sends


def _reduce(aggregator, command: int, iteration: int, lines: int, seed: int,
            wait_ms: int, digest, weights, on_message) -> None:
    """The manager's REDUCE (then its table), CHALLENGE or FETCH header (aggregate.py)."""
    if command == rm.REDUCE:  # the header's seed: the round, and the table's relay
        t0 = time.monotonic()
        round_, parent = rm.read_relay(seed)
        got = aggregator.receive_table(iteration, round_, parent, lines, digest, wait_ms / 1000)
        if got is None:
            return
        if on_message:
            on_message(tags.table_tag(tags.step(iteration, round_)), got[0].copy())
        # one wait for the table and the inputs together: the manager's deadline is the same
        aggregator.reduce(iteration, round_, got[1], weights,
                          max(0.0, wait_ms / 1000 - (time.monotonic() - t0)))
    elif command == rm.CHALLENGE:
        aggregator.prove(lines)
    else:
        aggregator.fetch(iteration, lines, seed)


def _got_state(req, weights, digest, wait_ms: int, waiter, cuda_aware: bool,
               stalled) -> bool:
    """Whether the broadcast `req` brought, within `wait_ms`, the state whose digest the header
    names. One that did not complete is kept in `stalled` with its buffer (MPI may still write
    it)."""
    if mpi.Waiter(waiter.mode).poll([req], [0], None, wait_ms / 1000 if wait_ms else None):
        stalled.append((req, weights))
        return False
    return bool(np.array_equal(messages.state_digest(host(weights) if cuda_aware else weights),
                               digest))
