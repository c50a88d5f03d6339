"""Accuracy, NLL, ECE (15 equal-width bins), top-1 agreement and predictive KL on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from distill_core.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    ece,
    nll,
    predictive_kl,
)


def two_class(confidences: list[float], predicted: list[int]) -> torch.Tensor:
    """Logits whose softmax puts probability ``conf`` on class ``pred`` (two classes)."""
    rows = []
    for conf, pred in zip(confidences, predicted, strict=True):
        p = [1 - conf, 1 - conf]
        p[pred] = conf
        rows.append([math.log(v) for v in p])
    return torch.tensor(rows, dtype=torch.float64)


def test_ece_by_hand_three_bins() -> None:
    # conf 0.95 (bin 14: (14/15, 1]) twice, one right one wrong; 0.7 (bin 10) right; 0.55 (bin 8) wrong
    logits = two_class([0.95, 0.95, 0.7, 0.55], [1, 1, 0, 1])
    y = torch.tensor([1, 0, 0, 0])
    expected = 2 / 4 * abs(0.95 - 0.5) + 1 / 4 * abs(0.7 - 1.0) + 1 / 4 * abs(0.55 - 0.0)
    assert ece(logits, y) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4375)


def test_ece_averages_within_a_bin_before_taking_the_gap() -> None:
    # 0.70 and 0.72 share bin 10 = (10/15, 11/15]: |mean conf 0.71 - accuracy 0.5| = 0.21, not (0.3 + 0.72) / 2
    logits = two_class([0.70, 0.72], [0, 0])
    y = torch.tensor([0, 1])
    assert ece(logits, y) == pytest.approx(0.21, abs=1e-6)


def test_ece_uses_fifteen_bins_not_ten() -> None:
    # 0.62 (bin 9) and 0.68 (bin 10) are apart with 15 bins; with 10 bins both would be in (0.6, 0.7]
    logits = two_class([0.62, 0.68], [0, 0])
    y = torch.tensor([0, 1])
    assert ece(logits, y) == pytest.approx(0.5 * 0.38 + 0.5 * 0.68, abs=1e-6)
    assert ece(logits, y, n_bins=10) == pytest.approx(abs(0.65 - 0.5), abs=1e-6)


def test_ece_is_zero_when_calibrated() -> None:
    logits = two_class([0.75] * 4, [0, 0, 0, 0])
    y = torch.tensor([0, 0, 0, 1])  # 75% right at 75% confidence
    assert ece(logits, y) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_a_confident_always_wrong_model_is_its_confidence() -> None:
    logits = two_class([0.99] * 3, [1, 1, 1])
    assert ece(logits, torch.tensor([0, 0, 0])) == pytest.approx(0.99, abs=1e-6)


def test_accuracy_and_nll() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    y = torch.tensor([0, 2, 1, 0])
    logits = torch.log(probs)
    assert accuracy(logits, y) == pytest.approx(0.5)
    expected_nll = -(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.2)) / 4
    assert nll(logits, y) == pytest.approx(expected_nll, rel=1e-6)


def test_agreement_counts_matching_argmax() -> None:
    student = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    teacher = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    assert agreement(student, teacher) == pytest.approx(0.75)
    assert agreement(teacher, teacher) == 1.0


def test_predictive_kl_is_kl_teacher_to_student_at_tau_one() -> None:
    # example 1: p_t = (0.5, 0.5), p_s = (0.8, 0.2); example 2: identical -> 0
    teacher = torch.log(torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    student = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    kl1 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert predictive_kl(student, teacher) == pytest.approx(kl1 / 2, rel=1e-5)
    # the direction matters: KL(p_s || p_t) is a different number
    reverse = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert predictive_kl(teacher, student) == pytest.approx(reverse / 2, rel=1e-5)
    assert abs(kl1 - reverse) > 0.01


def test_predictive_kl_ignores_a_constant_logit_shift() -> None:
    teacher = torch.tensor([[1.0, 2.0, 3.0]])
    assert predictive_kl(teacher + 10.0, teacher) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("prefix", ["val_", "test_"])
def test_classification_metrics_keys_and_values(prefix: str) -> None:
    logits = two_class([0.9, 0.8, 0.6], [0, 1, 1])
    y = torch.tensor([0, 1, 0])
    teacher = two_class([0.9, 0.9, 0.9], [0, 1, 0])
    plain = classification_metrics(logits, y, prefix=prefix)
    assert set(plain) == {f"{prefix}acc", f"{prefix}nll", f"{prefix}ece"}
    full = classification_metrics(logits, y, teacher, prefix=prefix)
    assert set(full) == set(plain) | {f"{prefix}agreement", f"{prefix}kl"}
    assert full[f"{prefix}acc"] == pytest.approx(2 / 3)
    assert full[f"{prefix}agreement"] == pytest.approx(2 / 3)
    assert full[f"{prefix}nll"] == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3, rel=1e-5
    )
    assert full[f"{prefix}kl"] > 0
