"""Shared by the end-to-end tests of users' models and tasks (test_user_models, test_tasks):
launching with tests/helpers on the path, `audit --all`, the protocol records of a ledger, and
honest runs made once per key."""
import os
import subprocess
import sys

from jobs import ROOT, RUN_TIMEOUT, read_json, read_jsonl, run_job

HELPERS = os.path.join(ROOT, "tests", "helpers")
sys.path.insert(0, HELPERS)  # the single-process reference builds the same models here


def job(ranks, argv, **kw):
    """A job with tests/helpers on the path and, for a new run, the roles' key from --role-seed
    0 (as job_args does), so that a resumed run can be held against the one done in one go
    record by record; a resume takes its key from the checkpoint."""
    argv = [str(a) for a in argv]
    if "--resume" not in argv and "--role-seed" not in argv:
        argv += ["--role-seed", "0"]
    return run_job(ranks, argv, path=[HELPERS], **kw)


def audit_all(out, iterations=8):
    r = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(out), "--all",
                        "--trust-config"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([HELPERS, ROOT])})
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    assert f"{iterations} reproduced bit for bit" in r.stdout, r.stdout
    return r.stdout


def protocol_records(out):
    """Ledger records without what legitimately differs: hashes and checkpoint fingerprints."""
    return [{k: v for k, v in rec.items() if k not in ("hash", "prev", "checkpoint")}
            for rec in read_jsonl(out / "ledger.jsonl")]


def made_once(tmp_path_factory, launch):
    """get(key): the run directory of `launch(key, out)` (ranks, argv), run the first time."""
    made = {}

    def get(key):
        if key not in made:
            out = tmp_path_factory.mktemp(key) / "run"
            ranks, argv = launch(key, out)
            r = job(ranks, argv)
            assert r.returncode == 0, r.stdout + r.stderr
            made[key] = out
        return made[key]
    return get


def cheater_is_removed(ranks, argv, fake, mode):
    """A run of `argv` with rank `fake` cheating in `mode`: it is removed, and no other rank, with
    no dispute. Returns the run's summary."""
    r = job(ranks, [*map(str, argv), "--fake-ranks", str(fake), "--fake-mode", mode])
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_json(os.path.join(argv[argv.index("--out") + 1], "summary.json"))
    assert [x["rank"] for x in s["removed"]] == [fake], s["removed"]
    assert s["checks"]["dispute"] == 0, s["checks"]
    return s
