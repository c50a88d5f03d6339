"""The search-space registry and every registered space's contract (no Ray needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from distill_core import UserError
from studies.cli import main
from studies.plan import Plan, check, scale_to, shrink
from studies.spaces import list_spaces, load_space

NAMES = [s.name for s in list_spaces()]
AXES = {"alpha", "temperature", "lr_schedule", "dkel_decay", "teacher_epoch", "interp_init"}
PRESETS = {"dml_vs_kd", "alpha_mse", "dkel_decay", "teacher_efficacy", "kd_fidelity", "quickstart"}


def plan_for(base: dict, *, smoke: bool = False, epochs: int | None = None) -> Plan:
    return Plan(
        base=base, seeds=(0,), threads=1, objectives=("val_acc",), epochs=epochs, smoke=smoke
    )


def test_registry_holds_every_axis_and_preset() -> None:
    spaces = {s.name: s for s in list_spaces()}
    assert {n for n, s in spaces.items() if s.is_axis} == AXES
    assert {n for n, s in spaces.items() if s.preset} == PRESETS


@pytest.mark.parametrize("name", NAMES)
def test_space_contract(name: str) -> None:
    """Validation objective, declared axes are set by space(), grid and baselines give valid configs."""
    space = load_space(name)
    assert all(not m.startswith("test_") for m, _ in space.objectives)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    sampled = [space.space(study.ask()) for _ in range(5)]
    points = list(space.grid_points())
    assert len(points) == space.grid_size + len(space.baselines)
    assert set(space.scientific) <= {k for p in sampled + points for k in p}
    for point in sampled + points:
        plan_for(space.base).config(point, 0)
        plan_for(space.base, smoke=True).config(point, 0)


def test_conditional_parameters_are_asked_only_when_they_apply() -> None:
    space = load_space("lr_schedule")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        sampled = space.space(study.ask())
        kind = sampled["schedule.name"]
        seen.add(kind)
        assert ("schedule.max_lr" in sampled) == (kind == "onecycle")
        assert ("schedule.milestones" in sampled) == (kind == "step")
        if kind == "step":
            assert isinstance(sampled["schedule.milestones"], list)
    assert seen == {"constant", "step", "cosine", "onecycle", "linear"}


def test_smoke_shrinks_any_config_to_tiny() -> None:
    base = load_space("teacher_efficacy").base
    cfg = plan_for(base, smoke=True).config({"teacher.epoch": 100, "method.name": "takd"}, 3)
    assert (cfg.data.name, cfg.model.name, cfg.teacher.model, cfg.method.ta_model) == (
        "synthetic",
        "mlp",
        "mlp",
        "mlp",
    )
    # the whole schedule scaled to 2 epochs: the teacher's too, epoch 100 of 200 -> 1 of 2
    assert cfg.run.epochs == 2 and cfg.teacher.epochs == 2 and cfg.teacher.epoch == 1
    assert cfg.run.seed == 3 and shrink(base)["run"]["batch_size"] == 64


def test_shortening_scales_every_epoch_valued_setting_as_a_fraction() -> None:
    tree = {
        "run": {"epochs": 300},
        "schedule": {"name": "step", "milestones": [150, 225], "warmup_epochs": 3},
        "method": {"name": "eskd", "kd_stop_epoch": 60},
        "teacher": {"epochs": 200, "epoch": 50, "save_epochs": [25, 50, 100],
                    "schedule": {"name": "step", "milestones": [60, 120, 160]}},
    }  # fmt: skip
    out = scale_to(tree, 30)
    assert out["run"]["epochs"] == 30
    assert out["schedule"]["milestones"] == [15, 22] and out["schedule"]["warmup_epochs"] == 1
    assert out["method"]["kd_stop_epoch"] == 6
    assert out["teacher"]["epochs"] == 20 and out["teacher"]["epoch"] == 5
    assert out["teacher"]["save_epochs"] == [2, 5, 10]
    assert out["teacher"]["schedule"]["milestones"] == [6, 12, 16]
    assert scale_to(tree, 300) == tree


def test_arms_that_become_one_config_when_shortened_are_refused() -> None:
    space = load_space("teacher_epoch")
    points = [{"teacher.epoch": 1, "method.name": "kd"}, {"teacher.epoch": 2, "method.name": "kd"}]
    check(space, plan_for(space.base), points)  # 8 teacher epochs: distinct
    with pytest.raises(UserError, match="give the same config at --epochs 1.*more --epochs"):
        check(space, plan_for(space.base, epochs=1), points)


def write_module(folder: Path, objective: str = "val_acc", extra: str = "") -> Path:
    path = folder / "my_space.py"
    path.write_text(
        textwrap.dedent(f'''
        """My own sweep."""
        BASE = {{"data": {{"name": "synthetic"}}, "model": {{"name": "mlp"}}, "run": {{"epochs": 2}}}}
        OBJECTIVE, MODE = "{objective}", "max"
        SCIENTIFIC = ["optim.lr"]
        NUISANCE = []
        GRID = {{"optim.lr": [0.01, 0.1]}}
        {extra}

        def space(trial):
            return {{"optim.lr": trial.suggest_float("optim.lr", 0.001, 0.3, log=True)}}
    ''')
    )
    return path


def test_user_module_by_path(tmp_path: Path) -> None:
    space = load_space(str(write_module(tmp_path)))
    assert space.name == "my_space" and space.path == str(tmp_path / "my_space.py")
    assert list(space.grid_points()) == [{"optim.lr": 0.01}, {"optim.lr": 0.1}]


def test_test_metric_objective_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="test metric.*val_acc"):
        load_space(str(write_module(tmp_path, objective="test_acc")))


def test_missing_declarations_are_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("BASE = {}\n")
    with pytest.raises(
        UserError, match="does not declare space, OBJECTIVE, MODE, SCIENTIFIC, NUISANCE, GRID"
    ):
        load_space(str(path))


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown search space or preset 'alpah'.*alpha.*dml_vs_kd"):
        load_space("alpah")


def test_spaces_command_lists_spaces_and_presets() -> None:
    out = CliRunner().invoke(main, ["spaces"])
    assert out.exit_code == 0, out.output
    for name in AXES | PRESETS:
        assert f"  {name} " in out.output
    assert "scientific method.alpha | nuisance optim.lr | objective val_acc (max)" in out.output
