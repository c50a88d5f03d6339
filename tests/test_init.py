"""Interpolated initialisation (seed 004) and batch-norm re-estimation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from distill_core import fit, make_config
from distill_core.config import ConfigError
from distill_core.init import interpolate_, reestimate_bn
from distill_core.models import build_model


def pair(name: str = "cnn_small") -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor]]:
    """A student, a different teacher of the same architecture, and a copy of the student's initial state."""
    torch.manual_seed(0)
    student = build_model(name, 1, 10, 8)
    torch.manual_seed(1)
    teacher = build_model(name, 1, 10, 8)
    with (
        torch.no_grad()
    ):  # give the teacher non-default BN statistics, to see they are not mixed in
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
    return student, teacher, {k: v.clone() for k, v in student.state_dict().items()}


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_interpolation_is_the_convex_combination(lam: float) -> None:
    student, teacher, init = pair()
    interpolate_(student, teacher, lam)
    t_params = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        expected = lam * t_params[name] + (1 - lam) * init[name]
        torch.testing.assert_close(p.detach(), expected.detach(), rtol=0, atol=1e-7)


def test_lambda_one_reproduces_the_teacher_and_zero_the_random_init() -> None:
    student, teacher, init = pair("resnet20")
    interpolate_(student, teacher, 1.0)
    for (name, p), (_, q) in zip(
        student.named_parameters(), teacher.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    student, teacher, init = pair("resnet20")
    interpolate_(student, teacher, 0.0)
    for name, p in student.named_parameters():
        assert torch.equal(p, init[name]), name


def test_midpoint_differs_from_both_ends() -> None:
    student, teacher, init = pair("mlp")
    interpolate_(student, teacher, 0.5)
    w, w_t, w_0 = student[1].weight, teacher[1].weight, init["1.weight"]
    torch.testing.assert_close(w.detach(), ((w_t + w_0) / 2).detach())
    assert not torch.allclose(w, w_t) and not torch.allclose(w, w_0)


def test_buffers_are_not_interpolated() -> None:
    student, teacher, init = pair()
    interpolate_(student, teacher, 0.7)
    assert torch.equal(student[1].running_mean, init["1.running_mean"])


def test_different_architectures_are_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="set model.name and teacher.model to the same architecture"
    ):
        interpolate_(build_model("mlp", 1, 10, 8), build_model("cnn_small", 1, 10, 8), 0.5)
    with pytest.raises(ConfigError):  # same class, different shapes
        interpolate_(build_model("mlp", 1, 10, 8), build_model("mlp", 3, 10, 8), 0.5)


def test_reestimated_bn_statistics_are_the_batch_statistics_of_the_bn_input() -> None:
    student, _, _ = pair()
    student.eval()
    bn = student[1]
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    torch.manual_seed(5)
    x = torch.randn(16, 1, 8, 8) * 2 + 1
    reestimate_bn(student, [x])
    hook.remove()
    (bn_input,) = seen
    torch.testing.assert_close(bn.running_mean, bn_input.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, bn_input.var(dim=(0, 2, 3), unbiased=True))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert bn.momentum == 0.1 and not student.training  # restored


def test_reestimation_averages_batches_equally() -> None:
    student, _, _ = pair()
    bn = student[1]
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    torch.manual_seed(6)
    reestimate_bn(student, [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8) + 3])
    hook.remove()
    expected = torch.stack([s.mean(dim=(0, 2, 3)) for s in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)


def test_reestimation_changes_the_interpolated_statistics() -> None:
    student, teacher, _ = pair()
    interpolate_(student, teacher, 0.5)
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    torch.manual_seed(7)
    reestimate_bn(student, [torch.randn(32, 1, 8, 8)])
    after = student.state_dict()
    assert all(not torch.allclose(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in student.parameters())


def test_reestimation_without_batch_norm_is_a_no_op() -> None:
    student, _, init = pair("mlp")
    reestimate_bn(student, [torch.randn(4, 1, 8, 8)])
    assert all(torch.equal(v, init[k]) for k, v in student.state_dict().items())


def interp_config(tmp_path: Path, lam: float, model: str = "mlp") -> dict:
    return {
        "data": {"name": "digits"},
        "model": {"name": model},
        "teacher": {
            "model": model,
            "epochs": 2,
            "batch_size": 64,
            "optim": {"lr": 0.05},
            "schedule": {"name": "constant"},
        },
        "method": {"name": "scratch"},
        "init": {"interp_lambda": lam},
        "optim": {"lr": 1e-9, "weight_decay": 0.0, "momentum": 0.0},
        "schedule": {"name": "constant"},
        "run": {
            "epochs": 1,
            "batch_size": 64,
            "device": "cpu",
            "teacher_store": str(tmp_path / "teachers"),
        },
    }


def test_fit_with_lambda_one_starts_from_the_teacher(tmp_path: Path) -> None:
    """lr ~ 0: the student stays where interpolation put it, so lambda = 1 agrees fully with the teacher."""
    one = fit(make_config(interp_config(tmp_path, 1.0))).final
    assert one["val_agreement"] == 1.0
    assert one["val_kl"] == pytest.approx(0.0, abs=1e-5)
    assert one["val_acc"] == one["teacher_val_acc"] > 0.7
    assert one["train_agreement"] == 1.0 and one["val_logit_diff"] < 1e-4
    zero = fit(make_config(interp_config(tmp_path, 0.0))).final
    assert zero["val_acc"] < 0.4  # a random network
    assert zero["val_agreement"] < 0.5 and zero["val_kl"] > 0.5
    assert zero["teacher_val_acc"] == one["teacher_val_acc"]
