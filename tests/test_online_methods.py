"""PCL and DKEL: multi-branch network, loss terms, EMA warm-up, decoupled init, ramp-up, resume."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core import make_config
from distill_core.branches import SPLITS, build_branches
from distill_core.config import Config, DKELConfig
from distill_core.data import Batch, Splits, load_data
from distill_core.errors import ConfigError
from distill_core.methods import METHODS
from distill_core.methods.dkel import decoupled_term, ensemble_weight
from distill_core.methods.online import (
    RAMPUP_FINAL,
    BranchMethod,
    ema_,
    ema_decay,
    method_generator,
    rampup_weight,
)
from distill_core.methods.pcl import peer_mean_term
from distill_core.models import MODELS, ModelSpec
from distill_core.trainer import EpochReport, fit

CPU = torch.device("cpu")


def config(**overrides: Any) -> Config:
    """A tiny synthetic run (640 training images, 8x8): mlp, 3 branches, 2 epochs, CPU."""
    tree = {
        "data": {"name": "synthetic"},
        "model": {"name": "mlp"},
        "method": {"name": "pcl", "peers": 3, "temperature": 3.0},
        "optim": {"lr": 0.05},
        "run": {"epochs": 2, "batch_size": 64, "device": "cpu"},
    }
    return make_config(tree, overrides)


@pytest.fixture(scope="module")
def synthetic() -> Splits:
    return load_data(config().data)


def build(cfg: Config, data: Splits) -> BranchMethod:
    torch.manual_seed(cfg.run.seed)
    method = METHODS.get(cfg.method.name)(cfg, data, CPU, None)
    assert isinstance(method, BranchMethod)
    return method


def first(data: Splits, n: int) -> Batch:
    return Batch(data.train_x[:n], data.train_y[:n], torch.arange(n))


def sgd(method: BranchMethod, lr: float) -> list[torch.optim.Optimizer]:
    return [torch.optim.SGD(method.nets[0].parameters(), lr=lr)]


def kl_by_hand(target: torch.Tensor, student: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(p_target^tau || p_student^tau) * tau^2, averaged over the batch."""
    p = torch.softmax(target / tau, 1)
    return (p * (p.log() - torch.log_softmax(student / tau, 1))).sum(1).mean() * tau**2


# --- the loss terms -------------------------------------------------------------------------


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)  # (B, K)


S = logits([1.0, 0.0, -1.0])
MEAN = torch.stack([logits([2.0, 0.0, 0.0]), logits([0.0, 3.0, 0.0]), logits([0.0, 0.0, 1.0])])


def test_pcl_peer_mean_term_is_the_mean_kl_to_the_other_branches() -> None:
    tau = 3.0
    assert S.shape == (1, 3) and MEAN.shape == (3, 1, 3)
    expected = (kl_by_hand(MEAN[0], S, tau) + kl_by_hand(MEAN[2], S, tau)) / 2
    assert peer_mean_term(S, MEAN, 1, tau).item() == pytest.approx(expected.item(), rel=1e-12)
    changed = MEAN.clone()
    changed[1] = logits([-5.0, 9.0, 4.0])  # the branch's own temporal mean plays no part
    assert peer_mean_term(S, changed, 1, tau).item() == peer_mean_term(S, MEAN, 1, tau).item()
    changed[0] = logits([-5.0, 9.0, 4.0])
    assert peer_mean_term(S, changed, 1, tau).item() != peer_mean_term(S, MEAN, 1, tau).item()


def test_dkel_mixes_the_ensemble_kl_with_the_individual_kls() -> None:
    tau, w = 3.0, 0.3
    individual = (kl_by_hand(MEAN[1], S, tau) + kl_by_hand(MEAN[2], S, tau)) / 2
    ensemble = kl_by_hand((MEAN[1] + MEAN[2]) / 2, S, tau)  # the mean of the others' logits
    expected = w * ensemble + (1 - w) * individual
    assert decoupled_term(S, MEAN, 0, tau, w).item() == pytest.approx(expected.item(), rel=1e-12)
    added = (individual + w * ensemble).item()
    assert abs(decoupled_term(S, MEAN, 0, tau, w).item() - added) > 0.1
    assert decoupled_term(S, MEAN, 0, tau, 0.0).item() == peer_mean_term(S, MEAN, 0, tau).item()
    assert decoupled_term(S, MEAN, 0, tau, 1.0).item() == pytest.approx(ensemble.item())


def test_ensemble_weight_exp_is_exactly_exp_minus_beta_e() -> None:
    assert [ensemble_weight("exp", 0.5, e, 10) for e in range(3)] == [
        1.0,
        math.exp(-0.5),
        0.36787944117144233,
    ]
    assert all(ensemble_weight("exp", 0.3, e, 7) == math.exp(-0.3 * e) for e in range(7))


def test_ensemble_weight_exp_is_cut_to_zero_at_one_percent() -> None:
    # exp(-0.5 * 9) = 0.0111 stays, exp(-0.5 * 10) = 0.0067 is cut (loss_wrapper.py: > 0.01).
    assert ensemble_weight("exp", 0.5, 9, 300) == math.exp(-4.5)
    assert [ensemble_weight("exp", 0.5, e, 300) for e in (10, 11, 299)] == [0.0, 0.0, 0.0]
    assert ensemble_weight("exp", 0.0, 299, 300) == 1.0


def test_ensemble_weight_cos_and_linear_per_epoch() -> None:
    cos = [ensemble_weight("cos", 0.1, e, 4) for e in range(4)]
    assert cos == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.14644660940672627], abs=1e-15)
    assert [ensemble_weight("linear", 0.1, e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert ensemble_weight("cos", 7.0, 1, 4) == ensemble_weight("cos", 0.1, 1, 4)  # beta unused


def test_dkel_method_uses_configured_decay_and_pcl_is_dkel_at_weight_zero(
    synthetic: Splits,
) -> None:
    cfg = config(**{"method.name": "dkel", "dkel.decay": "linear", "run.epochs": 5})
    method = build(cfg, synthetic)
    assert [method.ensemble_weight(e) for e in range(5)] == [
        1.0,
        0.8,
        0.6,
        0.4,
        0.19999999999999996,
    ]
    pcl = build(config(), synthetic)
    for i in range(3):
        assert pcl.peer_mean_term(S, MEAN, i, 0).item() == decoupled_term(S, MEAN, i, 3.0, 0.0)


# --- the ramp-up ----------------------------------------------------------------------------


def test_intended_rampup_is_the_sigmoid_ramp_reaching_its_final_weight() -> None:
    ramp = [rampup_weight("intended", e, 10) for e in range(13)]
    assert ramp[0] == pytest.approx(RAMPUP_FINAL * math.exp(-5))
    assert ramp[5] == pytest.approx(RAMPUP_FINAL * math.exp(-5 * 0.25))
    assert all(a < b for a, b in zip(ramp[:10], ramp[1:11], strict=True))
    assert ramp[10:] == [0.1, 0.1, 0.1]


def test_code_rampup_is_about_zero_for_80_epochs() -> None:
    code = [rampup_weight("code", e, 80) for e in range(83)]
    assert code[0] == pytest.approx(0.1 * math.exp(-5))  # 6.7e-4
    assert max(code[1:81]) < 1e-100  # the official code divides by lambd (0.1), not by 80
    assert code[81:] == [0.1, 0.1]
    assert [rampup_weight("none", e, 80) for e in (0, 40, 81)] == [0.1, 0.1, 0.1]


# --- EMA ------------------------------------------------------------------------------------


def test_ema_update_on_known_tensors() -> None:
    teacher = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 4.0]])]
    student = [torch.tensor([3.0, 6.0]), torch.tensor([[2.0, 0.0]])]
    ema_(teacher, student, decay=0.25)  # t = 0.25 * t + 0.75 * s
    assert teacher[0].tolist() == [2.5, 5.0]
    assert teacher[1].tolist() == [[1.5, 1.0]]
    assert student[0].tolist() == [3.0, 6.0]


def test_ema_decay_warms_up_as_mean_teacher() -> None:
    assert DKELConfig().ema_decay == 0.999
    assert [ema_decay(s, 0.999) for s in range(4)] == [0.0, 0.5, 1 - 1 / 3, 0.75]
    assert ema_decay(999, 0.999) == 0.999 and ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(5, 0.5) == 0.5
    # Step 0 copies the student exactly, step 1 takes the mean of the two.
    t, s = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 7.0])]
    ema_(t, s, ema_decay(0, 0.999))
    assert t[0].tolist() == [3.0, 7.0]
    ema_(t, [torch.tensor([5.0, 1.0])], ema_decay(1, 0.999))
    assert t[0].tolist() == [4.0, 4.0]


@pytest.mark.parametrize("name", ["pcl", "dkel"])
def test_temporal_mean_follows_the_student_by_warmed_up_ema(name: str, synthetic: Splits) -> None:
    cfg = config(**{"method.name": name, "model.name": "cnn_small", "dkel.ema_decay": 0.7})
    method = build(cfg, synthetic)
    student, mean = method.nets[0], method.mean
    bn = mean.trunk[1]
    count = bn.num_batches_tracked.item()
    method.train_step(first(synthetic, 64), 0, sgd(method, 0.1))
    for pm, ps in zip(mean.parameters(), student.parameters(), strict=True):
        assert torch.equal(pm, ps) and not pm.requires_grad  # decay 0 at step 0
    assert bn.num_batches_tracked.item() == count + 1  # its own train-mode forward, trunk once
    for decay in [0.5, 2 / 3, 0.7]:  # min(1 - 1/(step + 1), 0.7) at steps 1, 2, 3
        before = [p.clone() for p in mean.parameters()]
        method.train_step(first(synthetic, 64), 0, sgd(method, 0.1))
        for pm, ps, p0 in zip(mean.parameters(), student.parameters(), before, strict=True):
            torch.testing.assert_close(pm, decay * p0 + (1 - decay) * ps, rtol=0, atol=1e-6)
    assert method.ema_step == 4
    # BN statistics are its own, from the forwards of its own (now different) weights.
    assert not torch.equal(bn.running_mean, student.trunk[1].running_mean)
    assert list(method.eval_models()) == ["peer0", "peer1", "peer2"]


def test_pcl_train_step_equals_hand_computation(synthetic: Splits) -> None:
    cfg = config(**{"dkel.rampup": "none", "method.temperature": 2.0})
    method = build(cfg, synthetic)
    student, mean = copy.deepcopy(method.nets[0]), copy.deepcopy(method.mean)
    x, y = synthetic.train_x[:32], synthetic.train_y[:32]
    out, tm = student(x), mean(x)[:3].detach()
    s, ens = out[:3], out[3]
    total = F.cross_entropy(ens, y)
    for i in range(3):
        pm = sum(kl_by_hand(tm[j], s[i], 2.0) for j in range(3) if j != i) / 2
        distill = kl_by_hand(ens.detach(), s[i], 2.0) + pm
        total = total + F.cross_entropy(s[i], y) + 0.1 * distill
    grads = torch.autograd.grad(total, list(student.parameters()))

    loss = method.train_step(first(synthetic, 32), 0, sgd(method, 0.1))
    assert loss.item() == pytest.approx(total.item(), rel=1e-6) and not loss.requires_grad
    for p, p_old, g in zip(method.nets[0].parameters(), student.parameters(), grads, strict=True):
        torch.testing.assert_close(p, p_old - 0.1 * g, rtol=0, atol=1e-6)


# --- decoupled initialisation ---------------------------------------------------------------


def test_decoupled_init_takes_two_sgd_steps_at_lr_over_100_with_weight_decay(
    synthetic: Splits,
) -> None:
    cfg = config(**{"method.name": "dkel", "optim.lr": 0.5, "optim.weight_decay": 0.0})
    method = build(cfg, synthetic)
    assert cfg.dkel.init_steps == 2 and cfg.dkel.init_lr is None
    # By hand: the same batches (the method's generator), SGD at 0.5 / 100, weight decay 5e-4.
    generator = method_generator(cfg.run.seed)
    order = torch.randperm(len(synthetic.train_y), generator=generator)
    net = copy.deepcopy(method.nets[0])
    for k in range(2):
        idx = order[64 * k : 64 * (k + 1)]
        loss = torch.stack(
            [
                F.cross_entropy(z, synthetic.train_y[idx])
                for z in net(synthetic.train_x[idx], ensemble=False)
            ]
        ).mean()
        grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads, strict=True):
                if g is not None:  # the ensemble head takes no step
                    p -= 0.005 * (g + 5e-4 * p)
    gap = 0.0
    for pm, pn, ps in zip(
        method.mean.parameters(), net.parameters(), method.nets[0].parameters(), strict=True
    ):
        torch.testing.assert_close(pm, pn, rtol=0, atol=1e-7)
        gap = max(gap, (pm - ps).abs().max().item())
    assert 0 < gap < 0.01  # related, not identical
    assert torch.equal(method.mean.ensemble.weight, method.nets[0].ensemble.weight)
    assert all(p.grad is None for p in method.mean.parameters())


def test_decoupled_init_counts_its_steps_and_zero_steps_is_the_copy(synthetic: Splits) -> None:
    for steps in (1, 3):
        cfg = config(**{"method.name": "dkel", "model.name": "cnn_small", "dkel.init_steps": steps})
        assert build(cfg, synthetic).mean.trunk[1].num_batches_tracked.item() == steps
    for overrides in ({"method.name": "dkel", "dkel.init_steps": 0}, {"method.name": "pcl"}):
        method = build(config(**overrides), synthetic)
        student, mean = method.nets[0].state_dict(), method.mean.state_dict()
        assert all(torch.equal(student[k], mean[k]) for k in student)


# --- the multi-branch network -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_split_model_builds_branches_that_differ(name: str) -> None:
    torch.manual_seed(0)
    net = build_branches(name, 1, 10, 8, branches=3, method="pcl").eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (4, 4, 10)  # 3 branches + the ensemble head
        for i in range(3):
            torch.testing.assert_close(net(x, branch=i), out[i])
            torch.testing.assert_close(net.branch(i)(x), out[i])
        views = torch.stack([x, x.flip(-1), x.flip(-2)])
        torch.testing.assert_close(net(views)[1], net(x.flip(-1), branch=1))
    assert all(not torch.allclose(out[i], out[j]) for i in range(3) for j in range(i))
    heads = [net.heads[i].weight for i in range(3)]
    assert not torch.equal(heads[0], heads[1])
    assert net.ensemble.in_features == 3 * net.heads[0].in_features


def test_the_registered_models_of_the_brief_have_splits() -> None:
    assert {"resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet50"} <= set(SPLITS)
    assert {"cnn_small", "mlp"} <= set(SPLITS)


def test_a_model_without_a_split_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def linear(c: int, k: int, s: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, k))

    monkeypatch.setitem(MODELS._items, "linear", ModelSpec("linear", linear, lambda n: n[1], None))
    # make_config asks the method (check), so the config is refused before anything is built
    with pytest.raises(ConfigError) as err:
        config(**{"model.name": "linear", "method.name": "dkel"})
    assert "set model.name to one of" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="remove init.interp_lambda"):
        config(**{"init.interp_lambda": 0.5, "teacher.model": "mlp"})


def test_trunk_runs_once_without_augmentation_and_once_per_view_with(synthetic: Splits) -> None:
    calls: list[int] = []
    method = build(config(), synthetic)
    method.nets[0].trunk.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    method.train_step(first(synthetic, 16), 0, sgd(method, 0.1))
    assert calls == [16]

    augmented = load_data(config(**{"data.augment": True}).data)
    method = build(config(**{"data.augment": True}), augmented)
    method.nets[0].trunk.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    calls.clear()
    batch = first(augmented, 16)
    views = method.views(batch, 0)
    assert views.shape == (3, 16, 1, 8, 8)
    assert all(not torch.equal(views[i], views[j]) for i in range(3) for j in range(i))
    assert torch.equal(method.views(batch, 0), views)  # one draw per image and epoch
    assert not torch.equal(method.views(batch, 1), views)
    method.train_step(batch, 1, sgd(method, 0.1))
    assert calls == [16, 16, 16]


# --- whole runs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pcl", "dkel"])
def test_resume_with_augmentation_matches_an_uninterrupted_run(name: str) -> None:
    cfg = config(
        **{"method.name": name, "model.name": "cnn_small", "data.augment": True, "run.epochs": 3}
    )
    captured: dict[str, Any] = {}

    def capture(report: EpochReport) -> None:
        if report.epoch == 2:  # the generator has moved on from its seed (epoch 0's draws)
            captured["state"] = copy.deepcopy(report.state())

    whole = fit(cfg, on_epoch=capture)
    resumed = fit(cfg, resume_from=captured["state"])

    def timeless(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if k != "epoch_time"}

    assert whole.status == "completed" and whole.final["val_acc"] > 0.2
    assert [timeless(h) for h in resumed.history] == [timeless(h) for h in whole.history]
    assert timeless(resumed.final) == timeless(whole.final)
    state = captured["state"]["method"]
    assert state["ema_step"] == 18 and state["draws_epoch"] == 1  # 576 images / 64 per epoch


class _Collapsed(nn.Module):
    """An evaluated branch whose logits collapsed to a constant (seed 002's collapse)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) * 0.0


def test_a_pcl_run_with_the_papers_settings_reports_the_collapse_of_a_branch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PCL as seed 002 runs it (3 branches, tau 3, EMA 0.999, the intended ramp-up) on embedded
    data; when a temporal-mean branch collapses (constant logits), the run says so: that branch
    is flagged crashed in every epoch after the warm-up, the others are not, and the run ends
    ``crashed``."""
    real = BranchMethod.eval_models
    monkeypatch.setattr(
        BranchMethod,
        "eval_models",
        lambda self: {**real(self), "peer1": _Collapsed(real(self)["peer1"])},
    )
    cfg = config(**{
        "data.name": "digits", "model.name": "cnn_small", "run.epochs": 4,
        "dkel.rampup_epochs": 2, "optim.lr": 0.1,
    })  # fmt: skip
    assert (cfg.dkel.ema_decay, cfg.method.temperature, cfg.method.peers) == (0.999, 3.0, 3)
    result = fit(cfg)
    flags = [(h["peer0_crashed"], h["peer1_crashed"], h["crashed"]) for h in result.history]
    assert flags == [(0.0, 0.0, 0.0)] + [(0.0, 1.0, 1.0)] * 3  # warm-up: the first epoch
    assert (
        result.history[-1]["peer1_val_logit_std"] < 1e-3 < result.history[-1]["peer0_val_logit_std"]
    )
    assert result.status == "crashed" and result.history[-1]["crashed_epochs"] == 3
