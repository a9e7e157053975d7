"""The report: figures and a summary whose every number is the run's own, from a finished run,
from a crashed one (torn ledger, no summary.json), and one clear error for a bad directory."""
import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest
from jobs import ROOT, RUN_TIMEOUT, read_json, read_jsonl, run_job

from podlt_mpi.core import records as ledger_records
from podlt_mpi.tools import report

pytestmark = pytest.mark.slow

FIGURES = ("loss.png", "checks.png", "credits.png", "throughput.png")


def run_report(*args):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "report", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    # ranks 1..5; rank 3 flips signs from iteration 1 and is caught; 8 iterations, 2 evaluations
    out = str(tmp_path_factory.mktemp("report") / "run")
    r = run_job(6, ["--data", small_data["train"], "--test-data", small_data["test"],
                    "--out", out, "--block-lines", "200", "--blocks", "8", "--eval-every", "4",
                    "--fake-ranks", "3", "--fake-mode", "sign-flip", "--fake-from", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def reported(run_dir):
    r = run_report(run_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def crashed_copy(run_dir, dst):
    """The run's text files, as a crash leaves them: no summary.json, a torn last ledger line."""
    os.makedirs(dst)
    for name in ("config.json", "metrics.jsonl", "ledger.jsonl"):
        shutil.copy(os.path.join(run_dir, name), dst)
    with open(os.path.join(dst, "ledger.jsonl"), "rb+") as f:
        f.seek(-40, os.SEEK_END)
        f.truncate()
    return str(dst)


def test_report_writes_four_pngs_and_the_summary(run_dir, reported):
    folder = os.path.join(run_dir, "report")
    for name in FIGURES:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    with open(os.path.join(folder, "summary.txt")) as f:
        assert f.read().strip() == reported.stdout.strip()
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp")]  # no temp file left


def test_every_number_in_the_summary_is_the_runs(run_dir, reported):
    s = read_json(os.path.join(run_dir, "summary.json"))
    secs = [r["seconds"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]
    lines = reported.stdout.splitlines()
    assert s["iterations"] == s["total_iterations"] == 8
    assert [r["rank"] for r in s["removed"]] == [3]
    gone = s["removed"][0]
    c = s["checks"]
    for want in (f"run dir       {run_dir}", f"status        {s['status']}",
                 f"ranks         {s['ranks']} on cpu",
                 f"iterations    {s['iterations']} of {s['total_iterations']}",
                 f"wall time     {s['wall_time_s']:.1f} s",
                 f"useful        {s['useful_samples_per_s']:,.1f} samples/s",
                 f"final loss    {s['final_loss']:.4f}",
                 f"test          loss {s['test_loss']:.4f}, accuracy {s['test_accuracy']:.4f}",
                 f"checks        {c['agree']} agree, {c['fake']} fake, {c['dispute']} dispute",
                 f"removed       rank 3 at iteration {gone['iteration']} (as {gone['role']})",
                 f"s/iteration   mean {statistics.fmean(secs):.4f}, median "
                 f"{statistics.median(secs):.4f} (over {len(secs)} metrics rows)"):
        assert want in lines, (want, lines)
    for name in FIGURES:
        assert f"figure        {os.path.join(run_dir, 'report', name)}" in lines


def test_timelines_follow_the_ledger(run_dir):
    records = read_jsonl(os.path.join(run_dir, "ledger.jsonl"))
    tl = report.timelines(ledger_records.parse(records).records)
    # every rank that held the checked fragment, as worker, control or recheck, and no other
    want = {(a["rank"], rec["iteration"], a["role"]) for rec in records for a in rec["assignments"]
            if a["lines"] == rec["check"]["lines"]}
    assert {(r, it, role) for r, events in tl.items() for it, role, _ in events} == want
    caught = next(rec for rec in records if rec["removed"])
    assert caught["removed"] == [3]
    assert (caught["iteration"], "caught") in [(it, o) for it, _, o in tl[3]]
    assert all(it <= caught["iteration"] for it, _, _ in tl[3])  # no work after removal
    assert all(o != "caught" for r in tl if r != 3 for _, _, o in tl[r])


def test_without_summary_json_the_numbers_come_from_the_ledger_and_metrics(run_dir, tmp_path):
    s = read_json(os.path.join(run_dir, "summary.json"))
    full = report.summarise(report.load(run_dir))
    os.makedirs(tmp_path / "copy")
    for name in ("config.json", "metrics.jsonl", "ledger.jsonl"):
        shutil.copy(os.path.join(run_dir, name), tmp_path / "copy")
    alone = report.summarise(report.load(str(tmp_path / "copy")))
    assert not alone["from_summary"] and full["from_summary"]
    for key in ("iterations", "total_iterations", "ranks", "checks", "removed", "credits",
                "final_loss", "test_accuracy", "test_loss"):
        assert alone[key] == full[key] == s[key], key


def test_a_torn_ledger_line_still_gives_a_report(run_dir, tmp_path):
    crashed = crashed_copy(run_dir, tmp_path / "crashed")
    out = tmp_path / "figures"
    r = run_report(crashed, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no summary.json" in r.stdout and "skipped       1 unreadable line(s)" in r.stdout
    assert {*FIGURES, "summary.txt"} <= set(os.listdir(out))
    assert not os.path.exists(os.path.join(crashed, "report"))  # --out: nothing beside the run


@pytest.mark.parametrize("case", ["missing", "empty", "metrics only"])
def test_a_bad_run_dir_is_one_line_exit_2_and_nothing_written(case, tmp_path):
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "metrics only":
        (target / "metrics.jsonl").write_text("")
    before = sorted(os.listdir(tmp_path))
    r = run_report(target)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("podlt_mpi report: error: ") and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before
    assert case == "missing" or not os.path.exists(target / "report")


def test_without_matplotlib_one_sentence_says_how_to_install_it(run_dir, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert report.main([run_dir, "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "figs")


def test_a_time_split_in_the_metrics_adds_a_stacked_figure(run_dir, tmp_path):
    crashed = crashed_copy(run_dir, tmp_path / "crashed")
    rows = read_jsonl(os.path.join(crashed, "metrics.jsonl"))
    for with_time in (False, True):
        with open(os.path.join(crashed, "metrics.jsonl"), "w") as f:
            for row in rows:  # unknown keys are ignored; `time` (seconds by part) is optional
                row.pop("time", None)
                if with_time:
                    row["time"] = {"exchange": row["seconds"] / 2, "update": row["seconds"] / 2}
                f.write(json.dumps({**row, "unknown": [1]}) + "\n")
        r = run_report(crashed, "--out", tmp_path / str(with_time))
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.path.exists(tmp_path / str(with_time) / "time.png") == with_time
