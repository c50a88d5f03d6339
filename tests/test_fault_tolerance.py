"""Fault tolerance (README, "Fault tolerance"): a killed driver, a killed worker, trials that raise,
and no leak over a long study.

MLflow is the source of truth for which run belongs to which trial x seed, so the tracker's logic
is first checked on its own against a real store (no Ray); the studies then run on the session
Ray, except the killed driver, which starts its own as a user's would.
"""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
import torch
from click.testing import CliRunner
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from analysis.report import failures
from analysis.study import load_study
from distill_core import ConfigError, DataError, load_data, make_config
from studies.cli import main
from studies.options import SAMPLER_SEED
from studies.plan import Plan
from studies.runner import StudyOptions, run_study
from studies.spaces import load_space
from studies.tracker import ABANDONED, StudyTracker
from studies.trial import lockstep, retryable
from tracking import client as tracking

ROOT = Path(__file__).resolve().parents[1]
NO_MPS = pytest.mark.skipif(
    torch.backends.mps.is_available(), reason="needs a machine without an MPS device"
)
# Real training that lasts long enough to be interrupted: ~0.2 s per epoch and seed on one core.
DIGITS_SPACE = """
BASE = {"data": {"name": "digits"}, "model": {"name": "cnn_small"}, "method": {"name": "scratch"},
        "run": {"epochs": 8, "batch_size": 16}}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["optim.lr"]
NUISANCE = []
GRID = {"optim.lr": [0.05]}


def space(trial):
    return {"optim.lr": trial.suggest_float("optim.lr", 0.005, 0.2, log=True)}
"""


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating a SQLite store takes seconds)."""
    folder = tmp_path_factory.mktemp("mlruns")
    tracking.open_client(str(folder))
    return str(folder)


def client_of(mlruns: str) -> MlflowClient:
    return MlflowClient(tracking.resolve_tracking_uri(mlruns))


def all_runs(client: MlflowClient, name: str) -> list[Run]:
    """Every run of study ``name``, deleted ones too."""
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name}"
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def role(runs: list[Run], name: str) -> list[Run]:
    return [r for r in runs if r.data.tags.get("distill.role") == name]


def steps(client: MlflowClient, run: Run, metric: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def results(folder: Path) -> dict[str, list[dict]]:
    """Trial id -> the rows of its ``result.json`` (what Tune's driver recorded, with the worker pid)."""
    found = {}
    for path in folder.glob("*/result.json"):
        lines = path.read_text().splitlines()
        found[path.parent.name] = [json.loads(line) for line in lines if line.endswith("}")]
    return found


# ---------------------------------------------------------------------------------------------
# The tracker on its own: runs found in MLflow are continued, abandoned or reopened.


def test_tracker_takes_its_runs_from_mlflow_after_a_restart(mlruns: str) -> None:
    client = client_of(mlruns)
    exp = tracking.get_or_create_experiment(client, "t")
    parent = tracking.start_study_run(client, exp, "t", {}, {})
    base = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}, "method": {"name": "scratch"}}
    plan = Plan({**base, "run": {"epochs": 3}}, (0, 1), 1, ("val_acc",))

    def tracker() -> StudyTracker:
        made = StudyTracker(tracking_uri=client.tracking_uri, experiment_id=exp,
                            parent_run_id=parent, plan=plan, space="t", axes=["optim.lr"],
                            objective="val_acc")  # fmt: skip
        made.setup(total_num_samples=3)
        return made

    def trial(trial_id: str, status: str = "RUNNING") -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, config={"optim.lr": 0.1}, status=status)

    def report(t: StudyTracker, trial_id: str, epoch: int, last: bool = False) -> None:
        metrics = {"train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch}
        end = {"status": "completed", "final": {"test_acc": 0.5}, "epochs": epoch} if last else {}
        seeds = {s: {"epoch": epoch, "metrics": metrics, **end} for s in ("0", "1")}
        t.on_trial_result(epoch, [], trial(trial_id), {"seeds": seeds})
        t.get_state()  # Tune saves the study's state after each report: the tracker flushes first

    first = tracker()
    first.on_step_begin(0, [])
    report(first, "a", 1)
    report(first, "a", 2)
    report(first, "b", 1)  # "b" was never in Tune's saved state: its config is sampled again
    # The driver dies here. Tune restores the callback from its pickle and knows trial "a" only.
    second = pickle.loads(pickle.dumps(first))
    second.setup(total_num_samples=3)
    second.on_step_begin(0, [trial("a")])
    report(second, "a", 2)  # replayed from the checkpoint of epoch 1
    report(second, "a", 3, last=True)
    report(second, "c", 1)
    second.on_experiment_end([trial("a", "TERMINATED"), trial("c")])  # Ctrl-C
    [c0] = [r for r in all_runs(client, "t") if r.info.run_name == "c-s0"]
    assert (c0.data.tags["status"], c0.info.status) == ("interrupted", "KILLED")

    third = pickle.loads(pickle.dumps(second))
    third.setup(total_num_samples=3)
    third.on_step_begin(0, [trial("a", "TERMINATED"), trial("c")])
    report(third, "c", 2)
    [c0] = [r for r in all_runs(client, "t") if r.info.run_name == "c-s0"]
    assert (c0.data.tags["status"], c0.info.status) == ("running", "RUNNING")  # reopened
    report(third, "c", 3, last=True)

    runs = all_runs(client, "t")
    trials = role(runs, "trial")
    assert sorted(r.info.run_name for r in trials) == ["a-s0", "a-s1", "c-s0", "c-s1"]
    for run in trials:
        assert (run.data.tags["status"], run.info.status) == ("completed", "FINISHED")
        assert steps(client, run) == [1, 2, 3] and steps(client, run, "test_acc") == [3]
    abandoned = role(runs, "abandoned")
    assert sorted(r.info.run_name for r in abandoned) == ["b-s0", "b-s1"]
    for run in abandoned:
        assert (run.data.tags["status"], run.info.status) == ("abandoned", "FAILED")
        assert run.data.tags["distill.failure_reason"] == ABANDONED
    assert not [r for r in runs if r.info.status == "RUNNING" and r.info.run_id != parent]


# ---------------------------------------------------------------------------------------------
# Trials that raise: failed with the reason, not retried; the study goes on.


@NO_MPS
def test_a_seed_that_raises_fails_its_trial_and_stops_the_other_seeds(tmp_path: Path) -> None:
    base = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}, "method": {"name": "scratch"},
            "run": {"epochs": 3, "device": "cpu"}}  # fmt: skip
    cfgs = {0: make_config(base), 1: make_config(base, {"run.seed": 1, "run.device": "mps"})}

    steps = list(lockstep(cfgs, load_data(cfgs[0].data), {}, ("val_acc",)))
    rows = [row for row, _ in steps]
    assert len(rows) == 1 and rows[0]["finished"] and math.isnan(rows[0]["val_acc"])
    seeds = rows[0]["seeds"]
    assert seeds["1"] == {
        "status": "failed",
        "final": {},
        "epochs": 0,
        "reason": "RuntimeError: PyTorch is not linked with support for mps devices",
    }
    # the other seed is stopped with a status and reason that say why, not "early-stopped"
    assert seeds["0"]["status"] == "cancelled" and seeds["0"]["epoch"] == 1
    assert seeds["0"]["reason"] == "stopped because seed 1 of its trial failed"
    cancelled = {"status": "cancelled", "final": {}, "epochs": 1, "reason": seeds["0"]["reason"]}
    assert steps[0][1] == {"states": {}, "ended": {0: cancelled, 1: seeds["1"]}}


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConfigError("method.alpha must be in [0, 1]"), False),  # the user's config
        (DataError("cifar10: missing /data"), False),  # data that cannot be read
        (ValueError("bad value"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),  # a bug in the code
        (RuntimeError("PyTorch is not linked with support for mps devices"), False),
        (KeyError("x"), False),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
            ),
            True,
        ),
        (MemoryError(), True),
        (OSError(28, "No space left on device"), True),  # I/O
        (ConnectionResetError("peer reset"), True),  # network
        (BrokenPipeError(), True),
        (ray.exceptions.ActorDiedError(), True),  # a lost worker
        (ray.exceptions.ObjectLostError("ab" * 14, "owner", ""), True),  # a lost object or node
    ],
)
def test_retry_policy_by_kind_of_error(error: BaseException, retried: bool) -> None:
    assert retryable(error) is retried


@NO_MPS
def test_failed_trials_are_recorded_with_reasons_not_retried_and_reported(
    tmp_path: Path, mlruns: str, ray_session: str
) -> None:
    """A data set that cannot load (DataError) and a device torch lacks (RuntimeError in fit)."""
    module = tmp_path / "bad_combinations.py"
    module.write_text(
        'BASE = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}, "method": {"name": "scratch"},\n'
        '        "run": {"epochs": 2}}\n'
        'OBJECTIVE, MODE = "val_acc", "max"\nSCIENTIFIC = ["data.name", "run.device"]\nNUISANCE = []\n'
        'GRID = {"data.name": ["synthetic", "cifar10"], "run.device": ["cpu", "mps"]}\nSAMPLER = "grid"\n\n'
        "def space(trial):\n"
        '    return {"data.name": trial.suggest_categorical("data.name", ["synthetic", "cifar10"]),\n'
        '            "run.device": trial.suggest_categorical("run.device", ["cpu", "mps"])}\n'
    )  # cifar10 needs --data-dir; mps exists only on Apple machines
    where = ["--storage", str(tmp_path / "studies"), "--tracking-uri", mlruns]
    out = CliRunner().invoke(main, ["run", str(module), "--seeds", "2", "--name", "bad", *where])
    assert out.exit_code == 0, out.output
    mps = "RuntimeError: PyTorch is not linked with support for mps devices"
    data = "DataError: cifar10"  # needs --data-dir
    lines = [line for line in out.output.splitlines() if line.startswith("trial ")]
    assert sum(f"failed after 0 epochs: {mps}" in line for line in lines) == 1
    assert sum(f"failed after 0 epochs: {data}" in line for line in lines) == 2
    assert "best trial" in out.output and "retrying" not in out.output

    client = client_of(mlruns)
    runs = role(all_runs(client, "bad"), "trial")

    def cause(run: Run) -> str:
        reason = run.data.tags.get("distill.failure_reason", "")
        return next((c for c in (mps, data) if reason.startswith(c)), reason)

    ended = {
        (r.data.params["data.name"], r.data.params["run.device"], r.data.tags["seed"]): (
            r.data.tags["status"], r.info.status, cause(r)
        )
        for r in runs
    }  # fmt: skip
    expected = {("synthetic", "cpu", s): ("completed", "FINISHED", "") for s in "01"}
    expected |= {("synthetic", "mps", s): ("failed", "FAILED", mps) for s in "01"}
    expected |= {
        ("cifar10", d, s): ("failed", "FAILED", data) for d in ("cpu", "mps") for s in "01"
    }
    assert len(runs) == 8 and ended == expected
    # Not retried: each failed trial ran once, ended normally (no error.txt) after one report.
    trials = results(tmp_path / "studies" / "bad")
    assert sorted(len(rows) for rows in trials.values()) == [1, 1, 1, 2]
    assert not list((tmp_path / "studies" / "bad").glob("*/error.txt"))

    section = "\n".join(failures(load_study(client, "bad")))  # the report's "Failed runs"
    listed = [line for line in section.splitlines() if line.startswith("| ") and "-s" in line]
    assert len(listed) == 6
    assert sum(mps in line for line in listed) == 2 and sum(data in line for line in listed) == 4


# ---------------------------------------------------------------------------------------------
# A worker process that dies: Ray retries the trial from its last checkpoint, in the same runs.


def test_killed_worker_is_retried_from_its_checkpoint_in_the_same_runs(
    tmp_path: Path, mlruns: str, ray_session: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "digits_lr.py"
    module.write_text(DIGITS_SPACE)
    options = StudyOptions(
        space=str(module), trials=1, seeds=2, epochs=12, sampler="random", scheduler="none",
        name="retried", storage=str(tmp_path / "studies"), tracking_uri=mlruns,
    )  # fmt: skip
    # 12 epochs (~5 s): result.json reaches the study's folder with Tune's state, every 2 s
    said: list[str] = []
    outcome: list = []
    study = threading.Thread(target=lambda: outcome.append(run_study(options, said.append)))
    study.start()
    folder = tmp_path / "studies" / "retried"
    deadline = time.time() + 120
    killed = None
    while killed is None and time.time() < deadline and study.is_alive():
        for rows in results(folder).values():
            if rows and rows[-1]["epoch"] >= 1:
                killed = rows[-1]["pid"]
        time.sleep(0.05)
    assert killed is not None, said
    assert killed != os.getpid() and b"ray::" in Path(f"/proc/{killed}/cmdline").read_bytes()
    os.kill(killed, signal.SIGKILL)
    study.join(timeout=180)
    assert outcome and outcome[0].status == "completed", said

    [rows] = results(folder).values()
    assert [r["epoch"] for r in rows] == list(range(1, 13))  # none replayed, none lost
    after = [r for r in rows if r["pid"] != killed]
    assert after and after[0]["epoch"] > 1, "continued from its checkpoint, not from epoch 1"
    retried = f"trial {rows[0]['trial_id']}: ActorDiedError: The actor died unexpectedly"
    assert retried in capsys.readouterr().out  # the tracker's line, then "retrying from ..."
    client = client_of(mlruns)
    runs = role(all_runs(client, "retried"), "trial")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    for run in runs:
        assert (run.data.tags["status"], run.info.status) == ("completed", "FINISHED")
        assert run.data.tags["distill.retries"] == "1"
        for metric in ("train_loss", "val_acc"):
            assert steps(client, run, metric) == list(range(1, 13))


# ---------------------------------------------------------------------------------------------
# A driver killed with SIGKILL: --resume finishes the study.


def session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session ``sid``: what a killed driver's Ray left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if os.getsid(int(entry.name)) == sid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
        except OSError:
            continue  # exited meanwhile
    return found


@pytest.mark.slow
def test_killed_driver_resumes_without_lost_duplicate_running_or_resampled_runs(
    tmp_path: Path, mlruns: str, ray_session: str
) -> None:
    module = tmp_path / "digits_lr.py"
    module.write_text(DIGITS_SPACE)
    trials, name = 8, "killed"
    where = ["--storage", str(tmp_path / "studies"), "--tracking-uri", mlruns]
    cmd = [sys.executable, "-m", "studies", "run", str(module), "--trials", str(trials),
           "--sampler", "random", "--scheduler", "none", "--name", name, *where]  # fmt: skip
    # Its own session: the driver starts a local Ray, as `distill-study run` does for a user.
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    folder = tmp_path / "studies" / name
    try:
        deadline = time.time() + 240
        client = None  # opened once a trial reported: the driver has created the store by then
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)
            if client is None:
                if any(results(folder).values()):
                    client = client_of(mlruns)
                continue
            # MLflow, not result.json: that reaches the study folder with Tune's state (every 2 s)
            runs = role(all_runs(client, name), "trial")
            done = sum(r.data.tags.get("status") == "completed" for r in runs)
            if done >= 2 and any(
                "train_loss" in r.data.metrics for r in runs if r.info.status == "RUNNING"
            ):
                break  # some trials finished, some are training
        else:
            pytest.fail(f"the study did not get going (exit code {driver.poll()})")
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed_at = time.time()
        before = {r.info.run_id: r for r in role(all_runs(client, name), "trial")}
        finished = {i for i, r in before.items() if r.data.tags["status"] == "completed"}
        assert len(finished) >= 2 and len(before) > len(finished)
        print(
            f"killed with {len(finished)} trials finished, {len(before) - len(finished)} training"
        )

        result = run_study(
            StudyOptions(space=str(module), resume=True, name=name, storage=where[1])
        )
        assert result.status == "completed" and result.trials == trials

        runs = all_runs(client, name)
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        after = role(runs, "trial")
        pairs = {(r.data.tags["distill.trial_id"], r.data.tags["seed"]) for r in after}
        assert len(pairs) == len(after) == trials  # one seed: one run per trial
        for run in after:
            assert run.data.tags["status"] == "completed"
            assert steps(client, run) == list(range(1, 9))
        # Runs finished before the kill are kept as they were, not trained again.
        kept = {r.info.run_id: r for r in after}
        assert finished <= set(kept)
        assert all(kept[i].info.end_time == before[i].info.end_time for i in finished)
        # The random sampler's state was restored: the configs are the first `trials` it draws,
        # each once, as in a study that was never killed.
        sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SAMPLER_SEED))
        space = load_space(str(module)).space
        expected = sorted(space(sampler.ask())["optim.lr"] for _ in range(trials))
        assert sorted(float(r.data.params["optim.lr"]) for r in after) == pytest.approx(expected)
        # The killed driver's Ray is gone without help: GCS and raylet share the driver's fate,
        # workers follow within seconds, Ray's agents within about a minute.
        deadline = killed_at + 150
        while session_processes(driver.pid) and time.time() < deadline:
            time.sleep(1)
        assert session_processes(driver.pid) == []
        print(f"the killed driver's Ray was gone {time.time() - killed_at:.0f} s after the kill")
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Long-run hygiene: many short trials leave no growing number of open files or processes.


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def descendants() -> int:
    """Processes below this one: the session Ray's GCS, raylet, agents and workers."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry.name)] = int(stat[1])
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return len(below)


@pytest.mark.slow
def test_thirty_trials_leak_no_files_or_processes(
    tmp_path: Path, mlruns: str, ray_session: str
) -> None:
    def study(name: str, trials: int) -> None:
        options = StudyOptions(space="alpha", trials=trials, smoke_test=True, name=name,
                               storage=str(tmp_path / "studies"), tracking_uri=mlruns)  # fmt: skip
        assert run_study(options, say=lambda _: None).status == "completed"

    study("warm-up", 4)  # Ray's worker pool, MLflow's store, imports
    gc.collect()
    files, processes = open_files(), descendants()
    study("thirty", 30)
    gc.collect()
    time.sleep(2)  # Tune's trial actors are being stopped
    grown = (open_files() - files, descendants() - processes)
    print(
        f"open files {files} -> {files + grown[0]}, processes {processes} -> {processes + grown[1]}"
    )
    assert grown[0] <= 3 and grown[1] <= 1, grown


def test_saved_state_waits_for_its_upload_and_then_deletes_older_checkpoints(
    ray_session: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SavedState waits on the upload thread of Tune's controller (not a trial's copy): after
    every step none is running, so the next save never writes under an upload. Checkpoints are
    deleted only once an uploaded state refers to a newer one: each trial keeps its last."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from studies.tuner import SavedState

    def reports_with_checkpoints(config: dict[str, float]) -> None:
        for epoch in range(6):
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "state.txt").write_text(str(epoch))
                checkpoint = tune.Checkpoint.from_directory(folder)
                tune.report({"x": config["x"] * epoch}, checkpoint=checkpoint)

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # a save at every step
    saved = SavedState()
    running: list[bool] = []

    class Probe(tune.Callback):
        def on_step_end(self, iteration: int, trials: list, **info: object) -> None:
            running.append(saved._syncer._sync_process is not None)

    grid = tune.Tuner(
        reports_with_checkpoints,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="x", mode="max", seed=0), num_samples=3
        ),
        run_config=tune.RunConfig(
            name="study", storage_path=str(tmp_path), callbacks=[saved, Probe()], verbose=0
        ),
    ).fit()
    assert saved._syncer._current_cmd is not None  # the experiment state went through it
    assert running and not any(running)
    assert len(grid) == 3 and not grid.errors
    for result in grid:
        kept = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
        assert kept[-1] == "checkpoint_000005" == Path(result.checkpoint.path).name
        assert len(kept) <= 2, kept  # the last, and one whose newer state was not yet uploaded
