"""The ledger's typed records (core/records.py): one schema for the writer and every reader, and
runs written before it (tests/data/format1, format2, format4, format5 with the portable
kernels, and format6 in tolerance mode on mixed kernels) still audited, reported and
resumed."""
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from jobs import ROOT, run_job
from tiers import full_but

from podlt_mpi.core import digests, ledger, records

OLD = os.path.join(ROOT, "tests", "data", "format1")
# runs written by earlier versions, by ledger format: (folder, the arrays' hash)
OLD_RUNS = {1: ("format1", "sha256"), 2: ("format2", "blake3"), 4: ("format4", "blake3"),
            5: ("format5", "blake3"), 6: ("format6", "blake3")}
TOLERANCE = {6}  # the stored runs in tolerance mode: replayed by their sketches
HELPERS = os.path.join(ROOT, "tests", "helpers")
# The kernels the stored runs were written with (tests/data/format*/README.md), on an AMD EPYC
# (Zen 2). They recorded none: they were written before core/portable.py. MKL's AVX2 branch
# holds on Intel processors only, so on an Intel machine, or another AMD one, these runs may
# not replay bit for bit: the audit then says "not reproducible here", which is no failure.
AVX2_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.fixture(params=sorted(OLD_RUNS), ids=lambda f: f"format{f}")
def old_run(request, tmp_path):
    """A copy of a run an earlier version wrote (its config names train.h5 relatively); its
    format as `old_run.format`."""
    shutil.copytree(os.path.join(ROOT, "tests", "data", OLD_RUNS[request.param][0]), tmp_path,
                    dirs_exist_ok=True)
    run = OldRun(tmp_path)
    run.format = request.param
    return run


# the stored runs: each is audited; the current format's is resumed, and reports a record of an
# unknown format (the other formats: full tier)
FORMAT_5_FIRST_TIER = pytest.mark.parametrize("old_run", full_but(sorted(OLD_RUNS), 5),
                                              ids=lambda f: f"format{f}", indirect=True)


class OldRun(type(pathlib.Path())):
    """A folder that knows the ledger format of the run it holds."""


# the stored runs train a user's model: the audit imports it only when named (issue 27)
ALLOW = ("--model", "usermodels:regressor")


def tool(*args, cwd):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", *args], cwd=cwd, timeout=300,
                          capture_output=True, text=True,
                          env={**os.environ, **AVX2_PINS,
                               "PYTHONPATH": os.pathsep.join([HELPERS, ROOT])})


def audit_json(run) -> dict:
    with open(os.path.join(run, "audit.json")) as f:
        return json.load(f)


def test_every_old_record_reads_and_writes_back_to_the_same_bytes():
    kept = records.load(os.path.join(OLD, "run", "ledger.jsonl"))
    assert kept.errors == {} and not kept.torn and len(kept) == 6
    assert kept.chain_problems() == []
    for raw, rec in zip(kept.raw, kept.records, strict=True):
        assert rec.format == 1
        assert ledger.canonical(rec.to_json()) == ledger.canonical(raw)
    # the parts are typed: what the run did, read as attributes
    first = kept.records[0]
    assert first.removed == (2,) and first.check.verdict == "fake" and first.check.fake == (2,)
    assert [c.verdict for r in kept.records[1:] for c in r.checks] == ["agree"] * 5
    assert all(isinstance(a, records.Assignment) for r in kept.records for a in r.assignments)
    assert [r.checkpoint is not None for r in kept.records] == [True, True, False, True, False,
                                                                True]


def base() -> dict:
    return records.load(os.path.join(OLD, "run", "ledger.jsonl")).raw[0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("model_after"), "the record lacks model_after"),
    (lambda d: d.update(surprise=1), "fields format 1 does not know: surprise"),
    (lambda d: d.update(iteration="0"), "iteration is '0', not an integer"),
    (lambda d: d.update(iteration=True), "iteration is True, not an integer"),
    (lambda d: d.update(lines=[0, 1, 2]), "lines is [0, 1, 2], not [start, stop]"),
    (lambda d: d.update(loss="low"), "loss is 'low', not a number or null"),
    (lambda d: d["assignments"][0].update(role="boss"), "role is 'boss', not one of worker"),
    (lambda d: d["check"].update(verdict="maybe"), "verdict is 'maybe', not one of agree"),
    (lambda d: d["check"].update(referee={"by": "manager"}), "a referee step lacks agrees"),
    (lambda d: d.update(format=records.FORMAT + 1),
     f"says it is format {records.FORMAT + 1}; this version reads format "
     + ", ".join(map(str, records.FORMATS))),
    (lambda d: d["assignments"][0].update(role="manager"), "role is 'manager', not one of"),
    (lambda d: d["assignments"][0].update(loss=1.0), "an assignment of format 1 has a loss"),
    (lambda d: d.update(digest="blake3"), "a format 1 record has no digest field"),
    (lambda d: d.update(format=1), "says it is format 1"),  # format 1 carries no key
])
def test_a_malformed_record_is_one_sentence(edit, message):
    d = base()
    edit(d)
    with pytest.raises(records.RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        records.Record.from_json(d)


def format2() -> dict:
    """The old run's first record as this version writes it: BLAKE3, under format 2's keys."""
    rec = records.Record.from_json(base())
    return dataclasses.replace(rec, format=2, digest=digests.BLAKE3).to_json()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("digest"), "the record lacks digest"),
    (lambda d: d.update(digest="md5"), "the record's digest is 'md5', not one of sha256, blake3"),
    (lambda d: d.update(data_sha256=d.pop("data_digest")), "the record lacks data_digest"),
    (lambda d: d["assignments"][0].update(grad_sha256="0"), "format 2 does not know: grad_sha256"),
])
def test_a_malformed_format_2_record_is_one_sentence(edit, message):
    d = format2()
    assert records.Record.from_json(d).to_json() == d  # as written, it reads back
    edit(d)
    with pytest.raises(records.RecordError, match=message):
        records.Record.from_json(d)


def test_format_2_names_its_hash_and_its_digests_for_what_they_are():
    d = format2()
    assert d["format"] == 2 and d["digest"] == "blake3"
    assert "data_digest" in d and "data_sha256" not in d
    assert all("grad_digest" in a and "grad_sha256" not in a for a in d["assignments"])
    with pytest.raises(records.RecordError, match="format 1 digests with sha256"):
        dataclasses.replace(records.Record.from_json(base()), digest=digests.BLAKE3)


def test_optional_fields_are_absent_not_null():
    """So that format 1's bytes never change: a record without extra checks, checkpoint or
    format has none of those keys."""
    d = base()
    rec = records.Record.from_json(d)
    rec.checkpoint, rec.prev, rec.hash = None, None, None
    out = rec.to_json()
    assert not {"extra_checks", "checkpoint", "prev", "hash", "format", "digest"} & set(out)
    rec.format = 2
    assert rec.to_json()["format"] == 2


@FORMAT_5_FIRST_TIER
def test_a_record_of_an_unknown_format_is_reported_at_its_iteration(old_run):
    """A ledger resealed with a record of a format this version does not read: the chain holds,
    and the audit names the record and why, instead of failing on a missing key."""
    path = os.path.join(old_run, "run", "ledger.jsonl")
    raw = records.load(path).raw
    raw[3]["format"] = records.FORMAT + 1
    prev, lines = ledger.GENESIS, []
    for d in raw:
        d = ledger.seal(d, prev)
        prev = d["hash"]
        lines.append(ledger.canonical(d).decode())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = tool("audit", "run", *ALLOW, "--json", "audit.json", cwd=old_run)
    assert r.returncode == 1, r.stderr
    rep = audit_json(old_run)
    structure = [p for p in rep["problems"] if p["check"] == "structure"]
    assert structure and structure[0]["iteration"] == 3
    assert f"format {records.FORMAT + 1}; this version reads format 1, 2" in \
        structure[0]["message"]
    assert not [p for p in rep["problems"] if p["check"] == "chain"]


def replayed(rep: dict, iterations: int) -> None:
    """An old run's audit passed: every iteration reproduced bit for bit, or, on a machine
    whose kernels compute otherwise, each one that did not was found so on fragments its ranks
    had agreed on, and said to be "not reproducible here" instead of blaming a rank."""
    rp = rep["replay"]
    assert rep["passed"] and rep["problems"] == [] and rep["fake_contributions"] == []
    # an iteration after one not reproducible here, with no checkpoint to restart from, cannot
    # be replayed at all (an Intel processor: MKL_CBWR's AVX2 branch holds there, and these runs
    # were written on an AMD one, where it does not)
    assert rp["replayed"] + len(rp["skipped"]) == iterations
    assert not rp["skipped"] or rp["unreproducible"] and rep["kernels_differ"] is None, rp
    near = rp["within_tolerance"]  # tolerance mode: by the sketches; exact mode: none
    if rep["kernels_differ"] is not None:  # it recorded its kernels: replayed here
        assert rep["verdict"] == "passed" and rp["verified"] + near == iterations, rep
    if rp["unreproducible"]:
        assert rep["verdict"] == "not reproducible here" and rep["kernels_differ"] is None
        assert any(n.startswith("not reproducible here:") for n in rep["notes"])
    assert rp["verified"] + near + len(rp["unreproducible"]) == rp["replayed"], rp


def test_an_old_run_is_audited_bit_for_bit_and_reported(old_run):
    r = tool("audit", "run", "--all", *ALLOW, "--json", "audit.json", cwd=old_run)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = audit_json(old_run)
    replayed(rep, 6)
    assert rep["removed"] == [{"rank": 2, "iteration": 0}]
    if old_run.format in TOLERANCE:  # rank 3's answers differ in their bits: within tolerance
        assert rep["replay"]["within_tolerance"] >= 1 and rep["replay"]["verdicts_confirmed"] == 6
        assert 0 < rep["replay"]["tolerance_used"] < 1
    else:
        assert rep["replay"]["within_tolerance"] == 0
    r = tool("report", "run", cwd=old_run)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(old_run, "run", "report", "summary.txt")) as f:
        summary = f.read()
    assert "rank 2 at iteration 0 (as worker)" in summary


@pytest.mark.slow
@pytest.mark.timeout(300)
@FORMAT_5_FIRST_TIER
def test_an_old_run_is_resumed_and_its_records_kept(old_run):
    """Into a second epoch. Rank 2, removed before, still runs in the new job: it is stopped at
    once (before, it waited for work until its 600 s timeout)."""
    before = open(os.path.join(old_run, "run", "ledger.jsonl"), "rb").read()
    r = run_job(5, ["--resume", "run", "--blocks", "10", "--epochs", "2"], cwd=old_run,
                path=[HELPERS], timeout=120, env=AVX2_PINS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ranks [2] stay removed" in r.stderr
    after = open(os.path.join(old_run, "run", "ledger.jsonl"), "rb").read()
    assert after.startswith(before) and after.count(b"\n") == 10
    kept = records.load(os.path.join(old_run, "run", "ledger.jsonl"))
    assert kept.errors == {} and kept.chain_problems() == []
    assert all(2 not in {a.rank for a in rec.assignments} for rec in kept.records[6:])
    # it goes on in the format of the record it continues: one hash along the chain of weights,
    # and the update's arithmetic of that format (the weighted mean, not the fold)
    assert {(rec.format, rec.digest) for rec in kept.records} == \
        {(old_run.format, OLD_RUNS[old_run.format][1])}
    if old_run.format in TOLERANCE:  # the first job's kernels kept, the resume's beside them
        with open(os.path.join(old_run, "run", "config.json")) as f:
            cfg = json.load(f)
        assert cfg["compute"][3]["capability"] == "DEFAULT"
        assert cfg["resumed"][-1]["from_iteration"] == 6
        assert [c["capability"] for c in cfg["resumed"][-1]["compute"]] == ["AVX2"] * 5
    r = tool("audit", "run", "--all", *ALLOW, "--json", "audit.json", cwd=old_run)
    assert r.returncode == 0, r.stdout + r.stderr
    replayed(audit_json(old_run), 10)
