"""The answers' window (run/window.py) without MPI: when each rank's receive is posted, which a
rank observes as the start of its rendezvous send, must follow from its lines, never its role."""
import numpy as np

from podlt_mpi.core import timing
from podlt_mpi.mpi import tags
from podlt_mpi.run import window as window_module


class Done:
    def result(self):
        return "digest"


class Receive:
    """Stands in for mpi.Checked: logs its posting; `arrive` fills it as a message would."""

    def __init__(self, log, comm, buffer, rank, tag):
        self.buffer, self.source, self.tag = buffer, rank, tag
        self.bad, self.finished, self.req = None, False, None
        log.append(("post", rank, tag))

    def arrive(self):
        self.buffer[:] = 0
        self.finished = True


def patch(monkeypatch, log=None):
    """mpi.Checked replaced: returns the list of receives posted, in order."""
    posted = []

    def checked(comm, buffer, rank, tag):
        posted.append(Receive(log if log is not None else [], comm, buffer, rank, tag))
        return posted[-1]
    monkeypatch.setattr(window_module.mpi, "Checked", checked)
    return posted


def simulate(monkeypatch, groups, streamed, arrivals, size=2):
    """Drive a Window: answers complete in `arrivals` order (ranks; each rank's LOSS, then its
    GRAD once posted). Returns the log of events and what `add` saw."""
    log, added = [], []
    posted = patch(monkeypatch, log)
    w = window_module.Window(None, 4, groups, streamed,
                             lambda r, g, a: added.append(r), size, lambda r, b: Done(), [],
                             timing.IterationCost())
    w.start()
    for rank in arrivals:
        for tag in (tags.LOSS, tags.GRAD):
            item = next((p for p in posted if (p.source, p.tag) == (rank, tag)
                         and not p.finished), None)
            if item is None:  # its receive is not posted yet: the rank waits
                continue
            log.append(("in", rank, tag))
            item.arrive()
            w.done(item)
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
    log = []
    posted = patch(monkeypatch, log)
    added = []
    w = window_module.Window(None, 4, [1, 2], [1, 2], lambda r, g, a: added.append(r), 2,
                             lambda r, b: Done(), [], timing.IterationCost())
    w.start()
    assert [x for x in log if x[2] == tags.LOSS] == [("post", 1, tags.LOSS), ("post", 2, tags.LOSS)]
    # receives: LOSS 1, LOSS 2, GRAD 1, GRAD 2. Rank 1's gradient arrives before its loss:
    # nothing is added until both are in
    for i in (2, 0):
        posted[i].arrive()
        w.done(posted[i])
        assert added == ([] if i == 2 else [1])


def test_buffers_come_back_to_the_spare_list(monkeypatch):
    posted = patch(monkeypatch)
    spare = [np.zeros(4, np.float32)]
    first = spare[0]
    w = window_module.Window(None, 4, [1, 2], [1, 2], lambda r, g, a: None, 1,
                             lambda r, b: Done(), spare, timing.IterationCost())
    w.start()  # LOSS 1, LOSS 2, GRAD 1 (the spare buffer)
    assert spare == [] and w.grads[1] is first
    for i in (0, 2):
        posted[i].arrive()
        w.done(posted[i])  # rank 1 complete: its buffer serves rank 2
    assert w.grads[2] is first


def test_a_malformed_or_late_answer_is_refused_and_the_turns_go_on(monkeypatch):
    posted = patch(monkeypatch)
    added = []
    w = window_module.Window(None, 4, [1, 2, 3], [1, 2, 3], lambda r, g, a: added.append(r), 1,
                             lambda r, b: Done(), [], timing.IterationCost())
    w.start()  # LOSS 1-3, GRAD 1
    posted[0].arrive()
    posted[0].buffer[1] = float("nan")  # a signal field that is no signal
    w.done(posted[0])
    posted[3].arrive()
    more = w.done(posted[3])  # rank 1 is refused, not added; rank 2's turn opens
    assert added == [] and "signal field" in w.refused[1] and [r for _, r in more] == [2]
    # rank 2 never answers: given up at the deadline, rank 3's turn opens
    w.late = lambda: [2]
    more = w.give_up([2], "no answer within 20 s")
    assert [r for _, r in more] == [3] and w.refused[2] == "no answer within 20 s"
    for item in (posted[2], more[0][0]):
        item.arrive()
        w.done(item)
    assert added == [3] and w.kept() == {1: None, 2: None}
