"""The job on CUDA: ranks agree bit for bit on a GPU, the fused comparison runs as the Triton
kernel on the device and matches the CPU pass, a fake is caught, and the audit replays the run
on the GPU. Every test here skips, with the reason, on a machine without CUDA (CI has none)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from jobs import ROOT, read_json, run_job

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")

# conftest sets TRITON_INTERPRET=1 for the CPU tests of the kernel, and Triton fixes its choice
# at import: everything here that may reach the kernel runs in a child without it, compiled.
COMPILED = {"TRITON_INTERPRET": "0"}
HELPERS = os.path.join(ROOT, "tests", "helpers")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([HELPERS, ROOT]), **COMPILED}


def python(code, *args, env=ENV):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout

GRADIENT = r"""
import json, sys
import numpy as np, torch
from podlt_mpi.compute import models, training
training.set_determinism(1)
model = models.build(sys.argv[1], (1, 28, 28), 10, 0).to(sys.argv[2])
g = np.random.default_rng(3)
x = torch.from_numpy(g.random((500, 1, 28, 28), dtype=np.float32))
y = torch.from_numpy(g.integers(0, 10, 500))
grad, loss = training.gradient(model, x, y)
np.save(sys.argv[3], grad)
"""


def gradient_in_fresh_process(model, device, path):
    python(GRADIENT, model, device, path)
    return np.load(path)


@pytest.mark.parametrize("model", ["mlp", "cnn", "usermodels:combined"])
def test_honest_gpu_ranks_agree_bit_for_bit_and_stay_near_the_cpu(model, tmp_path):
    """Two processes on the same GPU, as two ranks would be; the CPU result sets the scale of
    the difference that --compare tolerance must allow across kinds of device."""
    a = gradient_in_fresh_process(model, "cuda", tmp_path / "a.npy")
    b = gradient_in_fresh_process(model, "cuda", tmp_path / "b.npy")
    assert a.tobytes() == b.tobytes()
    if model.startswith("usermodels:"):
        return  # dropout: CUDA's generator is not the CPU's, so their masks differ
    c = gradient_in_fresh_process(model, "cpu", tmp_path / "c.npy")
    rel = np.linalg.norm(a.astype(np.float64) - c) / np.linalg.norm(c.astype(np.float64))
    assert rel < 1e-5, rel  # inside the default --rtol


KERNEL = r"""
import numpy as np
from podlt_mpi.compute import kernels
from podlt_mpi.compute import triton_compare
from podlt_mpi.core import fused
assert triton_compare.available() and not triton_compare.INTERPRETED
g = np.random.default_rng(0)
a = g.standard_normal(10_000_019).astype(np.float32)
b = a.copy()
b[::1000] = np.nextafter(b[::1000], np.float32(np.inf))
c = a.copy()
c[5] = np.nan
on_gpu = kernels.for_device("cuda")
assert on_gpu is not fused.three_way
got, want = on_gpu(a, b, c), fused.three_way(a, b, c)
assert got.bit_mismatches == want.bit_mismatches, (got, want)
assert got.nonfinite_mismatches == want.nonfinite_mismatches, (got, want)
for x, y in zip(got.dist2 + got.norm2, want.dist2 + want.norm2):
    assert abs(x - y) <= 1e-6 * abs(y), (got, want)
print("ok")
"""


def needs_triton():
    from podlt_mpi.compute import triton_compare
    if triton_compare.triton is None:
        pytest.skip("triton is not installed")


def test_triton_kernel_on_the_gpu_matches_the_cpu_pass():
    needs_triton()
    assert python(KERNEL).strip() == "ok"


WARM = r"""
import sys, time
import numpy as np, torch
from podlt_mpi.compute import kernels
from podlt_mpi.compute import triton_compare  # noqa: F401  (imports stay out of the timings,
torch.zeros(1, device="cuda")                 # and so does CUDA's own start-up)
n = 1_000_003  # odd: Triton specialises on n % 16, so a warm-up at another length would miss
t = time.perf_counter(); fn = kernels.for_device("cuda", n); cold = time.perf_counter() - t
a = np.ones(n, np.float32); b = a.copy(); b[7] = 2.0
t = time.perf_counter(); r = fn(a, a, b); first = time.perf_counter() - t
assert r.bit_mismatches == (0, 1, 1), r.bit_mismatches
print(cold, first)
"""


def test_the_manager_compiles_the_kernel_before_the_first_dispute(tmp_path):
    """for_device(..., warm_n) compiles for the run's length, so the first disputed vote pays
    an upload, not a compile (in a fresh process and an empty Triton cache, so it must compile)."""
    needs_triton()
    out = python(WARM, env={**ENV, "TRITON_CACHE_DIR": str(tmp_path / "triton")})
    cold, first = map(float, out.split())
    assert first * 5 < cold, (cold, first)


def test_a_gpu_run_catches_a_fake_and_its_audit_replays_on_the_gpu(small_data, tmp_path):
    out = tmp_path / "run"
    r = run_job(5, ["--data", small_data["train"], "--test-data", small_data["test"],
                    "--out", out, "--block-lines", "200", "--blocks", "8", "--device", "cuda",
                    "--fake-ranks", "2", "--fake-mode", "noise", "--checkpoint-every", "4",
                    "--compare", "exact"], timeout=600, env=COMPILED)
    assert r.returncode == 0, r.stderr
    cfg = read_json(out / "config.json")
    assert cfg["device_kind"] == "cuda" and all(d.startswith("cuda:") for d in cfg["devices"])
    summary = read_json(out / "summary.json")
    assert [x["rank"] for x in summary["removed"]] == [2]
    a = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(out), "--all",
                        "--json", "-"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=ENV)
    report = json.loads(a.stdout)
    assert a.returncode == 0 and report["passed"], a.stdout + a.stderr
    assert report["replay"]["verified"] >= 1


@pytest.mark.skipif(not os.environ.get("PODLT_CUDA_AWARE_MPI"),
                    reason="needs an MPI built CUDA-aware; set PODLT_CUDA_AWARE_MPI=1 where it is")
def test_cuda_aware_transport_gives_the_same_run(small_data, tmp_path):
    base = ["--data", small_data["train"], "--block-lines", "200", "--blocks", "4",
            "--device", "cuda"]
    heads = []
    for name, extra in (("host", []), ("direct", ["--cuda-aware-mpi"])):
        r = run_job(4, [*base, "--out", tmp_path / name, *extra], timeout=600, env=COMPILED)
        assert r.returncode == 0, r.stderr
        heads.append(read_json(tmp_path / name / "summary.json")["ledger_head"])
    assert heads[0] == heads[1]


@pytest.mark.parametrize("fake", [None, "buffers"])
def test_dropout_and_batchnorm_on_the_gpu_agree_and_audit(fake, small_data, tmp_path):
    """The fragment's seed reaches CUDA's generator (dropout masks), BatchNorm statistics travel
    from GPU memory: honest ranks agree on every check, a rank poisoning its statistics is
    removed, and the audit replays every iteration on the GPU."""
    out = tmp_path / "run"
    cheat = ["--fake-ranks", "4", "--fake-mode", fake] if fake else []
    r = run_job(5, ["--data", small_data["train"], "--test-data", small_data["test"],
                    "--out", out, "--block-lines", "201", "--blocks", "8", "--device", "cuda",
                    "--model", "usermodels:combined", *cheat], timeout=600, env=COMPILED,
                path=[HELPERS])
    assert r.returncode == 0, r.stderr
    summary = read_json(out / "summary.json")
    assert summary["checks"]["dispute"] == 0
    assert [x["rank"] for x in summary["removed"]] == ([4] if fake else [])
    a = subprocess.run([sys.executable, "-m", "podlt_mpi", "audit", str(out), "--all",
                        "--model", "usermodels:combined"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert a.returncode == 0 and "8 reproduced bit for bit" in a.stdout, a.stdout + a.stderr
