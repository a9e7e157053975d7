"""The run's kernels end to end (core/portable.py): every rank computes with the portable ones
whatever its environment says, config.json records them and each rank's processor, ranks whose
kernels cannot agree are refused before the first iteration in exact mode, and an audit on a
machine that computes otherwise says so, under its own exit code, and blames no rank."""
import json
import os
import subprocess
import sys

import pytest
from jobs import ROOT, read_json, run_job

from podlt_mpi.core import portable

pytestmark = pytest.mark.slow
OTHER = os.path.join(ROOT, "tests", "helpers", "other_kernels.py")
WORLD = 5
# an environment that would choose other kernels than the portable ones on any machine
UNPINNED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "ALL"}


def audit(run, *args):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(run), "--all",
                           "--json", str(run / "audit.json"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def portable_run(small_data, tmp_path_factory):
    """A run started in an environment that asks for other kernels, one rank on a node with
    others still (tests/helpers/other_kernels.py)."""
    out = tmp_path_factory.mktemp("portable") / "run"
    args = ["--data", small_data["train"], "--test-data", small_data["test"], "--out", str(out),
            "--block-lines", "200", "--blocks", "3", "--role-seed", "0"]
    r = run_job(WORLD, args, adversary=(2, OTHER), env=UNPINNED)
    return r, out


def test_every_rank_computes_with_the_portable_kernels_and_the_run_records_them(portable_run):
    r, out = portable_run
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = read_json(out / "config.json")
    assert cfg["kernels"] == "portable" and cfg["kernel_settings"] == portable.PORTABLE
    assert len(cfg["compute"]) == WORLD
    for rank in cfg["compute"]:
        # read back from torch and MKL in each rank: the environment's choice did not hold
        assert rank["capability"] == "AVX2" and rank["aten"] == "avx2"
        assert rank["mkl_branch"] in ("COMPATIBLE,STRICT", "unknown")
        assert rank["threads"] == "1" and rank["torch"] == cfg["versions"]["torch"]
        assert set(rank["processor"]) == {"vendor", "model", "flags"}
        assert "avx2" in rank["processor"]["flags"].split()
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["status"] == "complete"


def test_the_audit_replays_with_the_run_s_kernels_whatever_its_environment(portable_run):
    r, out = portable_run
    assert r.returncode == 0
    a = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(out), "--all",
                        "--json", str(out / "audit.json")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, **UNPINNED, "PYTHONPATH": ROOT})
    assert a.returncode == 0, a.stdout + a.stderr
    rep = read_json(out / "audit.json")
    assert rep["verdict"] == "passed" and rep["replay"]["verified"] == 3
    assert rep["kernels_differ"] == []


def test_an_audit_on_other_kernels_cannot_reproduce_and_blames_no_rank(portable_run, tmp_path):
    """The run's record edited to ATen's unvectorized kernels: the replay computes other bits
    than the ranks agreed on. The audit says it cannot reproduce the run here (exit 3), with
    the difference, and finds no fake rank."""
    r, out = portable_run
    assert r.returncode == 0
    import shutil
    run = tmp_path / "run"
    shutil.copytree(out, run)
    cfg = read_json(run / "config.json")
    cfg["kernel_settings"]["ATEN_CPU_CAPABILITY"] = "default"
    (run / "config.json").write_text(json.dumps(cfg))
    a = audit(run)
    assert a.returncode == 3, a.stdout + a.stderr
    assert "CANNOT REPRODUCE ON THIS MACHINE" in a.stdout
    rep = read_json(run / "audit.json")
    assert rep["problems"] == [] and rep["fake_contributions"] == []
    assert rep["replay"]["unreproducible"] and rep["replay"]["verified"] == 0
    assert "capability: the run AVX2, here DEFAULT" in " ".join(rep["notes"])
    assert "never caught" not in a.stdout


def native(small_data, out) -> list:
    return ["--data", small_data["train"], "--test-data", small_data["test"], "--out", str(out),
            "--block-lines", "200", "--blocks", "3", "--kernels", "native"]


def test_ranks_whose_native_kernels_differ_are_refused_in_exact_mode(small_data, tmp_path):
    """Rank 2 on a node whose ATen kernels differ, with --kernels native: in exact mode the
    job refuses to start (before, it removed the honest rank as fake)."""
    out = tmp_path / "exact"
    r = run_job(WORLD, native(small_data, out), adversary=(2, OTHER))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "podlt_mpi: error: rank(s) 2 compute with other kernels than rank 0" in r.stderr
    assert "capability DEFAULT where rank 0 has" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(out)


@pytest.mark.full
def test_ranks_whose_native_kernels_differ_run_in_tolerance_mode_and_none_is_removed(
        small_data, tmp_path):
    out = tmp_path / "tolerance"
    r = run_job(WORLD, [*native(small_data, out), "--compare", "tolerance"],
                adversary=(2, OTHER))
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = read_json(out / "config.json")
    assert cfg["kernels"] == "native"
    assert [c["capability"] for c in cfg["compute"]].count("DEFAULT") == 1
    assert read_json(out / "summary.json")["removed"] == []
