"""No crafted file executes code; the UI stays on this machine; credentials are never recorded.

Crafted inputs carry a payload that would create a marker file if it ran: every test checks the
refusal (one clear error) and that the marker does not exist.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from distill_core import DataError, TeacherError, fit, make_config
from distill_core.config import DataConfig
from distill_core.data import load_data
from distill_core.teachers import TeacherStore, teacher_spec
from studies.cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["distill_core", "studies", "analysis", "benchmarks", "search_spaces"]
CONFIG = {
    "data": {"name": "digits"},
    "model": {"name": "mlp"},
    "teacher": {"model": "mlp", "epochs": 2, "batch_size": 64, "schedule": {"name": "constant"}},
    "method": {"name": "kd"},
    "schedule": {"name": "constant"},
    "run": {"epochs": 1, "batch_size": 64, "device": "cpu"},
}


class Payload:
    """Pickles as a call of os.system that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


# --- (a) static: how files are read ---------------------------------------------------------------


def calls(name: str) -> list[tuple[str, ast.Call]]:
    """Every call of ``name`` (dotted, e.g. ``torch.load``) in the project's Python sources."""
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def test_every_torch_load_is_weights_only() -> None:
    loads = calls("torch.load")
    assert loads, "no torch.load found: is SOURCES right?"
    unsafe = [
        where
        for where, node in loads
        if not any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
    ]
    assert unsafe == [], f"torch.load without weights_only=True at {unsafe}"


@pytest.mark.parametrize(
    "name", ["yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads"]
)
def test_no_unsafe_deserialiser_is_called(name: str) -> None:
    assert [where for where, _ in calls(name)] == []


def test_unpicklers_restrict_globals() -> None:
    """A ``pickle.Unpickler`` subclass must override ``find_class`` (to refuse callables)."""
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(b) == "pickle.Unpickler" for b in node.bases
                ):
                    methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                    assert "find_class" in methods, f"{path}: {node.name} allows every global"


# --- (a) a crafted CIFAR batch --------------------------------------------------------------------


def test_crafted_cifar_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": Payload(marker), b"labels": [0]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="data_batch_1 is not a CIFAR pickle .*refused"):
        load_data(DataConfig(name="cifar10", dir=str(tmp_path)))
    assert not marker.exists()


# --- (b) a crafted teacher checkpoint -------------------------------------------------------------


def test_crafted_teacher_checkpoint_is_refused_not_run(tmp_path: Path) -> None:
    cfg = make_config(CONFIG, {"run.teacher_store": str(tmp_path / "teachers")})
    fit(cfg)
    store = TeacherStore(cfg.run.teacher_store)
    folder = store.path(teacher_spec(cfg))
    marker = tmp_path / "pwned"
    ckpt = folder / "epoch_0002.pt"
    torch.save({"weight": Payload(marker)}, ckpt)
    # Whoever can write the store can fix the checksum too: weights_only is what stops it.
    meta = json.loads((folder / "meta.json").read_text())
    meta["epochs"]["2"]["sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TeacherError, match="epoch_0002.pt is not plain tensors and was refused"):
        fit(cfg)
    assert not marker.exists()


# --- (c) YAML -------------------------------------------------------------------------------------


def test_yaml_python_tags_are_refused_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(
        yaml.safe_dump(CONFIG) + f"extra: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    code, lines = cli("train", "--config", str(config), "--no-tracking")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {config} is not valid YAML") and "fix the file" in lines[0]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(CONFIG))
    code, lines = cli(
        "train", "--config", str(good), "--set", f"method.alpha=!!python/object/apply:os.system ['touch {marker}']"
    )  # fmt: skip
    assert code == 2 and len(lines) == 1
    assert "method.alpha=" in lines[0] and "!!python/object/apply" in lines[0]
    assert "is invalid" in lines[0]
    assert not marker.exists() and not (tmp_path / "runs").exists()


# --- (d) the UI's interface -----------------------------------------------------------------------


class Started(Exception):
    """Raised instead of starting the MLflow server; carries its command."""


def ui_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[list[str], str]:
    """The ``mlflow server`` command ``distill-study ui`` would run, and what it printed first."""
    popen = subprocess.Popen

    def server(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        if "server" in cmd:
            raise Started(cmd)
        return popen(cmd, *args, **kwargs)  # e.g. ctypes.util.find_library while importing

    monkeypatch.setattr(subprocess, "Popen", server)
    result = CliRunner().invoke(main, ["ui", "--store", str(tmp_path / "runs"), *args])
    assert isinstance(result.exception, Started), result.output
    return result.exception.args[0], result.output


def test_ui_binds_loopback_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis.ui import exposure_warning

    cmd, output = ui_command(tmp_path, monkeypatch)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "warning" not in output
    cmd, output = ui_command(tmp_path, monkeypatch, "--host", "0.0.0.0")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    (warning,) = [line for line in output.splitlines() if line.startswith("warning:")]
    assert "--host 0.0.0.0" in warning and "no authentication" in warning
    assert [exposure_warning(h) for h in ("127.0.0.1", "localhost", "::1")] == [None] * 3


# --- (e) credentials ------------------------------------------------------------------------------

SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "sentinel-password-4f1c",
    "MLFLOW_TRACKING_TOKEN": "sentinel-token-9a2e",
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-77d0",
}


def leaks(root: Path) -> list[str]:
    """Files under ``root`` (the SQLite store included) holding any sentinel."""
    return [
        f"{p}: {name}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
        for name, secret in SECRETS.items()
        if secret.encode() in p.read_bytes()
    ]


def assert_not_recorded(tracking_uri: str, download_to: Path) -> None:
    """No sentinel in any run's params, tags, metric names or artifact files."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        recorded = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
        assert not [s for s in SECRETS.values() if s in recorded], run.info.run_id
        for artifact in client.list_artifacts(run.info.run_id):
            local = Path(
                client.download_artifacts(run.info.run_id, artifact.path, str(download_to))
            )
            files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
            for path in files:
                assert not [s for s in SECRETS.values() if s.encode() in path.read_bytes()], path


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)


def test_credentials_never_recorded_by_train(tmp_path: Path, secrets_in_env: None) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "run": {**CONFIG["run"], "teacher_store": str(tmp_path / "store" / "teachers")}}))  # fmt: skip
    code, lines = cli("train", "--config", str(config), "--tracking-uri", str(tmp_path / "store"))
    assert code == 0, lines
    assert_not_recorded(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", tmp_path / "downloads")
    assert leaks(tmp_path / "store") == []


@pytest.mark.slow  # ~10-20 s: a one-trial smoke study on the session's Ray
def test_credentials_never_recorded_by_a_study(
    tmp_path: Path, secrets_in_env: None, ray_session: str
) -> None:
    from studies.runner import StudyOptions, run_study

    options = StudyOptions(
        space="quickstart", trials=1, epochs=1, smoke_test=True,
        storage=str(tmp_path / "store" / "studies"), tracking_uri=str(tmp_path / "store"),
    )  # fmt: skip
    assert run_study(options, say=lambda _: None).status == "completed"
    assert_not_recorded(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", tmp_path / "downloads")
    assert leaks(tmp_path / "store") == []


def test_recorded_study_command_drops_a_password_in_the_tracking_uri() -> None:
    from studies.runner import StudyOptions

    options = StudyOptions(
        space="alpha", name="a", tracking_uri="https://bob:hunter2@mlflow.lab:8443/x"
    )
    command = options.command()
    assert "hunter2" not in command and "bob" not in command
    assert "--tracking-uri https://mlflow.lab:8443/x" in command


# --- (f) search-space modules ---------------------------------------------------------------------


def test_a_bare_name_never_imports_a_file_from_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # even where the cwd is importable
    code, lines = cli("run", "evil", "--storage", str(tmp_path / "studies"))
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: unknown search space or preset 'evil'")
    assert "or ./evil.py" in lines[0]  # the explicit way to run one's own module
    assert not marker.exists() and not (tmp_path / "studies").exists()
