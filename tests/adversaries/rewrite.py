"""What the adversaries here share: run the project's worker with its sends rewritten at the
message level. rewrite(tag, array, iteration) returns the array to send instead, or None to
send the honest one; `iteration` is the one the worker's last header named (-1 before any).
A rewrite that takes a fourth argument is also told the destination rank."""
import inspect

import numpy as np

from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import tags


def run_rewriting(argv, rewrite) -> int:
    real_isend, real_irecv = mpi.isend, mpi.irecv
    seen = {"header": None, "keep": []}
    with_dest = len(inspect.signature(rewrite).parameters) == 4

    def irecv(c, buf, source, tag):
        if tag == tags.HEADER:
            seen["header"] = buf  # the worker's header buffer: [command, iteration, ...]
        return real_irecv(c, buf, source, tag)

    def isend(c, buf, dest, tag):
        it = int(seen["header"][1]) if seen["header"] is not None else -1
        lie = rewrite(tag, np.asarray(buf), it, dest) if with_dest else \
            rewrite(tag, np.asarray(buf), it)
        if lie is not None:
            buf = np.ascontiguousarray(lie)
            seen["keep"] = [*seen["keep"][-1:], buf]  # alive until the sends complete
        return real_isend(c, buf, dest, tag)

    mpi.isend, mpi.irecv = isend, irecv
    from podlt_mpi.__main__ import main as job
    return job(argv)
