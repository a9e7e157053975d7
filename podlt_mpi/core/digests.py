"""The ledger's content digests (the data, the weights, every answer): which hash, and hashing
off the manager's critical path. Pure, no MPI.

A record of format 1 digests with sha256; format 2 and later say which hash they use in
`digest`, and this version writes BLAKE3 (a standard cryptographic hash, several times faster
than sha256 on these arrays; measured: benchmarks/RESULTS.md, "The ledger's hashing (issue 18,
first step)"). The hash chain of the records themselves stays sha256: records are a
few KB, the arrays are the model's size times the ranks.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from podlt_mpi.core import sketch

SHA256, BLAKE3 = "sha256", "blake3"
ALGORITHMS = (SHA256, BLAKE3)
WRITTEN = BLAKE3  # what new records use


def new(alg: str, threads: int = 1):
    """A fresh hasher with update/copy/hexdigest. `threads`: BLAKE3 may split one large input
    over this many threads (sha256 cannot)."""
    if alg == SHA256:
        return hashlib.sha256()
    if alg == BLAKE3:
        import blake3
        return blake3.blake3(max_threads=max(1, threads))
    raise ValueError(f"unknown digest {alg!r}; known: {', '.join(ALGORITHMS)}")


def update(h, *arrays):
    """Feed arrays' C-order bytes, in order, without copying contiguous ones."""
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h


def of_arrays(alg: str, *arrays, threads: int = 1) -> str:
    """One digest over several arrays' bytes, in order (a block's x and y)."""
    return update(new(alg, threads), *arrays).hexdigest()


def done(value) -> Future:
    """A future that already holds `value` (a digest there is nothing to compute for)."""
    f = Future()
    f.set_result(value)
    return f


class Seal(NamedTuple):
    """What the ledger keeps of one answer: its digest and, in tolerance mode, its sketch
    (sketch.py); both None for a refused answer."""
    digest: str | None
    sketch: sketch.Sketch | None = None


REFUSED = Seal(None)


class Pool:
    """Hashes arrays on background threads while the caller goes on (the manager: while the
    other answers still arrive). Both hashlib and blake3 release the GIL on large inputs, so
    the threads use cores that the manager's own thread, waiting on MPI, leaves idle."""

    def __init__(self, alg: str, threads: int):
        """`threads`: the cores this rank may use (mpi.comm.cores)."""
        self.alg = alg
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="digest")
        self.codes = None  # tolerance mode: this iteration's sketch codes (sketch.codes)

    def submit(self, *arrays) -> Future:
        """The digest of `arrays`, later; the arrays must not change until it is done."""
        return self._pool.submit(of_arrays, self.alg, *arrays)

    def answer(self, grad) -> Future:
        """The Seal of an answer, later: its digest and, where `codes` are set, its sketch."""
        codes = self.codes
        return self._pool.submit(self._seal, grad, codes)

    def _seal(self, grad, codes) -> Seal:
        digest = of_arrays(self.alg, grad)
        if codes is None:
            return Seal(digest)
        return Seal(digest, sketch.of(grad, codes, lambda *a: of_arrays(self.alg, *a)))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
