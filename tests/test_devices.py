"""Which device a rank computes on, and what the job refuses about devices. Pure logic, no MPI:
the launchers' environments are given as dictionaries (only the last test asks each MPI library,
in a child process)."""
import subprocess

import mpi_impls
import pytest
import torch
from torch import nn

from podlt_mpi.compute import devices, probe, training
from podlt_mpi.core.config import ConfigError, parse_args


@pytest.mark.parametrize("env,rank,want", [
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "SLURM_LOCALID": "0", "SLURM_PROCID": "7"}, 7,
     (3, "Open MPI")),
    ({"MPI_LOCALRANKID": "5", "PMI_RANK": "13"}, 13, (5, "MPICH/Hydra")),
    ({"MV2_COMM_WORLD_LOCAL_RANK": "1"}, 9, (1, "MVAPICH2")),
    ({"PALS_LOCAL_RANKID": "2"}, 4, (2, "Cray PALS")),
    ({"SLURM_LOCALID": "2", "SLURM_PROCID": "6"}, 6, (2, "srun")),
])
def test_local_rank_from_each_launcher(env, rank, want):
    assert devices.local_rank(env, rank) == want


def test_slurm_local_id_counts_only_when_srun_started_this_rank():
    # mpiexec inside sbatch: every rank inherits the batch step's SLURM_LOCALID=0, PROCID=0
    batch = {"SLURM_LOCALID": "0", "SLURM_PROCID": "0"}
    assert devices.local_rank(batch, 3) is None
    assert devices.local_rank(batch, 0) == (0, "srun")
    assert devices.local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "x"}, 0) is None
    assert devices.local_rank({}, 0) is None


@pytest.mark.parametrize("requested,local,count,want", [
    ("cpu", 3, 8, "cpu"),
    ("auto", 3, 0, "cpu"),
    ("auto", 3, 8, "cuda:3"),
    ("cuda", 11, 8, "cuda:3"),   # more ranks than GPUs on the node: they share, round robin
    ("cuda", 5, 1, "cuda:0"),    # Slurm bound one GPU per task (CUDA_VISIBLE_DEVICES=N)
])
def test_choose(requested, local, count, want):
    assert devices.choose(requested, local, count, rank=1) == want


def test_cuda_without_a_gpu_is_bad_input():
    with pytest.raises(ConfigError, match="rank 4 sees no CUDA device"):
        devices.choose("cuda", 0, 0, rank=4)


def test_place_on_this_machine_follows_cuda_visible_devices(monkeypatch):
    if torch.cuda.is_available():
        assert devices.place("auto", 1, 0, {}).startswith("cuda:")
        return
    assert devices.place("auto", 1, 0, {}) == "cpu"
    assert devices.place("cpu", 1, 0, {}) == "cpu"
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        devices.place("cuda", 1, 0, {})


H100 = "cuda:0 NVIDIA H100 80GB HBM3"
A100 = "cuda:1 NVIDIA A100-SXM4-80GB"


def test_kinds_and_what_is_refused():
    assert devices.kinds(["cpu"] * 3) == "cpu"
    assert devices.kinds([H100, A100]) == "cuda"
    assert devices.kinds(["cpu", H100]) == "cpu+cuda"
    assert devices.check_kinds([H100, A100], "exact", None) is None
    assert devices.gpu_models([H100, A100, H100, "cpu"]) == ["NVIDIA A100-SXM4-80GB",
                                                             "NVIDIA H100 80GB HBM3"]
    mixed = devices.check_kinds([H100, "cpu", H100, "cpu"], "exact", None)
    assert "ranks [1, 3] compute on the CPU" in mixed
    assert devices.check_kinds([H100, "cpu"], "tolerance", None) is None
    # ... unless the model draws random numbers: CPU and CUDA generators draw differently
    assert "draws random numbers" in devices.check_kinds([H100, "cpu"], "tolerance", None,
                                                         stochastic=True)
    assert devices.check_kinds([H100, H100], "exact", None, stochastic=True) is None
    assert "this run computed on cuda" in devices.check_kinds(["cpu", "cpu"], "exact", "cuda")
    assert devices.check_kinds([H100, H100], "exact", "cuda") is None
    assert "rank(s) [2]" in devices.check_kinds([H100, H100, "cpu"], "tolerance", None, True)
    assert devices.summary(["cpu", "cpu"]) == "cpu"
    assert devices.summary([H100, H100, "cpu"]) == \
        "CUDA for 2 rank(s) (NVIDIA H100 80GB HBM3), the CPU for 1"


def test_cuda_aware_mpi_needs_a_gpu_device():
    with pytest.raises(ConfigError, match="--cuda-aware-mpi moves GPU buffers"):
        parse_args(["--device", "cpu", "--cuda-aware-mpi"])
    assert parse_args(["--device", "cuda", "--cuda-aware-mpi"]).cuda_aware_mpi


def test_replay_device_for_each_kind_of_run():
    assert devices.for_replay("cpu", [], None, True) == ("cpu", None)
    assert devices.for_replay("cuda", ["NVIDIA H100 80GB HBM3"], None, False) == ("cpu", None)
    with pytest.raises(ConfigError, match="its replay needs a CUDA device"):
        devices.for_replay("cuda", ["NVIDIA H100 80GB HBM3"], None, True)
    with pytest.raises(ConfigError, match="both the CPU and CUDA"):
        devices.for_replay("cpu+cuda", [], "NVIDIA H100 80GB HBM3", True)
    assert devices.for_replay("cuda", ["NVIDIA H100 80GB HBM3"], "NVIDIA H100 80GB HBM3",
                              True) == ("cuda", None)
    dev, note = devices.for_replay("cuda", ["NVIDIA H100 80GB HBM3"], "NVIDIA A100", True)
    assert dev == "cuda" and "may differ" in note


class Unpool(nn.Module):
    """max_unpool has no deterministic kernel (on the CPU too), like several CUDA backward ops."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y, idx = nn.functional.max_pool1d(self.lin(x).unsqueeze(1), 2, return_indices=True)
        return nn.functional.max_unpool1d(y, idx, 2).squeeze(1)


@pytest.fixture
def determinism():
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield training.set_determinism
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_an_op_without_a_deterministic_kernel_is_bad_input_in_exact_mode(determinism):
    determinism(1, exact=True)
    with pytest.raises(ConfigError, match="no deterministic kernel on cpu.*--compare tolerance"):
        probe.probe(Unpool(), "m:unpool", (4,), 4, "cpu", 2, exact=True)
    determinism(1, exact=False)  # tolerance: it warns and runs
    with pytest.warns(UserWarning, match="deterministic"):
        probe.probe(Unpool(), "m:unpool", (4,), 4, "cpu", 2, exact=False)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_a_model_failing_on_its_device_is_bad_input(determinism):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x.double())  # float64 input against float32 weights
    determinism(1, exact=True)
    with pytest.raises(ConfigError, match="fails a training pass on 2 line.* on cpu"):
        probe.probe(Broken(), "m:broken", (4,), 3, "cpu", 2, exact=True)


@pytest.mark.parametrize("name", mpi_impls.NAMES)
def test_the_mpi_library_is_asked_about_cuda_buffers(name):
    """Both MPIs here are built without CUDA and say so; --cuda-aware-mpi warns on that answer
    (None would mean the library has no MPIX_Query_cuda_support to ask)."""
    impl = mpi_impls.get(name)
    r = subprocess.run([impl.python, "-c", "from podlt_mpi.mpi import comm; print(comm.cuda_support())"],
                       capture_output=True, text=True, timeout=120, cwd=mpi_impls.ROOT,
                       env=impl.environ({"PYTHONPATH": mpi_impls.ROOT}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
