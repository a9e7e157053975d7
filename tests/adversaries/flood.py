"""An adversary's rank that floods rank 0: before its answer in iteration FLOOD_AT (default 1)
it sends FLOOD_N (20,000) messages of FLOOD_BYTES (4 KB) on tag FLOOD_TAG (99, which rank 0
never receives), all at once; otherwise it works honestly. Reports "adversary: flooded N".

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/flood.py ARGS : ...
"""
import os
import sys

import numpy as np

from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import tags


def main(argv) -> int:
    at, n = int(os.environ.get("FLOOD_AT", "1")), int(os.environ.get("FLOOD_N", "20000"))
    size, tag = int(os.environ.get("FLOOD_BYTES", "4096")), int(os.environ.get("FLOOD_TAG", "99"))
    real_isend, real_irecv = mpi.isend, mpi.irecv
    seen = {"header": None, "done": False, "keep": []}

    def irecv(c, buf, source, t):
        if t == tags.HEADER:
            seen["header"] = buf
        return real_irecv(c, buf, source, t)

    def isend(c, buf, dest, t):
        it = int(seen["header"][1]) if seen["header"] is not None else -1
        if t == tags.GRAD and it >= at and not seen["done"]:
            junk = np.zeros(size, np.uint8)
            seen["keep"] = [junk, [real_isend(c, junk, 0, tag) for _ in range(n)]]
            seen["done"] = True
            print(f"adversary: flooded {n}", file=sys.stderr, flush=True)
        return real_isend(c, buf, dest, t)

    mpi.isend, mpi.irecv = isend, irecv
    from podlt_mpi.__main__ import main as job
    return job(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
