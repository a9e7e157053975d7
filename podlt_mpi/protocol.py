"""What travels between the manager and a rank, as plain arrays. Pure, no MPI.

Secrecy lives here: a rank receives a header (command, iteration, line count), the weights and
its slice of the data. Nothing says whether it is a worker, a control, or the checked worker, and
no line numbers are sent, so a control cannot tell which worker it is shadowing.
"""
from __future__ import annotations

import numpy as np

from . import comm_tags as tags

STOP, WORK = 0, 1
HEADER_LEN = 3  # [command, iteration, lines]
ANSWER_LEN = 3  # float64 [loss, stop signal seen (0: none), seconds spent computing], with the gradient


def header(command: int, iteration: int = -1, lines: int = 0) -> np.ndarray:
    return np.array([command, iteration, lines], dtype=np.int64)


def answer(loss: float, signal: int, seconds: float) -> np.ndarray:
    return np.array([loss, signal, seconds], np.float64)


def work_messages(iteration: int, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> list:
    """The (tag, array) messages for one rank's slice x, y, in the order they are sent."""
    return [(tags.HEADER, header(WORK, iteration, len(y))), (tags.WEIGHTS, weights),
            (tags.X, np.ascontiguousarray(x, dtype=np.float32)),
            (tags.Y, np.ascontiguousarray(y, dtype=np.int64))]


def messages_for_plan(plan, iteration: int, weights: np.ndarray, block_x, block_y) -> dict:
    """rank -> its messages for this iteration, slicing the block [plan.start, plan.stop)."""
    out = {}
    for a in plan.assignments:
        s, e = a.start - plan.start, a.stop - plan.start
        out[a.rank] = work_messages(iteration, weights, block_x[s:e], block_y[s:e])
    return out
