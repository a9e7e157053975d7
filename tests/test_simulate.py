"""The simulation runs the manager's decision code and matches the closed form within
statistical error; it handles 10,000 ranks in seconds."""
import json
import math
import subprocess
import sys
import time

import pytest

from podlt_mpi.core import guarantees
from podlt_mpi.tools.simulate import simulate


def test_closed_form_values():
    assert guarantees.catch_probability(5, 2) == pytest.approx(3 / 5)
    assert guarantees.catch_probability(49, 4, 0.5) == pytest.approx(0.5 * 5 / 49)
    assert guarantees.expected_iterations(49) == pytest.approx(49 / 3)
    assert guarantees.survival(10, 49) == pytest.approx((1 - 3 / 49) ** 10)
    assert guarantees.expected_unverified(49, 2) == pytest.approx(46 / 3)
    assert guarantees.overhead(49, 2) == pytest.approx(2 / 47)
    assert guarantees.catch_probability(49, 2, 1.0, checks=3) == pytest.approx(9 / 49)
    assert guarantees.expected_unverified(49, 2, checks=3) == pytest.approx((43 - 3) / 9)
    assert guarantees.overhead(49, 2, checks=3) == pytest.approx(6 / 43)
    # all three of a check colluding fools it; with 2 colluders and 2 controls that cannot happen
    assert guarantees.collusion_catch_probability(49, 2) == guarantees.catch_probability(49)
    assert guarantees.collusion_catch_probability(49, 5) < guarantees.catch_probability(49)


def within(stats, expected, k=4):
    return abs(stats["mean"] - expected) <= k * stats["sem"] + 1e-9


@pytest.mark.parametrize("controls,q,checks", [(2, 1.0, 1), (2, 0.4, 1), (4, 1.0, 1), (2, 1.0, 3)])
def test_simulation_matches_the_closed_form(controls, q, checks):
    r = simulate(ranks=30, fakes=1, iterations=2000, controls=controls, cheat_prob=q,
                 trials=800, seed=1, checks=checks)
    c = r["closed_form"]
    assert r["survived"] == 0 and r["honest_removed"] == []
    assert within(r["iterations_to_catch"], c["expected_iterations"])
    assert within(r["unverified_contributions"], c["expected_unverified"])


def test_survival_probability_matches():
    n, iters = 1500, 8
    r = simulate(ranks=40, fakes=1, iterations=iters, trials=n, seed=2)
    s = r["closed_form"]["survival"]
    assert abs(r["survived"] - s) <= 4 * math.sqrt(s * (1 - s) / n)


def test_colluders_are_all_caught_and_no_honest_rank_is_removed():
    r = simulate(ranks=12, fakes=3, iterations=500, collude=True, trials=300, seed=3)
    assert r["honest_removed"] == [] and r["survived"] == 0


@pytest.mark.wallclock  # 1.4 s here with the suite running beside it: 20x margin
def test_ten_thousand_ranks_in_seconds():
    t = time.monotonic()
    r = simulate(ranks=10_001, fakes=3, iterations=400, trials=1, seed=4)
    assert time.monotonic() - t < 30
    assert r["honest_removed"] == []


def test_command_line():
    run = [sys.executable, "-m", "podlt_mpi", "simulate"]
    r = subprocess.run(run + ["--ranks", "20", "--iterations", "200", "--trials", "50",
                              "--json", "-"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["iterations_to_catch"]["n"] == 50
    r = subprocess.run(run + ["--ranks", "3", "--iterations", "5"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--ranks must be at least 4" in r.stderr
