"""What travels between the manager and a rank, as plain arrays. Pure, no MPI.

Secrecy lives here: a rank receives a header (command, iteration, line count, the fragment's
random seed), the weights and its slice of the data. In an iteration's plan the weights reach
every active rank by one broadcast over the group of active ranks (SHARED); a recheck sends
them with the work (WORK). A rank learns the group from a REGROUP header and its member list. Nothing says whether it is a worker, a
control, or the checked worker, and no line numbers are sent, so a control cannot tell which
worker it is shadowing: the seed is a hash of the lines, equal for everyone who computes them and
telling no more than the lines' own bytes.
"""
from __future__ import annotations

import hashlib

import numpy as np

from podlt_mpi.core import digests, portable, signatures
from podlt_mpi.mpi import preempt, tags

STOP, WORK, SHARED, REGROUP = 0, 1, 2, 3
# [command, iteration, lines, seed of the fragment's random generators, then for SHARED: the
# milliseconds to wait for the broadcast, and the state's digest (state_digest) as 4 values]
HEADER_LEN = 9
UNSEEN = -1  # an answer's signal field: the rank did not get the state its header names
LOSS_NOTE_LEN = 3  # an answer's note, float64: [loss, stop signal seen (0: none), seconds]


def header(command: int, iteration: int = -1, lines: int = 0, seed: int = 0,
           state=None) -> np.ndarray:
    """`state`: (milliseconds to wait for the broadcast, the state's digest) for SHARED."""
    wait_ms, digest = state if state is not None else (0, np.zeros(4, np.int64))
    return np.array([command, iteration, lines, seed, wait_ms, *digest], dtype=np.int64)


def state_digest(weights) -> np.ndarray:
    """The digest of the flat state a SHARED header names, as 4 int64 values: what a rank
    compares with what the broadcast, which passes through other ranks, brought it."""
    # BLAKE3 on one thread, faster than blake2b (measured: benchmarks/RESULTS.md, "Untrusted
    # ranks, part 2: no pickles, no crash, no hang, bounded memory (issue 27)"), every rank,
    # every iteration that broadcasts
    hexdigest = digests.of_arrays(digests.BLAKE3, np.ascontiguousarray(weights))
    return np.frombuffer(bytes.fromhex(hexdigest), np.int64).copy()


def fragment_seed(run_seed: int, iteration: int, start: int, stop: int) -> int:
    """The seed of every random draw in one fragment's pass (dropout masks and the like): from
    the run's seed, the iteration and the fragment's lines, never the rank, so whoever computes
    the fragment (worker, controls, a recheck, the manager, the audit) draws the same numbers.
    63 bits, so it fits the int64 header and torch.manual_seed."""
    digest = hashlib.sha256(f"podlt-fragment:{run_seed}:{iteration}:{start}:{stop}".encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def loss_note(loss: float, signal: int, seconds: float) -> np.ndarray:
    return np.array([loss, signal, seconds], np.float64)


def loss_note_problem(v: np.ndarray) -> str | None:
    """Why [loss, signal, seconds] from a rank is malformed, or None: the signal must be 0 or a
    stop signal's number, the seconds finite and not negative (the loss is judged with the
    gradient)."""
    signal, seconds = float(v[1]), float(v[2])
    if signal not in (0, UNSEEN) and signal not in {float(s) for s in preempt.SIGNALS}:
        return f"its signal field is {signal!r}"
    if not np.isfinite(seconds) or seconds < 0:
        return f"its seconds field is {seconds!r}"
    return None


def regroup(members) -> list:
    """The messages that name a new broadcast group: world ranks, the manager first."""
    members = np.asarray(members, np.int32)
    return [(tags.HEADER, header(REGROUP, -1, len(members))), (tags.MEMBERS, members)]


def work_messages(iteration: int, seed: int, weights: np.ndarray | None, x: np.ndarray,
                  y: np.ndarray, state=None) -> list:
    """The (tag, array) messages for one rank's slice x, y, in the order they are sent. x and y
    travel in the types data.Reader gives them (float32 or int64; int64 or float32). Without
    `weights` the rank takes them from the group's broadcast (SHARED)."""
    if weights is None:
        msgs = [(tags.HEADER, header(SHARED, iteration, len(y), seed, state))]
    else:
        msgs = [(tags.HEADER, header(WORK, iteration, len(y), seed)), (tags.WEIGHTS, weights)]
    return msgs + [(tags.X, np.ascontiguousarray(x)), (tags.Y, np.ascontiguousarray(y))]


def messages_for_plan(plan, iteration: int, run_seed: int, weights: np.ndarray | None, block_x,
                      block_y, everyone=(), state=None) -> dict:
    """rank -> its messages for this iteration, slicing the block [plan.start, plan.stop).
    weights None: they go by broadcast to `everyone` (the active ranks), and those without work
    in this plan get a SHARED header of 0 lines, to take part in the broadcast; `state`: what
    the SHARED headers say of it (header)."""
    out = {r: [(tags.HEADER, header(SHARED, iteration, 0, 0, state))] for r in everyone}
    for a in plan.assignments:
        s, e = a.start - plan.start, a.stop - plan.start
        seed = fragment_seed(run_seed, iteration, a.start, a.stop)
        out[a.rank] = work_messages(iteration, seed, weights, block_x[s:e], block_y[s:e],
                                    state)
    return out


# ---- the job's start (run/startup.py): fixed-size records, never objects ----------------------

HOST_BYTES = 256        # a rank's host name, zero-padded
TEXT_BYTES = 600        # a start-up report's texts (device, error, compute, processor), each
REPORT_LEN = 2 + 4 * TEXT_BYTES + signatures.KEY_BYTES  # zero-padded texts, then its key
LAST_WORD_LEN = 3  # float64 [peak memory in MB, bytes it received, bytes it sent] (startup.finish)
INPUTS_MAX = 4 * 2**20  # bytes of the run's inputs (JSON) a rank accepts from rank 0


def text_field(text: str, size: int) -> np.ndarray:
    data = text.encode("utf-8", "replace")[:size]
    out = np.zeros(size, np.uint8)
    out[:len(data)] = np.frombuffer(data, np.uint8)
    return out


def read_text(field: np.ndarray) -> str:
    """A zero-padded text another rank sent, as printable ASCII only (it is shown and logged,
    and a rank could send terminal escapes)."""
    raw = bytes(field).split(b"\0", 1)[0].decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in raw)


def report(error: str | None, stochastic: bool, device: str, compute: dict,
           processor: dict, key: bytes = signatures.NO_KEY) -> np.ndarray:
    """A rank's start-up report: [built (1) or failed (2), stochastic model], its device, its
    error sentence, its compute configuration and processor (core/portable.py), and the public
    key it signs its slices with (core/signatures.py)."""
    texts = (device, error or "", portable.encode(compute), portable.encode(processor))
    return np.concatenate([np.array([2 if error else 1, int(bool(stochastic))], np.uint8),
                           *(text_field(t, TEXT_BYTES) for t in texts),
                           np.frombuffer(key, np.uint8)])


def read_report(buf: np.ndarray) -> tuple:
    """(error or None, stochastic, device, compute, processor, key) from a report, or
    ValueError saying why it is not one."""
    built, stochastic = int(buf[0]), int(buf[1])
    if built not in (1, 2) or stochastic not in (0, 1):
        raise ValueError(f"its flags are {built}, {stochastic}")
    device, error, compute, processor = (read_text(buf[2 + i * TEXT_BYTES:2 + (i + 1) * TEXT_BYTES])
                                         for i in range(4))
    if not (device == "cpu" or device.startswith("cuda:")):
        raise ValueError(f"its device is {device!r}")
    compute = portable.decode(compute, portable.COMPUTE_KEYS)
    processor = portable.decode(processor, portable.PROCESSOR_KEYS)
    error = error if built == 2 else None
    return (error or (None if built == 1 else "(no reason given)"), bool(stochastic), device,
            compute, processor, bytes(buf[2 + 4 * TEXT_BYTES:]))
