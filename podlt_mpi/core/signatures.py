"""Ed25519 signatures on the slices one rank sends another in the ranks' reduction (reduction.py).

A slice an aggregator cannot open under its sender's committed root is either the sender's lie
(equivocation: it committed to one answer and sent another) or the aggregator's (it flags an
honest input). Point to point, nothing tells the two apart, unless the sender signs what it
sends: then a slice that does not open, under a valid signature, is the sender's own statement
against its commitment, and the manager removes it on that evidence alone. A slice whose
signature does not verify proves nothing about anyone (the aggregator could have made it up),
and is treated as one that never came. Each rank makes its key at start-up and reports the
public half to rank 0 (run/startup.py). Only the manager checks signatures (an aggregator
keeps what does not open, as it came, for the manager to judge), so no other rank needs the
keys.

What is signed is a statement of 35 + 32 x (depth + 1) bytes, never the values themselves:
"slice j of the answer of fragment seed s, in iteration i, has this Merkle leaf, under this
path", which is all the manager needs to check it against the root.
"""
from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_BYTES, SIGNATURE_BYTES = 32, 64
NO_KEY = bytes(KEY_BYTES)  # a rank that failed at start-up reports none
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class Signer:
    """This rank's key, made fresh for the run (never written anywhere)."""

    def __init__(self):
        self._key = Ed25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(*_RAW)

    def sign(self, statement: bytes) -> bytes:
        return self._key.sign(statement)


def statement(iteration: int, j: int, seed: int, leaf: bytes, path) -> bytes:
    """What a sender signs for slice j of its answer of fragment `seed`."""
    return b"podlt-slice" + struct.pack("<qqQ", iteration, j, seed) + leaf + b"".join(path)


def verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `public`'s on `message` (False for a key that is no key)."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
