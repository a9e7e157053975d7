"""Small datasets for the tasks beyond one class per line, written with a fixed seed."""
import h5py
import numpy as np

from podlt_mpi.io import data


def tokens(path, lines, seq=8, vocab=24, seed=0, pad=True):
    """A learnable next-token task: x int64 [lines, seq] from a repeating pattern with noise,
    y the next tokens; with `pad`, a random tail of each of a third of the lines is -100
    (padding that does not count). The file declares vocab_size."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, vocab, lines)
    step = rng.integers(1, 4, lines)
    seqs = (start[:, None] + step[:, None] * np.arange(seq + 1)) % vocab
    noisy = rng.random(seqs.shape) < 0.1
    seqs = np.where(noisy, rng.integers(0, vocab, seqs.shape), seqs).astype(np.int64)
    x, y = seqs[:, :-1].copy(), seqs[:, 1:].copy()
    if pad:
        cut = rng.integers(1, seq, lines)
        for i in np.flatnonzero(rng.random(lines) < 1 / 3):
            y[i, cut[i]:] = -100
    data.write_h5(path, x, y, {"vocab_size": vocab})
    return path


def regression(path, lines, features=12, outputs=2, seed=0):
    """Float targets [lines, outputs] from a fixed nonlinear teacher plus noise."""
    world = np.random.default_rng(99)
    w1 = world.standard_normal((features, 16)).astype(np.float32)
    w2 = world.standard_normal((16, outputs)).astype(np.float32) / 4
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((lines, features)).astype(np.float32)
    y = (np.tanh(x @ w1) @ w2 + 0.05 * rng.standard_normal((lines, outputs))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x, y
    return path
