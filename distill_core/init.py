"""Interpolated initialisation (seed 004): theta_s = lambda*theta_t + (1-lambda)*theta_random."""

from __future__ import annotations

import torch
import torch.nn as nn

from distill_core.errors import ConfigError


@torch.no_grad()
def interpolate_(student: nn.Module, teacher: nn.Module, lam: float) -> None:
    """Overwrite the student's parameters with lam*teacher + (1-lam)*student, in place.

    Buffers (batch-norm statistics) are not interpolated: re-estimate them with ``reestimate_bn``.
    """
    s_params, t_params = dict(student.named_parameters()), dict(teacher.named_parameters())
    if s_params.keys() != t_params.keys() or any(
        s_params[k].shape != t_params[k].shape for k in s_params
    ):
        raise ConfigError(
            f"cannot interpolate {type(student).__name__} with {type(teacher).__name__}: parameters differ; "
            "set model.name and teacher.model to the same architecture"
        )
    for name, p in s_params.items():
        p.mul_(1.0 - lam).add_(t_params[name], alpha=lam)


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every batch-norm layer and recompute its running statistics as a plain average over batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
