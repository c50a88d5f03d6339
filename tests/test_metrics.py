"""Accuracy, NLL, ECE (15 equal-width bins), top-1 agreement, predictive KL, collapse diagnostics
and the crash rule, on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_core.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    crash_flags,
    ece,
    logit_std,
    nll,
    predictive_kl,
    top_class_share,
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
    assert set(plain) == {
        f"{prefix}{k}" for k in ("acc", "nll", "ece", "top_class_share", "logit_std")
    }
    assert plain[f"{prefix}top_class_share"] == pytest.approx(2 / 3)  # class 1 twice of three
    assert plain[f"{prefix}logit_std"] == pytest.approx(
        (math.log(9) + math.log(4) + math.log(1.5)) / 2 / 3  # |z1 - z0| / 2 per row
    )
    full = classification_metrics(logits, y, teacher, prefix=prefix)
    assert set(full) == set(plain) | {f"{prefix}agreement", f"{prefix}kl", f"{prefix}logit_diff"}
    assert full[f"{prefix}logit_diff"] == pytest.approx((logits - teacher).abs().mean().item())
    assert full[f"{prefix}acc"] == pytest.approx(2 / 3)
    assert full[f"{prefix}agreement"] == pytest.approx(2 / 3)
    assert full[f"{prefix}nll"] == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3, rel=1e-5
    )
    assert full[f"{prefix}kl"] > 0


# --- collapse diagnostics and the crash rule (seed 000) ---------------------------------------

N, C = 200, 10
Y = torch.arange(N) % C  # balanced labels


def healthy(accuracy: float, seed: int = 0) -> torch.Tensor:
    """Confident logits, right on the first ``accuracy * N`` examples, spread over all classes."""
    g = torch.Generator().manual_seed(seed)
    pred = Y.clone()
    wrong = torch.arange(N) >= round(accuracy * N)
    pred[wrong] = (Y[wrong] + 1 + torch.randint(0, C - 1, (int(wrong.sum()),), generator=g)) % C
    return torch.randn(N, C, generator=g) + 5.0 * F.one_hot(pred, C)


def one_class(share: float) -> torch.Tensor:
    """Confident logits predicting class 3 for the first ``share * N`` examples, the truth after."""
    pred = torch.where(torch.arange(N) < round(share * N), torch.tensor(3), Y)
    return torch.randn(N, C, generator=torch.Generator().manual_seed(1)) + 5.0 * F.one_hot(pred, C)


def near_constant() -> torch.Tensor:
    """Seed 002's collapse: every row nearly constant; the tiny noise spreads the argmax."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(N, 1, generator=g) + 1e-5 * torch.randn(N, C, generator=g)


def val(logits: torch.Tensor, prefix: str = "") -> dict[str, float]:
    return {prefix + k: v for k, v in classification_metrics(logits, Y, prefix="val_").items()}


def test_diagnostics_on_hand_made_logits() -> None:
    assert top_class_share(one_class(0.95)) == pytest.approx(0.95 + 0.05 / C)
    assert top_class_share(healthy(0.9)) < 0.2
    assert logit_std(near_constant()) < 1e-4 and top_class_share(near_constant()) < 0.3
    assert logit_std(torch.tensor([[1.0, 3.0], [2.0, 2.0]])) == pytest.approx(0.5)
    assert logit_std(healthy(0.9)) > 1.0


@pytest.mark.parametrize(
    ("logits", "earlier", "crashed"),
    [
        (one_class(0.95), [], True),  # one class for nearly every image, whatever the accuracy
        (one_class(0.85), [], False),
        (near_constant(), [], True),  # zero logits
        (healthy(0.1), [{"val_acc": 0.6}], True),  # back at chance after 0.6: a collapse
        (healthy(0.11), [{"val_acc": 0.3}, {"val_acc": 0.15}], True),
        (healthy(0.1), [{"val_acc": 0.15}], False),  # slow warm-up, never clearly above chance
        (healthy(0.1), [], False),
        (healthy(0.13), [{"val_acc": 0.9}], False),  # 3 points above chance
        (healthy(0.9), [{"val_acc": 0.95}], False),
    ],
)
def test_crash_rule_mid_run(
    logits: torch.Tensor, earlier: list[dict[str, float]], crashed: bool
) -> None:
    assert crash_flags(val(logits), C, earlier) == {"": crashed}


def test_at_the_end_chance_is_a_crash_whatever_came_before() -> None:
    slow = val(healthy(0.1))
    assert crash_flags(slow, C, [{"val_acc": 0.12}]) == {"": False}
    assert crash_flags(slow, C, [{"val_acc": 0.12}], final=True) == {"": True}
    assert crash_flags(val(healthy(0.5)), C, [], final=True) == {"": False}
    assert crash_flags(val(one_class(0.95)), C, [], final=True) == {"": True}


def test_each_peer_is_judged_on_its_own_metrics_and_history() -> None:
    metrics = {
        **val(healthy(0.8), "peer0_"),
        **val(healthy(0.1, seed=3), "peer1_"),
        **val(near_constant(), "peer2_"),
        **val(healthy(0.8)),
    }
    earlier = [{"peer0_val_acc": 0.7, "peer1_val_acc": 0.5, "peer2_val_acc": 0.5}]
    assert crash_flags(metrics, C, earlier) == {
        "": False,
        "peer0_": False,
        "peer1_": True,
        "peer2_": True,
    }


@pytest.mark.parametrize(
    ("metrics", "classes", "flags"),
    [
        ({"val_acc": 0.1}, 10, {"": True}),
        ({"val_acc": 0.12}, 10, {"": True}),
        ({"val_acc": 0.125}, 10, {"": False}),
        ({"val_acc": 0.01}, 100, {"": True}),
        ({"val_acc": 0.05}, 100, {"": False}),
        (
            {"val_acc": 0.9, "peer0_val_acc": 0.9, "peer1_val_acc": 0.1, "val_acc_mean": 0.5},
            10,
            {"": False, "peer0_": False, "peer1_": True},
        ),
    ],
)
def test_chance_margin_at_the_end(
    metrics: dict[str, float], classes: int, flags: dict[str, bool]
) -> None:
    assert crash_flags(metrics, classes, final=True) == flags
