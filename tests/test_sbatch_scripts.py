"""The sbatch scripts themselves: valid bash, the settings the issue of running on Slurm asks
for, and one body shared by the CPU and GPU scripts (each is a file users copy on its own)."""
import os
import subprocess

import pytest
from jobs import ROOT

CPU = os.path.join(ROOT, "slurm", "podlt.sbatch")
GPU = os.path.join(ROOT, "slurm", "podlt-gpu.sbatch")


def read(path):
    with open(path) as f:
        return f.read()


def headers(path):
    return [line.split(None, 1)[1].strip() for line in read(path).splitlines()
            if line.startswith("#SBATCH ")]


@pytest.mark.parametrize("path", [CPU, GPU])
def test_scripts_are_valid_bash_and_ask_for_preemption_handling(path):
    r = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    h = headers(path)
    for wanted in ("--signal=B:USR1@120", "--requeue", "--open-mode=append"):
        assert wanted in h
    assert any(x.startswith("--time=") for x in h)
    assert any(x.startswith("--output=") and "%j" in x for x in h)


def test_cpu_script_defaults_and_gpu_script_requests_gpus():
    assert {"--ntasks=50", "--cpus-per-task=1"} <= set(headers(CPU))
    assert "--gpus-per-task=1" in headers(GPU)


def test_gpu_script_runs_the_cpu_scripts_body():
    def body(path):
        text = read(path)
        return text[text.index("# From the environment"):]
    assert body(GPU) == body(CPU)


@pytest.mark.parametrize("path,device", [(CPU, None), (GPU, "cuda")])
def test_gpu_script_puts_every_rank_on_cuda(path, device, tmp_path):
    """The launch line the scripts build, with `echo` standing in for the MPI launcher."""
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_NTASKS": "3", "PODLT_LAUNCH": "echo",
           "PODLT_OUT": str(tmp_path / "run"), "PODLT_ARGS": "--epochs 2"}
    env.pop("PODLT_DEVICE", None)
    r = subprocess.run(["bash", path], capture_output=True, text=True, timeout=30, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[-1]
    want = f"python -m podlt_mpi --out {tmp_path / 'run'}"
    want += f" --device {device} --epochs 2" if device else " --epochs 2"
    assert line == want
