"""The sbatch scripts in slurm/, submitted to a real Slurm cluster (slurmctld + slurmd).

They need `sbatch` and a cluster that answers (SLURM_CONF); slurm/local-cluster/start.sh starts a
one-node one, and .ci/run does. Every `sbatch --wait` runs under a timeout, and success is read
from the job's own log and run directory, not from the exit code alone (sbatch --wait returns 0
for a job cancelled while it was pending).
"""
import os
import re
import shutil
import subprocess
import time

import mpi_impls
import pytest
from jobs import ROOT, read_json

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = os.path.join(ROOT, "slurm", "podlt.sbatch")
GPU_SCRIPT = os.path.join(ROOT, "slurm", "podlt-gpu.sbatch")
SUBMIT_TIMEOUT = 400  # seconds for one sbatch --wait, requeues included
NAME = "podlt-test"    # every job these tests submit, so that none outlives them


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None:
        mpi_impls.unavailable("slurm", "Slurm is not installed (sbatch not found); "
                              "slurm/local-cluster/install.sh installs it")
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not {"idle", "mixed", "allocated"} & set(r.stdout.split()):
        mpi_impls.unavailable("slurm", "no Slurm cluster answers (SLURM_CONF="
                              f"{os.environ.get('SLURM_CONF', 'unset')}); start one with "
                              "slurm/local-cluster/start.sh")
    yield
    # A test that failed or timed out may leave its job behind: cancel it.
    subprocess.run(["scancel", f"--name={NAME}"], capture_output=True, timeout=60)


def job_env(impl, **settings):
    """The submitting environment: this MPI's Python first on PATH (and the other's mpiexec off
    it), podlt_mpi importable, and the PODLT_* settings the script reads."""
    other = os.path.dirname(mpi_impls.get("mpich").python) if impl.name == "openmpi" else None
    path = [d for d in impl.environ()["PATH"].split(os.pathsep) if d != other]
    return {**impl.environ(), "PATH": os.pathsep.join(path), "PYTHONPATH": ROOT,
            "PODLT_PYTHON": impl.python, **settings}


def submit(tasks, env, log, wait=True, script=SCRIPT, options=()):
    """sbatch a script; with wait, block until it ends (requeues included)."""
    cmd = ["sbatch", "--parsable", f"--job-name={NAME}", f"--ntasks={tasks}", "--time=30:00",
           f"--output={log}", *options, *(["--wait"] if wait else []), script]
    if not wait:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(";")[0]
    return subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=SUBMIT_TIMEOUT)


# The reference and the preempted runs: 96 iterations of 200 lines (12 per epoch). A signal
# sent after iteration 15 then lands with about 80 iterations to go, several seconds even on an
# idle machine; each iteration more costs every one of these four jobs a quarter second.
EPOCHS = 8
ITERATIONS = 12 * EPOCHS


def args(small_data, epochs):
    return (f"--data {small_data['train']} --test-data {small_data['test']} --block-lines 200 "
            f"--epochs {epochs} --checkpoint-every 10")


def read(path):
    with open(path) as f:
        return f.read()


def assert_complete(out, log_text, tasks, library):
    s = read_json(os.path.join(out, "summary.json"))
    assert s["status"] == "complete", log_text
    assert not s["removed"]
    cfg = read_json(os.path.join(out, "config.json"))
    assert cfg["world_size"] == tasks
    assert library in cfg["versions"]["mpi"]
    assert f"ledger head {s['ledger_head']}" in log_text


@pytest.fixture(scope="module")
def reference(cluster, small_data, tmp_path_factory):
    """podlt.sbatch with 8 tasks, launched the default way (MPICH's mpiexec), in one go."""
    folder = tmp_path_factory.mktemp("slurm-ref")
    out, log = str(folder / "run"), str(folder / "job.out")
    env = job_env(mpi_impls.get("mpich"), PODLT_OUT=out, PODLT_ARGS=args(small_data, EPOCHS))
    r = submit(8, env, log)
    assert r.returncode == 0, r.stderr + read(log)
    return out, read(log)


def test_sbatch_with_8_tasks_completes_and_the_run_passes_the_audit(reference):
    out, log = reference
    assert_complete(out, log, 8, "MPICH")
    assert "mpiexec -n 8" in log
    head = read_json(os.path.join(out, "summary.json"))["ledger_head"]
    r = subprocess.run([mpi_impls.get("mpich").python, "-m", "podlt_mpi", "audit", out,
                        "--sample", "3", "--expect-head", head],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("impl,launch,tasks", [
    ("mpich", "srun --mpi=pmi2", 6),
    ("openmpi", "mpirun", 5),
    ("openmpi", "srun --mpi=pmix", 4),
])
def test_each_launch_mode_gives_a_correct_run(cluster, small_data, tmp_path, impl, launch,
                                              tasks):
    impl = mpi_impls.get(impl)
    out, log = str(tmp_path / "run"), str(tmp_path / "job.out")
    r = submit(tasks, job_env(impl, PODLT_OUT=out, PODLT_LAUNCH=launch,
                              PODLT_ARGS=args(small_data, 1)), log)
    assert r.returncode == 0, r.stderr + read(log)
    assert_complete(out, read(log), tasks, "Open MPI" if impl.name == "openmpi" else "MPICH")


def test_the_gpu_script_runs_the_same_job(cluster, small_data, tmp_path):
    # This node has no GPUs: ask for none. The script puts every rank on CUDA, so the job must
    # refuse at once (exit 2, one line, nothing written); with PODLT_DEVICE=auto it trains.
    out, log = str(tmp_path / "run"), str(tmp_path / "job.out")
    options = ["--gpus-per-task=0", "--cpus-per-task=1"]
    env = job_env(mpi_impls.get("mpich"), PODLT_OUT=out, PODLT_ARGS=args(small_data, 1))
    r = submit(4, env, log, script=GPU_SCRIPT, options=options)
    text = read(log)
    assert r.returncode == 2, r.stderr + text
    assert text.count("podlt_mpi: error: --device cuda, but rank 0 sees no CUDA device") == 1
    assert "Traceback" not in text and not os.path.exists(out)
    log = str(tmp_path / "job-auto.out")
    r = submit(4, {**env, "PODLT_DEVICE": "auto"}, log, script=GPU_SCRIPT, options=options)
    assert r.returncode == 0, r.stderr + read(log)
    assert_complete(out, read(log), 4, "MPICH")


def test_srun_without_an_mpi_plugin_exits_2_with_one_message(cluster, small_data, tmp_path):
    out, log = str(tmp_path / "run"), str(tmp_path / "job.out")
    r = submit(4, job_env(mpi_impls.get("mpich"), PODLT_OUT=out, PODLT_LAUNCH="srun --mpi=none",
                          PODLT_ARGS=args(small_data, 1)), log)
    text = read(log)
    assert r.returncode == 2, r.stderr + text
    assert text.count("podlt_mpi: error: srun started 4 processes, but each one is alone") == 1
    assert "srun --mpi=pmi2" in text and "Traceback" not in text
    assert not os.path.exists(out)


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _iterations(out):
    try:
        with open(os.path.join(out, "ledger.jsonl")) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _ended(job):
    """Whether the job has ended for good (a requeued job goes back to PENDING instead)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                       timeout=30)
    if "Invalid job id" in r.stderr:
        return True  # ended and already purged (MinJobAge)
    state = re.search(r"JobState=(\w+)", r.stdout)
    return bool(state) and state.group(1) in ENDED


@pytest.mark.parametrize("impl,how", [("mpich", "scontrol requeue"),
                                      ("mpich", "scancel --signal=USR1 --batch"),
                                      ("openmpi", "scontrol requeue")])
def test_preemption_checkpoints_and_the_requeued_job_resumes_to_the_same_model(
        cluster, small_data, tmp_path, reference, impl, how):
    impl = mpi_impls.get(impl)
    out, log = str(tmp_path / "run"), str(tmp_path / "job.out")
    launch = {"mpich": "mpiexec -n 8", "openmpi": "mpirun"}[impl.name]
    env = job_env(impl, PODLT_OUT=out, PODLT_LAUNCH=launch, PODLT_ARGS=args(small_data, EPOCHS))
    job = submit(8, env, log, wait=False)
    _wait_for(lambda: _iterations(out) >= 15, 180, "15 iterations")
    subprocess.run([*how.split(), job], check=True, timeout=30)
    # The requeued job starts again once its old credentials expire (cred_expire in
    # slurm/local-cluster/slurm.conf.in: 10 s; Slurm's default is 2 minutes).
    _wait_for(lambda: _ended(job), SUBMIT_TIMEOUT, f"job {job} to end")
    text = read(log)
    # The requeued job continued from the checkpoint written on the signal, after iteration 15
    # or later; the last periodic one (--checkpoint-every 10) was at 10.
    resumed = read_json(os.path.join(out, "config.json"))["resumed"]
    assert len(resumed) == 1 and 15 <= resumed[0]["from_iteration"] < ITERATIONS, text
    stops = re.findall(r"podlt_mpi: stopped by (SIG\w+) after iteration (\d+)", text)
    if impl.name == "mpich":  # Open MPI's mpirun stops relaying output once it is terminating
        # On a requeue Slurm's TERM and the USR1 that the script passes on race to the ranks:
        # whichever arrives first stops the job, and both take the same path.
        signals = ("SIGUSR1",) if "USR1" in how else ("SIGTERM", "SIGUSR1")
        assert len(stops) == 1 and stops[0][0] in signals, text
        assert stops[0][1] == str(resumed[0]["from_iteration"] - 1), text
    assert re.search(r"job \d+ \(restart 1\), 8 tasks, .*--resume " + re.escape(out), text)
    assert_complete(out, text, 8, "Open MPI" if impl.name == "openmpi" else "MPICH")
    with open(os.path.join(out, "model_final.pt"), "rb") as f, \
            open(os.path.join(reference[0], "model_final.pt"), "rb") as g:
        assert f.read() == g.read()
