"""Loss terms: KD (KL * tau^2), MSE on logits, cross-entropy, and their config-weighted sum."""

from __future__ import annotations

import math

import pytest
import torch

from distill_core.config import MethodConfig
from distill_core.losses import LOSSES, kd_kl, loss_weights, weighted_loss

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
TEACHER = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 2.5]])
TARGETS = torch.tensor([0, 2])


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """sum_i sum_c p_t log(p_t / p_s) / N at temperature tau, written out element by element."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        z_s = sum(math.exp(v / tau) for v in s_row)
        z_t = sum(math.exp(v / tau) for v in t_row)
        for s, t in zip(s_row, t_row, strict=True):
            p_s, p_t = math.exp(s / tau) / z_s, math.exp(t / tau) / z_t
            total += p_t * math.log(p_t / p_s)
    return total / len(student)


def hand_ce(student: torch.Tensor, y: torch.Tensor) -> float:
    rows = [-torch.log(torch.softmax(student[i], 0)[y[i]]).item() for i in range(len(y))]
    return sum(rows) / len(rows)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0, 10.0])
def test_kd_kl_equals_hand_computation_times_tau_squared(tau: float) -> None:
    expected = hand_kl(STUDENT, TEACHER, tau) * tau**2
    # float64: at high tau the KL is tiny and float32 rounding shows once multiplied by tau^2
    assert kd_kl(STUDENT.double(), TEACHER.double(), tau).item() == pytest.approx(
        expected, rel=1e-9
    )
    assert kd_kl(STUDENT, TEACHER, tau).item() == pytest.approx(expected, rel=1e-4)


def test_kd_kl_matches_torch_formula() -> None:
    tau = 3.0
    p_t = torch.softmax(TEACHER / tau, 1)
    by_hand = (p_t * (torch.log(p_t) - torch.log_softmax(STUDENT / tau, 1))).sum(1).mean() * tau**2
    assert kd_kl(STUDENT, TEACHER, tau).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_kd_kl_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    assert kd_kl(TEACHER, TEACHER, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_kl(STUDENT, TEACHER, 4.0).item() > 0.01


def test_tau_squared_keeps_gradient_size_at_high_temperature() -> None:
    """Hinton: the gradient of KL * tau^2 tends to (z_s - z_t) / C for zero-mean logits and large tau."""
    student = torch.tensor([[0.3, -0.2, -0.1, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.1, 0.2, -0.3, 0.0]])
    grads = []
    for tau in (20.0, 40.0, 80.0):
        (g,) = torch.autograd.grad(kd_kl(student, teacher, tau), student)
        grads.append(g)
    limit = (student.detach() - teacher) / 4
    for g in grads:
        assert torch.allclose(g, limit, atol=2e-3)
    norms = [g.norm().item() for g in grads]
    assert max(norms) / min(norms) == pytest.approx(1.0, abs=0.02)
    # without the tau^2 factor the gradient would shrink by 16x from tau 20 to 80
    unscaled = [n / t**2 for n, t in zip(norms, (20.0, 40.0, 80.0), strict=True)]
    assert unscaled[0] / unscaled[-1] == pytest.approx(16.0, rel=0.05)


def test_mse_term_is_mean_squared_logit_difference() -> None:
    expected = ((STUDENT - TEACHER) ** 2).sum().item() / STUDENT.numel()
    got = LOSSES.get("mse")(STUDENT, TARGETS, TEACHER, 4.0).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_ce_term_is_cross_entropy() -> None:
    got = LOSSES.get("ce")(STUDENT, TARGETS, None, 4.0).item()
    assert got == pytest.approx(hand_ce(STUDENT, TARGETS), rel=1e-6)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"alpha": 0.9}, {"ce": pytest.approx(0.1), "kl": 0.9}),
        ({"alpha": 0.0}, {"ce": 1.0, "kl": 0.0}),
        ({"alpha": 0.3, "loss": "mse"}, {"ce": 0.7, "mse": 0.3}),
        ({"alpha": 0.9, "weights": {"ce": 0.5, "mse": 0.5}}, {"ce": 0.5, "mse": 0.5}),
    ],
)
def test_loss_weights_from_config(method: dict, expected: dict) -> None:
    assert loss_weights(MethodConfig(**method)) == expected


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_loss_is_one_minus_alpha_ce_plus_alpha_kl(tau: float) -> None:
    alpha = 0.7
    weights = loss_weights(MethodConfig(alpha=alpha, temperature=tau))
    got = weighted_loss(weights, STUDENT, TARGETS, TEACHER, tau).item()
    expected = (1 - alpha) * hand_ce(STUDENT, TARGETS) + alpha * hand_kl(
        STUDENT, TEACHER, tau
    ) * tau**2
    assert got == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy_and_ignores_the_teacher() -> None:
    weights = loss_weights(MethodConfig(alpha=0.0))
    got = weighted_loss(weights, STUDENT, TARGETS, TEACHER, 4.0).item()
    assert got == pytest.approx(hand_ce(STUDENT, TARGETS), rel=1e-6)
    # a garbage teacher changes nothing when its weight is 0
    assert weighted_loss(weights, STUDENT, TARGETS, TEACHER * 100, 4.0).item() == pytest.approx(
        got, rel=1e-6
    )


def test_alpha_one_is_pure_distillation() -> None:
    weights = loss_weights(MethodConfig(alpha=1.0, temperature=2.0))
    got = weighted_loss(weights, STUDENT, TARGETS, TEACHER, 2.0).item()
    assert got == pytest.approx(hand_kl(STUDENT, TEACHER, 2.0) * 4.0, rel=1e-5)


def test_seed_001_variant_alpha_weights_ce_and_one_minus_alpha_mse() -> None:
    """Seed 001's alpha*CE + (1-alpha)*MSE is the same code with explicit method.weights."""
    a = 0.25
    weights = loss_weights(MethodConfig(weights={"ce": a, "mse": 1 - a}))
    got = weighted_loss(weights, STUDENT, TARGETS, TEACHER, 4.0).item()
    mse = ((STUDENT - TEACHER) ** 2).mean().item()
    assert got == pytest.approx(a * hand_ce(STUDENT, TARGETS) + (1 - a) * mse, rel=1e-6)


def test_weighted_loss_backpropagates_to_student_only() -> None:
    student = STUDENT.clone().requires_grad_(True)
    teacher = TEACHER.clone().requires_grad_(True)
    loss = weighted_loss({"ce": 0.5, "kl": 0.5}, student, TARGETS, teacher.detach(), 4.0)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
