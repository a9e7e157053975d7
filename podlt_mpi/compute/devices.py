"""Which device each rank computes on. No MPI; torch only inside `place` and `describe`.

`--device auto|cpu|cuda`: a rank uses GPU `local_rank % visible GPUs`, where the local rank (its
index among the job's ranks on its node) comes from the launcher's environment. When Slurm binds
one GPU per task (`--gpus-per-task=1`), CUDA_VISIBLE_DEVICES shows each rank one GPU and the
modulo gives 0.
"""
from __future__ import annotations

from podlt_mpi.core.errors import ConfigError
from podlt_mpi.mpi.launcher import env_int

# (variable with this process's index on its node, launcher), most specific first. Slurm's comes
# last and counts only where srun started this process itself (SLURM_PROCID is the MPI rank):
# mpiexec inside a batch script passes the batch step's SLURM_LOCALID (0) on to every rank.
_LOCAL = (
    ("OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI"),
    ("MPI_LOCALRANKID", "MPICH/Hydra"),
    ("MV2_COMM_WORLD_LOCAL_RANK", "MVAPICH2"),
    ("PALS_LOCAL_RANKID", "Cray PALS"),
    ("SLURM_LOCALID", "srun"),
)


def local_rank(environ, world_rank: int) -> tuple[int, str] | None:
    """(local rank, which launcher said so), or None when no launcher variable applies."""
    for var, who in _LOCAL:
        value = env_int(environ.get(var))
        if value is None or value < 0:
            continue
        if var == "SLURM_LOCALID" and env_int(environ.get("SLURM_PROCID")) != world_rank:
            continue
        return value, who
    return None


def choose(requested: str, local: int, cuda_count: int, rank: int) -> str:
    """'cpu' or 'cuda:K' for this rank. `cuda_count`: GPUs this process can see (0: no CUDA)."""
    if requested == "cpu" or (requested == "auto" and cuda_count == 0):
        return "cpu"
    if cuda_count == 0:
        raise ConfigError(f"--device cuda, but rank {rank} sees no CUDA device (is this torch "
                          "build CUDA-enabled, and CUDA_VISIBLE_DEVICES not empty?); use "
                          "--device cpu or auto")
    return f"cuda:{local % cuda_count}"


def kind(device: str) -> str:
    """'cpu' or 'cuda': what decides whether two ranks can agree bit for bit at all."""
    return device.split(":", 1)[0].split(" ", 1)[0]


def kinds(placed: list) -> str:
    """The run's device kinds, as config.json's device_kind: 'cpu', 'cuda' or 'cpu+cuda'."""
    return "+".join(sorted({kind(d) for d in placed}))


def place(requested: str, rank: int, node_rank: int, environ=None) -> str:
    """Choose this rank's device and make it torch's current one. `node_rank`: this rank's
    index on its node as MPI counts it, for launchers that name no local rank."""
    import os

    import torch
    environ = os.environ if environ is None else environ
    found = local_rank(environ, rank)
    local = found[0] if found else node_rank
    count = torch.cuda.device_count() if requested != "cpu" and torch.cuda.is_available() else 0
    dev = choose(requested, local, count, rank)
    if dev != "cpu":
        torch.cuda.set_device(dev)  # so that kernels and MPI's CUDA calls use this GPU
    return dev


def describe(dev: str) -> str:
    """'cpu', or 'cuda:K <GPU model>': what config.json records for each rank."""
    if kind(dev) == "cpu":
        return "cpu"
    import torch
    return f"{dev} {torch.cuda.get_device_name(dev)}"


def check_kinds(placed: list, compare: str, resumed_kind: str | None,
                cuda_aware: bool = False, stochastic: bool = False) -> str | None:
    """Bad input in the ranks' devices (one per rank, as `describe` gives), or None.
    `stochastic`: the model draws random numbers (probe.py)."""
    now = kinds(placed)
    cpu = [r for r, d in enumerate(placed) if kind(d) == "cpu"]
    if cuda_aware and cpu:
        return (f"--cuda-aware-mpi passes GPU buffers, but rank(s) {cpu} compute on the CPU "
                "(no CUDA device found with --device auto)")
    if "+" in now and stochastic:
        return (f"ranks {cpu} compute on the CPU and the others on CUDA, and the model draws "
                "random numbers (dropout?), which the CPU's and CUDA's generators draw "
                "differently: every check would end in a dispute. Give every node a GPU, or use "
                "--device cpu")
    if "+" in now and compare == "exact":
        return (f"ranks {cpu} compute on the CPU and the others on CUDA, which cannot agree bit "
                "for bit under --compare exact: give every node a GPU, use --device cpu, or "
                "--compare tolerance")
    if resumed_kind is not None and now != resumed_kind:
        how = (f"add --device {resumed_kind}" if "+" not in resumed_kind else
               "resume it on the devices it started on")
        return (f"--resume: this run computed on {resumed_kind}, this job would on {now}, which "
                f"changes its numbers mid-run: {how}")
    return None


def gpu_models(placed: list) -> list:
    """The distinct GPU models among the ranks' devices."""
    return sorted({d.split(" ", 1)[1] for d in placed if kind(d) == "cuda" and " " in d})


def summary(placed: list) -> str:
    """'cpu', or e.g. '8 GPUs (NVIDIA H100 80GB HBM3)', for the start-up line."""
    gpu = sum(1 for d in placed if kind(d) == "cuda")
    if not gpu:
        return "cpu"
    cpu = len(placed) - gpu
    return (f"CUDA for {gpu} rank(s) ({', '.join(gpu_models(placed))})"
            + (f", the CPU for {cpu}" if cpu else ""))


def for_replay(run_kind: str, run_gpus: list, here_gpu: str | None, replays: bool) -> tuple:
    """(device, note or None) for the audit's replay of a run that computed on `run_kind`.

    Bitwise replay must compute as the run did: a CUDA run needs a GPU (ideally the same
    model), and a run whose ranks used both kinds cannot be replayed bit for bit at all. Without
    replay (--sample 0) the audit checks hashes only, and any device will do.
    """
    if not replays or run_kind == "cpu":
        return "cpu", None
    if "+" in run_kind:
        raise ConfigError("this run's ranks computed on both the CPU and CUDA, which bitwise "
                          "replay cannot reproduce; pass --sample 0 to check everything but "
                          "the replay")
    if here_gpu is None:
        raise ConfigError(f"this run computed on CUDA ({', '.join(run_gpus) or 'a GPU'}); its "
                          "replay needs a CUDA device: audit it on one, or pass --sample 0 to "
                          "check everything but the replay")
    note = None
    if run_gpus and here_gpu not in run_gpus:
        note = (f"the run computed on {', '.join(run_gpus)}, this audit on {here_gpu}: bitwise "
                "replay may differ")
    return "cuda", note
