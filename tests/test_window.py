"""The answers' window (run/window.py) without MPI: when each rank's receive is posted, which a
rank observes as the start of its rendezvous send, must follow from its lines, never its role."""
import numpy as np

from podlt_mpi.core import timing
from podlt_mpi.dist import tags
from podlt_mpi.run import window as window_module


class Done:
    def result(self):
        return "digest"


def simulate(monkeypatch, groups, streamed, arrivals, size=2):
    """Drive a Window: answers complete in `arrivals` order (ranks; each rank's LOSS, then its
    GRAD once posted). Returns the log of events and what `add` saw."""
    log, added, pending = [], [], {}

    def irecv(comm, buffer, rank, tag):
        log.append(("post", rank, tag))
        pending[(rank, tag)] = len(pending_order)
        pending_order.append((rank, tag))
        return object(), rank
    pending_order = []
    monkeypatch.setattr(window_module.mpi, "irecv", lambda c, b, r, t: irecv(c, b, r, t)[0])
    w = window_module.Window(None, 4, groups, streamed,
                             lambda r, g, a: added.append(r), size, lambda r, b: Done(), [],
                             timing.IterationCost())
    w.start()
    for rank in arrivals:
        for tag in (tags.LOSS, tags.GRAD):
            if (rank, tag) not in pending:  # its receive is not posted yet: the rank waits
                continue
            log.append(("in", rank, tag))
            w.done(pending.pop((rank, tag)))
    return log, added, w


def grad_posts(log, counted):
    """For each rank, how many of `counted`'s gradients were in when its receive was posted."""
    ins, out = 0, {}
    for what, rank, tag in log:
        if what == "in" and tag == tags.GRAD and rank in counted:
            ins += 1
        elif what == "post" and tag == tags.GRAD:
            out[rank] = ins
    return out


def test_a_checked_fragment_is_received_when_an_unchecked_one_would_be(monkeypatch):
    workers = [4, 2, 6, 1, 5]  # line order
    arrivals = [2, 4, 1, 6, 5, 3, 7]
    plain_log, plain_added, _ = simulate(monkeypatch, [(r,) for r in workers], workers,
                                         [r for r in arrivals if r in workers] * 2)
    # rank 6's fragment is checked, its controls 3 and 7; the controls' answers are kept
    groups = [(r, 3, 7) if r == 6 else (r,) for r in workers]
    checked_log, checked_added, w = simulate(monkeypatch, groups, [4, 2, 1, 5], arrivals * 2)
    plain, checked = grad_posts(plain_log, workers), grad_posts(checked_log, workers)
    # each worker's receive is posted after the same answers, whatever its role or its
    # neighbours': the controls' answers do not hold the window
    assert all(checked[r] == plain[r] for r in workers), (checked, plain)
    # the controls' receives are posted with the checked worker's, not at once, not after
    assert checked[3] == checked[7] == checked[6]
    assert checked[6] > 0  # the window was full: not among the first posted
    assert plain_added == workers and checked_added == [4, 2, 1, 5]  # line order
    assert sorted(w.kept()) == [3, 6, 7]


def test_every_loss_is_awaited_before_an_answer_is_used(monkeypatch):
    log, added, w = simulate(monkeypatch, [(1,), (2,)], [1, 2], [])
    assert [x for x in log if x[2] == tags.LOSS] == [("post", 1, tags.LOSS), ("post", 2, tags.LOSS)]
    # requests: LOSS 1, LOSS 2, GRAD 1, GRAD 2. Rank 1's gradient arrives before its loss:
    # nothing is added until both are in
    w.done(2)
    assert added == []
    w.done(0)
    assert added == [1]


def test_buffers_come_back_to_the_spare_list(monkeypatch):
    monkeypatch.setattr(window_module.mpi, "irecv", lambda c, b, r, t: object())
    spare = [np.zeros(4, np.float32)]
    first = spare[0]
    w = window_module.Window(None, 4, [(1,), (2,)], [1, 2], lambda r, g, a: None, 1,
                             lambda r, b: Done(), spare, timing.IterationCost())
    w.start()  # LOSS 1, LOSS 2, GRAD 1 (the spare buffer)
    assert spare == [] and w.grads[1] is first
    w.done(0)
    w.done(2)  # rank 1 complete: its buffer serves rank 2
    assert w.grads[2] is first
