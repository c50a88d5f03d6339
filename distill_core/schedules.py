"""Optimizers and learning-rate schedules from config, built on torch.optim."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler

from distill_core.config import OptimConfig, ScheduleConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel over all parameters) on CPU and CUDA."""
    params = list(params)
    fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int, steps_per_epoch: int
) -> tuple[lr_scheduler.LRScheduler, bool]:
    """The scheduler and whether it steps per batch (one-cycle) rather than per epoch."""
    if cfg.name == "onecycle":
        max_lr = cfg.max_lr if cfg.max_lr is not None else optimizer.defaults["lr"]
        sched = lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=cfg.pct_start
        )
        return sched, True
    if cfg.name == "constant":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0), False
    if cfg.name == "step":
        return lr_scheduler.MultiStepLR(
            optimizer, milestones=cfg.milestones, gamma=cfg.gamma
        ), False
    w = cfg.warmup_epochs
    if cfg.name == "cosine":
        main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - w)
    else:
        main = lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=1.0 / (epochs - w + 1), total_iters=epochs - w
        )
    if w == 0:
        return main, False
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (w + 1), end_factor=1.0, total_iters=w
    )
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[w]), False


def scale_epochs(schedule: dict[str, Any], from_epochs: int, to_epochs: int) -> dict[str, Any]:
    """A schedule (``ScheduleConfig`` as a dict) for a run of ``to_epochs`` shaped like the
    ``from_epochs`` one: its settings counted in epochs are scaled by ``to_epochs / from_epochs``.

    Step ``milestones`` and ``warmup_epochs`` are rounded and kept inside ``1..to_epochs-1``
    (milestones that meet are merged; none is left in a 1-epoch run). The rest needs nothing:
    ``pct_start`` is a fraction and cosine, linear and one-cycle span the run. Seed 003's
    early-stopped teachers are trained this way, to completion on a shorter schedule.
    """
    out = dict(schedule)
    ratio, last = to_epochs / from_epochs, to_epochs - 1

    def fit_in(epoch: float) -> int:
        return min(max(round(epoch * ratio), 1), last)

    out["milestones"] = sorted({fit_in(m) for m in schedule.get("milestones", [])} if last else [])
    warmup = schedule.get("warmup_epochs", 0)
    out["warmup_epochs"] = fit_in(warmup) if warmup and last else 0
    return out
