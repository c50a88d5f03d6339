"""A study on several Ray nodes with no shared disk (README, "Running on a cluster").

A head (no CPUs: it runs the drivers, never a trial) and worker nodes with their own custom
resources run in a subprocess (tests/cluster_nodes.py: ``ray.cluster_utils.Cluster``, apart from
the session Ray). Everything the study keeps is on an S3 server (``s3_server``); the driver runs
in an empty folder of its own, so a trial could only find its teacher, its checkpoint or the
study's state through S3. Each trial reports the id of the node that ran each epoch.

Then a worker node is killed mid-study, and a driver is killed with SIGKILL and resumed: MLflow
holds exactly one finished run per (trial, seed) after each, none running, none duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from distill_core.storage import location
from tracking import client as tracking

ROOT = Path(__file__).resolve().parents[1]
# KD from a 2-epoch mlp teacher (trained once, by a Ray task on a worker, into S3) into a small
# CNN: ~0.3 s per epoch and seed on one core, long enough to lose a node in the middle.
KD_SPACE = """
BASE = {"data": {"name": "digits"}, "model": {"name": "cnn_small"}, "method": {"name": "kd"},
        "teacher": {"model": "mlp", "epochs": 2, "batch_size": 64},
        "run": {"epochs": 10, "batch_size": 16}}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.alpha"]
NUISANCE = []
GRID = {"method.alpha": [0.5]}


def space(trial):
    return {"method.alpha": trial.suggest_float("method.alpha", 0.0, 1.0)}
"""
EPOCHS, SEEDS = 10, 2

pytestmark = pytest.mark.slow


class Nodes:
    """The cluster subprocess: its head's address, and its worker nodes by name."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "cluster_nodes.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self.address = self._answer()
        self.ids: dict[str, str] = {}  # every worker started, by name
        self.live: set[str] = set()

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"the cluster process ended (exit code {self.proc.poll()})"
        return line

    def _say(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def add(self, name: str) -> None:
        self.ids[name] = self._say(f"add {name}")
        self.live.add(name)

    def kill(self, name: str) -> None:
        assert self._say(f"kill {name}") == "killed"
        self.live.discard(name)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def nodes(s3_server: dict[str, str]) -> Iterator[Nodes]:
    """A head and two workers (``a``, ``b``); the AWS variables reach every node's workers."""
    cluster = Nodes({**os.environ, **s3_server, "OMP_NUM_THREADS": "1"})
    try:
        cluster.add("a")
        cluster.add("b")
        yield cluster
    finally:
        cluster.close()


def driver(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``distill-study run ARGS`` in its own session, from an empty folder."""
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "studies", "run", *args],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )


def start_study(
    nodes: Nodes, s3: str, tmp_path: Path, name: str, trials: int
) -> tuple[subprocess.Popen[bytes], MlflowClient, Path]:
    """``KD_SPACE`` as study ``name`` on the cluster, kept on S3: its driver, MLflow client, log."""
    module = tmp_path / "kd_digits.py"
    module.write_text(KD_SPACE)
    mlruns = str(tmp_path / "mlruns")
    args = [str(module), "--trials", str(trials), "--seeds", str(SEEDS), "--sampler", "random",
            "--scheduler", "none", "--name", name, "--address", nodes.address,
            "--storage", s3, "--tracking-uri", mlruns]  # fmt: skip
    log = tmp_path / "driver.log"
    proc = driver(args, tmp_path / "driver", log)
    return proc, MlflowClient(tracking.resolve_tracking_uri(mlruns)), log


def all_runs(client: MlflowClient, name: str) -> list[Run]:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def trial_runs(client: MlflowClient, name: str) -> list[Run]:
    return [r for r in all_runs(client, name) if r.data.tags.get("distill.role") == "trial"]


def progress(client: MlflowClient, name: str) -> dict[str, int]:
    """Trial id -> the least epoch its running runs logged (trials in training only)."""
    found: dict[str, int] = {}
    for run in trial_runs(client, name):
        if run.info.status == "RUNNING" and "train_loss" in run.data.metrics:
            step = max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
            trial = run.data.tags["distill.trial_id"]
            found[trial] = min(found.get(trial, step), step)
    return found


def counts(runs: list[Run]) -> dict[str, int]:
    out: dict[str, int] = {}
    for run in runs:
        out[run.info.status] = out.get(run.info.status, 0) + 1
    return out


def results(storage: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """Trial id -> the rows of its ``result.json``, read from the study's storage on S3."""
    found = {}
    for path in (location(storage) / name).glob("*/result.json"):
        lines = path.read_text().splitlines()
        found[path.parent.name] = [json.loads(line) for line in lines if line.endswith("}")]
    return found


def assert_one_finished_run_per_trial_and_seed(
    client: MlflowClient, name: str, trials: int
) -> list[Run]:
    runs = all_runs(client, name)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    finished = trial_runs(client, name)
    pairs = {(r.data.tags["distill.trial_id"], r.data.tags["seed"]) for r in finished}
    assert len(pairs) == len(finished) == trials * SEEDS
    for run in finished:
        assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "completed")
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # none lost or twice
    return finished


def test_trials_spread_over_nodes_and_survive_a_lost_node(
    nodes: Nodes, s3: str, tmp_path: Path
) -> None:
    name, trials = "spread", 8
    proc, client, log = start_study(nodes, s3, tmp_path, name, trials)
    try:
        deadline = time.time() + 400
        # four trials fill the two workers' four CPUs: wait until three have trained 2 epochs
        while sum(e >= 2 for e in progress(client, name).values()) < 3:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
        before = counts(trial_runs(client, name))
        nodes.kill("a")
        killed_at = time.time()
        # Tune noticed the loss when the tracker tags the lost trials' runs with their retry
        while not any("distill.retries" in r.data.tags for r in trial_runs(client, name)):
            assert proc.poll() is None and time.time() < killed_at + 300, log.read_text()
            time.sleep(0.2)
        noticed = time.time() - killed_at
        assert proc.wait(timeout=500) == 0, log.read_text()
        finished_after = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert list((tmp_path / "driver").iterdir()) == []  # nothing of the study on the driver's disk

    rows = results(s3, name)
    assert len(rows) == trials
    first_node = {trial: r[0]["node"] for trial, r in rows.items()}
    per_node = {n: sum(v == nodes.ids[n] for v in first_node.values()) for n in ("a", "b")}
    assert per_node["a"] >= 1 and per_node["b"] >= 1, per_node  # spread over both workers
    assert {row["node"] for r in rows.values() for row in r} <= set(nodes.ids.values())
    moved = {t: r for t, r in rows.items() if {row["node"] for row in r} == set(nodes.ids.values())}
    assert moved, "no trial of the lost node was rescheduled on the other"
    rescheduled = min(
        row["timestamp"] - killed_at
        for r in moved.values()
        for row in r
        if row["node"] == nodes.ids["b"] and row["timestamp"] >= int(killed_at)
    )
    for trial, r in moved.items():
        # continued from its last checkpoint on S3, not from epoch 1: at most the epoch whose
        # checkpoint the lost node was still uploading runs again (MLflow logs it once, below)
        epochs = [row["epoch"] for row in r]
        assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)), (trial, epochs)
        assert epochs == sorted(epochs) and len(epochs) <= EPOCHS + 1, (trial, epochs)

    finished = assert_one_finished_run_per_trial_and_seed(client, name, trials)
    retried = {
        r.data.tags["distill.trial_id"] for r in finished if r.data.tags.get("distill.retries")
    }
    assert set(moved) <= retried
    # MLflow names the machine too: every run its trial's last node, a moved trial the survivor
    last_node = {trial: r[-1]["node"] for trial, r in rows.items()}
    assert all(
        r.data.tags["distill.node"] == last_node[r.data.tags["distill.trial_id"]] for r in finished
    )
    assert {
        r.data.tags["distill.node"] for r in finished if r.data.tags["distill.trial_id"] in moved
    } == {nodes.ids["b"]}
    print(
        f"\ntrials per node (first node): {per_node}; rescheduled after the node loss: {len(moved)}; "
        f"retries queued {noticed:.1f} s after the kill, first epoch of a moved trial on the "
        f"surviving node {rescheduled:.1f} s after it (once a slot was free), study finished "
        f"{finished_after:.1f} s after it; MLflow trial runs before the kill {before}, after "
        f"{counts(trial_runs(client, name))}"
    )


def test_killed_driver_of_a_cluster_study_resumes_from_s3(
    nodes: Nodes, s3: str, tmp_path: Path
) -> None:
    while len(nodes.live) < 2:  # the first test lost a worker: two again
        nodes.add(f"w{len(nodes.ids)}")
    name, trials = "killed", 6
    proc, client, log = start_study(nodes, s3, tmp_path, name, trials)
    try:
        deadline = time.time() + 400
        while True:  # some trials finished, some training
            runs = trial_runs(client, name)
            done = {r.data.tags["distill.trial_id"] for r in runs if r.info.status == "FINISHED"}
            if len(done) >= 2 and progress(client, name):
                break
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = counts(trial_runs(client, name))
    resume = ["--resume", "--name", name, "--address", nodes.address, "--storage", s3]
    started = time.time()
    again = driver(
        [str(tmp_path / "kd_digits.py"), *resume], tmp_path / "driver", tmp_path / "resume.log"
    )
    assert again.wait(timeout=500) == 0, (tmp_path / "resume.log").read_text()
    resumed_in = time.time() - started
    assert f"resuming study {name} from {s3}/{name}" in (tmp_path / "resume.log").read_text()
    assert_one_finished_run_per_trial_and_seed(client, name, trials)
    print(
        f"\nMLflow trial runs at the driver's SIGKILL {before}, after --resume "
        f"{counts(trial_runs(client, name))} (resume took {resumed_in:.1f} s)"
    )
