"""What the protocol guarantees, in closed form. Pure.

One iteration with A active ranks, K controls per check and M checks (--checks-per-iteration):
the last MK of a uniform shuffle are controls, W = A - MK are workers, M of them (uniformly)
are checked, each by its own K controls. A cheating rank is caught exactly when it takes part
in a check: as a checked worker (probability (W/A)(M/W) = M/A) or as a control (MK/A). So a rank
that cheats with probability q per iteration is caught with probability

    p = q M (K + 1) / A                                 per iteration,

the iterations until it is caught are geometric (mean 1/p, the catching one included), it
survives E iterations with probability (1 - p)^E, and before it is caught it gets

    E[unverified fake contributions] = q (W - M) / (A p) = (W - M) / (M (K + 1))

fragments applied without a check (it cheats as an unchecked worker with probability
q (W - M) / A in each of the (1 - p) / p iterations expected before the catching one, given
that iteration does not catch it). The checks cost MK extra fragments on W: MK / W. Colluders that return the same wrong gradient gain nothing
while the manager referees removals (verify.referee), unless all K + 1 participants of a check
are colluders: then the check agrees and nobody is caught. A colluder is caught in an iteration
with probability p (1 - C(F-1, K) / C(A-1, K)) for F colluders.

Removals shrink A, so these hold exactly while A is constant (a single fake, or A >> F).
"""
from __future__ import annotations

import math


def catch_probability(active: int, controls: int = 2, cheat_prob: float = 1.0,
                      checks: int = 1) -> float:
    return min(1.0, cheat_prob * checks * (controls + 1) / active)


def expected_iterations(active: int, controls: int = 2, cheat_prob: float = 1.0,
                        checks: int = 1) -> float:
    """Mean iterations until a cheater is caught, the catching iteration included."""
    return 1.0 / catch_probability(active, controls, cheat_prob, checks)


def survival(iterations: int, active: int, controls: int = 2, cheat_prob: float = 1.0,
             checks: int = 1) -> float:
    """Probability that a cheater is still not caught after this many iterations."""
    return (1.0 - catch_probability(active, controls, cheat_prob, checks)) ** iterations


def expected_unverified(active: int, controls: int = 2, checks: int = 1) -> float:
    """Mean fake fragments applied without a check before the cheater is caught (any q > 0)."""
    workers = active - checks * controls
    return (workers - checks) / (checks * (controls + 1))


def collusion_catch_probability(active: int, colluders: int, controls: int = 2,
                                cheat_prob: float = 1.0) -> float:
    """Per iteration, for one of `colluders` ranks returning the same wrong gradient."""
    fooled = math.comb(colluders - 1, controls) / math.comb(active - 1, controls)
    return catch_probability(active, controls, cheat_prob) * (1.0 - fooled)


def overhead(active: int, controls: int = 2, checks: int = 1) -> float:
    """Extra compute of the checks: M*K fragments on top of W workers' (M*K / W)."""
    return checks * controls / (active - checks * controls)
