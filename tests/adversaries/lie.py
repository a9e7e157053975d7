"""An adversary's rank, not our fault plugin: it runs the project's worker and rewrites, at the
message level, every answer it sends from iteration LIE_FROM on (default 0), whatever its role:

    LIE=nan    the gradient all NaN          LIE=inf   all +Inf
    LIE=1000x  1000 times the honest one     LIE=loss  the honest gradient, with a loss of 0.001

Each lie is reported on stderr as "adversary: lied at iteration N".

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/lie.py ARGS : ...
"""
import os
import sys

import numpy as np

from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import tags

LIES = {
    "nan": (lambda g: np.full_like(g, np.nan), None),
    "inf": (lambda g: np.full_like(g, np.inf), None),
    "1000x": (lambda g: 1000 * g, None),
    "loss": (None, lambda a: np.array([0.001, *a[1:]], np.float64)),
}


def main(argv) -> int:
    grad_lie, loss_lie = LIES[os.environ["LIE"]]
    since = int(os.environ.get("LIE_FROM", "0"))
    real_isend, real_irecv = mpi.isend, mpi.irecv
    seen = {"header": None, "keep": []}

    def irecv(c, buf, source, tag):
        if tag == tags.HEADER:
            seen["header"] = buf  # the worker's header buffer: [command, iteration, ...]
        return real_irecv(c, buf, source, tag)

    def isend(c, buf, dest, tag):
        it = int(seen["header"][1]) if seen["header"] is not None else -1
        lie = {tags.GRAD: grad_lie, tags.LOSS: loss_lie}.get(tag)
        if lie is not None and it >= since:
            buf = np.ascontiguousarray(lie(np.asarray(buf)))
            seen["keep"].append(buf)  # alive until the send completes
            del seen["keep"][:-2]
            if tag == (tags.GRAD if grad_lie else tags.LOSS):
                print(f"adversary: lied at iteration {it}", file=sys.stderr, flush=True)
        return real_isend(c, buf, dest, tag)

    mpi.isend, mpi.irecv = isend, irecv
    from podlt_mpi.__main__ import main as job
    return job(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
