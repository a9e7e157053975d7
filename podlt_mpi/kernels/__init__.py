"""Fused gradient comparison: the three pairwise checks of a vote computed in one pass.

`fused.three_way` is the numpy path (always available); `triton_compare.three_way_triton` is the
same as one Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1), for when triton is installed.
Both return a `fused.ThreeWay`, whose `compare(i, j, mode, rtol, atol)` gives the verdict
`verify.compare` would.
"""
