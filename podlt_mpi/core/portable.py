"""The CPU kernels a run computes with, so that honest ranks on any x86-64 processor with AVX2,
Intel or AMD, with or without AVX-512, give the same bits, and any such machine audits the run.
Pure (no torch): the settings must be in the environment before torch is imported.

Three libraries choose their kernels by the processor they find (measured in
benchmarks/RESULTS.md, "Portable kernels (issue 28, first part)"):
- ATen's vectorized CPU kernels (exp, tanh, softmax, the optimizers' arithmetic) by its vector
  unit: AVX-512 or AVX2. ATEN_CPU_CAPABILITY=avx2 takes the AVX2 ones everywhere.
- MKL's matrix products and vector maths by vendor and vector unit. MKL_CBWR=AVX2 holds on Intel
  processors only (Intel documents it so; measured: an AMD EPYC computes other bits under it).
  COMPATIBLE (SSE2 code without the approximate rcpps/rsqrtps) is the branch that gives the same
  bits on both vendors; STRICT keeps them independent of the thread count too.
- oneDNN by its instruction set: ONEDNN_MAX_CPU_ISA=AVX2.

--kernels native leaves the environment as it is, for a homogeneous cluster that wants speed:
its ranks must then run on the same processor model.
"""
from __future__ import annotations

import json
import os
import sys

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT",
            "ONEDNN_MAX_CPU_ISA": "AVX2"}
VARIABLES = tuple(PORTABLE)
MODES = ("portable", "native")
# processor flags that decide which kernels a library picks
FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
         "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def settings(mode: str, environ=None) -> dict:
    """{variable: value or None} a process of a run in `mode` computes with: the portable ones,
    or, natively, whatever the environment says."""
    environ = os.environ if environ is None else environ
    if mode == "portable":
        return dict(PORTABLE)
    return {v: environ.get(v) for v in VARIABLES}


def apply(values: dict, environ=None) -> bool:
    """Put `values` (settings()) into the environment, removing the unset ones; True if that
    changed anything."""
    environ = os.environ if environ is None else environ
    changed = False
    for var, value in values.items():
        if environ.get(var) != value:
            changed = True
            if value is None:
                environ.pop(var, None)
            else:
                environ[var] = value
    return changed


def enter(values: dict, argv) -> None:
    """Put `values` into the environment before torch reads them. Where torch was imported
    already (by a caller), it would not read them again: run `python -m podlt_mpi ARGV` anew
    in this process, with them."""
    if apply(values) and "torch" in sys.modules:
        os.execv(sys.executable, [sys.executable, "-m", "podlt_mpi", *argv])


def option_in_argv(argv, name: str) -> str | None:
    """The value of option `name` (e.g. --kernels) on a job's command line, or None: a light
    scan before torch is imported, which the option parser checks later."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _saved(run_dir: str) -> dict | None:
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def recorded(run_dir: str) -> dict | None:
    """The kernels the run in `run_dir` recorded in config.json (`kernels`, the option, and
    `kernel_settings`): {"mode", "settings"}; None where the file cannot be read, the record is
    malformed, or the run is older than the record."""
    return _recorded(_saved(run_dir) or {})


def _recorded(saved: dict) -> dict | None:
    mode, values = saved.get("kernels"), saved.get("kernel_settings")
    if mode not in MODES or not isinstance(values, dict) or set(values) != set(VARIABLES) or \
            not all(v is None or isinstance(v, str) for v in values.values()):
        return None
    return {"mode": mode, "settings": dict(values)}


def for_job(argv, environ=None) -> dict:
    """The settings a job's rank computes with: a resumed run's recorded ones (a run older than
    the record: the environment's, as it ran), else those of --kernels (default portable),
    also where a rank cannot read the run directory (rank 0 reads it; the start-up reports
    show a rank that computes otherwise)."""
    run_dir = option_in_argv(argv, "--resume")
    saved = None if run_dir is None else _saved(run_dir)
    if saved is not None:
        kept = _recorded(saved)
        if kept is not None:
            return kept["settings"]
        if "kernel_settings" not in saved:
            return settings("native", environ)
    mode = option_in_argv(argv, "--kernels")
    return settings("native" if mode == "native" else "portable", environ)


# ---- what a process reports -----------------------------------------------------------------

def processor(cpuinfo: str | None = None) -> dict:
    """{vendor, model, flags}: this machine's processor as /proc/cpuinfo names it (the flags of
    FLAGS it has, in that order)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read(1 << 16)
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    have = set(fields.get("flags", "").split())
    import platform
    return {"vendor": fields.get("vendor_id") or platform.machine() or "unknown",
            "model": fields.get("model name") or platform.processor() or "unknown",
            "flags": " ".join(f for f in FLAGS if f in have)}


def encode(values: dict) -> str:
    """`key=value;...` with the keys sorted: the text a start-up report carries."""
    return ";".join(f"{k}={_clean(v)}" for k, v in sorted(values.items()))


def decode(text: str, keys) -> dict:
    """encode's inverse for exactly the keys `keys`; ValueError saying what is wrong."""
    out = {}
    for item in text.split(";") if text else []:
        key, sep, value = item.partition("=")
        if not sep or key not in keys or key in out:
            raise ValueError(f"its compute report has the item {item[:40]!r}")
        out[key] = value
    missing = sorted(set(keys) - set(out))
    if missing:
        raise ValueError(f"its compute report lacks {', '.join(missing)}")
    return out


def _clean(value) -> str:
    return "-" if value is None else str(value).replace(";", ",").replace("=", ":")


# what a rank's compute configuration holds (compute/machine.py fills it in)
# and, on a GPU, its model, compute capability, CUDA, cuDNN and driver ("-" on the CPU)
GPU_KEYS = ("gpu", "gpu_capability", "cuda", "cudnn", "driver")
COMPUTE_KEYS = ("kernels", "aten", "mkl_cbwr", "onednn_isa", "capability", "mkl_branch",
                "threads", "torch", "mkl", "onednn", *GPU_KEYS)
# what exact mode needs equal: all but the driver, which runs the kernels but chooses none
# (torch's wheel brings its own cuBLAS and cuDNN)
EXACT_KEYS = tuple(k for k in COMPUTE_KEYS if k != "driver")
PROCESSOR_KEYS = ("vendor", "model", "flags")
# in native mode the processor decides the kernels too
NATIVE_KEYS = ("vendor", "model", "flags")


def disagreeing(configs: list, processors: list) -> str | None:
    """In exact mode: the sentence naming the ranks whose compute configuration (EXACT_KEYS,
    and in native mode the processor) differs from rank 0's, or None when every rank can give
    rank 0's bits. The manager's own recomputations are rank 0's."""
    def key(r):
        mine = tuple(configs[r][k] for k in EXACT_KEYS)
        if configs[r]["kernels"] == "native":
            mine += tuple(processors[r][k] for k in NATIVE_KEYS)
        return mine

    def gpu(r):
        return configs[r]["gpu"], configs[r]["gpu_capability"]

    other_gpus = [r for r in range(len(configs)) if gpu(r) != gpu(0)]
    if other_gpus:
        r = other_gpus[0]
        return (f"rank(s) {', '.join(map(str, other_gpus))} compute on another GPU model than "
                f"rank 0 (rank {r}: {_gpu_name(*gpu(r))} where rank 0 has "
                f"{_gpu_name(*gpu(0))}), whose kernels cannot give the same bits under "
                "--compare exact: use --compare tolerance, which compares answers within "
                "--rtol and audits them by their sketches, or give every rank one GPU model")
    ref = key(0)
    odd = [r for r in range(len(configs)) if key(r) != ref]
    if not odd:
        return None
    r = odd[0]
    diff = [f"{k} {mine} where rank 0 has {theirs}" for k, mine, theirs in
            zip((*EXACT_KEYS, *NATIVE_KEYS), key(r), ref) if mine != theirs]
    if len(key(r)) != len(ref):
        diff = [f"kernels {configs[r]['kernels']} where rank 0 has {configs[0]['kernels']}"]
    ranks = ", ".join(map(str, odd))
    return (f"rank(s) {ranks} compute with other kernels than rank 0 (rank {r}: "
            f"{'; '.join(diff)}), which cannot give the same bits under --compare exact: give "
            "every rank the same torch and --kernels portable (the default), or use --compare "
            "tolerance")


def _gpu_name(name: str, capability: str) -> str:
    return "the CPU" if name in (None, "-") else f"{name} (compute capability {capability})"


def differences(run: dict, here: dict, keys=COMPUTE_KEYS) -> list:
    """'key: run X, here Y' for every key of `keys` where two compute configurations differ
    (a GPU's keys, which runs before them did not record, only where this machine has one)."""
    return [f"{k}: the run {run.get(k, 'unrecorded')}, here {here.get(k)}" for k in keys
            if run.get(k) != here.get(k) and not (k in GPU_KEYS and k not in run
                                                  and here.get(k) in (None, "-"))]
