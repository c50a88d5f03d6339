"""Config: defaults, YAML in/out, dotted overrides, unknown keys, ranges, combinations, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill_core import load_config, make_config, uses_teacher
from distill_core.config import Config, ConfigError, parse_value


def error_of(tree: dict | None = None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        make_config(tree, overrides)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message


def test_defaults_follow_design() -> None:
    cfg = Config()
    assert (cfg.data.name, cfg.data.val_fraction, cfg.method.name) == ("mnist5k", 0.1, "scratch")
    assert cfg.teacher.resolved_epoch == cfg.teacher.epochs
    assert cfg.teacher.saved_epochs() == list(range(1, cfg.teacher.epochs + 1))
    assert not uses_teacher(cfg)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = make_config(
        {
            "method": {"name": "kd", "alpha": 0.3, "weights": {"ce": 0.2, "mse": 0.8}},
            "schedule": {"name": "step"},
        },
        ["schedule.milestones=[1, 3]", "run.epochs=4", "teacher.save_epochs=[2]"],
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.digest() == cfg.digest()
    assert yaml.safe_load(path.read_text())["schedule"]["milestones"] == [1, 3]


def test_flat_keys_are_dotted_and_keep_weights_whole() -> None:
    flat = make_config({"method": {"weights": {"ce": 0.5, "kl": 0.5}}}).flat()
    assert flat["method.alpha"] == 0.9
    assert flat["method.weights"] == {"ce": 0.5, "kl": 0.5}
    assert flat["run.seed"] == 0 and "run" not in flat


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.5", 0.5),
        ("3", 3),
        ("[1, 2]", [1, 2]),
        ("null", None),
        ("true", True),
        ("resnet18", "resnet18"),
    ],
)
def test_parse_value_reads_yaml_scalars(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_dotted_overrides_apply_and_override_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("method: {name: kd, alpha: 0.9}\nmodel: {name: mlp}\n")
    cfg = load_config(path, ["method.alpha=0.25", "model.name=resnet18", "teacher.epoch=null"])
    assert (cfg.method.alpha, cfg.model.name, cfg.teacher.epoch) == (0.25, "resnet18", None)
    assert cfg.method.name == "kd"
    assert make_config({}, {"run.seed": 7}).run.seed == 7


def test_digest_changes_with_content() -> None:
    assert make_config().digest() == make_config().digest()
    assert make_config(overrides=["run.seed=1"]).digest() != make_config().digest()


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"bogus": 1}, ["unknown config key 'bogus'", "data, model, teacher, method"]),
        ({"method": {"alhpa": 0.5}}, ["unknown config key 'method.alhpa'", "alpha, temperature"]),
        ({"method": {"alpha": 1.5}}, ["method.alpha=1.5", "[0.0, 1.0]"]),
        (
            {"method": {"temperature": 0}},
            ["method.temperature=0", "greater than 0", "(0.0, 100.0]"],
        ),
        ({"optim": {"lr": -1}}, ["optim.lr=-1", "(0.0, 10.0]"]),
        ({"init": {"interp_lambda": 1.5}}, ["init.interp_lambda=1.5", "[0.0, 1.0]"]),
        ({"data": {"val_fraction": 0.95}}, ["data.val_fraction"]),
        ({"run": {"epochs": "abc"}}, ["run.epochs='abc'", "integer"]),
        ({"run": {"device": "gpu"}}, ["run.device='gpu'", "cuda"]),
        (
            {"data": {"name": "imagenet"}},
            ["unknown data set 'imagenet'", "data.name", "cifar10", "digits"],
        ),
        ({"model": {"name": "vgg"}}, ["unknown model 'vgg'", "model.name", "resnet18"]),
        (
            {"method": {"name": "kd"}, "teacher": {"model": "vgg"}},
            ["unknown model 'vgg'", "set teacher.model"],
        ),
        ({"method": {"name": "fitnets"}}, ["unknown method 'fitnets'", "kd", "scratch"]),
        (
            {"method": {"name": "kd"}, "teacher": {"epochs": 3, "save_epochs": [1], "epoch": 2}},
            ["teacher.epoch=2 is never saved", "1, 3", "teacher.save_epochs"],
        ),
        ({"teacher": {"epochs": 3, "epoch": 4}}, ["teacher.epoch=4 is never saved"]),
        (
            {"teacher": {"epochs": 3, "epoch": 4, "early_stop": "shortened"}},
            ["teacher.epoch=4 is after teacher.epochs=3"],
        ),
        ({"teacher": {"early_stop": "early"}}, ["teacher.early_stop", "shortened"]),
        (
            {"teacher": {"epochs": 3, "save_epochs": [9]}},
            ["teacher.save_epochs [9]", "teacher.epochs=3"],
        ),
        (
            {
                "model": {"name": "mlp"},
                "teacher": {"model": "resnet20"},
                "init": {"interp_lambda": 0.5},
            },
            ["init.interp_lambda", "model.name=mlp", "teacher.model=resnet20"],
        ),
        ({"schedule": {"milestones": [7]}, "run": {"epochs": 5}}, ["schedule.milestones [7]"]),
        (
            {"teacher": {"epochs": 3, "schedule": {"name": "step", "milestones": [1, 3]}}},
            ["teacher.schedule.milestones [3]", "teacher.epochs-1=2"],
        ),
        (
            {"teacher": {"epochs": 3, "schedule": {"warmup_epochs": 3}}},
            ["teacher.schedule.warmup_epochs=3", "below teacher.epochs=3"],
        ),
        ({"schedule": {"warmup_epochs": 5}, "run": {"epochs": 5}}, ["schedule.warmup_epochs=5"]),
        ({"optim": {"name": "adam", "nesterov": True}}, ["nesterov", "optim.nesterov=false"]),
        ({"method": {"name": "eskd"}}, ["method.kd_stop_epoch"]),
        ({"method": {"name": "takd"}}, ["method.ta_model"]),
        (
            {"method": {"weights": {"ce": 1, "fitnet": 1}}},
            ["unknown terms ['fitnet']", "ce, kl, mse"],
        ),
    ],
)
def test_invalid_configs_give_one_line_naming_key_and_fix(tree: dict, expected: list[str]) -> None:
    message = error_of(tree)
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    "tree",
    [
        {"method": {"alpha": 0.0}},
        {"method": {"alpha": 1.0}},
        {"method": {"temperature": 1e-3}},
        {"init": {"interp_lambda": 0.0}, "model": {"name": "mlp"}, "teacher": {"model": "mlp"}},
        {"teacher": {"epochs": 4, "save_epochs": [2], "epoch": 2}},
        {"teacher": {"epochs": 4, "save_epochs": [2], "epoch": 4}},  # the last epoch is always kept
        {"teacher": {"epochs": 4, "save_epochs": [2], "epoch": 3, "early_stop": "shortened"}},
    ],
)
def test_boundary_values_are_accepted(tree: dict) -> None:
    cfg = make_config(tree)
    for section, values in tree.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value


@pytest.mark.parametrize("item", ["method.alpha", "=3", " =1"])
def test_malformed_set_is_a_config_error(item: str) -> None:
    assert "is not key=value" in error_of(overrides=[item])


def test_set_unknown_key_is_rejected() -> None:
    assert "unknown config key 'method.alhpa'" in error_of(overrides=["method.alhpa=0.5"])


def test_set_below_a_value_is_rejected() -> None:
    assert "method.alpha" in error_of(overrides=["method.alpha.x=1"])


def test_assignment_is_validated() -> None:
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.method.alpha = 2.0


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "match"), [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")]
)
def test_load_config_bad_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


@pytest.mark.parametrize(
    ("tree", "uses"),
    [
        ({"method": {"name": "scratch"}}, False),
        ({"method": {"name": "kd"}}, True),
        ({"method": {"name": "takd", "ta_model": "mlp"}}, True),
        ({"method": {"name": "dml"}}, False),
        (
            {"init": {"interp_lambda": 0.5}, "model": {"name": "mlp"}, "teacher": {"model": "mlp"}},
            True,
        ),
    ],
)
def test_uses_teacher(tree: dict, uses: bool) -> None:
    assert uses_teacher(make_config(tree)) is uses


def test_docs_config_reference_is_current() -> None:
    """docs/config.md is generated by `distill-study config --markdown`: regenerate it when keys change."""
    from pathlib import Path

    from distill_core.configure import reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == reference_markdown()


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.epochs >= 1 and f"name: {cfg.method.name}" in path.read_text()
