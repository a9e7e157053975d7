"""The run's configuration: one dataclass, whose field help is also the command line's --help.

Parsing is pure (no MPI): every rank parses the same argv, so they agree without a broadcast,
and only rank 0 prints what went wrong.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

from podlt_mpi.core import rules
from podlt_mpi.core.errors import ConfigError

DEFAULT_DATA = "data/synthetic-100k.h5"
DEFAULT_TEST_DATA = "data/synthetic-100k-test.h5"
FAKE_MODES = ("random", "zero", "sign-flip", "scaled", "stale", "lazy", "lowprec", "noise",
              "alie", "ipm", "mimic", "collude", "label-flip", "buffers")
LR_SCHEDULES = ("constant", "step", "cosine")
LOSSES = ("auto", "cross-entropy", "mse")


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    # Data
    data: Optional[str] = _opt(None, "HDF5 training file with datasets x (float features or "
                                     "integer token ids) and y (integer classes or float values, "
                                     "per line or per position); default "
                                     f"{DEFAULT_DATA}, generated on first use")
    test_data: Optional[str] = _opt(None, "HDF5 file for evaluation (same layout); default: the "
                                          "synthetic test file with the default data, else a held-out split")
    x_key: str = _opt("x", "name of the feature dataset in the HDF5 files")
    y_key: str = _opt("y", "name of the label dataset in the HDF5 files")
    holdout: float = _opt(0.1, "fraction of --data held out (its last lines) for evaluation when "
                               "there is no test file")
    out: Optional[str] = _opt(None, "run directory to write; default runs/<timestamp>")
    # Model and optimizer
    model: str = _opt("mlp", "mlp, cnn, gpt (a causal transformer on token ids), or "
                             "module:function returning an nn.Module from (input_shape, "
                             "n_classes, **model_args)")
    model_args: str = _opt("", "keyword arguments of the model's factory, e.g. "
                               "n_layer=4,n_head=4,n_embd=128,dropout=0.1 for gpt")
    output_key: Optional[str] = _opt(None, "where the scores are in what the model returns: a "
                                           "dict's key, an attribute, or a tuple's index; "
                                           "default: a tensor, .logits, or the first element")
    loss: str = _opt("auto", "cross-entropy, mse, module:function(output, y) returning the "
                             "fragment's mean loss, or auto (cross-entropy for integer targets, "
                             "mse for float ones)")
    ignore_index: int = _opt(-100, "class target that does not count (padding): cross-entropy "
                                   "averages over the other targets")
    optimizer: str = _opt("adam", "optimizer on the manager", choices=("sgd", "adam", "adamw"))
    lr: float = _opt(1e-3, "learning rate (the peak, with a schedule or a warm-up)")
    momentum: float = _opt(0.0, "SGD momentum")
    nesterov: bool = _opt(False, "SGD with Nesterov momentum (needs --momentum > 0)", type="bool")
    weight_decay: float = _opt(0.0, "weight decay: L2 in the gradient for sgd and adam, "
                                    "decoupled for adamw")
    clip_grad_norm: float = _opt(0.0, "clip the applied mean gradient to this L2 norm over all "
                                      "trainable parameters (0: no clipping)")
    lr_schedule: Optional[str] = _opt(None, "constant, step (--lr-drops, --lr-gamma) or cosine "
                                            "(from --lr to 0 over the run); default: step when "
                                            "--lr-drops are given, else constant",
                                      choices=LR_SCHEDULES)
    warmup: int = _opt(0, "warm-up iterations W: iteration i < W runs at (i + 1) / W of the "
                          "schedule's rate")
    lr_drops: list = _opt((), "epochs (counted from 0) at whose start the learning rate is "
                              "multiplied by --lr-gamma, e.g. 12,17 (--lr-schedule step)",
                          type="ints")
    lr_gamma: float = _opt(0.1, "factor of each --lr-drops step")
    # Schedule
    block_lines: int = _opt(1000, "lines per iteration, split into one fragment per worker")
    epochs: int = _opt(1, "passes over the training lines")
    shuffle_blocks: bool = _opt(True, "visit the blocks in a new seeded order every epoch; each "
                                      "block stays a contiguous range of lines", type="bool")
    blocks: Optional[int] = _opt(None, "stop after this many iterations")
    eval_every: int = _opt(0, "evaluate every K iterations (0: at the end of each epoch only)")
    # Verification
    controls: int = _opt(2, "control ranks per check (0: plain data-parallel, no checks)")
    checks_per_iteration: int = _opt(1, "workers checked per iteration, each by its own controls "
                                        "(faster detection for M*K extra fragments)")
    compare: str = _opt("exact", "how gradients are compared", choices=("exact", "tolerance"))
    rtol: float = _opt(1e-5, "tolerance mode: ||a-b|| <= rtol*max(||a||,||b||) + atol")
    atol: float = _opt(0.0, "tolerance mode: absolute slack on the distance")
    # Reproducibility and speed
    seed: int = _opt(0, "seed for initial weights, the block order and fault injection; the "
                        "roles come from a secret key of the manager's, never from it")
    role_seed: Optional[int] = _opt(None, "INSECURE, for tests and demonstrations: derive the "
                                          "roles' key from this number, so that anyone who "
                                          "knows it knows who is checked (logged as insecure)")
    threads: int = _opt(1, "torch intra-op threads on every rank (must match for exact mode)")
    kernels: str = _opt("portable", "CPU kernels: portable, the same bits on any x86-64 "
                                    "processor with AVX2, Intel or AMD (ATen's AVX2 kernels, "
                                    "MKL's COMPATIBLE branch, oneDNN up to AVX2), so mixed nodes "
                                    "agree and any machine audits the run; native, the fastest "
                                    "the processor has (the environment's settings), for a "
                                    "cluster of one processor model", choices=("portable", "native"))
    device: str = _opt("auto", "where ranks compute: cuda (GPU local_rank %% visible GPUs, local "
                               "rank from the launcher), cpu, or auto (cuda where present)",
                       choices=("auto", "cpu", "cuda"))
    cuda_aware_mpi: bool = _opt(False, "pass GPU buffers to MPI directly (the MPI must be built "
                                       "CUDA-aware); default: weights and gradients travel as "
                                       "host buffers", type="bool")
    wait: str = _opt("auto", "how idle ranks wait: spin (one rank per core), sleep (oversubscribed), "
                             "auto (from ranks per node vs cores)", choices=("auto", "spin", "sleep"))
    broadcast: str = _opt("auto", "how the weights reach the ranks: on, one MPI broadcast over the "
                                  "active ranks; off, a copy to each rank; auto: on where ranks "
                                  "spin, off where they sleep (each step of a broadcast then "
                                  "waits for a sleeping rank)", choices=("auto", "on", "off"))
    reduce: str = _opt("auto", "who sums the answers: star, the manager (every answer crosses its "
                               "link); ranks, the ranks in slices, verified (exact mode; the "
                               "manager's link carries about one model); auto: ranks in exact "
                               "mode where ranks spin, from 8 ranks, else star",
                       choices=("auto", "star", "ranks"))
    challenges: int = _opt(2, "--reduce ranks: slices the manager sums again each iteration, to "
                              "check their aggregators")
    rank_timeout: float = _opt(0.0, "seconds the manager waits for a rank's answer before it "
                                     "removes the rank; 0: auto, max(20, 10 x the slowest "
                                     "exchange so far) up to 600, 120 on the first iteration")
    start_timeout: float = _opt(600.0, "seconds rank 0 waits for every rank to start (import, "
                                       "build and probe the model) before it ends the job")
    log_every: float = _opt(10.0, "seconds between progress lines when stderr is not a terminal")
    # Checkpoints, resume, preemption
    checkpoint_every: int = _opt(50, "write a checkpoint every K iterations (0: only when "
                                     "stopping early or removing a rank)")
    keep_checkpoints: int = _opt(3, "keep the newest K periodic checkpoints (0: all, which lets "
                                    "the audit replay any segment cheaply)")
    resume: Optional[str] = _opt(None, "continue the run in this directory from its newest valid "
                                       "checkpoint (any number of ranks)")
    restart: bool = _opt(False, "with --resume: start the run over from iteration 0 if no "
                                "checkpoint can be continued from (else that is an error)",
                         type="bool")
    time_limit: float = _opt(0.0, "minutes: stop, checkpoint and exit 0 before this much time has "
                                  "passed (0: no limit)")
    # Fault injection (demonstration and tests)
    fake_ranks: list = _opt((), "comma-separated ranks that fake their gradients, e.g. 3,7",
                            type="ints")
    fake_mode: str = _opt("random", "how fake ranks cheat: one mode for all of them, or "
                                    "RANK=MODE,... per rank (a bare MODE in the list is the "
                                    "others'); modes: " + " ".join(FAKE_MODES))
    fake_from: int = _opt(0, "iteration from which fake ranks cheat")
    fake_prob: float = _opt(1.0, "probability a fake rank cheats in a given iteration")
    fault_plugin: Optional[str] = _opt(None, "module:function(grad, *, iteration, rank, x, y, "
                                             "model) -> Tensor sent instead of the honest answer "
                                             "grad (the gradient, then the model's buffers)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @property
    def uses_default_data(self) -> bool:
        return self.data is None

    @property
    def data_path(self) -> str:
        return self.data or DEFAULT_DATA


def fake_modes(spec: str, fake_ranks) -> dict:
    """{rank: mode} for every fake rank, from --fake-mode "MODE" or "RANK=MODE,...[,MODE]"."""
    default, named = "random", {}
    for item in (t.strip() for t in spec.split(",") if t.strip()):
        rank, _, mode = item.rpartition("=")
        if mode not in FAKE_MODES:
            raise ConfigError(f"--fake-mode names {mode!r}, which is not a fake mode; choose "
                              f"from {', '.join(FAKE_MODES)}")
        if not rank:
            default = mode
            continue
        try:
            named[int(rank)] = mode
        except ValueError:
            raise ConfigError(f"--fake-mode item {item!r} must be MODE or RANK=MODE") from None
    stray = sorted(set(named) - set(fake_ranks))
    if stray:
        raise ConfigError(f"--fake-mode gives rank {stray[0]} a mode, but --fake-ranks does not "
                          "name it")
    return {r: named.get(r, default) for r in fake_ranks}


def _parse_ints(text: str) -> list:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}")
    return sorted(set(values))


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so only rank 0 speaks."""

    def error(self, message):
        raise ConfigError(message)


# --help shows the options in these groups, in this order (every field is in one).
GROUPS = {
    "data and schedule": ("data", "test_data", "x_key", "y_key", "holdout", "out", "block_lines",
                          "epochs", "shuffle_blocks", "blocks", "eval_every"),
    "model and optimizer": ("model", "model_args", "output_key", "loss", "ignore_index", "optimizer", "lr",
                            "momentum", "nesterov", "weight_decay", "clip_grad_norm",
                            "lr_schedule", "warmup", "lr_drops", "lr_gamma"),
    "protocol and reproducibility": ("controls", "checks_per_iteration", "compare", "rtol", "atol",
                                     "seed", "role_seed", "threads", "kernels", "device", "cuda_aware_mpi",
                                     "wait", "broadcast", "reduce", "challenges"),
    "checkpoints and time": ("checkpoint_every", "keep_checkpoints", "resume", "restart",
                             "time_limit",
                             "rank_timeout", "start_timeout", "log_every"),
    "fault injection (demonstrations and tests)": ("fake_ranks", "fake_mode", "fake_from",
                                                   "fake_prob", "fault_plugin"),
}


def _value_type(name: str):
    """int or float for a numeric field (also when Optional), else None (a string)."""
    hint = typing.get_type_hints(RunConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def build_parser(prog: str = "python -m podlt_mpi") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train with Proof of Deep Learning Training over MPI. "
                "usage:: mpiexec -n 50 python -m podlt_mpi [options]")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for title, names in GROUPS.items():
        group = p.add_argument_group(title)
        for name in names:
            _add(group, fields[name])
    return p


def _add(group, f) -> None:
    meta = f.metadata
    kw = {"default": f.default, "help": meta["help"], "dest": f.name}
    if meta.get("type") == "ints":
        kw["type"] = _parse_ints
        kw["default"] = []
    elif meta.get("type") == "bool":
        kw["action"] = argparse.BooleanOptionalAction
        kw["help"] += f" (default: {'on' if f.default else 'off'})"
    else:
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        elif _value_type(f.name):
            kw["type"] = _value_type(f.name)
        if f.default not in (None, "", ()):  # a default worth reading; None says nothing
            kw["help"] += " (default: %(default)s)"
    group.add_argument("--" + f.name.replace("_", "-"), **kw)


def parse_args(argv) -> RunConfig:
    ns = build_parser().parse_args(argv)
    cfg = RunConfig(**vars(ns))
    if cfg.lr_schedule is None:  # the only option whose default follows another's
        cfg.lr_schedule = "step" if cfg.lr_drops else "constant"
    check_options(cfg)
    return cfg


def check_options(cfg: RunConfig) -> None:
    """Checks that need neither the world nor the data."""
    if cfg.block_lines < 1:
        raise ConfigError(f"--block-lines must be at least 1, got {cfg.block_lines}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.blocks is not None and cfg.blocks < 1:
        raise ConfigError(f"--blocks must be at least 1, got {cfg.blocks}")
    if cfg.controls == 1 or cfg.controls < 0:
        raise ConfigError(f"--controls must be 0 (no checks) or at least 2 (a majority needs "
                          f"three votes), got {cfg.controls}")
    if cfg.checks_per_iteration < 1:
        raise ConfigError(f"--checks-per-iteration must be at least 1, got {cfg.checks_per_iteration}")
    if cfg.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.checkpoint_every < 0 or cfg.keep_checkpoints < 0:
        raise ConfigError("--checkpoint-every and --keep-checkpoints must be >= 0")
    if cfg.cuda_aware_mpi and cfg.device == "cpu":
        raise ConfigError("--cuda-aware-mpi moves GPU buffers, but --device cpu uses none")
    if cfg.restart and cfg.resume is None:
        raise ConfigError("--restart belongs to --resume: it starts a run over")
    if cfg.resume is not None and cfg.out is not None:
        raise ConfigError("--resume continues the run in its own directory; leave out --out")
    if not math.isfinite(cfg.start_timeout) or cfg.start_timeout <= 0:
        raise ConfigError(f"--start-timeout must be a finite number above 0, got "
                          f"{cfg.start_timeout}")
    for name in ("lr", "lr_gamma", "rtol", "atol", "momentum", "rank_timeout", "log_every",
                 "time_limit", "weight_decay", "clip_grad_norm"):
        v = getattr(cfg, name)
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if cfg.lr == 0 or cfg.lr_gamma == 0:
        raise ConfigError("--lr and --lr-gamma must be positive")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        raise ConfigError("--nesterov needs --optimizer sgd and a --momentum above 0")
    if cfg.lr_drops and cfg.lr_schedule != "step":
        raise ConfigError(f"--lr-drops belong to --lr-schedule step, not {cfg.lr_schedule}")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0 iterations, got {cfg.warmup}")
    if any(e < 1 for e in cfg.lr_drops):
        raise ConfigError(f"--lr-drops are epochs from 1 on (the first is epoch 0), got "
                          f"{min(cfg.lr_drops)}")
    if not 0 <= cfg.holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {cfg.holdout}")
    if not 0 <= cfg.fake_prob <= 1:
        raise ConfigError(f"--fake-prob must be in [0, 1], got {cfg.fake_prob}")
    if cfg.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {cfg.eval_every}")
    if cfg.reduce == "ranks" and cfg.compare != "exact":
        raise ConfigError("--reduce ranks compares the checked answers by their commitments, "
                          "which needs --compare exact; tolerance mode needs every answer whole "
                          "at the manager (--reduce star)")
    if cfg.challenges < 1:
        raise ConfigError(f"--challenges must be at least 1, got {cfg.challenges}")
    fake_modes(cfg.fake_mode, cfg.fake_ranks)
    model_kwargs(cfg.model_args)
    if cfg.output_key is not None and not cfg.output_key.strip():
        raise ConfigError("--output-key must name a key, an attribute or an index, got nothing")
    if cfg.loss not in LOSSES and ":" not in cfg.loss:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)} or module:function, "
                          f"got {cfg.loss!r}")


def model_kwargs(text: str) -> dict:
    """--model-args "k=v,..." as keyword arguments: ints, floats, true/false, else strings."""
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ConfigError(f"--model-args item {item!r} must be NAME=VALUE")
        out[key.strip()] = _literal(value.strip())
    return out


def _literal(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def min_active(cfg: RunConfig) -> int:
    """Active ranks an iteration needs (rules.min_active)."""
    return rules.min_active(cfg.controls, cfg.checks_per_iteration)


# What a resumed run may change: how it waits, stops and logs, how long it goes on, where the
# data lies now, and the simulated adversary. Everything else decides the numbers it computes.
# --device may change as long as the kind of device stays (the job checks devices.kinds).
RESUME_MAY_CHANGE = {"data", "test_data", "wait", "broadcast", "reduce", "challenges", "device", "cuda_aware_mpi", "rank_timeout", "start_timeout", "restart", "log_every", "checkpoint_every",
                     "keep_checkpoints", "time_limit", "epochs", "blocks", "eval_every",
                     "fake_ranks", "fake_mode", "fake_from", "fake_prob", "fault_plugin", "resume"}


def broadcasts(cfg: RunConfig, wait_mode: str) -> bool:
    """Whether the weights go out by one broadcast (--broadcast) for ranks that wait this way.
    Where ranks sleep, each step of a broadcast waits for a rank to wake: the default job at 50
    ranks on 2 cores trained much slower with it (measured: benchmarks/RESULTS.md,
    "The manager at scale: weights out once, memory flat, start-up flat (issue 18)")."""
    return cfg.broadcast == "on" or (cfg.broadcast == "auto" and wait_mode == "spin")


def explicit_options(argv) -> set:
    """The options given on the command line (not defaulted)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


# Options added since runs were first written, with the value that gives an older run's
# behaviour: a run's config.json that lacks one continues, and is audited, as it was started.
BEFORE_OPTION = {"shuffle_blocks": False, "device": "cpu", "cuda_aware_mpi": False,
                 "lr_schedule": "step", "kernels": "native", "reduce": "star", "challenges": 2}
# A cosine rate depends on the run's length: these may not change on resume under it.
LENGTH = {"epochs", "blocks"}


def saved_options(saved: dict) -> dict:
    """RunConfig fields from a run's config.json, older runs' missing ones filled in."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return {**BEFORE_OPTION, **{k: v for k, v in saved.items() if k in names}}


def resumed(saved: dict, cfg: RunConfig, argv) -> tuple:
    """(config to continue with, {option: (before, now)}) from the run's config.json and argv."""
    base = saved_options(saved)
    changed = {}
    for name in sorted(explicit_options(argv) - {"resume"}):
        now, before = getattr(cfg, name), base.get(name)
        if isinstance(before, list) or isinstance(now, (list, tuple)):
            now, before = list(now or []), list(before or [])
        if now == before:
            continue
        if name in LENGTH and base.get("lr_schedule") == "cosine":
            raise ConfigError(f"--{name} cannot change on --resume of a run with --lr-schedule "
                              "cosine: the rate of every iteration follows from the run's length")
        if name not in RESUME_MAY_CHANGE:
            raise ConfigError(f"--{name.replace('_', '-')} cannot change on --resume (the run "
                              f"was started with {before!r}, this command gives {now!r})")
        base[name] = now
        changed[name] = (before, now)
    base.update(resume=cfg.resume, out=None, restart=cfg.restart)  # restart: this job's only
    out = RunConfig(**base)
    check_options(out)
    return out, changed


def n_workers(cfg: RunConfig, world_size: int) -> int:
    """Workers of an iteration on `world_size` ranks before any removal (rules.workers)."""
    return rules.workers(world_size, cfg.controls, cfg.checks_per_iteration)


def check_world(cfg: RunConfig, world_size: int) -> None:
    """Checks against the number of ranks, before any data is read."""
    m = cfg.checks_per_iteration if cfg.controls else 1
    need = 1 + min_active(cfg)
    if world_size < need:
        why = (f"a manager, {m} worker(s) to check and {m * cfg.controls} controls"
               if cfg.controls else "a manager and one worker")
        raise ConfigError(f"--controls {cfg.controls} with --checks-per-iteration {m} needs at "
                          f"least {need} ranks ({why}); this job has {world_size}")
    bad = [r for r in cfg.fake_ranks if r <= 0 or r >= world_size]
    if bad:
        raise ConfigError(f"--fake-ranks names rank {bad[0]}, but fake ranks must be between 1 "
                          f"and {world_size - 1} (rank 0 is the manager)")
    workers = n_workers(cfg, world_size)
    if cfg.block_lines < workers:
        raise ConfigError(f"--block-lines {cfg.block_lines} is smaller than the {workers} workers "
                          "of this job: every worker needs at least one line")
