"""Staging a test's first iteration: the roles the job will draw from --role-seed (the job's own
roles.plan, so a test can make the checked worker or a control a fake, and say so)."""
from podlt_mpi.core import roles


def first_plan(world: int, role_seed: int = 0, controls: int = 2, checks: int = 1):
    """Iteration 0's plan on `world` ranks (the lines are placeholders: roles do not depend on
    them while every worker has lines)."""
    return roles.plan(roles.key_from_seed(role_seed), 0, range(1, world), controls, 0, 1000,
                      checks)


def first_rechecks(world: int, role_seed: int = 0, controls: int = 2) -> list:
    """The order in which iteration 0's first check would ask further ranks."""
    plan = first_plan(world, role_seed, controls)
    worker, ctrl = plan.checks[0]
    return roles.recheck_order(roles.key_from_seed(role_seed), 0, 0,
                               [r for r in range(1, world) if r not in (worker, *ctrl)])
