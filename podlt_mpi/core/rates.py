"""The learning rate of every iteration. Pure, no torch.

A function of the configuration, the iteration and its epoch alone (the epoch follows from the
iteration by the schedule), so the manager, a resumed run and the audit's replay step alike.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine")


def learning_rate(cfg, iteration: int, epoch: int, total: int) -> float:
    """--lr shaped by --lr-schedule over a run of `total` iterations, after --warmup.

    constant: --lr.  step: times --lr-gamma at the start of every --lr-drops epoch.
    cosine: from --lr down to 0 over the iterations after the warm-up (half a cosine).
    warmup: the first W iterations climb linearly, (i + 1) / W of the schedule's rate.
    """
    lr, warm = cfg.lr, cfg.warmup
    schedule = cfg.lr_schedule
    if schedule == "step":
        lr *= cfg.lr_gamma ** sum(1 for d in cfg.lr_drops if epoch >= d)
    elif schedule == "cosine" and iteration >= warm:
        progress = (iteration - warm) / max(1, total - warm)
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if iteration < warm:
        lr *= (iteration + 1) / warm
    return lr
