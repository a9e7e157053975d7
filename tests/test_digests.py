"""The ledger's content digests: standard hashes over the arrays' bytes, the same on any thread
count, and computed in the background pool exactly as in the foreground."""
import hashlib

import numpy as np
import pytest

from podlt_mpi.core import digests


def test_sha256_is_hashlibs_over_the_c_order_bytes():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(3, dtype=np.int64)
    want = hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()
    assert digests.of_arrays(digests.SHA256, a, b) == want
    assert digests.of_arrays(digests.SHA256, np.asfortranarray(a), b) == want  # bytes, not layout


def test_blake3_is_the_standard_hash():
    # the BLAKE3 reference's digest of the empty input (github.com/BLAKE3-team/BLAKE3 test vectors)
    assert digests.of_arrays(digests.BLAKE3, np.empty(0, np.uint8)) == \
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    a = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert digests.of_arrays(digests.BLAKE3, a) != digests.of_arrays(digests.SHA256, a)


@pytest.mark.parametrize("alg", digests.ALGORITHMS)
def test_threads_and_the_pool_do_not_change_a_digest(alg):
    big = np.random.default_rng(1).standard_normal(3_000_000).astype(np.float32)  # 12 MB
    one = digests.of_arrays(alg, big)
    assert digests.of_arrays(alg, big, threads=4) == one
    pool = digests.Pool(alg, threads=2)
    try:
        futures = [pool.submit(big[k:]) for k in range(4)]
        assert [f.result() for f in futures] == [digests.of_arrays(alg, big[k:]) for k in range(4)]
    finally:
        pool.close()


def test_an_unknown_hash_is_refused():
    with pytest.raises(ValueError, match="unknown digest 'md5'"):
        digests.new("md5")
