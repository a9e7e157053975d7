"""The kernels a run computes with (core/portable.py): the settings that make its bits the
same on any x86-64 processor with AVX2, what a rank reports of them, and the start-up check that
refuses ranks which cannot agree."""
import json

import pytest

from podlt_mpi.core import portable
from podlt_mpi.mpi import messages

RANK = {"kernels": "portable", "aten": "avx2", "mkl_cbwr": "COMPATIBLE,STRICT",
        "onednn_isa": "AVX2", "capability": "AVX2", "mkl_branch": "COMPATIBLE,STRICT",
        "threads": "1", "torch": "2.13.0+cpu", "mkl": "2024.2-Product", "onednn": "3.12.0",
        **dict.fromkeys(portable.GPU_KEYS, "-")}
H200 = {**RANK, "torch": "2.13.0+cu128", "gpu": "NVIDIA H200", "gpu_capability": "9.0",
        "cuda": "12.8", "cudnn": "91002", "driver": "570.124.06"}
A100 = {**H200, "gpu": "NVIDIA A100-SXM4-80GB", "gpu_capability": "8.0"}
EPYC = {"vendor": "AuthenticAMD", "model": "AMD EPYC 7B12 64-Core Processor",
        "flags": "sse4_2 avx avx2 fma"}
XEON = {"vendor": "GenuineIntel", "model": "Intel(R) Xeon(R) Platinum 8480C",
        "flags": "sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_fp16"}


def test_portable_settings_override_the_environment_and_native_keeps_it():
    env = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "OTHER": "x"}
    assert portable.for_job(["--blocks", "3"], env) == portable.PORTABLE
    assert portable.for_job(["--kernels=portable"], env) == portable.PORTABLE
    native = portable.for_job(["--kernels", "native"], env)
    assert native == {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO",
                      "ONEDNN_MAX_CPU_ISA": None}
    assert portable.apply(portable.PORTABLE, env) and env["MKL_CBWR"] == "COMPATIBLE,STRICT"
    assert not portable.apply(portable.PORTABLE, env)  # nothing left to change
    assert portable.apply(native, env) and "ONEDNN_MAX_CPU_ISA" not in env and env["OTHER"] == "x"


def test_a_resumed_run_computes_with_the_kernels_it_recorded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recorded = {"ATEN_CPU_CAPABILITY": None, "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": None}
    (run / "config.json").write_text(json.dumps({"kernels": "native",
                                                 "kernel_settings": recorded}))
    # the command line's --kernels cannot change it (the option parser refuses the change)
    assert portable.for_job(["--resume", str(run), "--kernels", "portable"], {}) == recorded
    # a run older than the record computed with the environment's, and goes on so
    (run / "config.json").write_text(json.dumps({"seed": 1}))
    assert portable.for_job([f"--resume={run}"], {"MKL_CBWR": "AVX"})["MKL_CBWR"] == "AVX"
    (run / "config.json").write_text(json.dumps({"kernels": "native",
                                                 "kernel_settings": {"MKL_CBWR": 3}}))
    assert portable.recorded(str(run)) is None  # malformed: not applied
    # a rank that cannot read the run directory (rank 0's node alone has it): the default
    assert portable.for_job(["--resume", str(tmp_path / "elsewhere")], {}) == portable.PORTABLE


def test_the_processor_is_read_from_cpuinfo():
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\n"
            "flags\t\t: fpu avx2 fma sse4_2 avx avx512f\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert portable.processor(info) == {"vendor": "AuthenticAMD", "model": "AMD EPYC 7B12",
                                        "flags": "sse4_2 avx avx2 fma avx512f"}


def test_a_report_carries_the_configuration_and_a_malformed_one_is_refused():
    key = bytes(range(32))
    buf = messages.report(None, True, "cpu", RANK, EPYC, key)
    assert len(buf) == messages.REPORT_LEN
    error, stochastic, device, compute, processor, got = messages.read_report(buf)
    assert (error, stochastic, device) == (None, True, "cpu")
    assert compute == RANK and processor == EPYC and got == key
    for text, why in (("kernels=portable", "lacks aten"), ("x=1;" + portable.encode(RANK),
                                                           "has the item 'x=1'"),
                      ("kernels", "has the item 'kernels'")):
        bad = buf.copy()
        bad[2 + 2 * messages.TEXT_BYTES:2 + 3 * messages.TEXT_BYTES] = \
            messages.text_field(text, messages.TEXT_BYTES)
        with pytest.raises(ValueError, match=why):
            messages.read_report(bad)


def test_portable_ranks_on_any_processor_agree_and_a_different_kernel_is_named():
    assert portable.disagreeing([RANK, RANK, RANK], [EPYC, XEON, EPYC]) is None
    odd = {**RANK, "capability": "DEFAULT"}
    said = portable.disagreeing([RANK, RANK, odd, odd], [EPYC] * 4)
    assert said.startswith("rank(s) 2, 3 compute with other kernels than rank 0 (rank 2: "
                           "capability DEFAULT where rank 0 has AVX2)")
    assert "--compare tolerance" in said
    other = {**RANK, "torch": "2.12.0+cpu"}
    assert "torch 2.12.0+cpu where rank 0 has 2.13.0+cpu" in portable.disagreeing(
        [RANK, other], [EPYC, EPYC])


def test_native_kernels_need_one_processor_model():
    native = {**RANK, "kernels": "native", "aten": "-", "mkl_cbwr": "-", "onednn_isa": "-"}
    assert portable.disagreeing([native, native], [XEON, XEON]) is None
    said = portable.disagreeing([native, native, native], [XEON, XEON, EPYC])
    assert said.startswith("rank(s) 2 compute with other kernels than rank 0")
    assert "vendor AuthenticAMD where rank 0 has GenuineIntel" in said
    mixed = portable.disagreeing([RANK, native], [XEON, XEON])
    assert "kernels native where rank 0 has portable" in mixed


def gpu_report(compute: dict) -> tuple:
    """A rank's report on a GPU as rank 0 reads it from the wire (what a faked one would say)."""
    device = f"cuda:0 {compute['gpu']}"
    return messages.read_report(messages.report(None, False, device, compute, XEON))


def test_a_gpu_rank_reports_its_model_capability_cuda_cudnn_and_driver():
    _, _, device, compute, *_ = gpu_report(H200)
    assert device == "cuda:0 NVIDIA H200" and compute == H200
    from podlt_mpi.compute import machine
    here = machine.compute("portable")  # this machine's CPU: no GPU keys filled in
    assert set(here) == set(portable.COMPUTE_KEYS)
    assert all(here[k] is None for k in portable.GPU_KEYS)


def test_exact_mode_across_gpu_models_is_refused_with_a_pointer_to_tolerance_mode():
    reports = [gpu_report(c) for c in (H200, H200, A100, H200)]
    said = portable.disagreeing([x[3] for x in reports], [x[4] for x in reports])
    assert said == (
        "rank(s) 2 compute on another GPU model than rank 0 (rank 2: NVIDIA A100-SXM4-80GB "
        "(compute capability 8.0) where rank 0 has NVIDIA H200 (compute capability 9.0)), whose "
        "kernels cannot give the same bits under --compare exact: use --compare tolerance, "
        "which compares answers within --rtol and audits them by their sketches, or give "
        "every rank one GPU model")
    # one model: the same bits; another cuDNN is refused as other kernels, a driver is not
    assert portable.disagreeing([H200, H200], [XEON, XEON]) is None
    assert portable.disagreeing([H200, {**H200, "driver": "575.51.03"}], [XEON, XEON]) is None
    assert "cudnn 90100 where rank 0 has 91002" in portable.disagreeing(
        [H200, {**H200, "cudnn": "90100"}], [XEON, XEON])


def test_an_audit_names_gpu_differences_only_where_the_run_or_this_machine_has_a_gpu():
    old_run = {k: v for k, v in RANK.items() if k not in portable.GPU_KEYS}
    assert portable.differences(old_run, RANK) == []  # recorded before GPU keys, on the CPU
    assert portable.differences(old_run, H200) == [
        "torch: the run 2.13.0+cpu, here 2.13.0+cu128",
        *(f"{k}: the run unrecorded, here {H200[k]}" for k in portable.GPU_KEYS)]
    assert portable.differences(H200, A100) == [
        "gpu: the run NVIDIA H200, here NVIDIA A100-SXM4-80GB",
        "gpu_capability: the run 9.0, here 8.0"]
