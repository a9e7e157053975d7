"""The MPI job: check everything that can be checked, together, then hand each rank its role.

usage:: mpiexec -n 50 python -m podlt_mpi [options]

Bad input is found before the first protocol message and makes every rank exit 2, with one line
from rank 0; so is a bad line of the training file, found when its block is read (every rank is
told to stop, the run's files end at the iteration before). Start-up and the end go through
run/startup.py: typed messages to and from rank 0, with deadlines; a rank that misses the
start, or sends a malformed report, ends the job as bad input does (exit 2, every rank ended),
one that misses the end is ended with it once the run's files are complete (exit as the run
would). An exception on any rank aborts the whole job (exit 1) so that
no rank is left waiting for one that died.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import time
import traceback
import dataclasses
from dataclasses import asdict, dataclass, field

from podlt_mpi import __version__
from podlt_mpi.compute import devices
from podlt_mpi.core.config import (
    RunConfig,
    broadcasts,
    build_parser,
    check_world,
    min_active,
    model_kwargs,
    n_workers,
    parse_args,
    resumed,
)
from podlt_mpi.core import portable, reduction, signatures
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.mpi import comm as mpi
from podlt_mpi.mpi import launcher, preempt
from podlt_mpi.io import data
from podlt_mpi.run import resume, rundir, startup

log = logging.getLogger("podlt_mpi")


def _setup_logging(rank: int) -> None:
    # Rank 0 reports progress; the others speak only to warn, tagged with their rank.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s podlt[{rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(f"podlt_mpi: error: {text}", file=sys.stderr, flush=True)


def run(argv) -> int:
    started = time.monotonic()
    preempt.install()  # before the slow start-up, so an early signal is not lost
    comm = mpi.world()
    _setup_logging(comm.Get_rank())
    try:
        return _run(comm, argv, started)
    except startup.Missing as e:  # the job cannot start with these ranks: refused, as bad input
        # ranks that are hung or stopped would keep mpiexec from returning: end them all
        print(f"podlt_mpi: error: {e}", file=sys.stderr, flush=True)
        mpi.abort(comm, 2)
        return 2
    except mpi.PeerLost as e:
        print(f"podlt_mpi: error: {e}", file=sys.stderr, flush=True)
        mpi.abort(comm, 1)
        return 1
    except Exception:
        # Any rank failing alone would leave the others blocked in a receive: abort them all.
        print(f"podlt[{comm.Get_rank()}] internal error, aborting the job:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        mpi.abort(comm, 1)
        return 1


class _Exit(Exception):
    """A phase ends the job on every rank: `code`, and a sentence rank 0 prints (if any)."""

    def __init__(self, code: int, message: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Inputs:
    """What rank 0 found before any rank built a model, shared with every rank."""
    cfg: RunConfig
    ds: data.Dataset
    out: str
    resumed_kind: str | None = None  # the device kind the resumed run computed on
    changed: dict = field(default_factory=dict)   # options a resume changes
    history: list = field(default_factory=list)   # earlier resumes of the run
    # False for a resumed run written before runs recorded their kernels: it goes on with the
    # environment's, and stays unrecorded (its audit cannot know those of its first part)
    records_kernels: bool = True
    # a resumed run's ranks' compute configurations as it started (config.json `compute`): kept,
    # while each resume records its own in its `resumed` entry, so an audit knows every part's
    started_compute: list | None = None

    def for_workers(self) -> dict:
        """What the other ranks need, as JSON (startup.share_inputs): the options and the
        data's shapes."""
        return {"cfg": asdict(self.cfg), "out": self.out, "line_shape": list(self.ds.line_shape),
                "task": self.ds.task.to_meta(), "train": [self.ds.train.path, self.ds.train.start,
                                                          self.ds.train.stop]}

    @classmethod
    def for_worker(cls, got: dict) -> _Inputs:
        from podlt_mpi.core.tasks import Task
        ds = data.Dataset(data.Split(*got["train"]), None, tuple(got["line_shape"]),
                          Task.from_meta({"task": got["task"]}), None)
        return cls(RunConfig(**got["cfg"]), ds, got["out"])


@dataclass
class _Built:
    """Every rank's model and fault behaviour, and rank 0's resume plan."""
    model: object
    layout: object
    faker: object
    placed: list                 # every rank's device, in rank order
    signer: object = None        # core/signatures.Signer: this rank's key for the reduction
    keys: list = field(default_factory=list)  # rank 0: every rank's public key, in rank order
    compute: list = field(default_factory=list)  # rank 0: every rank's compute configuration
    plan: object = None          # resume.Resume on rank 0 when resuming
    created: bool = False        # rank 0 made the run directory (removed again on bad input)


def _run(comm, argv, started: float) -> int:
    """The job's phases: options, inputs, models, devices, then each rank's role."""
    rank = comm.Get_rank()
    try:
        cfg = _options(comm, argv)
        if cfg is None:
            return 0  # --help
        local, on_node = startup.hello(comm, cfg.start_timeout)
        waiter = mpi.Waiter(mpi.choose_wait(on_node, cfg.wait))
        inputs = _inputs(comm, cfg, argv, waiter.mode)
        built = _build(comm, inputs, local)
    except _Exit as e:
        if e.message:
            _say(rank, e.message)
        return e.code
    _warn_about_cuda_aware_mpi(rank, inputs.cfg)
    exchange = None  # rank 0's, once its run is over
    if rank == 0:
        try:
            code, exchange = _manage(comm, inputs, built, waiter, started)
        except ConfigError as e:  # a bad line met in a block: every rank has been told to stop
            _say(rank, str(e))
            code = 2
            if built.created and not os.path.getsize(os.path.join(inputs.out, "ledger.jsonl")):
                shutil.rmtree(inputs.out, ignore_errors=True)  # not one iteration: no run
    else:
        from podlt_mpi.run import worker
        from podlt_mpi.run.aggregate import Aggregator
        cfg = inputs.cfg
        aggregator = (Aggregator(comm, built.layout, comm.Get_size() - 1, waiter, built.signer)
                      if cfg.reduce == "ranks" else None)
        worker.run(comm, built.model, built.layout, inputs.ds.line_shape, built.faker, waiter,
                   cuda_aware=cfg.cuda_aware_mpi,
                   task=inputs.ds.task, aggregator=aggregator)
        code = 0
    return _finish(comm, inputs, code, exchange)


def _options(comm, argv) -> RunConfig | None:
    """The command line, the same on every rank, so its errors need no communication."""
    rank, size = comm.Get_rank(), comm.Get_size()
    lone = launcher.lone_worlds(size, os.environ, mpi.library())
    if lone:  # N copies of the job, each its own manager: refuse, said once
        if lone[1]:
            print(f"podlt_mpi: error: {lone[0]}", file=sys.stderr, flush=True)
        raise _Exit(2)
    if "-h" in argv or "--help" in argv:
        if rank == 0:
            build_parser().print_help()
        return None
    try:
        return options(argv, size)
    except ConfigError as e:
        raise _Exit(2, str(e)) from None


def options(argv, size: int) -> RunConfig:
    """The options for a world of `size` ranks. Raises ConfigError."""
    cfg = parse_args(argv)
    if not cfg.resume:  # a resumed run's configuration is read from its directory
        check_world(cfg, size)
    return cfg


def _inputs(comm, cfg, argv, wait_mode: str) -> _Inputs:
    """Rank 0 prepares and validates the data and the run directory while the others wait, then
    sends them what they need: the options and the data's shapes (never the data's files: on a
    cluster they may be on rank 0's node alone)."""
    if comm.Get_rank():
        got = startup.share_inputs(comm, None)
        if got is None:
            raise _Exit(2)
        return _Inputs.for_worker(got)
    try:
        found = inputs(cfg, argv, comm.Get_size(), wait_mode)
    except ConfigError as e:
        startup.share_inputs(comm, None)
        raise _Exit(2, str(e)) from None
    startup.share_inputs(comm, found.for_workers())
    return found


def inputs(cfg: RunConfig, argv, size: int, wait_mode: str = "spin") -> _Inputs:
    """The run to continue or the directory to write, and the data. Raises ConfigError.
    `--reduce auto` is decided here, on rank 0, for every rank (reduction.choose)."""
    changed, history, kind, records_kernels, started = {}, [], None, True, None
    if cfg.resume:
        rundir.check_links(cfg.resume, "--resume")
        saved = resume.saved_config(cfg.resume)
        history, kind = saved.get("resumed", []), saved.get("device_kind", "cpu")
        records_kernels = "kernel_settings" in saved
        started = saved.get("compute")
        older = "reduce" not in saved  # started before ledger format 7: the star, as it was
        cfg, changed = resumed(saved, cfg, argv)
        if older and cfg.reduce == "ranks":
            raise ConfigError(f"--reduce ranks needs a run started in ledger format 7; "
                              f"{cfg.resume} continues with the star, as it was started")
        if older:
            cfg = dataclasses.replace(cfg, reduce="star")
        check_world(cfg, size)
        out = cfg.resume
    else:
        out = cfg.out or rundir.default_out()
        rundir.check(out)
    cfg = dataclasses.replace(cfg, reduce=reduction.choose(
        cfg.reduce, cfg.compare == "exact", wait_mode == "spin", size))
    if cfg.uses_default_data:
        data.ensure_default_data()
    return _Inputs(cfg, data.resolve(cfg), out, kind, changed, history, records_kernels,
                   started)


def _build(comm, inputs: _Inputs, local: int) -> _Built:
    """Every rank builds its parts and reports to rank 0, which decides for all of them on
    their devices and errors (startup.reports, startup.verdict)."""
    cfg, out, rank, size = inputs.cfg, inputs.out, comm.Get_rank(), comm.Get_size()
    built, error, stochastic, dev, compute = None, None, False, "cpu", None
    try:
        dev = devices.place(cfg.device, rank, local)
        built, stochastic = rank_parts(inputs, rank, size, dev)
        from podlt_mpi.compute import machine
        compute = machine.compute(cfg.kernels, dev)
        if rank == 0 and cfg.resume:
            built.plan = resume.prepare(out, size, min_active(cfg), inputs.changed,
                                        inputs.history, cfg.restart)
        elif rank == 0:
            built.created = not os.path.exists(out)
            os.makedirs(out, exist_ok=True)
    except ConfigError as e:
        error = str(e)
    except OSError as e:
        error = f"--out {out} cannot be created: {e.strerror}"
    try:
        signer = signatures.Signer()
        said = startup.reports(comm, error, stochastic, devices.describe(dev),
                               compute or dict.fromkeys(portable.COMPUTE_KEYS),
                               portable.processor(), cfg.start_timeout, signer.public)
    except startup.Missing:
        if rank == 0 and built is not None and built.created:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        raise
    if rank == 0:
        error = next((e if r == 0 else f"rank {r}: {e}" for r, (e, *_) in enumerate(said)
                      if e), None)
        if built is not None:
            built.placed = [x[2] for x in said]
            built.compute = [{**x[3], "processor": x[4]} for x in said]
            built.keys = [x[5] for x in said]
        error = error or devices.check_kinds(built.placed, cfg.compare, inputs.resumed_kind,
                                             cfg.cuda_aware_mpi, any(s for _, s, *_ in said))
        if not error and cfg.compare == "exact":
            error = portable.disagreeing([x[3] for x in said], [x[4] for x in said])
        if error and built is not None and built.created:
            shutil.rmtree(out, ignore_errors=True)
    if startup.verdict(comm, 2 if error else 0):
        raise _Exit(2, error)
    built.signer = signer
    return built


def rank_parts(inputs: _Inputs, rank: int, size: int, dev) -> tuple:
    """(_Built, stochastic): one rank's model on `dev`, probed with a training pass, and its
    fault behaviour. Any of it may fail on user code: raises ConfigError."""
    # torch is imported only now: at 50 ranks on 2 cores the import dominates the start-up
    # (measured: benchmarks/RESULTS.md, "The default 50-rank job (issue 2)"), and bad input
    # should be reported in seconds.
    from podlt_mpi.compute import models, probe, training
    from podlt_mpi.compute.faults import Faker
    from podlt_mpi.compute.layout import Layout
    from podlt_mpi.core import schedule
    cfg, ds = inputs.cfg, inputs.ds
    training.set_determinism(cfg.threads, exact=cfg.compare == "exact")
    model = models.place(models.build(cfg.model, ds.line_shape, ds.n_classes, cfg.seed,
                                      ds.task, model_kwargs(cfg.model_args)), cfg.model, dev)
    smallest = schedule.smallest_fragment(len(ds.train), cfg.block_lines, n_workers(cfg, size))
    stochastic = probe.probe(model, cfg.model, ds.line_shape, ds.n_classes, dev,
                             min(smallest, 8), exact=cfg.compare == "exact", task=ds.task)
    layout = Layout(model)
    return _Built(model, layout, Faker(cfg, rank, layout, ds.task), []), stochastic


def _warn_about_cuda_aware_mpi(rank: int, cfg) -> None:
    if rank == 0 and cfg.cuda_aware_mpi and mpi.cuda_support() is False:
        log.warning("%s says it has no CUDA support (MPIX_Query_cuda_support() is 0): if a "
                    "rank then crashes in a send or receive, drop --cuda-aware-mpi",
                    mpi.library())


def _manage(comm, inputs: _Inputs, built: _Built, waiter, started: float) -> int:
    """Rank 0's role: the run's description for config.json, then the manager."""
    from podlt_mpi.compute import models
    from podlt_mpi.run.manager import TOO_FEW, Manager
    cfg, ds, out, layout, placed = inputs.cfg, inputs.ds, inputs.out, built.layout, built.placed
    meta = {"data": ds.train.path,
            "test_data": ds.test.path if ds.test and ds.test.path != ds.train.path else None,
            "train_lines": [ds.train.start, ds.train.stop],
            "test_lines": [ds.test.start, ds.test.stop] if ds.test else None,
            "out": out, "world_size": comm.Get_size(), "wait_mode": waiter.mode,
            "weights_by": "broadcast" if broadcasts(cfg, waiter.mode) else "point to point",
            "line_shape": list(ds.line_shape), "n_classes": ds.n_classes,
            "task": ds.task.to_meta(),
            "n_params": sum(p.numel() for p in built.model.parameters()),
            "n_trainable": layout.n_grad, "state_size": layout.state_size,
            "answer_size": layout.answer_size,
            "buffers": layout.floats + layout.counters, "devices": placed,
            "device_kind": devices.kinds(placed),
            "versions": {"podlt_mpi": __version__, "torch": models.torch.__version__,
                         "python": platform.python_version(), "mpi": mpi.library()}}
    if inputs.records_kernels:
        meta.update(kernel_settings=portable.settings(cfg.kernels), compute=built.compute)
        if built.plan is not None and inputs.started_compute is not None:
            meta["compute"] = inputs.started_compute
            built.plan.history[-1]["compute"] = built.compute
    log.info("%d ranks (%s waits) on %s, %d training lines, model %s with %d parameters "
             "(%d trainable, %d buffer values), out %s", comm.Get_size(), waiter.mode,
             devices.summary(placed), len(ds.train), cfg.model, meta["n_params"],
             layout.n_grad, layout.n_float + layout.n_count, out)
    manager = Manager(comm, cfg, ds, built.model, out, waiter, meta, built.plan, started,
                      (built.keys, built.signer))
    summary = manager.run()
    return 1 if summary["stopped_by"] == TOO_FEW else 0, manager.exchange


def _finish(comm, inputs: _Inputs, code: int, exchange=None) -> int:
    """Every rank's last word to rank 0 (startup.finish), its peak memory into summary.json.
    A rank that says nothing in time (stopped, hung, removed and never woken) would keep
    mpiexec from returning: once the run's files are complete, rank 0 ends the job with
    MPI_Abort and the run's own exit code (docs/operations.md); so does a rank that broke the
    protocol (a refused answer, a flood), whose own exit could otherwise decide the launcher's.
    `exchange` (rank 0): the run's, with the last words it took early (removed ranks say
    theirs at once) and the ranks that misbehaved."""
    peaks, counted, missing = startup.finish(comm, peak_rss_mb(),
                                             inputs.cfg.rank_timeout or startup.FINISH_TIMEOUT,
                                             exchange.last_words if exchange else None)
    summary = os.path.join(inputs.out, "summary.json")
    if comm.Get_rank() == 0 and os.path.exists(summary):
        rundir.add_to_json(summary, peak_rss_mb=peaks, counted_bytes=counted)
    bad = sorted(exchange.misbehaved) if exchange else []
    if missing or bad or (mpi.stuck and comm.Get_rank() == 0):
        if missing:
            log.warning("rank(s) %s said nothing at the job's end; ending them (exit %d)",
                        sorted(missing), code)
        elif bad:
            log.warning("rank(s) %s broke the protocol; ending them with the job (exit %d)",
                        bad, code)
        else:
            log.warning("a broadcast group was never formed, and MPI cannot finish with a "
                        "thread still in it: ending the job (exit %d)", code)
        mpi.abort(comm, code)
    return code


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kB, macOS bytes)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
