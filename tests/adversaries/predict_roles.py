"""An adversary's rank, not our fault plugin: it runs the project's worker and rewrites, at the
message level, the gradient it sends (the honest one negated: as large as honest work, so the
look at unchecked answers lets it through and only a check can catch it) in every iteration in which it
predicts that it is not watched. It predicts its roles the way the roles were drawn before they
came from the manager's secret key: the schedule's own code on a generator seeded with --seed,
which every rank reads from its command line (issue 26 measured that such a rank was never
caught). Each cheat is reported on stderr as "adversary: cheated at iteration N".

    mpiexec -n N-1 python -m podlt_mpi ARGS : -n 1 python tests/adversaries/predict_roles.py ARGS
"""
import sys

import numpy as np

from podlt_mpi.core import schedule
from podlt_mpi.core.config import parse_args
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import tags
from rewrite import run_rewriting


def predicted_watched(argv, world: int, rank: int, iterations: int = 10_000) -> list:
    """Per iteration: whether the seed's generator makes `rank` a checked worker or a control,
    as if nobody were ever removed."""
    cfg = parse_args(argv)
    rng = np.random.default_rng([cfg.seed, 1])
    active, out = list(range(1, world)), []
    for it in range(iterations):
        order = sorted(active) if it == 0 else schedule.shuffle(active, rng)
        plan = schedule.plan_iteration(order, cfg.controls, 0, cfg.block_lines, rng,
                                       cfg.checks_per_iteration)
        out.append(rank in plan.controls or any(c == rank for c, _ in plan.checks))
    return out


def main(argv) -> int:
    comm = mpi.world()
    watched = predicted_watched(argv, comm.Get_size(), comm.Get_rank())

    def rewrite(tag, buf, it):
        if tag == tags.GRAD and 0 <= it < len(watched) and not watched[it]:
            print(f"adversary: cheated at iteration {it}", file=sys.stderr, flush=True)
            return (-buf).astype(np.float32)
        return None
    return run_rewriting(argv, rewrite)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
