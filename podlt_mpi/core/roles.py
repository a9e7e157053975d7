"""Secret roles: who is checked, who controls each check and who rechecks, drawn from a key only
the manager holds. Pure, no MPI.

The key is 32 bytes from the operating system's CSPRNG (never from --seed, which every rank
knows). Each iteration's draws come from HMAC-SHA256(key, iteration, stream), so the roles of
one iteration tell nothing of another's, the audit recomputes them from the key once it is
revealed, and a checkpoint needs only the key to resume byte-identically. The run commits to
the key before the first iteration (its hash in config.json, the log and every record) and
reveals it in the run directory when the run completes (docs/protocol.md, "Secret roles").
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np

from podlt_mpi.core import schedule

KEY_BYTES = 32
KEY_FILE = "roles_key.json"  # the revealed keys, in the run directory
PLAN, RECHECK = "plan", "recheck"  # the streams of one iteration's draws


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def key_from_seed(seed: int) -> bytes:
    """--role-seed's key: for tests and demonstrations only, since anyone who knows the seed
    knows the roles (the job logs it as insecure)."""
    return hashlib.sha256(f"podlt-role-seed:{seed}".encode()).digest()


def commitment(key: bytes) -> str:
    """What the run publishes before its first iteration: binding, and hiding for a random key."""
    return hashlib.sha256(b"podlt-role-key:" + key).hexdigest()


def parse_key(text) -> bytes:
    """A key as written (hex); ValueError if it is not one."""
    if not isinstance(text, str) or len(text) != 2 * KEY_BYTES:
        raise ValueError(f"{text!r} is not a {KEY_BYTES}-byte hex key")
    return bytes.fromhex(text)


def generator(key: bytes, iteration: int, stream: str = PLAN, index: int = 0):
    """The numpy Generator of one iteration's draws in `stream` (index: which check's rechecks)."""
    mac = hmac.new(key, f"podlt-roles:{iteration}:{stream}:{index}".encode(), hashlib.sha256)
    return np.random.default_rng(np.frombuffer(mac.digest(), np.uint32).tolist())


def plan(key: bytes, iteration: int, active, n_controls: int, start: int, stop: int,
         checks: int = 1) -> schedule.Plan:
    """The iteration's plan: the active ranks (in rank order) shuffled, then roles and lines
    (schedule.plan_iteration), all from the key's PLAN stream."""
    rng = generator(key, iteration)
    order = schedule.shuffle(sorted(active), rng)
    return schedule.plan_iteration(order, n_controls, start, stop, rng, checks)


def recheck_order(key: bytes, iteration: int, index: int, candidates) -> list:
    """The order in which check number `index` of the iteration asks further ranks (`candidates`,
    in rank order) to recompute a disputed fragment."""
    return schedule.shuffle(sorted(candidates), generator(key, iteration, RECHECK, index))


def read_revealed(obj) -> dict:
    """{commitment: key} from a run's KEY_FILE contents; ValueError where an entry is not a key
    or does not open its commitment."""
    if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
        raise ValueError(f"{KEY_FILE} is not an object with a list of keys")
    out = {}
    for entry in obj["keys"]:
        if not isinstance(entry, dict):
            raise ValueError(f"{KEY_FILE} holds {entry!r}, not a key")
        key = parse_key(entry.get("key"))
        if commitment(key) != entry.get("commitment"):
            raise ValueError(f"a key in {KEY_FILE} does not open its commitment "
                             f"{entry.get('commitment')!r}")
        out[entry["commitment"]] = key
    return out
