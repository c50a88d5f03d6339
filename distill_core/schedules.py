"""Optimizers and learning-rate schedules from config, built on torch.optim."""

from __future__ import annotations

from collections.abc import Iterable

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


def scale_epochs(schedule: dict, from_epochs: int, to_epochs: int) -> dict:
    """A schedule section (as a dict) for ``to_epochs`` instead of ``from_epochs`` epochs: step
    milestones and warm-up epochs scale by the same factor (rounded, kept inside 1..to-1, repeats
    dropped)."""
    out = dict(schedule)
    factor = to_epochs / from_epochs
    if out.get("milestones"):
        out["milestones"] = sorted(
            {min(max(1, round(m * factor)), to_epochs - 1) for m in out["milestones"]} - {0}
        )
    if out.get("warmup_epochs"):
        out["warmup_epochs"] = min(max(1, round(out["warmup_epochs"] * factor)), to_epochs - 1)
    return out
