"""The kernels a run computes with (core/portable.py): the settings that make its bits the
same on any x86-64 processor with AVX2, what a rank reports of them, and the start-up check that
refuses ranks which cannot agree."""
import json

import pytest

from podlt_mpi.core import portable
from podlt_mpi.dist import messages

RANK = {"kernels": "portable", "aten": "avx2", "mkl_cbwr": "COMPATIBLE,STRICT",
        "onednn_isa": "AVX2", "capability": "AVX2", "mkl_branch": "COMPATIBLE,STRICT",
        "threads": "1", "torch": "2.13.0+cpu", "mkl": "2024.2-Product", "onednn": "3.12.0"}
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
    buf = messages.report(None, True, "cpu", RANK, EPYC)
    assert len(buf) == messages.REPORT_LEN
    error, stochastic, device, compute, processor = messages.read_report(buf)
    assert (error, stochastic, device) == (None, True, "cpu")
    assert compute == RANK and processor == EPYC
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
