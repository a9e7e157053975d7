"""The peer a user would pick instead: PyTorch DistributedDataParallel, gloo backend, one job.

usage:: mpiexec -n N python benchmarks/ddp_peer.py --data F.h5 --model mlp --block-lines 1000
            --iterations 40 --warmup 5 --result out.json

The same model, initial weights (podlt_mpi.compute.models.build), Adam and blocks of lines as the
PoDLT job; every rank reads its own 1/N of each block from the file (no manager) and DDP
all-reduces the gradients during backward. MPI only supplies the ranks and a rendezvous file;
gloo moves the gradients. Rank 0 writes the timings (the slowest rank's, per part) as JSON.
Compute alone is timed on extra iterations under `no_sync()` (no all-reduce, no step), so
communication = iteration - compute - step.
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch import nn

from podlt_mpi.compute import models, training
from podlt_mpi.io.data import Reader


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="mlp")
    p.add_argument("--block-lines", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--result", required=True)
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rendezvous = comm.bcast(a.result + ".rendezvous" if rank == 0 else None)
    if rank == 0 and os.path.exists(rendezvous):
        os.unlink(rendezvous)
    comm.Barrier()
    training.set_determinism(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.abspath(rendezvous)}",
                            rank=rank, world_size=size)
    reader = Reader(a.data, "x", "y")
    x0, _ = reader.read(0, 1)
    model = models.build(a.model, x0.shape[1:], 10, 0)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    n_blocks = reader.lines // a.block_lines

    def fragment(it):
        start = (it % n_blocks) * a.block_lines
        s = start + rank * a.block_lines // size
        e = start + (rank + 1) * a.block_lines // size
        x, y = reader.read(s, e)
        return torch.from_numpy(x), torch.from_numpy(y)

    def one(it, sync=True):
        t = {}
        t0 = time.perf_counter()
        x, y = fragment(it)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if sync:
            nn.functional.cross_entropy(ddp(x), y).backward()
        else:
            with ddp.no_sync():
                nn.functional.cross_entropy(ddp(x), y).backward()
        t2 = time.perf_counter()
        if sync:
            opt.step()
        t3 = time.perf_counter()
        t.update(read=t1 - t0, backward=t2 - t1, step=t3 - t2, total=t3 - t0)
        return t

    total = a.iterations + a.warmup
    for it in range(a.warmup):
        one(it)
    comm.Barrier()
    t_start = time.perf_counter()
    runs = [one(it) for it in range(a.warmup, total)]
    wall = time.perf_counter() - t_start
    comm.Barrier()
    local = [one(it, sync=False) for it in range(a.warmup, total)]  # compute alone
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    compute = float(np.mean([r["backward"] for r in local]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = comm.gather({"mean": mean, "compute": compute, "peak_mb": peak, "wall": wall})
    dist.destroy_process_group()
    if rank == 0:
        n = sum(p.numel() for p in model.parameters())
        slowest = {k: max(r["mean"][k] for r in rows) for k in mean}
        seconds = max(r["wall"] for r in rows) / a.iterations
        result = {
            "variant": "ddp", "ranks": size, "model": a.model, "block_lines": a.block_lines,
            "iterations": a.iterations, "seconds_per_iteration": seconds,
            "useful_samples_per_s": a.block_lines / seconds,
            "compute": max(r["compute"] for r in rows), "read": slowest["read"],
            "step": slowest["step"], "backward_with_allreduce": slowest["backward"],
            # a ring all-reduce sends and receives 2 (N-1)/N of the gradient on every rank
            "bytes_out": int(2 * (size - 1) / size * 4 * n), "bytes_in": int(2 * (size - 1) / size * 4 * n),
            "peak_rss_mb": [round(r["peak_mb"], 1) for r in rows], "n_params": n,
        }
        with open(a.result, "w") as f:
            json.dump(result, f, indent=2)
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)


if __name__ == "__main__":
    main()
