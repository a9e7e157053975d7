"""python -m podlt_mpi report RUN_DIR [--out DIR]: figures and a text summary of a run.

One process, no MPI, reads only the run's files (so it works on a stopped or crashed run, and
while another job runs). Writes loss.png, checks.png, credits.png, throughput.png (and time.png
when metrics rows carry a `time` split) and summary.txt into RUN_DIR/report/; prints the summary.
Reading and summarising are pure functions; plotting is apart, so tests need no matplotlib.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

from podlt_mpi.compute import devices
from podlt_mpi.core import credits, ledger, records, rules, schedule
from podlt_mpi.core.tasks import FIGURES, figures_text
from podlt_mpi.io import atomic

OUTCOMES = {"agree": ("tab:green", "o"), "caught": ("tab:red", "X"), "dispute": ("tab:orange", "D")}


class ReportError(Exception):
    """Bad input: one sentence on stderr, exit 2."""


# ---- reading and summarising (pure) --------------------------------------------------------

def read_rows(path: str) -> tuple:
    """(rows, skipped): ledger.read's records of any JSON-lines file of the run; a line a crash
    cut off, or any unreadable line, is skipped, not fatal."""
    rows, torn = ledger.read(path)
    good = [r for r in rows if "unreadable" not in r]
    return good, len(rows) - len(good) + int(torn)


def load(run_dir: str) -> dict:
    if not os.path.isdir(run_dir):
        raise ReportError(f"{run_dir} " + ("is not a directory" if os.path.exists(run_dir) else
                                           "does not exist"))
    for name in ("ledger.jsonl", "metrics.jsonl"):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise ReportError(f"{run_dir} holds no {name}: not a run directory")
    run = {"dir": run_dir, "config": {}, "summary": None}
    try:
        kept = records.load(os.path.join(run_dir, "ledger.jsonl"))
        run["ledger"] = kept.readable()
        run["skipped_ledger"] = len(kept.errors) + int(kept.torn)
        run["metrics"], run["skipped_metrics"] = read_rows(os.path.join(run_dir, "metrics.jsonl"))
        for key in ("config", "summary"):  # both optional: a crash may leave no summary.json
            if os.path.exists(os.path.join(run_dir, key + ".json")):
                with open(os.path.join(run_dir, key + ".json"), encoding="utf-8") as f:
                    run[key] = json.load(f)
    except (OSError, ValueError) as e:
        raise ReportError(f"{run_dir} is not readable: {e}") from None
    if not run["ledger"] and not run["metrics"]:
        raise ReportError(f"{run_dir} has not recorded any iteration yet")
    return run


def timelines(records) -> dict:
    """{rank: [(iteration, role, outcome)]} for every check a rank took part in, as checked
    worker, control or recheck; outcome is `caught` for a rank the check found fake, `dispute`
    for an unresolved check, else `agree` (it sided with the majority)."""
    out = {}
    for rec in records:
        for a in rec.assignments:
            c = credits.check_of(a, rec.checks)
            if c is None:
                continue
            outcome = ("caught" if a.rank in c.fake else
                       "dispute" if c.verdict == "dispute" else "agree")
            out.setdefault(a.rank, []).append((rec.iteration, a.role, outcome))
    return out


def removals(records) -> list:
    """[{rank, iteration, role}] from the ledger, as summary.json would list them."""
    out = []
    for rec in records:
        checked = {c.worker for c in rec.checks}
        controls = {a.rank for a in rec.role_of("control")}
        for r in rec.removed:
            out.append({"rank": r, "iteration": rec.iteration,
                        "role": rules.removed_role(r, checked, controls)})
    return out


def summarise(run: dict) -> dict:
    """The numbers the report prints: summary.json's where it exists, else the ledger's and the
    metrics' (a crashed run has no summary.json)."""
    cfg, s, rows, recs = run["config"], run["summary"] or {}, run["metrics"], run["ledger"]
    secs = [r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))]
    evals = [r for r in rows if r.get("test_loss") is not None]
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    total = s.get("total_iterations")
    if total is None and {"train_lines", "block_lines", "epochs"} <= set(cfg):
        total = schedule.total_iterations(cfg["train_lines"][1] - cfg["train_lines"][0],
                                          cfg["block_lines"], cfg["epochs"], cfg.get("blocks"))
    ranks = s.get("ranks", cfg.get("world_size"))
    wall = s.get("wall_time_s", sum(secs) if secs else None)
    useful = sum(r.get("applied_lines") or 0 for r in rows)
    return {
        "run_dir": run["dir"], "from_summary": bool(run["summary"]),
        "status": s.get("status", "no summary.json (crashed or still running)"),
        "stopped_by": s.get("stopped_by"), "ranks": ranks,
        "devices": devices.summary(cfg["devices"]) if cfg.get("devices") else "cpu",
        "iterations": s.get("iterations", max(len(recs), len(rows))), "total_iterations": total,
        "wall_time_s": wall,
        "useful_samples_per_s": s.get("useful_samples_per_s", useful / wall if wall else None),
        "useful_tokens_per_s": s.get("useful_tokens_per_s"),
        "final_loss": s.get("final_loss", losses[-1] if losses else None),
        **{k: s[k] if k in s else evals[-1].get(k) if evals else None for k in FIGURES},
        "checks": s.get("checks") or credits.verdict_counts(recs),
        "removed": s.get("removed", removals(recs)),
        "credits": s.get("credits") or credits.from_ledger(recs, range(1, ranks or 1)),
        "mean_s": statistics.fmean(secs) if secs else None,
        "median_s": statistics.median(secs) if secs else None, "timed_rows": len(secs),
        "skipped": run["skipped_ledger"] + run["skipped_metrics"],
    }


def fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def text(sm: dict, figures) -> str:
    status = sm["status"] + (f" (by {sm['stopped_by']})" if sm["stopped_by"] else "")
    if not sm["from_summary"]:
        status += ": numbers below come from the ledger and metrics"
    c = sm["checks"]
    lines = [f"run dir       {sm['run_dir']}", f"status        {status}",
             f"ranks         {fmt(sm['ranks'], 'd')} on {sm['devices']}",
             f"iterations    {sm['iterations']} of {fmt(sm['total_iterations'], 'd', '?')}",
             f"wall time     {fmt(sm['wall_time_s'], '.1f')} s"
             + ("" if sm["from_summary"] else " (sum of the iterations' seconds)"),
             f"useful        {fmt(sm['useful_samples_per_s'], ',.1f')} samples/s"
             + (f" ({sm['useful_tokens_per_s']:,.0f} tokens/s)" if sm.get("useful_tokens_per_s")
                else ""),
             f"final loss    {fmt(sm['final_loss'], '.4f')}",
             f"test          {figures_text(sm) or 'not evaluated'}",
             f"checks        {c['agree']} agree, {c['fake']} fake, {c['dispute']} dispute",
             "removed       " + (", ".join(f"rank {r['rank']} at iteration {r['iteration']} "
                                           f"(as {r['role']})" for r in sm["removed"]) or "none"),
             f"s/iteration   mean {fmt(sm['mean_s'], '.4f')}, median {fmt(sm['median_s'], '.4f')}"
             f" (over {sm['timed_rows']} metrics rows)"]
    if sm["skipped"]:
        lines.append(f"skipped       {sm['skipped']} unreadable line(s) (a crash tears the last)")
    return "\n".join(lines + [f"figure        {p}" for p in figures])


# ---- plotting (matplotlib, Agg: no display needed) -----------------------------------------

def figure(rows=1, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend
    fig = Figure(figsize=(9, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def save(fig, path: str) -> str:
    with atomic.replacing(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png", dpi=110)
    return path


def plot_loss(rows, path):
    fig, (top, bottom) = figure(2, 3.2)
    top.plot([r["iteration"] for r in rows if r.get("loss") is not None],
             [r["loss"] for r in rows if r.get("loss") is not None], lw=1, label="training loss")
    ev = [r for r in rows if r.get("test_loss") is not None]
    if ev:
        top.plot([r["iteration"] for r in ev], [r["test_loss"] for r in ev], "s--",
                 ms=4, label="test loss")
    top.set(title="Loss", ylabel="loss")
    top.legend()
    # the task's second figure: accuracy (classes), else bits per byte (a language model)
    key = next((k for k in ("test_accuracy", "test_bits_per_byte")
                if any(r.get(k) is not None for r in ev)), None)
    name = FIGURES[key] if key else "accuracy"
    if key:
        bottom.plot([r["iteration"] for r in ev if r.get(key) is not None],
                    [r[key] for r in ev if r.get(key) is not None], "o-", c="tab:green")
    why = "" if key else " (never evaluated)" if not ev else " (not defined for this task)"
    bottom.set(title="Test " + name + why, xlabel="iteration", ylabel=name)
    return save(fig, path)


def plot_checks(tl: dict, removed, ranks, last: int, path):
    fig, (ax,) = figure(1, max(3.0, 0.35 * len(ranks) + 1.5))
    for outcome, (colour, marker) in OUTCOMES.items():
        pts = [(it, r) for r in tl for it, _, o in tl[r] if o == outcome]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colour, marker=marker,
                   s=28 if outcome == "agree" else 60, label=f"{outcome} ({len(pts)})",
                   zorder=2 if outcome == "agree" else 3)  # the rare outcomes stay on top
    for i, r in enumerate(removed):  # from removal on a rank gets no more work: grey it out
        ax.hlines(r["rank"], r["iteration"], last, colors="lightgrey", lw=6, zorder=1,
                  label="removed" if i == 0 else None)
        ax.scatter([r["iteration"]], [r["rank"]], marker="|", s=300, c="black", zorder=4)
    ax.set(title="Checks per rank (as checked worker, control or recheck)", xlabel="iteration",
           ylabel="rank", yticks=ranks)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return save(fig, path)


def plot_credits(table: dict, path):
    fig, (ax,) = figure(1)
    ranks = sorted(table, key=int)
    x = np.arange(len(ranks))
    for k, key in enumerate(("computed", "verified", "rejected")):
        ax.bar(x + (k - 1) * 0.27, [table[r][key] for r in ranks], 0.27, label=key)
    for i, r in enumerate(ranks):
        if table[r]["removed_at"] is not None:
            ax.axvspan(i - 0.45, i + 0.45, color="tab:red", alpha=0.12, zorder=0)
    ax.set_xticks(x, [r + (f"\nremoved @{table[r]['removed_at']}" if table[r]["removed_at"]
                           is not None else "") for r in ranks])
    ax.set(title="Credits per rank (removed ranks shaded)", xlabel="rank", ylabel="fragments")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return save(fig, path)


def plot_throughput(rows, path):
    fig, (ax,) = figure(1)
    pts = [(r["iteration"], r["samples_per_s"]) for r in rows if r.get("samples_per_s") is not None]
    it, v = np.array([p[0] for p in pts]), np.array([p[1] for p in pts], float)
    ax.plot(it, v, lw=0.8, alpha=0.5, label="per iteration")
    w = min(25, max(2, len(v) // 10))
    if len(v) >= w:
        ax.plot(it[w - 1:], np.convolve(v, np.ones(w) / w, "valid"), lw=2,
                label=f"rolling mean ({w} iterations)")
    ax.set(title="Useful throughput (applied lines / iteration time)", xlabel="iteration",
           ylabel="samples/s")
    ax.legend()
    return save(fig, path)


def plot_time(rows, path):
    timed = [r for r in rows if isinstance(r.get("time"), dict)]
    # evaluation is not training, and its spikes would flatten every other part to nothing
    parts = sorted({k for r in timed for k in r["time"]} - {"eval"})
    series = [[r["time"].get(k) or 0.0 for r in timed] for k in parts]
    fig, (ax,) = figure(1)
    ax.stackplot([r["iteration"] for r in timed], series,
                 labels=[f"{k} (mean {statistics.fmean(v) * 1e3:.1f} ms)"
                         for k, v in zip(parts, series, strict=True)])
    ax.set(title="Manager's time per iteration, by part (evaluation left out)",
           xlabel="iteration", ylabel="seconds")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return save(fig, path)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m podlt_mpi report",
                                description="Figures and a text summary of a run, from its files.")
    p.add_argument("run_dir", help="the run directory (--out of the run)")
    p.add_argument("--out", metavar="DIR", help="folder for the figures and summary.txt "
                   "(default: RUN_DIR/report)")
    a = p.parse_args(argv)
    out = a.out or os.path.join(a.run_dir, "report")
    try:
        run = load(a.run_dir)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ReportError(f"--out {out} exists and is not a directory")
        try:
            import matplotlib  # noqa: F401  checked before anything is written
        except ImportError:
            raise ReportError("the report draws with matplotlib: pip install matplotlib") from None
    except ReportError as e:
        print(f"podlt_mpi report: error: {e}", file=sys.stderr)
        return 2
    sm = summarise(run)
    rows, recs = run["metrics"], run["ledger"]
    last = max([r.iteration for r in recs] + [r.get("iteration", 0) for r in rows] or [0])
    ranks = sorted({int(r) for r in sm["credits"]} | {x.rank for rec in recs
                                                       for x in rec.assignments})
    figures = [plot_loss(rows, os.path.join(out, "loss.png")),
               plot_checks(timelines(recs), sm["removed"], ranks, last,
                           os.path.join(out, "checks.png")),
               plot_credits(sm["credits"], os.path.join(out, "credits.png")),
               plot_throughput(rows, os.path.join(out, "throughput.png"))]
    if any(isinstance(r.get("time"), dict) for r in rows):
        figures.append(plot_time(rows, os.path.join(out, "time.png")))
    report = text(sm, figures)
    with atomic.replacing(os.path.join(out, "summary.txt")) as tmp, \
            open(tmp, "w", encoding="utf-8") as f:
        f.write(report + "\n")
    print(report)
    return 0
