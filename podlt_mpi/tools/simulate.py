"""python -m podlt_mpi simulate: the protocol's decisions at any scale, without MPI or training.

Each iteration runs the manager's own code (schedule.shuffle, schedule.roles, verify.decide,
verify.referee) on stand-in gradients: one float each, 0 for honest work, a rank's own value
for an independent cheat, one shared value for colluders. Reports how many iterations each
fake survives and how many of its fragments were applied unverified before it was caught, next
to the closed form of guarantees.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from podlt_mpi.core import guarantees, rules, schedule, verify

HONEST = np.zeros(1, np.float32)
COLLUDED = np.full(1, -1.0, np.float32)


def run_trial(ranks: int, fakes: int, iterations: int, controls: int = 2,
              cheat_prob: float = 1.0, collude: bool = False, seed: int = 0,
              checks: int = 1) -> dict:
    """One run: {fake rank: (iteration caught or None, unverified contributions)} and honest
    ranks removed (must stay empty)."""
    sched = np.random.default_rng([seed, 1])
    pick = np.random.default_rng([seed, 2])
    active = list(range(1, ranks))
    fake = {int(r) for r in pick.choice(active, size=fakes, replace=False)}
    caught, unverified, honest_removed = {}, {r: 0 for r in fake}, []
    for it in range(iterations):
        if len(active) < rules.min_active(controls, checks) or len(caught) == fakes:
            break
        order = sorted(active) if it == 0 else schedule.shuffle(active, sched)
        busy, ctrl, checked = schedule.roles(order, controls, len(order), sched, checks)
        cheating = {r for r in fake if r not in caught and pick.random() < cheat_prob}
        for r in cheating - {*checked, *ctrl}:
            unverified[r] += r in busy  # applied without a check
        for i, c in enumerate(checked):
            votes = {r: (COLLUDED if collude else np.full(1, r, np.float32)) if r in cheating
                     else HONEST for r in (c, *ctrl[i * controls:(i + 1) * controls])}
            decision = verify.referee(verify.decide(votes), votes, HONEST)
            for r in decision.fake:
                active.remove(r)
                if r in fake:
                    caught[r] = it
                else:
                    honest_removed.append(r)
            if decision.verdict == "agree" and c in cheating:
                unverified[c] += 1  # a check made only of colluders: fooled
    return {"fakes": {r: (caught.get(r), unverified[r]) for r in sorted(fake)},
            "honest_removed": honest_removed}


def summarize(values) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values, float)
    return {"n": len(v), "mean": float(v.mean()), "sem": float(v.std(ddof=1) / np.sqrt(len(v)))
            if len(v) > 1 else 0.0, "median": float(np.median(v)),
            "p90": float(np.quantile(v, 0.9)), "max": float(v.max())}


def simulate(ranks: int, fakes: int, iterations: int, controls: int = 2, cheat_prob: float = 1.0,
             collude: bool = False, trials: int = 1, seed: int = 0, checks: int = 1) -> dict:
    to_catch, unverified, survived, honest = [], [], 0, []
    for t in range(trials):
        res = run_trial(ranks, fakes, iterations, controls, cheat_prob, collude, seed * 100003 + t,
                        checks)
        honest += res["honest_removed"]
        for caught, n in res["fakes"].values():
            if caught is None:
                survived += 1
            else:
                to_catch.append(caught + 1)  # iterations until caught, the catching one included
                unverified.append(n)
    active = ranks - 1
    closed = {"catch_probability": guarantees.catch_probability(active, controls, cheat_prob,
                                                                 checks),
              "expected_iterations": guarantees.expected_iterations(active, controls, cheat_prob,
                                                                     checks),
              "survival": guarantees.survival(iterations, active, controls, cheat_prob, checks),
              "expected_unverified": guarantees.expected_unverified(active, controls, checks),
              "overhead": guarantees.overhead(active, controls, checks)}
    if collude and fakes > 1:
        closed["collusion_catch_probability"] = guarantees.collusion_catch_probability(
            active, fakes, controls, cheat_prob)
    return {"ranks": ranks, "fakes": fakes, "iterations": iterations, "controls": controls,
            "checks": checks,
            "cheat_prob": cheat_prob, "collude": collude, "trials": trials,
            "iterations_to_catch": summarize(to_catch),
            "unverified_contributions": summarize(unverified),
            "survived": survived / (fakes * trials), "honest_removed": honest,
            "closed_form": closed}


def text(r: dict) -> str:
    c, it, un = r["closed_form"], r["iterations_to_catch"], r["unverified_contributions"]
    lines = [f"{r['ranks']} ranks, {r['fakes']} fake(s) "
             f"{'colluding' if r['collude'] else 'independent'}, cheating with p={r['cheat_prob']}"
             f", {r['checks']} check(s) of {r['controls']} controls, {r['iterations']} iterations "
             f"x {r['trials']} trials"]
    if it["n"]:
        lines.append(f"  iterations until caught (of those caught): mean {it['mean']:.1f} +- {it['sem']:.1f} "
                     f"(closed form {c['expected_iterations']:.1f}), median {it['median']:.0f}, "
                     f"p90 {it['p90']:.0f}, max {it['max']:.0f}")
        lines.append(f"  unverified fake fragments applied before that: mean {un['mean']:.1f} "
                     f"+- {un['sem']:.1f} (closed form {c['expected_unverified']:.1f}), "
                     f"p90 {un['p90']:.0f}")
    lines.append(f"  not caught within {r['iterations']} iterations: {r['survived']:.3f} "
                 f"(closed form for one cheater {c['survival']:.3f})")
    lines.append(f"  honest ranks removed: {len(r['honest_removed'])}; compute overhead of the "
                 f"checks: {100 * c['overhead']:.2f}%")
    return "\n".join(lines)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m podlt_mpi simulate", description=__doc__.split(
        "\n")[0])
    p.add_argument("--ranks", type=int, required=True, help="world size, manager included")
    p.add_argument("--fakes", type=int, default=1)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--controls", type=int, default=2)
    p.add_argument("--checks-per-iteration", type=int, default=1, dest="checks",
                   help="workers checked per iteration, each by its own controls")
    p.add_argument("--cheat-prob", type=float, default=1.0, help="a fake cheats with this "
                   "probability in each iteration (intermittent cheater below 1)")
    p.add_argument("--mode", choices=("independent", "collude"), default="independent",
                   help="collude: every fake returns the same wrong gradient")
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON ('-': stdout)")
    a = p.parse_args(argv)
    problems = [m for bad, m in (
        (a.controls < 2, "--controls must be at least 2"),
        (a.checks < 1, "--checks-per-iteration must be at least 1"),
        (a.ranks < 1 + rules.min_active(a.controls, a.checks),
         f"--ranks must be at least {1 + rules.min_active(a.controls, a.checks)}"),
        (not 0 < a.fakes < a.ranks, "--fakes must be between 1 and ranks - 1"),
        (a.iterations < 1 or a.trials < 1, "--iterations and --trials must be at least 1"),
        (not 0 < a.cheat_prob <= 1, "--cheat-prob must be in (0, 1]")) if bad]
    if problems:
        print(f"podlt_mpi simulate: error: {problems[0]}", file=sys.stderr)
        return 2
    t = time.monotonic()
    r = simulate(a.ranks, a.fakes, a.iterations, a.controls, a.cheat_prob, a.mode == "collude",
                 a.trials, a.seed, a.checks)
    r["seconds"] = time.monotonic() - t
    if a.json == "-":
        print(json.dumps(r, indent=2))
        return 0
    print(text(r) + f"\n  ({r['seconds']:.1f} s)")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
    return 0
