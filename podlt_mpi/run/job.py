"""The MPI job: check everything that can be checked, together, then hand each rank its role.

usage:: mpiexec -n 50 python -m podlt_mpi [options]

Bad input is found before the first protocol message and makes every rank exit 2, with one line
from rank 0. After that, an exception on any rank aborts the whole job (exit 1) so that no rank
is left waiting for one that died.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import time
import traceback

from podlt_mpi import __version__
from podlt_mpi.compute import devices
from podlt_mpi.core.config import (
    build_parser,
    check_world,
    min_active,
    model_kwargs,
    n_workers,
    parse_args,
    resumed,
)
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.dist import comm as mpi
from podlt_mpi.dist import launcher, preempt
from podlt_mpi.io import data
from podlt_mpi.run import resume, rundir

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


def _run(comm, argv, started: float) -> int:
    rank, size = comm.Get_rank(), comm.Get_size()
    lone = launcher.lone_worlds(size, os.environ, mpi.library())
    if lone:  # N copies of the job, each its own manager: refuse, said once
        if lone[1]:
            print(f"podlt_mpi: error: {lone[0]}", file=sys.stderr, flush=True)
        return 2
    if "-h" in argv or "--help" in argv:
        if rank == 0:
            build_parser().print_help()
        return 0
    # Identical argv on every rank gives identical errors: no communication needed yet.
    try:
        cfg = parse_args(argv)
        if not cfg.resume:  # a resumed run's configuration is read from its directory below
            check_world(cfg, size)
    except ConfigError as e:
        _say(rank, str(e))
        return 2
    waiter = mpi.Waiter(mpi.choose_wait(comm, cfg.wait))

    # Rank 0 prepares and validates the data and the run directory while the others sleep.
    error, shared, created, changed, history, saved = None, None, False, {}, [], None
    if rank == 0:
        try:
            if cfg.resume:
                saved = resume.saved_config(cfg.resume)
                history = saved.get("resumed", [])
                cfg, changed = resumed(saved, cfg, argv)
                check_world(cfg, size)
                out = cfg.resume
            else:
                out = cfg.out or rundir.default_out()
                rundir.check(out)
            if cfg.uses_default_data:
                data.ensure_default_data()
            ds = data.resolve(cfg)
            shared = (cfg, ds, out, saved and saved.get("device_kind", "cpu"))
        except ConfigError as e:
            error = str(e)
    error = mpi.fail_together(comm, error, waiter)
    if error:
        _say(rank, error)
        return 2
    cfg, ds, out, resumed_kind = mpi.bcast(comm, shared)

    # torch is imported only now: at 50 ranks on 2 cores the import alone takes about a minute,
    # and bad input should be reported in seconds.
    from podlt_mpi.compute import models, training
    from podlt_mpi.compute.faults import Faker
    from podlt_mpi.compute.layout import Layout
    from podlt_mpi.core import schedule
    training.set_determinism(cfg.threads, exact=cfg.compare == "exact")

    # Every rank builds the model and its fault behaviour; any of them may fail on user code.
    model = faker = plan = None
    stochastic = False
    dev, node_rank = "cpu", mpi.node_position(comm)[0]
    try:
        dev = devices.place(cfg.device, rank, node_rank)
        model = models.place(models.build(cfg.model, ds.line_shape, ds.n_classes, cfg.seed,
                                          ds.task, model_kwargs(cfg.model_args)), cfg.model, dev)
        smallest = schedule.smallest_fragment(len(ds.train), cfg.block_lines, n_workers(cfg, size))
        stochastic = models.probe(model, cfg.model, ds.line_shape, ds.n_classes, dev,
                                  min(smallest, 8), exact=cfg.compare == "exact", task=ds.task)
        layout = Layout(model)
        faker = Faker(cfg, rank, layout, ds.task)
        if rank == 0 and cfg.resume:
            plan = resume.prepare(out, size, min_active(cfg), changed, history)
        elif rank == 0:
            created = not os.path.exists(out)
            os.makedirs(out, exist_ok=True)
    except ConfigError as e:
        error = str(e)
    except OSError as e:
        error = f"--out {out} cannot be created: {e.strerror}"
    error = mpi.fail_together(comm, error, waiter)
    if not error:
        # Every rank gets every rank's device, so all reach the same verdict without a word.
        placed = comm.allgather(devices.describe(dev))
        stochastic = any(comm.allgather(stochastic))
        error = devices.check_kinds(placed, cfg.compare, resumed_kind, cfg.cuda_aware_mpi,
                                    stochastic)
    if error:
        if rank == 0 and created:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        _say(rank, error)
        return 2
    gpus = devices.gpu_models(placed)
    if rank == 0 and cfg.compare == "exact" and len(gpus) > 1:
        log.warning("GPU models differ (%s): under --compare exact their ranks may disagree on "
                    "honest work, which ends in disputes; --compare tolerance avoids them",
                    ", ".join(gpus))
    if rank == 0 and cfg.cuda_aware_mpi and mpi.cuda_support() is False:
        log.warning("%s says it has no CUDA support (MPIX_Query_cuda_support() is 0): if a "
                    "rank then crashes in a send or receive, drop --cuda-aware-mpi",
                    mpi.library())

    if rank == 0:
        from podlt_mpi.run.manager import TOO_FEW, Manager
        meta = {"data": ds.train.path, "test_data": ds.test.path if ds.test and ds.test.path != ds.train.path else None,
                "train_lines": [ds.train.start, ds.train.stop],
                "test_lines": [ds.test.start, ds.test.stop] if ds.test else None,
                "out": out, "world_size": size, "wait_mode": waiter.mode,
                "line_shape": list(ds.line_shape), "n_classes": ds.n_classes,
                "task": ds.task.to_meta(),
                "n_params": sum(p.numel() for p in model.parameters()),
                "n_trainable": layout.n_grad, "state_size": layout.state_size,
                "answer_size": layout.answer_size,
                "buffers": layout.floats + layout.counters, "devices": placed,
                "device_kind": devices.kinds(placed),
                "versions": {"podlt_mpi": __version__, "torch": models.torch.__version__,
                             "python": platform.python_version(), "mpi": mpi.library()}}
        log.info("%d ranks (%s waits) on %s, %d training lines, model %s with %d parameters "
                 "(%d trainable, %d buffer values), out %s", size, waiter.mode,
                 devices.summary(placed), len(ds.train), cfg.model, meta["n_params"],
                 layout.n_grad, layout.n_float + layout.n_count, out)
        summary = Manager(comm, cfg, ds, model, out, waiter, meta, plan, started).run()
        code = 1 if summary["stopped_by"] == TOO_FEW else 0
    else:
        from podlt_mpi.run import worker
        worker.run(comm, model, layout, ds.line_shape, faker, waiter, idle_timeout=cfg.rank_timeout,
                   cuda_aware=cfg.cuda_aware_mpi, task=ds.task)
        code = 0
    # Ranks that stopped early (removed, or finished) sleep here instead of spinning in finalize.
    mpi.quiet_barrier(comm, waiter)
    peaks = comm.gather(peak_rss_mb(), root=0)
    if rank == 0 and os.path.exists(os.path.join(out, "summary.json")):
        rundir.add_to_json(os.path.join(out, "summary.json"), peak_rss_mb=peaks)
    return code


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kB, macOS bytes)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
