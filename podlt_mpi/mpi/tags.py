"""Message tags between the manager and a rank (named, so every send and receive can be matched).

Every WORK header is followed by WEIGHTS, X and Y; a SHARED header by the group's broadcast of
the weights, then X and Y if it has lines; every rank given lines answers with GRAD, then LOSS
([loss, number of a stop signal it received or 0, seconds computing]); under the ranks'
reduction GRAD carries the answer's commitment (run/reduce.py), not the answer. A REGROUP header is
followed by MEMBERS; a STOP header by nothing.
"""
HEADER, WEIGHTS, X, Y, GRAD, LOSS, MEMBERS = 1, 2, 3, 4, 5, 6, 7
# The ranks' reduction (run/reduce.py): a REDUCE header is followed by the table; senders send
# their answers' SLICEs to the aggregators, which send the manager their SUMs; a CHALLENGE
# header asks an aggregator for a slice's inputs (PROOF), a FETCH header a sender for a SLICE.
SUM, PROOF = 10, 19
# The table is relayed from rank to rank (reduce_messages.relay), and a rank that its relay did
# not give it asks the manager with TABLE_REQUEST ([iteration], int64).
TABLE_REQUEST = 20
# A TABLE and a SLICE travel on their round's tag (`step`: an iteration's reduction is run again
# where the manager's look finds a fake answer), so that one sent too late for its receiver is
# never taken for a later round's: it waits unmatched, and the next drain discards it.
SPAN = 64
_TABLES, _SLICES = 64, 128  # the first tag of each kind's range
ROUNDS = 4                  # an iteration's reductions at most (a fake found in each but the last)


def step(iteration: int, round_: int = 0) -> int:
    return ROUNDS * iteration + round_


def table_tag(step_: int) -> int:
    return _TABLES + step_ % SPAN


def slice_tag(step_: int) -> int:
    return _SLICES + step_ % SPAN


def is_slice(tag: int) -> bool:
    return _SLICES <= tag < _SLICES + SPAN


def is_table(tag: int) -> bool:
    return _TABLES <= tag < _TABLES + SPAN


def ahead(tag: int, step_: int) -> bool:
    """Whether a table or slice tag is for a round after `step_` (within half the span): one
    for `step_` or before is late, and nobody will receive it."""
    base = next((b for b in (_TABLES, _SLICES) if b <= tag < b + SPAN), None)
    return base is not None and 0 < (tag - base - step_) % SPAN < SPAN // 2


# The job's start and end (run/startup.py), rank 0 with every other rank, before and after the
# protocol's messages.
HELLO, PLACE, INPUTS_LEN, INPUTS, REPORT, VERDICT, FINISH, BYE = 11, 12, 13, 14, 15, 16, 17, 18
KNOWN = frozenset({HEADER, WEIGHTS, X, Y, GRAD, LOSS, MEMBERS, SUM, PROOF, TABLE_REQUEST, HELLO,
                   PLACE, INPUTS_LEN, INPUTS, REPORT, VERDICT, FINISH, BYE})
