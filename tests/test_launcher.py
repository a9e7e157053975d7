"""The one-rank-worlds mistake is recognised from the launcher's environment, and said once."""
from podlt_mpi.mpi.launcher import lone_worlds


def test_srun_without_a_plugin_is_refused_and_only_task_0_says_so():
    env = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0"}
    error, speak = lone_worlds(1, env, "MPICH Version: 5.0.2")
    assert "srun started 8 processes" in error and "srun --mpi=pmi2" in error
    assert "MPICH Version: 5.0.2" in error and speak
    assert lone_worlds(1, {**env, "SLURM_PROCID": "3"})[1] is False


def test_a_real_world_or_a_single_task_is_fine():
    assert lone_worlds(8, {"SLURM_STEP_NUM_TASKS": "8"}) is None
    # MPICH's mpiexec under Slurm starts one proxy per node through srun: 1 task, 8 ranks
    assert lone_worlds(8, {"SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "8"}) is None
    assert lone_worlds(1, {"SLURM_STEP_NUM_TASKS": "1"}) is None
    assert lone_worlds(1, {}) is None
    assert lone_worlds(1, {"SLURM_STEP_NUM_TASKS": "garbage"}) is None


def test_another_mpis_launcher_is_named():
    error, speak = lone_worlds(1, {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"})
    assert "Open MPI's mpirun started 4 processes" in error
    assert "mpiexec of the MPI that mpi4py uses" in error and speak
    error, speak = lone_worlds(1, {"PMI_SIZE": "5", "PMI_RANK": "2"})
    assert "started 5 processes" in error and not speak
