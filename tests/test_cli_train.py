"""``distill-study train``, ``teachers list`` and ``methods``: output, MLflow records, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from distill_core import EpochReport, make_config
from studies.cli import epoch_line, main

CLI = str(Path(sys.executable).parent / "distill-study")
CONFIG = {
    "data": {"name": "digits"},
    "model": {"name": "mlp"},
    "teacher": {"model": "mlp", "epochs": 2, "batch_size": 64, "schedule": {"name": "constant"}},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "run": {"epochs": 2, "batch_size": 64, "device": "cpu"},
}


def write_config(folder: Path, **sections: dict[str, Any]) -> Path:
    tree = {**CONFIG, **{k: {**CONFIG.get(k, {}), **v} for k, v in sections.items()}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def cli(*args: str) -> Result:
    """Run the CLI in-process (cwd is the test's tmp_path, see ``in_tmp``)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def strict_json(text: str) -> dict[str, Any]:
    """json.loads that rejects NaN/Infinity, as jq and most JSON parsers do."""

    def reject(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the real console script ----------------------------------------------------------------------


def test_train_prints_epochs_and_summary_and_records_the_run_in_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path)
    proc = subprocess.run(
        [CLI, "train", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mlflow" not in proc.stderr and "Traceback" not in proc.stderr  # no database notes
    out = lines(proc.stdout)
    epochs = [ln for ln in out if ln.startswith("epoch ")]
    assert (
        len(epochs) == 2
        and epochs[0].startswith("epoch   1/2")
        and epochs[1].startswith("epoch   2/2")
    )
    for part in ("loss ", "val_acc ", "val_agreement ", "lr 0.05"):
        assert part in epochs[1]
    assert any(ln.startswith("training mlp teacher") for ln in out)
    assert out[-2] == "status: completed"
    assert (
        "test_acc " in out[-1] and "teacher_test_acc " in out[-1] and "val_logit_diff " in out[-1]
    )
    val_acc = float(epochs[1].split("val_acc ")[1].split()[0])
    assert val_acc > 0.7

    db = tmp_path / "runs" / "mlflow.db"
    assert db.is_file() and (tmp_path / "runs" / "teachers").is_dir()
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.tags["method"] == "kd"
    params = run.data.params
    assert (
        params["method.name"] == "kd"
        and params["method.alpha"] == "0.9"
        and params["teacher.epochs"] == "2"
    )
    assert params["data.name"] == "digits" and params["run.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    assert max(history, key=lambda m: m.step).value == pytest.approx(val_acc, abs=1e-4)
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} == {1, 2}
    assert "test_acc" in run.data.metrics and "val_agreement" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert make_config(yaml.safe_load(Path(local).read_text())) == make_config(CONFIG)


def test_json_prints_one_object_on_stdout(tmp_path: Path) -> None:
    config = write_config(tmp_path, run={"epochs": 1})
    proc = subprocess.run(
        [CLI, "train", "--config", str(config), "--json", "--no-tracking"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = lines(proc.stdout)
    result = strict_json(line)
    assert (
        result["status"] == "completed"
        and result["epochs"] == 1
        and result["mlflow_run_id"] is None
    )
    assert result["final"]["val_acc"] > 0.5 and "test_acc" in result["final"]
    assert "epoch   1/1" in proc.stderr  # progress goes to stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


# --- in-process -----------------------------------------------------------------------------------


def test_no_tracking_writes_no_mlflow_db(in_tmp: Path) -> None:
    result = cli(
        "train", "--config", str(write_config(in_tmp)), "--no-tracking", "--set", "run.epochs=1"
    )
    assert result.exit_code == 0, result.output
    epochs = [ln for ln in lines(result.stdout) if ln.startswith("epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("epoch   1/1  loss ")
    assert lines(result.stdout)[-2] == "status: completed"
    assert not (in_tmp / "runs" / "mlflow.db").exists()
    assert (in_tmp / "runs" / "teachers").is_dir()


def test_json_of_a_diverged_run_is_valid_json(in_tmp: Path) -> None:
    config = write_config(
        in_tmp,
        data={"name": "synthetic"},
        method={"name": "scratch"},
        optim={"lr": 10.0, "momentum": 0.9, "weight_decay": 0.0},
        run={"batch_size": 32},
    )
    result = cli("train", "--config", str(config), "--json", "--no-tracking")
    assert result.exit_code == 0, result.output
    parsed = strict_json(result.stdout.strip())
    assert parsed["status"] == "diverged" and parsed["final"]["train_loss"] is None


@pytest.mark.parametrize(
    ("sections", "args", "expected"),
    [
        ({}, ["--set", "method.alhpa=0.5"], "unknown config key 'method.alhpa'"),
        ({"method": {"alpha": 1.5}}, [], "method.alpha=1.5 is invalid"),
        ({}, ["--set", "method.temperature=0"], "method.temperature=0 is invalid"),
        (
            {},
            [
                "--set",
                "teacher.save_epochs=[1]",
                "--set",
                "teacher.epochs=3",
                "--set",
                "teacher.epoch=2",
            ],
            "teacher.epoch=2 is never saved",
        ),
        ({"data": {"name": "cifar10"}}, ["--data-dir", "nowhere"], "cifar10: data directory"),
        ({"data": {"name": "cifar10"}}, [], "--data-dir DIR"),
        (
            {"init": {"interp_lambda": 0.5}},
            ["--set", "teacher.model=cnn_small"],
            "init.interp_lambda needs student and teacher",
        ),
        ({}, ["--set", "method.alpha"], "is not key=value"),
        ({}, ["--set", "model.name=vgg"], "unknown model 'vgg'"),
        ({}, ["--device", "gpu"], "run.device='gpu' is not a device"),
    ],
)
def test_bad_inputs_exit_2_with_one_error_line(
    in_tmp: Path, sections: dict, args: list[str], expected: str
) -> None:
    result = cli("train", "--config", str(write_config(in_tmp, **sections)), *args)
    assert result.exit_code == 2
    (line,) = lines(result.stderr)
    assert line.startswith("error: ") and expected in line
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (in_tmp / "runs").exists()  # nothing recorded or trained


def test_missing_config_file(in_tmp: Path) -> None:
    result = cli("train", "--config", "nope.yaml")
    assert result.exit_code == 2
    assert lines(result.stderr) == [
        "error: config file nope.yaml does not exist; pass an existing YAML file to --config"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train"], "error: Missing option '--config' (see main train --help)"),
        (
            ["train", "--config", "x.yaml", "--bogus"],
            "error: No such option '--bogus' (see main train --help)",
        ),
        (["teachers", "lst"], "error: No such command 'lst'. Did you mean 'list'? (see main"),
    ],
)
def test_usage_errors_are_one_line_too(in_tmp: Path, args: list[str], expected: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    (line,) = lines(result.output)
    assert line.startswith(expected), line


def test_teacher_epoch_missing_from_the_store_exits_2(in_tmp: Path) -> None:
    config = write_config(in_tmp, teacher={"epochs": 3, "save_epochs": [1]})
    assert (
        cli("train", "--config", str(config), "--no-tracking", "--set", "run.epochs=1").exit_code
        == 0
    )
    config = write_config(
        in_tmp, teacher={"epochs": 3, "epoch": 2}
    )  # valid: every epoch saved by default
    result = cli("train", "--config", str(config), "--no-tracking")
    assert result.exit_code == 2
    (line,) = lines(result.stderr)
    assert (
        line.startswith("error: teacher epoch 2 was never saved") and "teacher.save_epochs" in line
    )
    assert "Traceback" not in result.output


def test_teachers_list_shows_a_trained_teacher(in_tmp: Path) -> None:
    empty = cli("teachers", "list")
    assert empty.exit_code == 0 and empty.stdout.startswith("no teachers in ")
    assert (
        cli(
            "train", "--config", str(write_config(in_tmp)), "--no-tracking", "--set", "run.epochs=1"
        ).exit_code
        == 0
    )
    listing = cli("teachers", "list")
    assert listing.exit_code == 0
    header, row = lines(listing.stdout)
    assert header.split()[:3] == ["key", "method", "data"]
    (key,) = [p.name for p in (in_tmp / "runs" / "teachers").iterdir() if p.is_dir()]
    meta = json.loads((in_tmp / "runs" / "teachers" / key / "meta.json").read_text())
    assert row.split() == [
        key,
        "scratch",
        "digits",
        "1..2",
        "(2)",
        f"{meta['final']['val_acc']:.4f}",
        "completed",
    ]
    other = cli("teachers", "list", "--store", str(in_tmp / "runs" / "teachers"))
    assert other.stdout == listing.stdout


def test_methods_lists_kd_and_scratch() -> None:
    result = cli("methods")
    assert result.exit_code == 0
    names = [ln.split()[0] for ln in lines(result.stdout)]
    assert {"kd", "scratch"} <= set(names) and names == sorted(names)
    kd = next(ln for ln in lines(result.stdout) if ln.startswith("kd "))
    assert "KL(p_t^tau || p_s^tau)" in kd


def test_epoch_line_flags_a_crash() -> None:
    metrics = {"train_loss": 2.3, "val_acc": 0.1, "lr": 0.05, "epoch_time": 1.25, "crashed": 1.0}
    line = epoch_line(EpochReport(3, metrics, dict), 10)
    assert line.startswith("epoch   3/10  loss 2.3000  val_acc 0.1000  lr 0.05  1.2s")
    assert line.endswith("CRASHED (collapsed: at chance, one class or constant logits)")
    assert "CRASHED" not in epoch_line(EpochReport(3, {**metrics, "crashed": 0.0}, dict), 10)
