"""What the launcher promised, read from its environment (pure: no MPI here).

`srun` without an MPI plugin, or one MPI's launcher starting a program built for another, starts
N processes that each initialise their own one-rank MPI world. Every process then believes it is
the manager, and nothing fails: N copies of the job run side by side. The launcher's environment
still says how many tasks it started, which is how the job notices.
"""
from __future__ import annotations

# (variable with the number of processes started, variable with this process's index, launcher)
_LAUNCHERS = (
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI's mpirun"),
    ("PMI_SIZE", "PMI_RANK", "the PMI launcher (MPICH's mpiexec)"),
)


def env_int(text) -> int | None:
    """A launcher variable's integer, or None where it is unset or not a number."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def lone_worlds(world_size: int, environ, mpi_library: str = "") -> tuple[str, bool] | None:
    """(error, whether this process should print it) when N processes got N one-rank worlds."""
    if world_size != 1:
        return None
    for size_var, rank_var, who in _LAUNCHERS:
        tasks = env_int(environ.get(size_var))
        if tasks and tasks > 1:
            lib = f" ({mpi_library})" if mpi_library else ""
            fix = ("give srun an MPI plugin: srun --mpi=pmi2 for MPICH, srun --mpi=pmix for "
                   "Open MPI (srun --mpi=list shows what this cluster has), or launch with "
                   "mpiexec" if size_var.startswith("SLURM") else
                   "launch with the mpiexec of the MPI that mpi4py uses")
            error = (f"{who} started {tasks} processes, but each one is alone in its own "
                     f"one-rank MPI world{lib}, so they cannot work together; {fix}")
            return error, env_int(environ.get(rank_var)) in (0, None)
    return None
