"""Generalisation and fidelity metrics (seed 004): accuracy, NLL, ECE, top-1 agreement, predictive KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(logits.float(), y).item()


def ece(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins."""
    conf, pred = F.softmax(logits.float(), dim=1).max(1)
    correct = (pred == y).float()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    total = conf.new_zeros(())
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return total.item()


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Top-1 agreement: mean(argmax p_s == argmax p_t)."""
    return (student.argmax(1) == teacher.argmax(1)).float().mean().item()


def predictive_kl(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """KL(p_t || p_s) at temperature 1, averaged over examples."""
    log_s = F.log_softmax(student.float(), dim=1)
    log_t = F.log_softmax(teacher.float(), dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True).item()


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None = None, prefix: str = "val_"
) -> dict[str, float]:
    """``{prefix}acc/nll/ece``, plus ``agreement``, ``kl`` and ``diff_t_s`` when teacher logits are given."""
    out = {
        f"{prefix}acc": accuracy(logits, y),
        f"{prefix}nll": nll(logits, y),
        f"{prefix}ece": ece(logits, y),
    }
    if teacher is not None:
        out[f"{prefix}agreement"] = agreement(logits, teacher)
        out[f"{prefix}kl"] = predictive_kl(logits, teacher)
    return out
