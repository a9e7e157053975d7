"""Fused gradient comparison: the three pairwise checks of a vote computed in one pass.

`fused.three_way` is the numpy path (always available); `triton_compare.three_way_triton` is the
same as one Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1), for when triton is installed.
Both return a `fused.ThreeWay`, whose `compare(i, j, mode, rtol, atol)` gives the verdict
`verify.compare` would.
"""


def for_device(device: str):
    """The three-way pass for gradients held on the host, run where `device` says: the Triton
    kernel on a CUDA device (the votes are uploaded first), else the numpy pass."""
    from . import fused
    if not str(device).startswith("cuda"):
        return fused.three_way
    from . import triton_compare
    if not triton_compare.available():
        return fused.three_way

    def on_gpu(*votes):
        import torch
        return triton_compare.three_way_triton(*(torch.as_tensor(v).to(device) for v in votes))
    return on_gpu
