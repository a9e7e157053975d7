"""What the protocol guarantees, in closed form. Pure.

One iteration with A active ranks and K controls: the last K of a uniform shuffle are controls,
W = A - K are workers, one of them (uniformly) is checked, and the controls recompute its
fragment. A cheating rank is caught exactly when it takes part in the check: as the checked
worker (probability (W/A)(1/W) = 1/A) or as a control (K/A). So a rank that cheats with
probability q per iteration is caught with probability

    p = q (K + 1) / A                                   per iteration,

the iterations until it is caught are geometric (mean 1/p, the catching one included), it
survives E iterations with probability (1 - p)^E, and before it is caught it gets

    E[unverified fake contributions] = q (W - 1) / (A p) = (W - 1) / (K + 1)

fragments applied without a check (it cheats as an unchecked worker with probability
q (W - 1) / A in each of the (1 - p) / p iterations expected before the catching one, given
that iteration does not catch it). Colluders that return the same wrong gradient gain nothing
while the manager referees removals (verify.referee), unless all K + 1 participants of a check
are colluders: then the check agrees and nobody is caught. A colluder is caught in an iteration
with probability p (1 - C(F-1, K) / C(A-1, K)) for F colluders.

Removals shrink A, so these hold exactly while A is constant (a single fake, or A >> F).
"""
from __future__ import annotations

import math


def catch_probability(active: int, controls: int = 2, cheat_prob: float = 1.0) -> float:
    return min(1.0, cheat_prob * (controls + 1) / active)


def expected_iterations(active: int, controls: int = 2, cheat_prob: float = 1.0) -> float:
    """Mean iterations until a cheater is caught, the catching iteration included."""
    return 1.0 / catch_probability(active, controls, cheat_prob)


def survival(iterations: int, active: int, controls: int = 2, cheat_prob: float = 1.0) -> float:
    """Probability that a cheater is still not caught after this many iterations."""
    return (1.0 - catch_probability(active, controls, cheat_prob)) ** iterations


def expected_unverified(active: int, controls: int = 2) -> float:
    """Mean fake fragments applied without a check before the cheater is caught (any q > 0)."""
    workers = active - controls
    return (workers - 1) / (controls + 1)


def collusion_catch_probability(active: int, colluders: int, controls: int = 2,
                                cheat_prob: float = 1.0) -> float:
    """Per iteration, for one of `colluders` ranks returning the same wrong gradient."""
    fooled = math.comb(colluders - 1, controls) / math.comb(active - 1, controls)
    return catch_probability(active, controls, cheat_prob) * (1.0 - fooled)


def overhead(active: int, controls: int = 2) -> float:
    """Extra compute of the checks: K fragments on top of W workers' (K / W)."""
    return controls / (active - controls)
