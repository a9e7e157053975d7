"""Tolerance mode on ranks whose kernels differ, end to end (ledger format 6): honest ranks on
native kernels and on narrower ones (AVX2 beside AVX-512, or unvectorized beside AVX2) are never
removed, every fake mode is caught, and the audit replays every iteration by the answers'
sketches, within the run's tolerance, and fails a ledger whose sketch or digest was edited and
sealed anew."""
import functools
import os
import subprocess
import sys

import pytest
from fakes import GROUPS, assert_each_fake_removed_once_and_for_good, fake_spec
from forge import rechain
from jobs import ROOT, read_json, read_jsonl, run_job

from podlt_mpi.core import portable, records, sketch

pytestmark = [pytest.mark.slow, pytest.mark.full]
OTHER = os.path.join(ROOT, "tests", "helpers", "other_kernels.py")
# ranks 1 and 3 compute with other kernels than the rest, who compute natively (other_aten)
PINNED = {"OTHER_RANKS": "1,3",
          # the others as the machine chooses, not as this process is pinned (conftest)
          **{v: None for v in portable.VARIABLES}}
WORLD = 6


@functools.cache
def other_aten() -> str:
    """The ATen kernels ranks 1 and 3 are pinned to, other than the machine's native ones:
    AVX2 where ATen takes AVX-512, else ATen's unvectorized ones (a processor with AVX2 only,
    such as CI's AMD EPYC, where pinning AVX2 changed nothing and the runs had no other kernels
    in them). Asked of torch itself, in a process with nothing pinned: which vector unit ATen
    takes is its own rule, not the processor's flags'."""
    env = {k: v for k, v in os.environ.items() if k not in portable.VARIABLES}
    native = subprocess.run([sys.executable, "-c", "import torch; "
                             "print(torch.backends.cpu.get_cpu_capability())"],
                            capture_output=True, text=True, timeout=120, env=env, check=True)
    return "default" if native.stdout.strip() == "AVX2" else "avx2"


def args(small_data, out, *extra):
    return ["--data", small_data["train"], "--test-data", small_data["test"], "--out", str(out),
            "--block-lines", "200", "--kernels", "native", "--compare", "tolerance",
            "--role-seed", "0", *map(str, extra)]


def mixed(n, arguments):
    """The job with ranks 1 and 3 on other kernels than the rest (other_aten): their answers
    differ from the others' in their bits."""
    return run_job(n, arguments, program=OTHER, env={**PINNED, "OTHER_ATEN": other_aten()})


def differing(out) -> bool:
    caps = [c["capability"] for c in read_json(out / "config.json")["compute"]]
    return len(set(caps)) > 1


def audit(run):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(run), "--all",
                           "--json", str(run / "audit.json")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def honest(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sketch") / "run"
    return mixed(WORLD, args(small_data, out, "--epochs", 2, "--checkpoint-every", 4)), out


def test_honest_ranks_on_other_kernels_are_never_removed_and_every_answer_is_sketched(honest):
    r, out = honest
    assert r.returncode == 0, r.stderr[-3000:]
    assert differing(out)
    s = read_json(out / "summary.json")
    assert s["removed"] == [] and s["checks"]["fake"] == 0
    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == 24 and {rec["format"] for rec in ledger} == {records.FORMAT}
    for rec in ledger:
        for a in rec["assignments"]:
            sk = sketch.Sketch.from_json(a["sketch"])  # every answer, whole and well formed
            assert sk.norm > 0 and sk.nonfinite is None
    # the checks compared answers that differ in their bits: the pinned ranks' digests differ
    # from the others' for the same lines, and their sketches are near
    pinned = {1, 3}
    pairs = [(a, b) for rec in ledger for a in rec["assignments"] for b in rec["assignments"]
             if a["lines"] == b["lines"] and a["rank"] in pinned and b["rank"] not in pinned]
    assert pairs and all(a["grad_digest"] != b["grad_digest"] for a, b in pairs)
    for a, b in pairs:
        sa, sb = (sketch.Sketch.from_json(x["sketch"]) for x in (a, b))
        assert 0 < sketch.distance(sa, sb) <= sketch.HIGH * sketch.bound(sa, sb, 1e-5, 0)


def test_the_audit_replays_every_iteration_within_tolerance(honest):
    r, out = honest
    assert r.returncode == 0
    a = audit(out)
    assert a.returncode == 0, a.stdout + a.stderr
    rep = read_json(out / "audit.json")
    rp = rep["replay"]
    assert rep["verdict"] == "passed" and rep["problems"] == []
    assert rp["replayed"] == 24 and rp["skipped"] == [] and rp["unreproducible"] == []
    assert rp["within_tolerance"] + rp["verified"] == 24 and rp["within_tolerance"] > 0
    assert rp["verdicts_confirmed"] == 24
    # the replay goes on from its own update between checkpoints: measured at each, it is
    # near the run's weights, and the answers used a fraction of the tolerance
    drift = rp["checkpoint_drift"]
    assert drift and all(0 <= d < 1e-4 for d in drift.values()), drift
    assert 0 < rp["tolerance_used"] < 1
    assert "within the run's tolerance" in a.stdout


def edited_run(out, tmp_path, edit):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(out, run)
    rechain(run, edit)
    return run


def first_applied_from(recs, ranks):
    """(record, assignment) of the first applied fragment sent by one of `ranks`."""
    for rec in recs:
        for lines, r in zip(rec["applied"], rec["applied_from"]):
            if r in ranks:
                return rec, next(a for a in rec["assignments"]
                                 if a["rank"] == r and a["lines"] == lines)
    raise AssertionError(f"no fragment of ranks {ranks} was applied")


def test_an_edited_sketch_fails_the_audit(honest, tmp_path):
    """The sketch of an applied fragment from a pinned rank (whose bits the audit cannot
    reproduce) swapped for another fragment's: beyond the tolerance of the replay."""
    r, out = honest
    assert r.returncode == 0

    def edit(recs):
        rec, a = first_applied_from(recs, {1, 3})
        other = next(b for b in rec["assignments"] if b["lines"] != a["lines"])
        a["sketch"] = other["sketch"]

    a = audit(edited_run(out, tmp_path, edit))
    assert a.returncode == 1, a.stdout + a.stderr
    assert "beyond the run's tolerance" in a.stdout


def test_an_edited_gradient_digest_fails_the_audit(honest, tmp_path):
    """The digest of an applied fragment from a rank on this machine's kernels, at the first
    iteration (the run's own weights): its bits replay, so its digest must be the replay's."""
    r, out = honest
    assert r.returncode == 0

    def edit(recs):
        rec, a = first_applied_from(recs[:1], {2, 4, 5})
        a["grad_digest"] = "0" * 64

    a = audit(edited_run(out, tmp_path, edit))
    assert a.returncode == 1, a.stdout + a.stderr
    assert "on the rank's own kernels" in a.stdout


def test_an_edited_sketch_of_an_answer_whose_bits_replay_fails_the_audit(honest, tmp_path):
    r, out = honest
    assert r.returncode == 0

    def edit(recs):
        rec, a = first_applied_from(recs[:1], {2, 4, 5})
        sk = sketch.Sketch.from_json(a["sketch"])
        a["sketch"] = sketch.Sketch(sk.values, sk.norm * (1 + 1e-9)).to_json()

    a = audit(edited_run(out, tmp_path, edit))
    assert a.returncode == 1, a.stdout + a.stderr
    assert "is not that of the answer its digest names" in a.stdout


@pytest.mark.parametrize("modes", GROUPS, ids="+".join)
def test_each_fake_mode_is_caught_among_ranks_on_other_kernels(modes, small_data, tmp_path):
    """One fake per mode on the even ranks, the honest ones on the odd ranks, two of them (1
    and 3) on other kernels (other_aten); the fakes cheat from iteration 1. No honest rank is
    removed, each fake is, and the audit confirms every verdict."""
    modes_of = {2 * (i + 1): m for i, m in enumerate(modes)}
    spec = fake_spec(modes_of)
    out = tmp_path / "run"
    r = mixed(2 * len(modes) + 2, args(small_data, out, "--fake-ranks", spec["fake_ranks"],
                                       "--fake-mode", spec["fake_mode"], "--fake-from", 1,
                                       "--checkpoint-every", 1))
    assert r.returncode == 0, r.stdout + r.stderr
    assert differing(out)
    assert_each_fake_removed_once_and_for_good(str(out), modes_of)
    a = audit(out)
    assert a.returncode == 0, a.stdout + a.stderr
    rep = read_json(out / "audit.json")
    assert rep["problems"] == [] and rep["replay"]["unreproducible"] == []
    assert rep["replay"]["verdicts_confirmed"] >= 10 and rep["replay"]["within_tolerance"] >= 1
