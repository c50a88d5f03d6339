"""Metrics: generalisation and fidelity (seed 004: accuracy, NLL, ECE, top-1 agreement,
predictive KL), and the collapse diagnostics and crash rule (seed 000)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

CRASH_WARMUP = 0.1  # no crash is flagged in the first 10% of epochs (at least one) but the last
CHANCE_MARGIN = 0.02  # "at chance": val accuracy within 2 points of 1 / classes
CLEARLY_ABOVE_CHANCE = 0.1  # a collapse to chance needs an earlier val accuracy this far above it
ONE_CLASS_SHARE = 0.9  # one class predicted for at least 90% of the validation images
ZERO_LOGIT_STD = 1e-3  # logits (nearly) equal across classes


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


def top_class_share(logits: torch.Tensor) -> float:
    """Share of the examples predicted as the most predicted class (1.0: one class for all)."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
    return (counts.max() / max(len(logits), 1)).item()


def logit_std(logits: torch.Tensor) -> float:
    """Mean over examples of the standard deviation of the logits over classes (0: constant)."""
    return logits.float().std(dim=1, correction=0).mean().item()


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Top-1 agreement: mean(argmax p_s == argmax p_t)."""
    return (student.argmax(1) == teacher.argmax(1)).float().mean().item()


def predictive_kl(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """KL(p_t || p_s) at temperature 1, averaged over examples."""
    log_s = F.log_softmax(student.float(), dim=1)
    log_t = F.log_softmax(teacher.float(), dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True).item()


def logit_diff(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean absolute difference between student and teacher logits (seed 001's ``diff_t_s``)."""
    return (student.float() - teacher.float()).abs().mean().item()


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None = None, prefix: str = "val_"
) -> dict[str, float]:
    """``{prefix}acc/nll/ece``, the collapse diagnostics ``top_class_share`` and ``logit_std``,
    plus ``agreement``, ``kl`` and ``logit_diff`` when teacher logits are given."""
    out = {
        f"{prefix}acc": accuracy(logits, y),
        f"{prefix}nll": nll(logits, y),
        f"{prefix}ece": ece(logits, y),
        f"{prefix}top_class_share": top_class_share(logits),
        f"{prefix}logit_std": logit_std(logits),
    }
    if teacher is not None:
        out[f"{prefix}agreement"] = agreement(logits, teacher)
        out[f"{prefix}kl"] = predictive_kl(logits, teacher)
        out[f"{prefix}logit_diff"] = logit_diff(logits, teacher)
    return out


def crash_flags(
    metrics: dict[str, float],
    num_classes: int,
    earlier: Iterable[dict[str, float]] = (),
    *,
    final: bool = False,
) -> dict[str, bool]:
    """Per evaluated model (``""`` or ``"peerN_"``): has it crashed, by its validation metrics?

    A model has crashed when it predicts one class for nearly every image (``one_class``), when
    its logits are nearly equal across classes (``zero_logits``; seed 002's collapse), or when
    its accuracy fell back to chance after being clearly above it (``chance``; seed 000's DML
    peers). A model still near chance that never left it is slow, not crashed, except in the
    ``final`` epoch, where being at chance is a crash whatever came before.

    Args:
        metrics: this epoch's metrics (``{p}val_acc``, ``{p}val_top_class_share``, ...).
        num_classes: the data set's classes (chance is ``1 / num_classes``).
        earlier: the metrics of the run's earlier epochs.
        final: whether this is the run's last epoch.
    """
    chance = 1.0 / num_classes
    rows = list(earlier)
    flags = {}
    for key, acc in metrics.items():
        if not (key == "val_acc" or (key.startswith("peer") and key.endswith("_val_acc"))):
            continue
        p = key.removesuffix("val_acc")
        best = max((r[key] for r in rows if key in r), default=0.0)
        at_chance = abs(acc - chance) <= CHANCE_MARGIN
        flags[p] = (
            metrics.get(f"{p}val_top_class_share", 0.0) >= ONE_CLASS_SHARE
            or metrics.get(f"{p}val_logit_std", 1.0) < ZERO_LOGIT_STD
            or (at_chance and (final or best >= chance + CLEARLY_ABOVE_CHANCE))
        )
    return flags
