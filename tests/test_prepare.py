"""prepare synthetic: deterministic, the documented layout, a learnable task."""
import subprocess
import sys

import h5py
import numpy as np

from conftest import ROOT


def prepare(path, *extra):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", "synthetic", "--out",
                           str(path), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_prepare_writes_the_layout_deterministically(tmp_path):
    for name in ("a.h5", "b.h5"):
        r = prepare(tmp_path / name, "--lines", "300", "--test-lines", "50")
        assert r.returncode == 0, r.stdout + r.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a["x"].dtype == np.float32 and a["x"].shape == (300, 1, 28, 28)
        assert a["y"].dtype == np.int64 and a["y"].shape == (300,)
        assert np.array_equal(a["x"][:], b["x"][:]) and np.array_equal(a["y"][:], b["y"][:])
        assert 0 <= a["x"][:].min() and a["x"][:].max() <= 1
        assert len(np.unique(a["y"][:])) >= 5  # labels spread over the classes
    with h5py.File(tmp_path / "a-test.h5") as t, h5py.File(tmp_path / "a.h5") as a:
        assert t["x"].shape == (50, 1, 28, 28)
        assert not np.array_equal(t["x"][:10], a["x"][:10])  # a different stream, same task


def test_prepare_bad_arguments_exit_2(tmp_path):
    r = prepare(tmp_path / "x.h5", "--lines", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = prepare(blocker / "x.h5")
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr
