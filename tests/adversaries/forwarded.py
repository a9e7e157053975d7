"""An honest rank below a lying forwarder: what MPI's broadcast brings this rank in iteration
FROM (default 1) is what a rank that forwards it made of it, where MPI's broadcast lets ranks
forward to ranks. The rank itself is honest; only its broadcast is tampered with:

    MODE=altered    one bit of the weights flipped on the way
    MODE=withheld   the weights never arrive

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/forwarded.py ARGS : ...
"""
import os
import sys

import numpy as np

from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import tags


class Tampered:
    """The real broadcast, as the rank sees it after a forwarder had its way."""

    def __init__(self, req, buffer, mode):
        self.req, self.buffer, self.mode, self.finished = req, buffer, mode, False

    def Test(self):  # noqa: N802
        if not self.finished and self.req.Test():
            self.finished = True
            np.asarray(self.buffer).view(np.uint8)[0] ^= 1
            print("adversary: the weights were altered on the way", file=sys.stderr, flush=True)
        return self.finished and self.mode == "altered"


def main(argv) -> int:
    mode, since = os.environ["MODE"], int(os.environ.get("FROM", "1"))
    real_ibcast, real_irecv = mpi.ibcast, mpi.irecv
    seen = {"header": None, "done": False}

    def irecv(c, buf, source, tag):
        if tag == tags.HEADER:
            seen["header"] = buf
        return real_irecv(c, buf, source, tag)

    def ibcast(group, buffer, root=0):
        req = real_ibcast(group, buffer, root)
        it = int(seen["header"][1]) if seen["header"] is not None else -1
        if it < since or seen["done"]:
            return req
        seen["done"] = True
        if mode == "withheld":
            print("adversary: the weights were withheld on the way", file=sys.stderr, flush=True)
        return Tampered(req, buffer, mode)

    mpi.ibcast, mpi.irecv = ibcast, irecv
    from podlt_mpi.__main__ import main as job
    return job(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
