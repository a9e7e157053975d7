"""Fused gradient comparison: the three pairwise checks of a vote computed in one pass.

`fused.three_way` is the numpy path (always available); `triton_compare.three_way_triton` is the
same as one Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1), for when triton is installed.
Both return a `fused.ThreeWay`, whose `compare(i, j, mode, rtol, atol)` gives the verdict
`verify.compare` would.
"""


def for_device(device: str, warm_n: int = 0):
    """The three-way pass for gradients held on the host, run where `device` says: the Triton
    kernel on a CUDA device (the votes are uploaded first), else the numpy pass.

    `warm_n`: the gradients' length. When given, the kernel is compiled now, for that length:
    Triton compiles on first call (seconds), specialised on n % 16, and the first call would
    otherwise land inside the first disputed iteration's verify time."""
    from podlt_mpi.core import fused
    if not str(device).startswith("cuda"):
        return fused.three_way
    from podlt_mpi.compute import triton_compare
    if not triton_compare.available():
        return fused.three_way

    def on_gpu(*votes):
        import torch
        return triton_compare.three_way_triton(*(torch.as_tensor(v).to(device) for v in votes))
    if warm_n:
        import numpy as np
        zeros = np.zeros(warm_n, np.float32)
        try:
            on_gpu(zeros, zeros, zeros)
        except Exception as e:  # no C compiler or ptxas for this GPU, a read-only cache...
            # the numpy pass gives the same verdicts, so a failed compile must not end the job
            import logging
            logging.getLogger("podlt_mpi").warning(
                "the Triton comparison does not run on %s (%s: %s); votes are compared on the "
                "CPU instead", device, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return fused.three_way
    return on_gpu
