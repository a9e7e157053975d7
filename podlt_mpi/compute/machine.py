"""What this process computes with, read back from torch and MKL after they started: the compute
configuration a rank reports at start-up and the audit compares (core/portable.py says why each
part matters)."""
from __future__ import annotations

import ctypes
import os
import re

import torch

from podlt_mpi.core import portable

# mkl_cbwr.h: the branch values mkl_cbwr_get returns, and the STRICT bit
_BRANCHES = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3",
             7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512",
             13: "AVX512_MIC_E1", 14: "AVX512_E1"}
_STRICT = 0x10000


def mkl_branch() -> str:
    """The code branch MKL runs (its CNR setting in effect, e.g. COMPATIBLE,STRICT), or
    'unknown' where this torch has no MKL or does not export it. On an AMD processor MKL reads
    MKL_CBWR=AVX2 as AUTO: this says so."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib",
                                       "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return "unknown"
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    value = get(-1)  # MKL_CBWR_ALL: the branch and the STRICT bit
    if value < 0:
        return "unknown"
    name = _BRANCHES.get(value & ~_STRICT, str(value & ~_STRICT))
    return name + (",STRICT" if value & _STRICT else "")


def _versions() -> tuple:
    shown = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", shown)
    dnn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", shown)
    return (mkl.group(1) if mkl else "none"), (dnn.group(1) if dnn else "none")


def driver() -> str | None:
    """The NVIDIA driver's version (e.g. 550.54.15), or None where it says none."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            found = re.search(r"Kernel Module\s+([\d.]+)", f.read())
    except OSError:
        found = None
    if found:
        return found.group(1)
    try:  # the CUDA driver API's version, where /proc does not say (e.g. in a container)
        v = torch._C._cuda_getDriverVersion()
        return f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
    except (AttributeError, RuntimeError):
        return None


def gpu(device) -> dict:
    """portable.GPU_KEYS for `device`: its model, compute capability, CUDA, cuDNN and driver;
    None on the CPU."""
    if torch.device(device).type != "cuda":
        return dict.fromkeys(portable.GPU_KEYS)
    major, minor = torch.cuda.get_device_capability(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"gpu": torch.cuda.get_device_name(device), "gpu_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda, "cudnn": cudnn, "driver": driver()}


def compute(mode: str, device="cpu") -> dict:
    """This process's compute configuration (portable.COMPUTE_KEYS) under kernels `mode` on
    `device`: the settings as its environment holds them (a rank that could not set the run's
    shows it)."""
    values = portable.settings("native")
    mkl, dnn = _versions()
    return {"kernels": mode, "aten": values["ATEN_CPU_CAPABILITY"],
            "mkl_cbwr": values["MKL_CBWR"], "onednn_isa": values["ONEDNN_MAX_CPU_ISA"],
            "capability": torch.backends.cpu.get_cpu_capability(), "mkl_branch": mkl_branch(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "mkl": mkl,
            "onednn": dnn, **gpu(device)}
