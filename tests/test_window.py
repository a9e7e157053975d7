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


def test_every_turn_is_the_same_whatever_the_roles(monkeypatch):
    # two orders of seven answers: all unchecked, and rank 6 checked by 3 and 7 (its controls
    # come right after it). Positions, not roles, decide when each receive is posted: with the
    # answers completing in the same order of positions, the posts come at the same points.
    plain = [4, 2, 6, 3, 7, 1, 5]
    checked = list(plain)
    arrivals = [2, 4, 6, 3, 1, 7, 5]  # by rank; each pass delivers what is posted
    log_a, added_a, _ = simulate(monkeypatch, plain, plain, arrivals * 3)
    log_b, added_b, w = simulate(monkeypatch, checked, [4, 2, 1, 5], arrivals * 3)
    events = lambda log: [(what, checked.index(r), t) for what, r, t in log]  # noqa: E731
    assert events(log_a) == events(log_b)
    # the controls' receives wait for their turn, as an unchecked worker's there would
    posted = [r for what, r, t in log_b if what == "post" and t == tags.GRAD]
    assert posted == checked and grad_posts(log_b, checked)[3] > 0
    assert added_a == plain and added_b == [4, 2, 1, 5]  # line order
    assert sorted(w.kept()) == [3, 6, 7]


def test_every_loss_is_awaited_before_an_answer_is_used(monkeypatch):
    log, added, w = simulate(monkeypatch, [1, 2], [1, 2], [])
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
    w = window_module.Window(None, 4, [1, 2], [1, 2], lambda r, g, a: None, 1,
                             lambda r, b: Done(), spare, timing.IterationCost())
    w.start()  # LOSS 1, LOSS 2, GRAD 1 (the spare buffer)
    assert spare == [] and w.grads[1] is first
    w.done(0)
    w.done(2)  # rank 1 complete: its buffer serves rank 2
    assert w.grads[2] is first
