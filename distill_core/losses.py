"""Loss terms by name. A method's loss is a weighted sum of these terms (``loss_weights``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from distill_core.config import MethodConfig
from distill_core.registry import Registry

# A term takes (student_logits, targets, teacher_logits, temperature) and returns a scalar.
Term = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
LOSSES: Registry[Term] = Registry("loss term", "method.weights")


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term: KL(p_t^tau || p_s^tau) * tau^2, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student / t, dim=1)
    log_p_t = F.log_softmax(teacher / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@LOSSES.register("ce")
def _ce(
    student: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    return F.cross_entropy(student, y)


@LOSSES.register("kl")
def _kl(
    student: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    assert teacher is not None, "the kl term needs teacher logits"
    return kd_kl(student, teacher, temperature)


@LOSSES.register("mse")
def _mse(
    student: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Seed 001's variant: mean squared error between student and teacher logits."""
    assert teacher is not None, "the mse term needs teacher logits"
    return F.mse_loss(student, teacher)


def loss_weights(method: MethodConfig) -> dict[str, float]:
    """``method.weights`` if set, else ``{ce: 1 - alpha, <method.loss>: alpha}``."""
    if method.weights is not None:
        return dict(method.weights)
    return {"ce": 1.0 - method.alpha, method.loss: method.alpha}


def weighted_loss(
    weights: dict[str, float],
    student: torch.Tensor,
    y: torch.Tensor,
    teacher: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """sum_k w_k * term_k(student, y, teacher); terms with weight 0 are not computed."""
    total = student.new_zeros(())
    for name, w in weights.items():
        if w:
            total = total + w * LOSSES.get(name)(student, y, teacher, temperature)
    return total
