"""The sketches of tolerance mode (core/sketch.py): what the ledger keeps of every answer, and
how well their distance estimates the answers' distance."""
import json
import math

import numpy as np
import pytest

from podlt_mpi.core import digests, records, sketch

KEY = bytes(range(32))
N = 20_000


def seal(g, code):
    return sketch.of(g, code, lambda *a: digests.of_arrays(digests.BLAKE3, *a))


def test_the_codes_are_the_key_s_and_the_iteration_s():
    c = sketch.codes(KEY, 3, N)
    assert c.shape == (sketch.BLOCKS, N) and c.dtype == np.uint8
    assert np.array_equal(c, sketch.codes(KEY, 3, N))
    assert not np.array_equal(c, sketch.codes(KEY, 4, N))
    assert not np.array_equal(c, sketch.codes(bytes(32), 3, N))
    # every bucket and both signs are used, about evenly
    counts = np.bincount((c & 31).reshape(-1), minlength=32)
    assert counts.min() > 0.8 * counts.mean()


def test_the_sketch_is_linear_and_its_norm_exact():
    rng = np.random.default_rng(0)
    code = sketch.codes(KEY, 0, N)
    a, b = (rng.standard_normal(N).astype(np.float32) for _ in range(2))
    sa, sb, ssum = seal(a, code), seal(b, code), seal(a + b, code)
    # S(a + b) = S a + S b, up to the float32 rounding of a + b
    assert np.allclose(np.add(sa.values, sb.values), ssum.values, rtol=0, atol=1e-3)
    assert sa.norm == pytest.approx(float(np.linalg.norm(a.astype(np.float64))), rel=1e-12)
    assert sa.nonfinite is None and sketch.distance(sa, sa) == 0


def test_the_distance_estimates_the_true_one_as_derived():
    """||S d|| / ||d|| ~ sqrt(chi^2_64 / 64): mean square 1, and over many keys inside [LOW,
    HIGH] (a draw outside has probability 2e-9)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(N).astype(np.float32)
    b = a + (1e-4 * rng.standard_normal(N)).astype(np.float32)
    true = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
    ratios = np.array([sketch.distance(seal(a, c), seal(b, c)) / true for c in
                       (sketch.codes(KEY, t, N) for t in range(300))])
    assert np.mean(ratios ** 2) == pytest.approx(1, abs=0.05)  # var of the mean: 2/64/300
    assert np.std(ratios ** 2) == pytest.approx(math.sqrt(2 / sketch.K), rel=0.2)
    assert sketch.LOW < ratios.min() and ratios.max() < sketch.HIGH
    assert sketch.HIGH / sketch.LOW == pytest.approx(3.0, abs=0.01)


def test_within_passes_an_answer_inside_the_bound_and_fails_one_three_times_outside():
    rng = np.random.default_rng(2)
    code = sketch.codes(KEY, 7, N)
    ref = rng.standard_normal(N)
    rtol = 1e-5
    unit = rng.standard_normal(N)
    unit /= np.linalg.norm(unit)
    bound = rtol * np.linalg.norm(ref)
    # in float64, so the differences are the ones asked for, not float32's rounding
    near = seal(ref + 0.99 * bound * unit, code)
    far = seal(ref + 3.01 * bound * unit, code)
    base = seal(ref, code)
    assert sketch.within(near, base, rtol, 0.0)
    assert not sketch.within(far, base, rtol, 0.0)
    # an answer scaled by more than the bound fails on its norm alone, whatever the sketch
    scaled = seal(ref * (1 + 2 * rtol), code)
    assert abs(scaled.norm - base.norm) > rtol * max(scaled.norm, base.norm)
    assert not sketch.within(scaled, base, rtol, 0.0)


def test_non_finite_values_are_kept_apart_by_place_and_bits():
    code = sketch.codes(KEY, 0, 8)
    g = np.arange(8, dtype=np.float32)
    g[3] = np.nan
    s = seal(g, code)
    assert s.nonfinite is not None and math.isfinite(s.norm)
    assert s.norm == pytest.approx(math.sqrt(sum(v * v for v in (0, 1, 2, 4, 5, 6, 7))))
    h = g.copy()
    h[3], h[4] = 4.0, np.nan  # the same finite values, the nan elsewhere
    assert sketch.distance(s, seal(h, code)) == math.inf
    assert sketch.distance(s, seal(g.copy(), code)) == 0


def test_the_norm_is_the_same_bits_whatever_the_order_of_the_blas():
    """The norm comes from sequential sums by bucket (no BLAS, whose kernels choose the order)
    and fsum: computed from a copy laid out elsewhere, and written here independently in
    sequential cumulative sums, it is the same number."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(N).astype(np.float32)
    code = sketch.codes(KEY, 1, N)
    s = seal(g, code)
    assert s == seal(np.array(g[::-1][::-1]), code)
    squares = g.astype(np.float64) ** 2
    buckets = code[0] & 31
    by_bucket = [float(np.cumsum(squares[buckets == b])[-1]) for b in range(32)]
    assert s.norm == math.sqrt(math.fsum(by_bucket))


def test_a_sketch_goes_through_json_unchanged_and_a_malformed_one_is_one_sentence():
    code = sketch.codes(KEY, 2, 100)
    s = seal(np.linspace(-1, 1, 100, dtype=np.float32), code)
    assert sketch.Sketch.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert len(s.to_json()["values"]) == math.ceil(8 * sketch.K / 3) * 4  # 512 bytes, base64
    good = s.to_json()
    for bad, message in [
        ({**good, "values": "!!"}, "not base64"),
        ({**good, "values": good["values"][:-8]}, "bytes of values"),
        ({**good, "norm": -1.0}, "not a finite number"),
        ({**good, "norm": "big"}, "not a finite number"),
        ({**good, "nonfinite": 3}, "not a digest or null"),
        ({"values": good["values"]}, "is not a sketch"),
        ([1, 2], "is not a sketch"),
    ]:
        with pytest.raises(ValueError, match=message):
            sketch.Sketch.from_json(bad)


def test_a_format_6_assignment_keeps_its_sketch_and_older_formats_have_none():
    s = seal(np.ones(50, np.float32), sketch.codes(KEY, 0, 50))
    a = records.Assignment(3, "worker", (0, 10), "ab" * 32, 0.5, s)
    assert records.Assignment.from_json(json.loads(json.dumps(a.to_json()))) == a
    plain = records.Assignment(3, "worker", (0, 10), "ab" * 32, 0.5)
    assert plain.to_json()["sketch"] is None
    assert records.Assignment.from_json(plain.to_json()) == plain
    assert "sketch" not in a.to_json(records.LOOKED)
    with pytest.raises(records.RecordError, match="an assignment of format 5 has a sketch"):
        records.Assignment.from_json(a.to_json(), records.LOOKED)
    broken = {**a.to_json(), "sketch": {**s.to_json(), "norm": math.nan}}
    with pytest.raises(records.RecordError, match="an assignment's sketch: .*not a finite"):
        records.Assignment.from_json(broken)


def test_the_pool_seals_an_answer_with_a_sketch_only_where_it_has_codes():
    pool = digests.Pool(digests.BLAKE3, 2)
    try:
        g = np.arange(64, dtype=np.float32)
        plain = pool.answer(g).result()
        assert plain.digest == digests.of_arrays(digests.BLAKE3, g) and plain.sketch is None
        pool.codes = sketch.codes(KEY, 0, 64)
        sealed = pool.answer(g).result()
        assert sealed.digest == plain.digest and sealed.sketch == seal(g, pool.codes)
    finally:
        pool.close()
