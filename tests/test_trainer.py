"""The trainer: schedules, KD learns, exact resume, determinism, divergence and crash detection."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import distill_core.trainer as trainer
from distill_core import EpochReport, FitResult, fit, fit_epochs, load_data, make_config
from distill_core.config import Config, OptimConfig, ScheduleConfig
from distill_core.data import Batch
from distill_core.schedules import build_optimizer, build_schedule, scale_epochs

# --- schedules ----------------------------------------------------------------------------------


def lr_trace(
    schedule: dict[str, Any], *, epochs: int, steps: int, lr: float = 0.1
) -> tuple[bool, list[float]]:
    """The lr at each step (per-batch schedules) or epoch (the others), stepping as the trainer does."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimConfig(lr=lr))
    sched, per_step = build_schedule(
        optimizer, ScheduleConfig(**schedule), epochs=epochs, steps_per_epoch=steps
    )
    trace = []
    for _ in range(epochs * steps if per_step else epochs):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return per_step, trace


@pytest.mark.parametrize("pct_start", [0.1, 0.25, 0.5])
def test_onecycle_steps_per_batch_and_peaks_at_max_lr_at_pct_start(pct_start: float) -> None:
    per_step, trace = lr_trace(
        {"name": "onecycle", "max_lr": 0.5, "pct_start": pct_start}, epochs=4, steps=10
    )
    assert per_step and len(trace) == 40
    peak = max(range(40), key=trace.__getitem__)
    assert trace[peak] == pytest.approx(0.5)
    assert abs(peak - pct_start * 40) <= 1
    assert trace[0] == pytest.approx(0.5 / 25)  # torch's default div_factor
    assert trace[-1] < 1e-3
    assert all(a <= b for a, b in zip(trace[:peak], trace[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(trace[peak:-1], trace[peak + 1 :], strict=True))


def test_onecycle_max_lr_defaults_to_optim_lr() -> None:
    _, trace = lr_trace({"name": "onecycle", "pct_start": 0.3}, epochs=2, steps=10, lr=0.05)
    assert max(trace) == pytest.approx(0.05)


def test_step_schedule_multiplies_by_gamma_at_milestones() -> None:
    per_step, trace = lr_trace(
        {"name": "step", "milestones": [2, 4], "gamma": 0.1}, epochs=6, steps=3
    )
    assert not per_step
    assert trace == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_with_warmup() -> None:
    _, trace = lr_trace({"name": "cosine", "warmup_epochs": 2}, epochs=6, steps=3)
    # linear warm-up from lr/3 to lr over 2 epochs, then cosine over the remaining 4
    cosine = [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert trace == pytest.approx([0.1 / 3, 0.2 / 3, *cosine])


def test_cosine_without_warmup_and_linear_and_constant() -> None:
    assert lr_trace({"name": "cosine"}, epochs=4, steps=2)[1] == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    )
    assert lr_trace({"name": "linear"}, epochs=4, steps=2)[1] == pytest.approx(
        [0.1, 0.08, 0.06, 0.04]
    )
    assert lr_trace({"name": "constant"}, epochs=3, steps=2)[1] == pytest.approx([0.1] * 3)


@pytest.mark.parametrize(
    ("schedule", "to", "scaled"),
    [
        (
            {"milestones": [3, 5, 8], "warmup_epochs": 2},
            4,
            {"milestones": [1, 2, 3], "warmup_epochs": 1},
        ),
        (
            {"milestones": [50, 75], "warmup_epochs": 5},
            20,
            {"milestones": [10, 15], "warmup_epochs": 1},
        ),
        (
            {"milestones": [1, 2, 9], "warmup_epochs": 0},
            3,
            {"milestones": [1, 2], "warmup_epochs": 0},
        ),
        ({"milestones": [5], "warmup_epochs": 3}, 1, {"milestones": [], "warmup_epochs": 0}),
    ],
)
def test_scale_epochs_shortens_epoch_valued_settings(
    schedule: dict[str, Any], to: int, scaled: dict[str, Any]
) -> None:
    """From 10 epochs (100 in the second case): rounded, inside 1..to-1, duplicates merged."""
    full = {"name": "step", "gamma": 0.2, "pct_start": 0.25, **schedule}
    out = scale_epochs(full, 100 if 50 in schedule["milestones"] else 10, to)
    assert out == {**full, **scaled}
    assert full["milestones"] == schedule["milestones"]  # the input is left alone
    ScheduleConfig(**out)  # still a valid schedule


@pytest.mark.parametrize(
    ("name", "kind"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizers_from_config(name: str, kind: type) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], OptimConfig(name=name, lr=0.02, weight_decay=0.01))
    assert type(opt) is kind
    assert opt.defaults["lr"] == 0.02 and opt.defaults["weight_decay"] == 0.01
    assert opt.defaults["fused"] is True  # one kernel over all parameters (CPU and CUDA)


def test_sgd_nesterov_and_momentum() -> None:
    opt = build_optimizer(
        [torch.nn.Parameter(torch.zeros(1))], OptimConfig(momentum=0.8, nesterov=True)
    )
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is True


# --- fit ----------------------------------------------------------------------------------------


def config(store: Path, **sections: dict[str, Any]) -> Config:
    """Small runs: digits, mlp, 64-example batches, a 2-epoch mlp teacher; ``sections`` update the tree."""
    tree: dict[str, Any] = {
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "teacher": {
            "model": "mlp",
            "epochs": 2,
            "batch_size": 64,
            "schedule": {"name": "constant"},
        },
        "method": {"name": "kd"},
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
        "run": {"epochs": 2, "batch_size": 64, "device": "cpu", "teacher_store": str(store)},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return make_config(tree)


def without_time(rows: list[dict[str, float]] | dict[str, float]) -> Any:
    if isinstance(rows, dict):
        return {k: v for k, v in rows.items() if k != "epoch_time"}
    return [without_time(r) for r in rows]


def same_run(a: FitResult, b: FitResult) -> None:
    """Bit-identical metrics (epoch times aside)."""
    assert a.status == b.status
    assert without_time(a.history) == without_time(b.history)
    assert without_time(a.final) == without_time(b.final)


METRICS = {
    "train_loss",
    "lr",
    "val_acc",
    "val_nll",
    "val_ece",
    "val_top_class_share",
    "val_logit_std",
    "val_n",
    "crashed",
    "crashed_epochs",
    "epoch_time",
}
TEACHER_METRICS = {
    "teacher_val_acc",
    "val_agreement",
    "val_kl",
    "val_logit_diff",
    "val_acc_gap",
    "train_agreement",
    "train_pred_kl",
}
TEST_METRICS = {
    "test_acc",
    "test_nll",
    "test_ece",
    "test_top_class_share",
    "test_logit_std",
    "test_n",
}


def test_kd_on_digits_beats_chance_by_far(tmp_path: Path) -> None:
    reports: list[EpochReport] = []
    result = fit(config(tmp_path), on_epoch=reports.append)
    assert result.status == "completed"
    assert [r.epoch for r in reports] == [1, 2] and [h["epoch"] for h in result.history] == [1, 2]
    final = result.final
    assert final["val_acc"] > 0.7 and final["test_acc"] > 0.7  # chance is 0.1
    assert final["teacher_val_acc"] > 0.7 and final["val_agreement"] > 0.7
    assert final["val_acc_gap"] == pytest.approx(final["teacher_val_acc"] - final["val_acc"])
    assert final["test_acc_gap"] == pytest.approx(final["teacher_test_acc"] - final["test_acc"])
    assert final["train_agreement"] > 0.7
    assert final["crashed"] == 0.0 and final["crashed_epochs"] == 0.0
    for row in result.history:
        assert set(row) == {"epoch"} | METRICS | TEACHER_METRICS
    assert set(final) == METRICS | TEACHER_METRICS | TEST_METRICS | {
        "teacher_test_acc",
        "test_agreement",
        "test_kl",
        "test_logit_diff",
        "test_acc_gap",
    }
    assert reports[-1].metrics == {k: v for k, v in result.history[-1].items() if k != "epoch"}
    assert result.to_dict() == {"status": "completed", "final": final, "epochs": 2}


def test_fidelity_metrics_equal_a_hand_computation(tmp_path: Path) -> None:
    """Agreement and KL on the first 1024 training rows, logit difference and sizes on val/test."""
    from distill_core import TeacherStore
    from distill_core.metrics import agreement, predictive_kl
    from distill_core.models import build_model, predict
    from distill_core.teachers import teacher_spec

    cfg = config(tmp_path, run={"epochs": 1})
    states: list[dict[str, Any]] = []
    final = fit(cfg, on_epoch=lambda r: states.append(r.state())).final
    data = load_data(cfg.data)
    assert len(data.train_y) > 1024  # the subset is a strict prefix here
    cpu = torch.device("cpu")
    teacher = TeacherStore(tmp_path).load(teacher_spec(cfg), 2, data, cpu)
    student = build_model("mlp", 1, 10, 8)
    student.load_state_dict(states[-1]["method"]["nets"][0])
    rows = data.train_x[:1024]
    s_train, t_train = predict(student, rows, 1024), predict(teacher, rows, 1024)
    assert final["train_agreement"] == pytest.approx(agreement(s_train, t_train))
    assert final["train_pred_kl"] == pytest.approx(predictive_kl(s_train, t_train), rel=1e-5)
    for split in ("val", "test"):
        x = getattr(data, f"{split}_x")
        diff = (predict(student, x, 1024) - predict(teacher, x, 1024)).abs().mean().item()
        assert final[f"{split}_logit_diff"] == pytest.approx(diff, rel=1e-5)
        assert final[f"{split}_n"] == len(x)
    assert "diff_t_s" not in final


def test_fit_epochs_yields_every_epoch_and_the_result_last(tmp_path: Path) -> None:
    cfg = config(tmp_path, method={"name": "scratch"}, run={"epochs": 3})
    reports = list(fit_epochs(cfg))
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.result is None for r in reports] == [True, True, False]
    result = reports[-1].result
    assert result is not None and result.status == "completed"
    assert [without_time(r.metrics) for r in reports] == [
        without_time({k: v for k, v in h.items() if k != "epoch"}) for h in result.history
    ]
    same_run(result, fit(cfg))
    assert "test_acc" in result.final and "test_acc" not in reports[-1].metrics


def test_fit_epochs_resumed_after_the_last_epoch_yields_the_result(tmp_path: Path) -> None:
    cfg = config(tmp_path, method={"name": "scratch"})
    reports = list(fit_epochs(cfg))
    again = list(fit_epochs(cfg, resume_from=reports[-1].state()))
    assert [r.epoch for r in again] == [2]
    assert again[0].result is not None and reports[-1].result is not None
    same_run(again[0].result, reports[-1].result)


def test_scratch_has_no_teacher_metrics_and_trains_no_teacher(tmp_path: Path) -> None:
    result = fit(config(tmp_path, method={"name": "scratch"}))
    assert set(result.final) == METRICS | TEST_METRICS
    assert result.final["val_acc"] > 0.5
    assert not any(tmp_path.iterdir())  # no teacher was stored


def test_lr_metric_follows_the_schedule(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        method={"name": "scratch"},
        schedule={"name": "step", "milestones": [1, 2]},
        run={"epochs": 3},
    )
    result = fit(cfg)
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.005, 0.0005])


def test_onecycle_in_fit_reaches_max_lr_and_ends_low(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        method={"name": "scratch"},
        schedule={"name": "onecycle", "max_lr": 0.2, "pct_start": 0.5},
        run={"epochs": 4},
    )
    lrs = [h["lr"] for h in fit(cfg).history]  # lr at the first batch of each epoch
    assert lrs[0] == pytest.approx(0.2 / 25)
    assert max(lrs) > 0.15 and lrs[-1] < lrs[2]


def test_identical_runs_are_identical_and_seeds_differ(tmp_path: Path) -> None:
    cfg = config(tmp_path, method={"name": "scratch"})
    a, b = fit(cfg), fit(cfg)
    same_run(a, b)
    other = fit(config(tmp_path, method={"name": "scratch"}, run={"seed": 1}))
    assert other.final["train_loss"] != a.final["train_loss"]


# --- determinism: a run owns its random state ----------------------------------------------


@pytest.fixture
def dropout_nets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trained network draws from torch's global RNG in each training forward (input dropout)."""
    import distill_core.methods as methods
    import distill_core.teachers as teachers

    real = methods.build_model

    def with_dropout(*args: Any) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Dropout(0.2), real(*args))

    monkeypatch.setattr(methods, "build_model", with_dropout)
    monkeypatch.setattr(teachers, "build_model", with_dropout)  # stored teachers load alike


DETERMINISM_CASES = {
    "scratch": {"method": {"name": "scratch"}},
    "kd": {"method": {"name": "kd"}},
    "dml": {"method": {"name": "dml"}},
    "pcl": {"method": {"name": "pcl"}},
    "dkel": {"method": {"name": "dkel"}},
}


@pytest.mark.parametrize("case", DETERMINISM_CASES)
def test_a_run_zipped_with_another_seed_equals_the_run_alone(
    tmp_path: Path, dropout_nets: None, case: str
) -> None:
    cfg = config(tmp_path, **DETERMINISM_CASES[case])
    other = config(tmp_path, **DETERMINISM_CASES[case], run={"seed": 1})
    zipped = [a for a, _ in zip(fit_epochs(cfg), fit_epochs(other), strict=True)]
    assert zipped[-1].result is not None
    alone = fit(cfg)
    same_run(zipped[-1].result, alone)
    assert fit(other).final["train_loss"] != alone.final["train_loss"]


def test_a_run_does_not_depend_on_what_ran_before_and_leaves_the_global_rng_alone(
    tmp_path: Path, dropout_nets: None
) -> None:
    cfg = config(tmp_path, method={"name": "scratch"})
    first = fit(cfg)
    torch.manual_seed(123)
    torch.rand(7)
    fit(config(tmp_path, method={"name": "dml"}, run={"seed": 4}))
    before = torch.get_rng_state()
    again = fit(cfg)
    same_run(first, again)
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_restores_the_run_random_state(tmp_path: Path, dropout_nets: None) -> None:
    cfg = config(tmp_path, method={"name": "scratch"}, run={"epochs": 3})
    states: list[dict[str, Any]] = []
    full = fit(cfg, on_epoch=lambda r: states.append(copy.deepcopy(r.state())))
    torch.manual_seed(99)  # what the process draws from does not matter
    same_run(full, fit(cfg, resume_from=states[0]))
    assert not torch.equal(states[0]["rng"]["cpu"], states[1]["rng"]["cpu"])


def test_fresh_teacher_run_equals_stored_teacher_run(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    notes: list[str] = []
    fresh = fit(cfg, log=notes.append)
    assert any(n.startswith("training mlp teacher") for n in notes)
    notes.clear()
    stored = fit(cfg, log=notes.append)
    assert notes == []
    same_run(fresh, stored)


RESUME_CASES = {
    "kd": {},
    "kd_mse_adamw": {
        "method": {"name": "kd", "loss": "mse", "alpha": 0.5},
        "optim": {"name": "adamw", "lr": 0.003},
    },
    "scratch_cosine_warmup": {
        "method": {"name": "scratch"},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    },
    "scratch_onecycle": {
        "method": {"name": "scratch"},
        "schedule": {"name": "onecycle", "max_lr": 0.1},
    },
    "scratch_augmented_cnn": {
        "data": {"name": "synthetic", "augment": True},
        "model": {"name": "cnn_small"},
        "method": {"name": "scratch"},
    },
    "interp_cnn": {
        "model": {"name": "cnn_small"},
        "teacher": {"model": "cnn_small", "epochs": 1},
        "method": {"name": "scratch"},
        "init": {"interp_lambda": 0.5, "bn_batches": 3},
    },
    "kd_interp": {"init": {"interp_lambda": 0.3}},
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, case: str) -> None:
    cfg = config(tmp_path, run={"epochs": 3}, **RESUME_CASES[case])
    saved: dict[str, Any] = {}

    def keep_epoch_one(report: EpochReport) -> None:
        if report.epoch == 1:
            saved.update(copy.deepcopy(report.state()))

    full = fit(cfg, on_epoch=keep_epoch_one)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    later: list[int] = []
    resumed = fit(cfg, resume_from=saved, on_epoch=lambda r: later.append(r.epoch))
    assert later == [2, 3]
    same_run(full, resumed)
    assert full.status == "completed"


def test_resuming_twice_from_one_state_gives_the_same_run(tmp_path: Path) -> None:
    """fit must not train into the caller's state (optimizer buffers alias what is loaded)."""
    cfg = config(tmp_path, method={"name": "scratch"}, run={"epochs": 3})
    saved: dict[str, Any] = {}
    fit(cfg, on_epoch=lambda r: saved.update(copy.deepcopy(r.state())) if r.epoch == 1 else None)
    momentum = copy.deepcopy(saved["optimizers"][0]["state"])
    first, second = fit(cfg, resume_from=saved), fit(cfg, resume_from=saved)
    same_run(first, second)
    assert all(
        torch.equal(momentum[k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in saved["optimizers"][0]["state"].items()
    )


def test_state_holds_what_resume_needs(tmp_path: Path) -> None:
    states: list[dict[str, Any]] = []
    fit(
        config(tmp_path, method={"name": "scratch"}),
        on_epoch=lambda r: states.append(copy.deepcopy(r.state())),
    )
    assert [s["epoch"] for s in states] == [1, 2]
    assert set(states[0]) == {
        "epoch",
        "method",
        "optimizers",
        "schedules",
        "generator",
        "rng",
        "history",
        "crashed_epochs",
    }
    w1, w2 = (s["method"]["nets"][0]["1.weight"] for s in states)
    assert not torch.equal(w1, w2)  # a snapshot per epoch, not a live reference


def test_channels_last_changes_the_layout_not_the_run(tmp_path: Path) -> None:
    cnn = {"data": {"name": "synthetic"}, "model": {"name": "cnn_small"}}
    cfg = config(tmp_path, **cnn, method={"name": "kd"}, teacher={"model": "cnn_small"})
    states: list[dict[str, Any]] = []
    fast = fit(cfg, on_epoch=lambda r: states.append(r.state()))
    conv = states[-1]["method"]["nets"][0]["4.weight"]  # 16 -> 32 channels
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = fit(
        config(
            tmp_path,
            **cnn,
            method={"name": "kd"},
            teacher={"model": "cnn_small"},
            run={"channels_last": False},
        )
    )
    for a, b in [*zip(fast.history, plain.history, strict=True), (fast.final, plain.final)]:
        for key in a.keys() - {"epoch_time"}:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key


def test_amp_trains_in_bfloat16_and_evaluates_in_float32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill_core.methods import Method

    seen: list[tuple[bool, torch.dtype]] = []
    real_build = Method.build

    def build(self: Method, name: str) -> torch.nn.Module:
        net = real_build(self, name)
        net[0].register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))
        return net

    monkeypatch.setattr(Method, "build", build)
    cnn = {"data": {"name": "synthetic"}, "model": {"name": "cnn_small"}}
    result = fit(config(tmp_path, **cnn, method={"name": "scratch"}, run={"amp": True}))
    assert result.status == "completed" and result.final["val_acc"] > 0.5
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones_and_keep_their_state_keys(tmp_path: Path) -> None:
    cnn = {"data": {"name": "synthetic"}, "model": {"name": "cnn_small"}}
    runs, states = [], []
    for compile in (True, False):
        cfg = config(tmp_path, **cnn, method={"name": "scratch"}, run={"compile": compile})
        runs.append(fit(cfg, on_epoch=lambda r: states.append(r.state())))
    compiled, eager = runs
    for a, b in [*zip(compiled.history, eager.history, strict=True), (compiled.final, eager.final)]:
        # compiled kernels round differently: a share of predictions may move by one example
        one = 1.01 / min(a[k] for k in ("val_n", "test_n") if k in a)
        for key in a.keys() - {"epoch_time"}:
            counted = key.endswith(("_acc", "_share"))
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=one if counted else 1e-3), key
    assert states[0]["method"]["nets"][0].keys() == states[-1]["method"]["nets"][0].keys()


def test_no_validation_split(tmp_path: Path) -> None:
    result = fit(config(tmp_path, method={"name": "scratch"}, data={"val_fraction": 0.0}))
    assert result.status == "completed"
    assert "val_acc" not in result.final and result.final["test_acc"] > 0.5
    assert result.final["crashed"] == 0.0


# --- instability --------------------------------------------------------------------------------


def test_non_finite_loss_stops_the_run_as_diverged(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        data={"name": "synthetic"},
        method={"name": "scratch"},
        optim={"lr": 10.0, "momentum": 0.9, "weight_decay": 0.0},
        run={"epochs": 3, "batch_size": 32},
    )
    seen: list[int] = []
    result = fit(cfg, on_epoch=lambda r: seen.append(r.epoch))
    assert result.status == "diverged"
    assert not math.isfinite(result.history[-1]["train_loss"])
    assert len(result.history) < 3 and seen == [h["epoch"] for h in result.history[:-1]]
    assert not math.isfinite(result.final["train_loss"])
    reports = list(fit_epochs(cfg))
    assert [r.result is None for r in reports] == [True] * len(seen) + [False]
    last = reports[-1].result
    assert last is not None and last.status == "diverged" and len(last.history) == len(reports)
    assert not math.isfinite(reports[-1].metrics["train_loss"])


def test_a_nan_loss_diverges_even_with_a_sane_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill_core.methods import Method

    real = Method.train_step
    calls = {"n": 0}

    def poisoned(self: Method, *args: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(self, *args)
        return torch.tensor(float("nan")) if calls["n"] == 30 else loss  # epoch 2 (21 batches each)

    monkeypatch.setattr(Method, "train_step", poisoned)
    result = fit(config(tmp_path, method={"name": "scratch"}, run={"epochs": 3}))
    assert result.status == "diverged"
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert math.isfinite(result.history[0]["train_loss"]) and math.isnan(
        result.history[1]["train_loss"]
    )


def scripted_val_acc(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Make the trainer see these validation accuracies, one per epoch (the rest is real)."""
    real = trainer.evaluate
    queue = list(values)

    def evaluate(method: Any, data: Any, split: str, *args: Any, **kwargs: Any) -> dict[str, float]:
        out = real(method, data, split, *args, **kwargs)
        if split == "val":
            out["val_acc"] = queue.pop(0)
        return out

    monkeypatch.setattr(trainer, "evaluate", evaluate)


@pytest.mark.parametrize(
    ("val_acc", "crashed", "status"),
    [
        ([0.8, 0.1, 0.11], [0, 1, 1], "crashed"),  # collapsed and stayed there
        ([0.5, 0.085, 0.9], [0, 1, 0], "completed"),  # at chance, then recovered
        ([0.5, 0.121, 0.079], [0, 0, 0], "completed"),  # just outside 2 points of chance
        ([0.15, 0.1, 0.5], [0, 0, 0], "completed"),  # slow: never clearly above chance before
        ([0.15, 0.13, 0.11], [0, 0, 1], "crashed"),  # ... but at chance at the end is a crash
    ],
)
def test_val_accuracy_at_chance_marks_crashed_epochs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    val_acc: list[float],
    crashed: list[int],
    status: str,
) -> None:
    scripted_val_acc(monkeypatch, val_acc)
    result = fit(
        config(tmp_path, data={"name": "synthetic"}, method={"name": "scratch"}, run={"epochs": 3})
    )
    assert [h["crashed"] for h in result.history] == crashed
    assert [h["crashed_epochs"] for h in result.history] == [
        sum(crashed[: i + 1]) for i in range(3)
    ]
    assert len(result.history) == 3  # training goes on after a crash
    assert result.status == status


def test_crashes_are_not_flagged_in_the_first_tenth_of_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted_val_acc(monkeypatch, [0.9] + [0.1] * 19)
    cfg = config(
        tmp_path,
        data={"name": "synthetic", "subset": 64},
        method={"name": "scratch"},
        run={"epochs": 20},
    )
    result = fit(cfg)
    assert [h["crashed"] for h in result.history] == [0, 0] + [1] * 18
    assert result.final["crashed_epochs"] == 18 and result.status == "crashed"


def test_a_collapsed_network_is_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scripting: a student whose last layer is zeroed has constant logits, one class."""
    from distill_core.methods import Method

    def dead_step(self: Method, batch: Batch, epoch: int, optimizers: list) -> torch.Tensor:
        with torch.no_grad():
            for p in self.nets[0][-1].parameters():
                p.zero_()
        optimizers[0].step()  # no gradients: a no-op, but schedules expect it
        return torch.tensor(1.0)

    monkeypatch.setattr(Method, "train_step", dead_step)
    cfg = config(tmp_path, method={"name": "scratch"}, run={"epochs": 3})
    share_of_class_0 = (load_data(cfg.data).val_y == 0).float().mean().item()
    assert abs(share_of_class_0 - 0.1) < 0.01  # digits are balanced
    result = fit(cfg)
    assert result.final["val_acc"] == pytest.approx(
        share_of_class_0
    )  # argmax of equal logits is class 0
    assert [h["crashed"] for h in result.history] == [0.0, 1.0, 1.0]  # epoch 1 is the warm-up
    assert result.final["crashed_epochs"] == 2.0 and result.status == "crashed"
    assert result.final["val_top_class_share"] == 1.0 and result.final["val_logit_std"] == 0.0
