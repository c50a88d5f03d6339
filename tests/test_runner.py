"""The study runner end to end: Ray Tune trials, MLflow layout (docs/tracking.md), resume, bad input.

Studies run in this process on one session-wide Ray (``ray_session``), with --smoke-test data.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from servers import free_port

from distill_core import TeacherStore, fit, make_config
from studies.cli import main
from studies.runner import StudyOptions, run_study
from studies.spaces import list_spaces
from tracking.client import resolve_tracking_uri

TERMINAL = {"completed", "early-stopped", "crashed", "diverged", "failed"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store and storage folder for the module (creating a SQLite store takes seconds)."""
    return tmp_path_factory.mktemp("studies")


def where(store: Path) -> list[str]:
    return ["--storage", str(store / "studies"), "--tracking-uri", str(store / "mlruns")]


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(resolve_tracking_uri(str(store / "mlruns")))


def study_runs(client: MlflowClient, name: str) -> tuple[Run, list[Run]]:
    """The parent run and the child trial runs of study ``name``."""
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("distill.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("distill.role") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    return parents[0], children


def steps(client: MlflowClient, run: Run, metric: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, metric)]


def invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main, list(args))
    return out.exit_code, out.output


# ---------------------------------------------------------------------------------------------
# Bad input: one `error:` line, exit code 2, nothing started.


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown search space or preset 'nope'; use one of: spaces alpha"),
        (["alpha", "--sampler", "nsga2", "--scheduler", "asha"], "pass --scheduler none"),
        (["lr_schedule", "--sampler", "nsga2"], "declares one objective (val_acc)"),
        (["alpha", "--sampler", "grid", "--trials", "9"], "grid of alpha has 5 points"),
        (["alpha", "--gpus-per-trial", "1.5"], "use a fraction up to 1"),
        (["alpha", "--resume", "--name", "never-ran"], "no study to resume"),
        (["alpha", "--set", "method.alpha=2"], "method.alpha=2 is invalid"),
        (
            ["alpha", "--tracking-uri", "http://127.0.0.1:9"],
            "cannot reach the MLflow tracking store",
        ),
        (["alpha", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster"),
        (["alpha", "--dataset", "cifar10"], "pass --data-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    tracking = [] if "--tracking-uri" in args else ["--tracking-uri", str(tmp_path / "mlruns")]
    code, output = invoke("run", *args, "--storage", str(tmp_path / "studies"), *tracking)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_test_metric_objective_refused_at_the_cli(tmp_path: Path) -> None:
    module = tmp_path / "peek.py"
    module.write_text(
        'BASE = {}\nOBJECTIVE, MODE = "test_acc", "max"\nSCIENTIFIC = ["optim.lr"]\nNUISANCE = []\n'
        'GRID = {"optim.lr": [0.1]}\n\ndef space(trial):\n    return {}\n'
    )
    code, output = invoke("run", str(module), *where(tmp_path))
    assert code == 2 and "error: " in output and "test metric" in output


def test_no_gpu_is_refused(tmp_path: Path, ray_session: str) -> None:
    code, output = invoke(
        "run", "alpha", "--smoke-test", "--gpus-per-trial", "0.25", *where(tmp_path)
    )
    assert code == 2 and "has no GPU" in output, output


# ---------------------------------------------------------------------------------------------
# Studies.


class Errors(logging.Handler):
    """Collects WARNING and ERROR records of Ray's loggers (they do not reach pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


# In the default suite: the preset `make study` runs (KD with a teacher); every other space in the
# slow set (each is a whole study). Peers and teacher checkpoints in a study stay in the default
# suite through test_a_seed_in_a_study_trains_exactly_as_the_same_config_alone (DKEL) and the
# reproduction test (a preset with arms).
DEFAULT_SMOKE = {"quickstart"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(s.name, marks=() if s.name in DEFAULT_SMOKE else pytest.mark.slow)
        for s in list_spaces()
    ],
)
def test_every_space_and_preset_runs_as_smoke_test(
    name: str, store: Path, ray_session: str
) -> None:
    errors = Errors()
    logging.getLogger("ray").addHandler(errors)
    try:
        code, output = invoke("run", name, "--smoke-test", "--trials", "2", *where(store))
    finally:
        logging.getLogger("ray").removeHandler(errors)
    assert code == 0, output
    # e.g. Tune's "Saving experiment state to storage ... failed" (its upload racing the next save:
    # SavedStateBarrier), or the searcher's "`Study.stop` is supposed to be invoked" (grid done)
    assert errors.lines == []
    assert "best trial" in output and "mlflow: experiment" in output
    parent, children = study_runs(client_for(store), name)
    assert parent.data.tags["distill.status"] == "completed"
    assert len(children) == 2
    assert {r.data.tags["status"] for r in children} <= TERMINAL
    # each run names the node that trained it: here the one local node of the session's Ray
    import ray

    assert {r.data.tags["distill.node"] for r in children} == {
        ray.get_runtime_context().get_node_id()
    }


SEEDED_SPACE = """
BASE = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}, "method": {"name": "dkel", "peers": 2},
        "run": {"epochs": 2, "batch_size": 64}}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["dkel.decay"]
NUISANCE = []
GRID = {"dkel.decay": ["exp", "cos"]}
SAMPLER = "grid"

def space(trial):
    return {"dkel.decay": trial.suggest_categorical("dkel.decay", ["exp", "cos"])}
"""


def test_a_seed_in_a_study_trains_exactly_as_the_same_config_alone(
    tmp_path: Path, store: Path, ray_session: str
) -> None:
    """Seeds of a trial advance in turn in one process (DKEL draws random numbers in training):
    each seed's curve equals ``fit`` of its recorded config run alone, in this process, after
    other runs."""
    module = tmp_path / "seeded.py"
    module.write_text(SEEDED_SPACE)
    code, output = invoke("run", str(module), "--seeds", "2", "--name", "seeded", *where(store))
    assert code == 0, output
    client = client_for(store)
    _, children = study_runs(client, "seeded")
    assert len(children) == 4
    for run in children:
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        path = client.download_artifacts(run.info.run_id, "config.yaml", str(folder))
        cfg = make_config(yaml.safe_load(Path(path).read_text()))
        alone = [h["train_loss"] for h in fit(cfg).history]
        logged = [
            m.value
            for m in sorted(
                client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step
            )
        ]
        assert logged == alone, (run.info.run_name, logged, alone)


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("random", "median"), ("qmc", "asha"), ("nsga2", "none")]
)
def test_samplers_and_schedulers(
    sampler: str, scheduler: str, store: Path, ray_session: str
) -> None:
    """Grid and TPE run in the smoke tests above (presets default to grid, spaces to TPE)."""
    name = f"{sampler}-{scheduler}"
    code, output = invoke("run", "temperature", "--smoke-test", "--trials", "3", "--sampler", sampler,
                          "--scheduler", scheduler, "--name", name, *where(store))  # fmt: skip
    assert code == 0, output
    parent, children = study_runs(client_for(store), name)
    assert (parent.data.params["study.sampler"], parent.data.params["study.scheduler"]) == (
        sampler,
        scheduler,
    )
    objectives = "val_acc,val_agreement" if sampler == "nsga2" else "val_acc"
    assert parent.data.tags["distill.objectives"] == objectives
    assert len(children) == 3 and len({r.data.params["method.temperature"] for r in children}) == 3


@pytest.mark.slow  # two studies
def test_sampler_seed_picks_another_sequence_of_configs(store: Path, ray_session: str) -> None:
    sampled = {}
    for seed in (7, 8):
        name = f"sampler-seed-{seed}"
        code, output = invoke("run", "temperature", "--smoke-test", "--trials", "2", "--epochs", "1",
                              "--sampler", "random", "--sampler-seed", str(seed), "--name", name,
                              *where(store))  # fmt: skip
        assert code == 0, output
        parent, children = study_runs(client_for(store), name)
        assert parent.data.params["study.sampler_seed"] == str(seed)
        assert f"--sampler-seed {seed}" in parent.data.tags["distill.command"]
        sampled[seed] = {r.data.params["method.temperature"] for r in children}
    assert len(sampled[7]) == 2 and sampled[7].isdisjoint(sampled[8])


def test_smoke_study_mlflow_layout(tmp_path: Path, ray_session: str) -> None:
    """One parent, exactly trials x seeds children, with params, per-epoch steps, tags and config."""
    options = StudyOptions(
        space="alpha", trials=2, seeds=2, scheduler="none", smoke_test=True,
        storage=str(tmp_path / "studies"), tracking_uri=str(tmp_path / "mlruns"),
    )  # fmt: skip
    result = run_study(options)
    assert result.status == "completed" and result.name == "alpha"
    client = client_for(tmp_path)
    parent, children = study_runs(client, "alpha")
    tags = parent.data.tags
    assert (
        tags["distill.space"] == "alpha"
        and tags["distill.objective"] == "val_acc"
        and tags["distill.mode"] == "max"
    )
    assert tags["distill.scientific"] == "method.alpha" and tags["distill.nuisance"] == "optim.lr"
    assert tags["distill.axes"] == "method.alpha,optim.lr"
    assert tags["distill.command"].startswith(
        "distill-study run alpha --name alpha --trials 2 --seeds 2"
    )
    assert parent.data.params["study.sampler"] == "tpe" and parent.info.run_name == "alpha"
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    assert len(children) == 4
    groups: dict[str, list[Run]] = {}
    for run in children:
        t = run.data.tags
        groups.setdefault(t["distill.group"], []).append(run)
        assert t["distill.trial_id"] == t["distill.group"]
        assert run.info.run_name == f"{t['distill.trial_id']}-s{t['seed']}"
        assert (t["method"], t["space"], t["status"], t["distill.axes"]) == (
            "kd",
            "alpha",
            "completed",
            "method.alpha,optim.lr",
        )
        assert run.info.status == "FINISHED"
        assert (
            run.data.params["run.seed"] == t["seed"] and run.data.params["data.name"] == "synthetic"
        )
        assert steps(client, run, "val_acc") == [1, 2] and steps(client, run, "train_loss") == [
            1,
            2,
        ]
        assert steps(client, run, "test_acc") == [2]
        config_file = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        cfg = make_config(yaml.safe_load(Path(config_file).read_text()))
        assert (
            str(cfg.method.alpha) == run.data.params["method.alpha"]
            and str(cfg.run.seed) == t["seed"]
        )
    assert len(groups) == 2
    for runs in groups.values():
        assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
        assert len({r.data.params["method.alpha"] for r in runs}) == 1

    # Every trial shares one teacher: trained once, before the trials started, which only load it.
    store = TeacherStore(tmp_path / "studies" / "teachers")
    assert len(result.teachers_trained) == 1
    assert [e["key"] for e in store.entries()] == result.teachers_trained
    trained_at = (store.root / result.teachers_trained[0] / "meta.json").stat().st_mtime * 1000
    assert trained_at <= min(r.info.start_time for r in children)


def test_early_stopped_runs_have_fewer_steps_and_no_test_metrics(
    store: Path, ray_session: str
) -> None:
    code, output = invoke("run", "temperature", "--smoke-test", "--epochs", "4", "--trials", "4",
                          "--name", "asha", *where(store))  # fmt: skip
    assert code == 0, output
    client = client_for(store)
    _, children = study_runs(client, "asha")
    for run in children:
        status = run.data.tags["status"]
        if status == "completed":
            assert steps(client, run, "val_acc") == [1, 2, 3, 4] and steps(
                client, run, "test_acc"
            ) == [4]
        else:
            assert status == "early-stopped" and len(steps(client, run, "val_acc")) < 4
            assert "test_acc" not in run.data.metrics


def test_interrupted_study_resumes_without_duplicate_or_lost_runs(
    store: Path, ray_session: str
) -> None:
    """SIGINT the driver after two trials finished; --resume completes the same runs."""
    args = [
        "alpha",
        "--smoke-test",
        "--epochs",
        "4",
        "--trials",
        "6",
        "--scheduler",
        "none",
        "--name",
        "resumed",
    ]
    cmd = [sys.executable, "-m", "studies", "run", *args, "--address", ray_session, *where(store)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("trial 2/6"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "--resume" in rest
    client = client_for(store)
    parent, before = study_runs(client, "resumed")
    assert parent.data.tags["distill.status"] == "interrupted" and parent.info.status == "KILLED"
    assert 2 <= len(before) <= 6
    # Nothing is left RUNNING: unfinished trials' runs are closed as interrupted until --resume.
    assert {(r.data.tags["status"], r.info.status) for r in before} <= {
        ("completed", "FINISHED"),
        ("interrupted", "KILLED"),
    }
    # A run the driver created just before a SIGKILL, for a trial Ray Tune had not saved yet.
    orphan = client.create_run(
        parent.info.experiment_id,
        run_name="0rphan00-s0",
        tags={"mlflow.parentRunId": parent.info.run_id, "distill.role": "trial",
              "distill.trial_id": "0rphan00", "seed": "0", "status": "running"},
    ).info.run_id  # fmt: skip

    code, output = invoke("run", "alpha", "--resume", "--name", "resumed", *where(store))
    assert code == 0, output
    parent, after = study_runs(client, "resumed")
    assert parent.data.tags["distill.status"] == "completed" and parent.info.status == "FINISHED"
    assert len(after) == 6 and len({r.info.run_name for r in after}) == 6
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in after}
    for run in after:
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        assert steps(client, run, "train_loss") == [1, 2, 3, 4]
    abandoned = client.get_run(orphan)
    assert abandoned.info.status == "FAILED" and abandoned.data.tags["status"] == "abandoned"
    assert abandoned.data.tags["distill.role"] == "abandoned"
    assert "sampled again on resume" in abandoned.data.tags["distill.failure_reason"]


# ---------------------------------------------------------------------------------------------
# A Ray cluster and an MLflow server, both started and stopped here.


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """Send ``sig``; kill the whole process group if it is still there after a minute."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def ray_head() -> Iterator[str]:
    port = free_port()
    # Its own short temp dir (unix socket paths are limited to ~107 chars): `ray start` records
    # the cluster there, so no other process on this machine joins it by accident.
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
           "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
           "--temp-dir", temp]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGTERM)  # `ray start --block` then drains and stops what it started
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
        proc.wait(timeout=60)


@pytest.mark.slow
def test_study_on_a_ray_cluster_and_an_mlflow_server(
    tmp_path: Path, ray_head: str, mlflow_server: str
) -> None:
    cmd = [sys.executable, "-m", "studies", "run", "interp_init", "--smoke-test", "--seeds", "2",
           "--address", ray_head, "--tracking-uri", mlflow_server, "--storage", str(tmp_path / "studies")]  # fmt: skip
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
    }  # `ray start` enables token auth; --address needs this
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"mlflow: experiment 'interp_init' at {mlflow_server}" in done.stdout
    client = MlflowClient(mlflow_server)
    parent, children = study_runs(client, "interp_init")
    assert parent.data.tags["distill.status"] == "completed"
    assert len(children) == 6 and {r.data.tags["seed"] for r in children} == {"0", "1"}
    completed = [r for r in children if r.data.tags["status"] == "completed"]
    assert completed and all(steps(client, r, "val_agreement") == [1, 2] for r in completed)
    config_file = client.download_artifacts(completed[0].info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config_file).read_text())["init"]["interp_lambda"] is not None
