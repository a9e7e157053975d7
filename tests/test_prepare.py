"""prepare: synthetic data, Fashion-MNIST from IDX files, users' CSV and npz files, all in the
documented layout; bad input exits 2 and writes nothing."""
import gzip
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from jobs import ROOT, read_json, run_job
from mpi_impls import unavailable


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
        assert a.attrs["classes"] == 10  # declared, so the job's start-up reads no values
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


# --- fashion-mnist, csv, npz ------------------------------------------------------------------

def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def write_idx(path, array, gz=True, lie=None):
    """An IDX file of unsigned bytes; `lie` replaces the header's shape."""
    shape = lie or array.shape
    raw = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    raw += array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


def idx_folder(folder, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir()
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28))
        y = rng.integers(0, 10, n)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y, gz)
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files_become_the_layout(tmp_path, gz):
    arrays = idx_folder(tmp_path / "idx", gz=gz)
    r = run_prepare("fashion-mnist", "--source", tmp_path / "idx", "--out", tmp_path / "fm")
    assert r.returncode == 0, r.stderr
    for split, name in (("train", "train.h5"), ("t10k", "test.h5")):
        x, y = arrays[split]
        with h5py.File(tmp_path / "fm" / name) as f:
            assert f["x"].dtype == np.float32 and f["x"].shape == (len(x), 1, 28, 28)
            assert f["y"].dtype == np.int64
            assert np.array_equal(f["x"][:], (x.astype(np.float32) / 255).reshape(-1, 1, 28, 28))
            assert np.array_equal(f["y"][:], y)


@pytest.mark.parametrize("damage,message", [
    ("truncate", "the header promises"),
    ("magic", "not an IDX file"),
    ("count", "images but labels of shape"),
    ("missing", "has no t10k-labels-idx1-ubyte"),
])
def test_damaged_idx_files_exit_2_and_write_nothing(tmp_path, damage, message):
    arrays = idx_folder(tmp_path / "idx")
    target = tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate":
        write_idx(target, arrays["t10k"][1], lie=(11,))
    elif damage == "magic":
        target.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + bytes(14)))
    elif damage == "count":
        write_idx(target, arrays["t10k"][1][:9])
    else:
        target.unlink()
    r = run_prepare("fashion-mnist", "--source", tmp_path / "idx", "--out", tmp_path / "fm")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "fm").exists()


def test_csv_with_a_header_and_without(tmp_path):
    rows = [[0.5, 1.0, 3], [0.25, 0.0, 1], [1.0, 0.5, 0], [0.0, 0.75, 2]]
    with_header = tmp_path / "a.csv"
    with_header.write_text("label,f1,f2\n" + "".join(f"{c},{a},{b}\n" for a, b, c in rows))
    r = run_prepare("csv", "--source", with_header, "--out", tmp_path / "a.h5")
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "b.csv"
    plain.write_text("".join(f"{a*255},{b*255},{c}\n" for a, b, c in rows))
    r = run_prepare("csv", "--source", plain, "--out", tmp_path / "b.h5", "--scale", "255",
                    "--shape", "1,2")
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a["x"].dtype == np.float32 and a["y"].dtype == np.int64
        assert np.array_equal(a["y"][:], [3, 1, 0, 2]) and np.array_equal(b["y"][:], [3, 1, 0, 2])
        assert np.allclose(a["x"][:], [[a_, b_] for a_, b_, _ in rows])
        assert b["x"].shape == (4, 1, 2) and np.allclose(b["x"][:, 0], a["x"][:])


@pytest.mark.parametrize("text,args,message", [
    ("1,2,0\n3,x,1\n", [], "line 1 has a value that is not a number"),
    ("1,2,0\n3,4\n", [], "line 1 has 2 values"),
    ("1,2,0.5\n", [], "labels must be integers"),
    ("1,2,0\n1,nan,1\n", [], "line 1 has a non-finite value"),
    ("a,b\n1,2\n", ["--label", "c"], "no such column"),
    ("1,2,3,0\n", ["--shape", "2,2"], "--shape 2,2 holds 4 values"),
    ("", [], "is empty"),
])
def test_bad_csv_exits_2_with_the_reason(tmp_path, text, args, message):
    (tmp_path / "bad.csv").write_text(text)
    r = run_prepare("csv", "--source", tmp_path / "bad.csv", "--out", tmp_path / "o.h5", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.h5").exists()


def test_npz_converts_and_names_missing_arrays(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(4, 6)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 2, 1, 2]))
    r = run_prepare("npz", "--source", tmp_path / "d.npz", "--out", tmp_path / "d.h5")
    assert r.returncode == 2 and "has no array 'x'" in r.stderr and "images" in r.stderr
    r = run_prepare("npz", "--source", tmp_path / "d.npz", "--out", tmp_path / "d.h5",
                    "--x-key", "images", "--y-key", "labels", "--scale", "255", "--shape", "2,3")
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["x"].shape == (4, 2, 3) and f["x"].dtype == np.float32
        assert np.allclose(f["x"][:].reshape(4, 6), x / 255)
        assert np.array_equal(f["y"][:], [0, 2, 1, 2])


@pytest.mark.full
@pytest.mark.slow
def test_debians_fashion_mnist_converts_and_trains(tmp_path):
    from podlt_mpi.tools.prepare import FASHION_MNIST
    if not os.path.isdir(FASHION_MNIST):
        unavailable("data", f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    r = run_prepare("fashion-mnist", "--out", tmp_path / "fm")
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "fm" / "train.h5") as f, h5py.File(tmp_path / "fm" / "test.h5") as t:
        assert f["x"].shape == (60000, 1, 28, 28) and t["x"].shape == (10000, 1, 28, 28)
        assert np.array_equal(np.bincount(t["y"][:]), [1000] * 10)
        assert 0 <= f["x"][:1000].min() and f["x"][:1000].max() <= 1
    out = tmp_path / "run"
    r = run_job(5, ["--data", tmp_path / "fm" / "train.h5", "--test-data",
                    tmp_path / "fm" / "test.h5", "--block-lines", "500", "--blocks", "20",
                    "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(out / "summary.json")["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_prepare_check_validates_every_value(tmp_path):
    def check(path):
        return subprocess.run([sys.executable, "-m", "podlt_mpi", "prepare", "check", "--data",
                               str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert prepare(tmp_path / "a.h5", "--lines", "300", "--test-lines", "0").returncode == 0
    r = check(tmp_path / "a.h5")
    assert r.returncode == 0 and "300 lines of float features [1, 28, 28]" in r.stdout, r.stderr
    assert "10 classes declared" in r.stdout
    # a NaN the job's start-up would not read (the classes are declared): check finds it
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["x"][217, 0, 3, 4] = np.nan
    r = check(tmp_path / "a.h5")
    assert r.returncode == 2 and "non-finite value at line 217" in r.stderr
    assert "Traceback" not in r.stderr
