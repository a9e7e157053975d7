"""Shared fixtures: a small dataset and a helper that launches the job under mpiexec."""
import os
import subprocess
import sys

import mpi_impls
import pytest

# Triton reads this once, when it is first imported, and torch imports it as a side effect
# (torch.load does): set it before any test runs, or the interpreter tests of the fused
# comparison would skip after the first test that loads a checkpoint. CPU-only here.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests compare runs with training and audits in this process (single_process.py, Audit):
# it computes with the kernels a run uses by default, set before torch is first imported.
from podlt_mpi.core import portable  # noqa: E402

assert "torch" not in sys.modules, "torch was imported before conftest could set the kernels"
portable.apply(portable.PORTABLE)

ROOT = mpi_impls.ROOT
# the models and data helpers that jobs load as user plugins; tests import some of them too
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))
import runfiles  # noqa: E402

read_json, read_jsonl = runfiles.read_json, runfiles.read_jsonl  # tests import them from here
RUN_TIMEOUT = 240  # seconds; every subprocess has one, so a hang fails instead of blocking CI

# tests/mpi/ run inside an MPI world (python -m mpi4py -m pytest --with-mpi); plain pytest
# launches them from test_mpi_suite.py.
collect_ignore = [] if "--with-mpi" in sys.argv else ["mpi"]


def mpiexec():
    return mpi_impls.get("mpich").launcher[0]


def pytest_generate_tests(metafunc):
    # The end-to-end tests run under every MPI implementation users may have.
    if metafunc.module.__name__.startswith("test_e2e_") and "mpi" in metafunc.fixturenames:
        metafunc.parametrize("mpi", mpi_impls.NAMES, indirect=True, scope="module")


# Test tiers. The README's test command runs `-m "not full"`: every feature once, end to end
# under MPICH, in under 10 minutes on 2 cores. CI then runs `-m full`: the rest of the matrix,
# the same runs under Open MPI, every fault mode (twice), every kind of user model and task, the
# other bad-input cases, Slurm. Below: for the tests named, the cases the first tier keeps
# (fragments of the test's id; none: the whole test is `full`); their other cases, and everything
# under Open MPI or Slurm, are `full`.
FIRST_TIER_CASES = {
    "test_e2e_bad_input.py::test_bad_data_file": ("missing",),
    "test_e2e_bad_input.py::test_a_bad_line_ends_the_run_when_its_block_is_read": (),
    "test_e2e_bad_input.py::test_device_options_that_cannot_work_are_bad_input": ("args0-",),
    "test_e2e_bad_input.py::test_a_user_model_that_cannot_train_is_bad_input": ("no_backward",),
    "test_e2e_bad_input.py::test_unwritable_out": (),
    "test_e2e_bad_input.py::test_a_model_without_deterministic_kernels_is_refused_in_exact_mode_only": (),
    "test_e2e_faults.py::test_each_fake_mode_is_caught_and_only_the_fakes_are_removed":
        ("+label-flip]",),
    "test_e2e_faults.py::test_two_fakes_of_each_mode_with_another_seed": (),
    "test_e2e_faults.py::test_intermittent_cheater_is_caught": (),
    "test_e2e_faults.py::test_fault_plugin": (),
    "test_e2e_faults.py::test_honest_run_removes_nobody_and_every_check_agrees": (),
    "test_e2e_faults.py::test_several_checks_per_iteration": (),
    "test_e2e_faults.py::test_colluding_fakes_are_both_removed_and_no_honest_rank": (),
    "test_e2e_faults.py::test_fake_control_is_caught": (),
    "test_e2e_resume.py::test_resume_on_more_ranks_continues_and_says_what_changes": (),
    "test_tasks.py::test_the_tasks_report_their_own_figures": (),
    "test_e2e_reproducible.py::test_matches_single_process_training": (),
    "test_e2e_resume.py::test_signal_checkpoints_exits_0_and_resume_gives_identical_bytes":
        ("term-job",),
    "test_e2e_resume.py::test_kill_9_ends_the_job_quickly_and_resume_completes": (),
    "test_e2e_resume.py::test_time_limit_stops_in_time_and_resume_completes": (),
    # a silent rank's removal is test_e2e_untrusted's; SIGSTOP is its full-tier variant
    "test_e2e_resume.py::test_a_hanging_rank_is_removed_within_30_s_and_the_job_finishes": (),
    # bitwise reproducibility: test_matches_single_process_training, against the reference
    "test_e2e_reproducible.py::test_same_seed_same_bytes": (),
    "test_e2e_reproducible.py::test_user_model_and_held_out_split": (),
    "test_e2e_roles.py::test_two_runs_of_one_command_draw_other_roles_give_one_model_and_audit_every_role": (),
    "test_e2e_faults.py::test_a_rank_caught_on_a_recheck_keeps_its_folded_fragment_and_the_audit_names_it": (),
    "test_e2e_lies.py::test_a_lying_loss_gets_the_rank_removed_and_the_audit_names_it": (),
    # the stored runs: each is audited; the current format's is resumed, and reports a record
    # of an unknown format
    "test_records.py::test_an_old_run_is_resumed_and_its_records_kept": ("format5",),
    "test_records.py::test_a_record_of_an_unknown_format_is_reported_at_its_iteration":
        ("format5",),

    "test_user_models.py::test_honest_run_agrees_audits_and_equals_single_process_training":
        ("combined",),
    **{f"test_user_models.py::{name}": () for name in (
        "test_a_cheater_is_removed_and_no_honest_rank",
        "test_resume_after_a_signal_is_byte_identical",
        "test_batchnorm_statistics_are_the_training_data_s",
        "test_adamw_clipping_and_cosine_warmup_match_single_process_and_audit",
        "test_clipping_changes_the_run")},
    "test_tasks.py::test_honest_run_agrees_audits_and_equals_single_process_training": ("lm",),
    "test_tasks.py::test_a_cheater_is_removed_and_no_honest_rank": (),
    "test_tasks.py::test_resume_after_a_signal_is_byte_identical": (),
    "test_audit.py::test_a_cuda_run_is_replayed_only_on_cuda_and_resumed_only_there": (),
    "test_gpu_benchmark.py::test_the_script_measures_and_writes_its_tables": (),
    "test_prepare.py::test_debians_fashion_mnist_converts_and_trains": (),
    "test_e2e_lies.py::test_a_wild_answer_from_an_unchecked_worker_removes_it_at_once": ("nan",),
    # one case of each kind of lie an owned rank tells (issue 27); SIGSTOP: full tier
    "test_e2e_untrusted.py::test_a_malformed_answer_is_refused_and_the_rank_removed":
        ("short",),
    "test_e2e_untrusted.py::test_a_rank_that_stops_answering_is_removed_and_the_job_finishes":
        ("silent",),
    "test_e2e_untrusted.py::test_a_rank_that_cannot_start_properly_is_refused_and_runs_no_code_on_rank_0":
        ("pickle-report",),
    "test_e2e_untrusted.py::test_a_pickle_for_a_host_name_or_the_last_word_runs_nothing": (
        "pickle-finish",),
    "test_e2e_untrusted.py::test_a_flood_of_unsolicited_messages_is_drained_and_rank_0_memory_stays_flat":
        ("-99-",),
    "test_e2e_untrusted.py::test_weights_altered_or_withheld_on_the_way_remove_no_honest_rank":
        ("-altered]",),
    # the ranks' reduction (issue 29): the first tier runs it honest and with one lying aggregator
    "test_e2e_reduce.py::test_a_lying_aggregator_is_removed_and_no_lie_reaches_the_model":
        ("wrong-sum",),
    "test_e2e_reduce.py::test_a_lie_no_challenge_saw_is_applied_and_the_audit_names_its_aggregator":
        (),
    "test_e2e_reduce.py::test_an_honest_reduction_gives_the_star_s_bits_and_single_process_training":
        ("mlp",),
    "test_e2e_reduce.py::test_an_equivocating_sender_s_slices_enter_no_sum": (),
    "test_e2e_reduce.py::test_a_malformed_commitment_is_refused_and_the_manager_sends_that_fragment_s_slices":
        (),
    "test_e2e_reduce.py::test_a_run_continued_under_the_reduction_is_byte_identical": (),
    "test_e2e_reduce.py::test_the_look_holds_back_an_unchecked_answer_outside_it_and_removes_its_rank":
        ("1000x",),
    "test_e2e_reduce.py::test_a_sender_that_signs_slices_it_did_not_commit_to_is_removed_on_its_own_word":
        (),
    "test_e2e_reduce.py::test_a_rank_that_fails_the_table_s_relay_costs_the_manager_one_table_per_rank_below_it":
        (),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        key = f"{item.path.name}::{item.originalname}"
        params = getattr(item, "callspec", None)
        kept = FIRST_TIER_CASES.get(key)
        if item.get_closest_marker("slurm") or \
                (params is not None and params.params.get("mpi") == "openmpi") or \
                (kept is not None and not any(case in item.name for case in kept)):
            item.add_marker(pytest.mark.full)


@pytest.fixture(scope="module", autouse=True)
def mpi(request):
    """The MPI implementation run_job launches with (MPICH unless parametrized)."""
    _current["mpi"] = mpi_impls.get(getattr(request, "param", "mpich"))
    yield _current["mpi"]
    _current["mpi"] = None


_current = {"mpi": None}


def run_job(n, args, cwd=None, timeout=RUN_TIMEOUT, path=(), env=None, adversary=None,
            program=None):
    """mpiexec -n N python -m podlt_mpi ARGS, with a timeout; returns CompletedProcess.

    Under the current test's MPI implementation. `path`: extra folders on PYTHONPATH (for user
    plugins and models); `env`: extra variables (None: unset, e.g. this process's portable
    kernel settings for a job whose ranks choose natively); `adversary`: (rank, program) runs
    that rank as the program (tests/adversaries/), given the same ARGS; `program`: every rank
    runs it instead of the package.
    """
    impl = _current["mpi"] or mpi_impls.get("mpich")
    full_env = impl.environ({**(env or {}),
                             "PYTHONPATH": os.pathsep.join([*map(str, path), ROOT])})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    job = (program, *args) if program else ("-m", "podlt_mpi", *args)
    if adversary is None:
        command = impl.command(n, *job)
    else:
        rank, program = adversary
        command = impl.mpmd(*[seg for seg in ((rank, *job), (1, program, *args),
                                              (n - rank - 1, *job)) if seg[0]])
    return subprocess.run(command, cwd=cwd or ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """2400 training and 400 test lines of the synthetic task."""
    from podlt_mpi.io import data
    folder = tmp_path_factory.mktemp("data")
    path = str(folder / "small.h5")
    data.prepare_synthetic(path, lines=2400, test_lines=400)
    return {"train": path, "test": data.test_path_for(path)}


@pytest.fixture
def job_args(small_data, tmp_path):
    """Base options for a quick run: 12 iterations of 200 lines."""
    def make(out="run", **extra):
        # the weights by broadcast, which auto leaves off where ranks sleep (here: 2 cores)
        args = ["--data", small_data["train"], "--test-data", small_data["test"],
                "--out", str(tmp_path / out), "--block-lines", "200", "--broadcast", "on"]
        # the roles' key from a number, so a test's roles are the same every time; role_seed=None
        # leaves the key to the manager's CSPRNG, as in a real run
        extra.setdefault("role_seed", 0)
        for k, v in extra.items():
            if v is not None:
                args += ["--" + k.replace("_", "-"), str(v)]
        return args
    return make
