"""The three-way comparison of `fused.three_way` as one Triton kernel.

Each program reads its block of a, b and c once (as int32 bits; floats are bitcasts of those),
and writes its 15 partial sums as float64: 3 pair distances, 3 norms, then 9 counts (3 bit
mismatches, 3 non-finite mismatches, 3 non-finite counts), which float64 holds exactly up to
2^53. One torch sum over programs finishes: at 10M values the kernel itself takes tens of
microseconds, so every extra launch (zeroing, a second sum) would show in its bandwidth.
Sums are float64 inside the block too: float32 squares overflow from |x| ~ 1.8e19, which would
turn a finite gradient's norm into inf.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before the import.
Without triton installed, `available()` is False and nothing else here may be called.
"""
from __future__ import annotations

import os

import torch

from podlt_mpi.core.fused import ThreeWay, as_f32

try:
    import triton
    import triton.language as tl
except ImportError:  # optional extra: the job runs without it
    triton = None

BLOCK = 4096
# triton.jit picks the interpreter when the kernel below is defined, i.e. at this import
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """Triton is installed and has somewhere to run: its interpreter, or a CUDA device."""
    return triton is not None and (INTERPRETED or torch.cuda.is_available())


if triton is not None:
    @triton.jit
    def _three_way_kernel(a_ptr, b_ptr, c_ptr, f_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        # lanes past n read as +0.0 in all three: equal, finite, zero, so they add nothing
        ua = tl.load(a_ptr + offs, mask=m, other=0)
        ub = tl.load(b_ptr + offs, mask=m, other=0)
        uc = tl.load(c_ptr + offs, mask=m, other=0)
        EXP = 0x7F800000  # exponent all ones <=> inf or NaN (same test as x == x & |x| != inf)
        fa = (ua & EXP) != EXP
        fb = (ub & EXP) != EXP
        fc = (uc & EXP) != EXP
        # non-finite entries zeroed, so inf - inf never makes a NaN that a mask must hide
        xa = tl.where(fa, ua.to(tl.float32, bitcast=True).to(tl.float64), 0.0)
        xb = tl.where(fb, ub.to(tl.float32, bitcast=True).to(tl.float64), 0.0)
        xc = tl.where(fc, uc.to(tl.float32, bitcast=True).to(tl.float64), 0.0)
        dab = tl.where(fa & fb, xa - xb, 0.0)
        dac = tl.where(fa & fc, xa - xc, 0.0)
        dbc = tl.where(fb & fc, xb - xc, 0.0)
        fo = f_ptr + pid * 15
        tl.store(fo + 0, tl.sum(dab * dab, axis=0))
        tl.store(fo + 1, tl.sum(dac * dac, axis=0))
        tl.store(fo + 2, tl.sum(dbc * dbc, axis=0))
        tl.store(fo + 3, tl.sum(xa * xa, axis=0))
        tl.store(fo + 4, tl.sum(xb * xb, axis=0))
        tl.store(fo + 5, tl.sum(xc * xc, axis=0))
        ab = ua != ub
        ac = ua != uc
        bc = ub != uc
        io = fo + 6  # counts: exact as float64 (at most BLOCK per program)
        tl.store(io + 0, tl.sum(ab.to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 1, tl.sum(ac.to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 2, tl.sum(bc.to(tl.int32), axis=0).to(tl.float64))
        # non-finite mismatch: bits differ where either side is non-finite
        tl.store(io + 3, tl.sum((ab & ~(fa & fb)).to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 4, tl.sum((ac & ~(fa & fc)).to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 5, tl.sum((bc & ~(fb & fc)).to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 6, tl.sum((~fa).to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 7, tl.sum((~fb).to(tl.int32), axis=0).to(tl.float64))
        tl.store(io + 8, tl.sum((~fc).to(tl.int32), axis=0).to(tl.float64))


def _bits(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(as_f32(x))
    if x.dtype != torch.float32:
        raise TypeError(f"expected float32, got {x.dtype}")
    return x.detach().reshape(-1).contiguous().view(torch.int32)


def three_way_triton(a, b, c, block: int = BLOCK) -> ThreeWay:
    """fused.three_way on the device of the inputs (CUDA, or CPU under the interpreter)."""
    if not available():
        raise RuntimeError("triton is not installed, or has neither CUDA nor TRITON_INTERPRET=1")
    xs = [_bits(v) for v in (a, b, c)]
    n, dev = xs[0].numel(), xs[0].device
    if any(x.numel() != n or x.device != dev for x in xs):
        raise ValueError("gradients differ in length or device")
    if n == 0:
        return ThreeWay(0, (0.0,) * 3, (0,) * 3, (0,) * 3, (0.0,) * 3, (0,) * 3)
    progs = triton.cdiv(n, block)
    part = torch.empty(progs, 15, dtype=torch.float64, device=dev)  # every program fills its row
    # no FMA contraction: the same rounding whatever Triton's default (which is changing)
    _three_way_kernel[(progs,)](*xs, part, n, BLOCK=block, num_warps=8, enable_fp_fusion=False)
    t = part.sum(0).tolist()
    i = [int(v) for v in t[6:]]
    return ThreeWay(n, tuple(t[:3]), tuple(i[:3]), tuple(i[3:6]), tuple(t[3:6]), tuple(i[6:]))
