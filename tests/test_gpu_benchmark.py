"""benchmarks/gpu.py's machinery, run on the CPU (its numbers need a GPU; its code does not)."""
import os
import subprocess
import sys

import pytest
import torch
from jobs import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")
pytestmark = pytest.mark.slow


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.full
def test_the_script_measures_and_writes_its_tables(tmp_path):
    out = tmp_path / "gpu.md"
    r = run("--device", "cpu", "--parts", "compare,agree", "--sizes", "20K", "--repeat", "2",
            "--fragments", "3", "--lines", "20", "--models", "mlp", "--write", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.strip() == r.stdout.strip()  # what it prints is what it writes
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| 20,000 |") for line in rows)
    # on one device, three processes agree on all 3 fragments; the bf16 cheat is far off
    mlp = next(line for line in rows if line.startswith("| mlp |"))
    cells = [c.strip() for c in mlp.strip("|").split("|")]
    assert cells[2] == "3 / 3" and float(cells[3]) == 0.0 and float(cells[5]) > 1e-3


def test_without_cuda_it_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run("--parts", "compare")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "no CUDA device here" in r.stderr
