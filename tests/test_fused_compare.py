"""The fused three-way comparison against a naive reference and against verify.compare.

The Triton kernel runs through Triton's interpreter on CPU tensors (skipped without triton) and
must give the CPU path's counts exactly and its sums to 1e-6.
"""
import math
import os
import sys

import numpy as np
import pytest
import torch
from mpi_impls import unavailable

from podlt_mpi.core import fused, verify

MODES = [("exact", 1e-5, 0.0), ("tolerance", 1e-5, 0.0), ("tolerance", 0.0, 1e-3)]
U32 = np.uint32


def rnd(seed, n):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def ulp_flips(a, idx):
    """a with one-ulp changes at idx: bitwise different, ~1e-9 relative for the whole vector."""
    b = a.copy()
    b[idx] = np.nextafter(b[idx], np.float32(np.inf))
    return b


def with_bits(a, where, bits):
    b = a.copy()
    b.view(U32)[where] = U32(bits)
    return b


def cases(big):
    """(name, a, b, c); `big` is the long odd length (the interpreter gets a shorter one)."""
    n = 10_001
    a = rnd(0, n)
    nan_a = a.copy()
    nan_a[[3, 5000]] = np.nan
    nan_a[7], nan_a[9999] = np.inf, -np.inf
    moved = nan_a.copy()
    moved[[3, 4]] = moved[[4, 3]]  # a NaN one place over
    flipped = nan_a.copy()
    flipped[7] = -np.inf
    qnan, payload, negnan = 0x7FC00000, 0x7FC00001, 0xFFC00000
    z = np.zeros(n, np.float32)
    den = np.full(n, 1e-40, np.float32)
    h = rnd(1, big)
    return [
        ("random", a, rnd(1, n), rnd(2, n)),
        ("identical", a, a.copy(), a.copy()),
        ("tiny_noise", a, ulp_flips(a, [10]), ulp_flips(a, [10, 20, 30])),
        ("large_diff", a, a * np.float32(2) + np.float32(1), -a),
        ("huge_odd", h, ulp_flips(h, [0, big // 2, big - 1]), rnd(2, big)),
        ("len1", a[:1], a[:1].copy(), rnd(3, 1)),
        ("len2", a[:2], ulp_flips(a[:2], [1]), a[:2].copy()),
        ("len3", a[:3], a[:3] * np.float32(1.5), a[:3].copy()),
        ("nonfinite_same_and_moved", nan_a, nan_a.copy(), moved),
        ("nonfinite_vs_finite", nan_a, a, nan_a.copy()),
        ("inf_sign", nan_a, flipped, nan_a.copy()),
        ("nan_payloads", with_bits(a, 42, qnan), with_bits(a, 42, payload),
         with_bits(a, 42, negnan)),
        ("nan_same_payload", with_bits(a, [1, 9000], payload), with_bits(a, [1, 9000], payload),
         with_bits(ulp_flips(a, [5]), [1, 9000], payload)),
        ("denormals", den, ulp_flips(den, [100]), den * np.float32(2)),
        ("all_zeros", z, z.copy(), z.copy()),
        ("signed_zeros", z, -z, z.copy()),
        ("huge_values", a * np.float32(1e30), a * np.float32(1e30), a * np.float32(-1e30)),
    ]


SMALL = cases(big=100_003)
NAMES = [c[0] for c in SMALL]


@pytest.fixture(scope="module")
def battery():
    return {c[0]: c[1:] for c in cases(big=3_000_001)}


def naive(a, b, c):
    """Whole-array float64 numpy, written straight from the definitions."""
    xs = (a, b, c)
    fin = [np.isfinite(x) for x in xs]
    f64 = [np.where(f, x, 0).astype(np.float64) for x, f in zip(xs, fin)]
    out = {"dist2": [], "bits": [], "nonfin_mis": []}
    for i, j in fused.PAIRS:
        both = fin[i] & fin[j]
        d = np.where(both, f64[i] - f64[j], 0.0)
        bits = xs[i].view(U32) != xs[j].view(U32)
        out["dist2"].append(float(np.sum(d * d)))
        out["bits"].append(int(bits.sum()))
        out["nonfin_mis"].append(int(((fin[i] != fin[j]) | (~fin[i] & ~fin[j] & bits)).sum()))
    out["norm2"] = [float(np.sum(x * x)) for x in f64]
    out["nonfin"] = [int((~f).sum()) for f in fin]
    return out


def close(x, y, rel):
    return x == y or math.isclose(x, y, rel_tol=rel, abs_tol=1e-300)


def assert_matches_naive(t, ref):
    assert list(t.bit_mismatches) == ref["bits"]
    assert list(t.nonfinite_mismatches) == ref["nonfin_mis"]
    assert list(t.nonfinite) == ref["nonfin"]
    for got, want in zip(t.dist2 + t.norm2, ref["dist2"] + ref["norm2"]):
        assert close(got, want, 1e-9), (got, want)


@pytest.mark.parametrize("chunk", [fused.CHUNK, 1000])
@pytest.mark.parametrize("name", NAMES)
def test_cpu_matches_naive_and_verify(battery, name, chunk):
    xs = battery[name]
    t = fused.three_way(*xs, chunk=chunk)
    assert t.n == xs[0].size
    assert_matches_naive(t, naive(*xs))
    for i, j in fused.PAIRS:
        for mode, rtol, atol in MODES:
            want = verify.compare(xs[i], xs[j], mode, rtol, atol)
            got = t.compare(i, j, mode, rtol, atol)
            assert got.same == want.same, (i, j, mode, rtol, atol)
            assert close(got.rel_dist, want.rel_dist, 1e-9), (got, want)
            assert t.compare(j, i, mode, rtol, atol) == got  # order of the pair is irrelevant


def test_expected_verdicts(battery):
    """Spot checks of the cases' point, independent of verify."""
    def same(name, i, j, mode):
        return fused.three_way(*battery[name]).pair(i, j).same(mode)
    assert same("identical", 0, 2, "exact")
    assert not same("tiny_noise", 0, 1, "exact") and same("tiny_noise", 0, 1, "tolerance")
    assert not same("signed_zeros", 0, 1, "exact") and same("signed_zeros", 0, 1, "tolerance")
    assert same("nonfinite_same_and_moved", 0, 1, "exact")
    assert not same("nonfinite_same_and_moved", 0, 2, "tolerance")
    assert not same("nan_payloads", 0, 1, "tolerance")
    assert same("nan_same_payload", 0, 1, "exact") and same("nan_same_payload", 0, 2, "tolerance")
    assert not same("large_diff", 0, 1, "tolerance")
    p = fused.three_way(*battery["nan_payloads"]).pair(0, 1)
    assert p.nonfinite_mismatches == 1 and p.rel_dist == math.inf
    assert fused.three_way(*battery["all_zeros"]).pair(0, 1).rel_dist == 0.0
    assert fused.three_way(*battery["huge_values"]).norm2[0] < math.inf


def test_cpu_accepts_torch_and_checks_input():
    a = rnd(0, 100)
    t = fused.three_way(torch.from_numpy(a), a.copy(), torch.from_numpy(a).reshape(10, 10))
    assert t.bit_mismatches == (0, 0, 0)
    with pytest.raises(ValueError):
        fused.three_way(a, a, a[:-1])
    with pytest.raises(TypeError):
        fused.three_way(a, a, a.astype(np.float64))


# --- Triton, through its interpreter on CPU tensors --------------------------------------------

@pytest.fixture(scope="module")
def tc():
    # triton.jit picks the interpreter at definition time, so the variable must be set before
    # triton itself (its jit'd library functions) and the kernel are imported; it stays set
    # because triton reads it again lazily (the interpreter's first launch imports more of it)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        _skip("triton was imported earlier in this process without TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        _skip("triton not installed (optional extra: pip install .[triton]); the CPU path is "
              "tested above")
    from podlt_mpi.compute import triton_compare
    if not triton_compare.INTERPRETED:
        _skip("podlt_mpi.compute.triton_compare was imported earlier without the interpreter")
    return triton_compare


def _skip(reason):
    unavailable("triton", reason)


def assert_same_threeway(got, want):
    assert got.n == want.n
    assert got.bit_mismatches == want.bit_mismatches
    assert got.nonfinite_mismatches == want.nonfinite_mismatches
    assert got.nonfinite == want.nonfinite
    for g, w in zip(got.dist2 + got.norm2, want.dist2 + want.norm2):
        assert close(g, w, 1e-6), (g, w)


@pytest.mark.parametrize("case", SMALL, ids=NAMES)
def test_triton_matches_cpu(tc, case):
    xs = case[1:]
    got = tc.three_way_triton(*(torch.from_numpy(x) for x in xs))
    assert isinstance(got, fused.ThreeWay)
    want = fused.three_way(*xs)
    assert_same_threeway(got, want)
    for i, j in fused.PAIRS:
        for mode, rtol, atol in MODES:
            assert got.compare(i, j, mode, rtol, atol).same == want.compare(i, j, mode, rtol,
                                                                            atol).same


def test_triton_small_blocks_and_numpy_input(tc):
    """Many programs with a partial last block; numpy input goes through torch.from_numpy."""
    xs = next(c for c in SMALL if c[0] == "nonfinite_same_and_moved")[1:]
    assert_same_threeway(tc.three_way_triton(*xs, block=128), fused.three_way(*xs))


def test_triton_on_empty_vectors(tc):
    e = np.zeros(0, np.float32)
    assert_same_threeway(tc.three_way_triton(e, e, e), fused.three_way(e, e, e))


def test_cpu_devices_get_the_numpy_pass():
    from podlt_mpi.compute import kernels
    assert kernels.for_device("cpu") is fused.three_way
    assert kernels.for_device(torch.device("cpu"), 1000) is fused.three_way


def test_a_kernel_that_cannot_compile_falls_back_to_the_numpy_pass(monkeypatch, caplog):
    """A GPU manager whose Triton cannot build the kernel (no C compiler, a ptxas too old for
    the GPU) still compares votes, on the CPU, and says so instead of ending the job."""
    from podlt_mpi.compute import kernels, triton_compare

    def broken(*a, **k):
        raise RuntimeError("ptxas fatal: Value 'sm_90a' is not defined for option 'gpu-name'")
    monkeypatch.setattr(triton_compare, "available", lambda: True)
    monkeypatch.setattr(triton_compare, "three_way_triton", broken)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no CUDA here to upload to
    assert kernels.for_device("cuda", 0) is not fused.three_way  # not warmed: kernel kept
    with caplog.at_level("WARNING", logger="podlt_mpi"):
        assert kernels.for_device("cuda:0", 1000) is fused.three_way
    assert "does not run on cuda:0 (RuntimeError: ptxas fatal" in caplog.text
