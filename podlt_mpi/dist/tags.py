"""Message tags between the manager and a rank (named, so every send and receive can be matched).

Every WORK header is followed by WEIGHTS, X and Y; a SHARED header by the group's broadcast of
the weights, then X and Y if it has lines; every rank given lines answers with GRAD, then LOSS
([loss, number of a stop signal it received or 0, seconds computing]); under the ranks'
reduction GRAD carries the answer's commitment (run/reduce.py), not the answer. A REGROUP header is
followed by MEMBERS; a STOP header by nothing.
"""
HEADER, WEIGHTS, X, Y, GRAD, LOSS, MEMBERS = 1, 2, 3, 4, 5, 6, 7
# The ranks' reduction (run/reduce.py): a REDUCE header is followed by TABLE; senders send
# their answers' SLICEs to the aggregators, which send the manager their SUMs; a CHALLENGE
# header asks an aggregator for a slice's inputs (PROOF), a FETCH header a sender for a SLICE.
TABLE, SUM, PROOF = 8, 10, 19
# A SLICE travels on the tag of its iteration, so that one sent too late for its aggregator (or
# for the manager's fetch) is never taken for the next iteration's: it waits unmatched, and is
# discarded by the next drain.
SLICE_SPAN = 64


def slice_tag(iteration: int) -> int:
    return 64 + iteration % SLICE_SPAN


def is_slice(tag: int) -> bool:
    return 64 <= tag < 64 + SLICE_SPAN


def slice_ahead(tag: int, iteration: int) -> bool:
    """Whether a slice tag is for an iteration after `iteration` (within half the span): one
    for `iteration` or before is late, and nobody will receive it."""
    return is_slice(tag) and 0 < (tag - slice_tag(iteration)) % SLICE_SPAN < SLICE_SPAN // 2

# The job's start and end (run/startup.py), rank 0 with every other rank, before and after the
# protocol's messages.
HELLO, PLACE, INPUTS_LEN, INPUTS, REPORT, VERDICT, FINISH, BYE = 11, 12, 13, 14, 15, 16, 17, 18
KNOWN = frozenset({HEADER, WEIGHTS, X, Y, GRAD, LOSS, MEMBERS, TABLE, SUM, PROOF, HELLO, PLACE, INPUTS_LEN,
                   INPUTS,                    REPORT, VERDICT, FINISH, BYE})
