"""An adversary's rank, not our fault plugin: it runs the project's worker and rewrites, at the
message level, every answer it sends from iteration LIE_FROM on (default 0), whatever its role:

    LIE=nan    the gradient all NaN          LIE=inf   all +Inf
    LIE=1000x  1000 times the honest one     LIE=loss  the honest gradient, with a loss of 0.001
    LIE=long   one value too many            LIE=short one value too few
    LIE=signal NaN in the signal field       LIE=stop  a stop (SIGTERM) it never received
    LIE=silent stays alive and never sends   LIE=sigstop stops itself (SIGSTOP) instead of sending

Each lie is reported on stderr as "adversary: lied at iteration N".

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/lie.py ARGS : ...
"""
import os
import signal
import sys
import time

import numpy as np

from podlt_mpi.mpi import tags
from rewrite import run_rewriting

LIES = {
    "nan": (lambda g: np.full_like(g, np.nan), None),
    "inf": (lambda g: np.full_like(g, np.inf), None),
    "1000x": (lambda g: 1000 * g, None),
    "loss": (None, lambda a: np.array([0.001, *a[1:]], np.float64)),
    "long": (lambda g: np.append(g, np.float32(0)), None),
    "short": (lambda g: g[:-1], None),
    "signal": (None, lambda a: np.array([a[0], np.nan, a[2]], np.float64)),
    "stop": (None, lambda a: np.array([a[0], float(signal.SIGTERM), a[2]], np.float64)),
    "silent": (lambda g: _forever(), None),
    "sigstop": (lambda g: os.kill(os.getpid(), signal.SIGSTOP), None),
}


def _forever():
    while True:
        time.sleep(60)


def main(argv) -> int:
    grad_lie, loss_lie = LIES[os.environ["LIE"]]
    since = int(os.environ.get("LIE_FROM", "0"))

    def rewrite(tag, buf, it):
        lie = {tags.GRAD: grad_lie, tags.LOSS: loss_lie}.get(tag)
        if lie is None or it < since:
            return None
        if tag == (tags.GRAD if grad_lie else tags.LOSS):
            print(f"adversary: lied at iteration {it}", file=sys.stderr, flush=True)
            if os.environ["LIE"] == "sigstop":
                print("adversary: stopped", file=sys.stderr, flush=True)
        return lie(buf)
    return run_rewriting(argv, rewrite)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
