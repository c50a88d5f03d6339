"""The study runner: Ray Tune over ``distill_core.fit``, sampled by Optuna, recorded in MLflow.

``run_study(options)`` in order:

1. check every option (space, sampler x scheduler, resources, tracking store, resume) and sample
   the space once, so that bad input fails with one ``UserError`` before anything starts;
2. load the data set once and put it in Ray's object store (trials on a node share one copy);
3. train every teacher (and TA) the space can ask for, once, as parallel Ray tasks;
4. ``Tuner.fit`` (or ``Tuner.restore``): each trial runs its seeds in lock-step and reports
   every epoch with a checkpoint; ``StudyTracker`` (studies/tracker.py), a driver-side callback,
   is the only process that writes to MLflow (SQLite allows one writer), and it also sees
   early-stopped trials;
5. print the best config (selected on validation, with its test metrics).

Faults: a trial whose config or training raises (``DETERMINISTIC``) ends as ``failed`` with its
reason and the study goes on; any other error (a worker process that died, a lost node) is retried
from the trial's last checkpoint up to ``--max-failures`` times; ``--resume`` continues a study
whose driver stopped, even by SIGKILL (README, "Fault tolerance").
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import queue
import shlex
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import ray
import torch
from ray import tune

from distill_core import Config, FitResult, Splits, UserError, fit, load_data, make_config
from distill_core.config import DataConfig, apply_overrides
from distill_core.errors import require_writable
from distill_core.teachers import TeacherStore, required_teachers, store_key
from studies import tracking
from studies.spaces import SAMPLERS, SCHEDULERS, SearchSpace, load_space
from studies.tracker import StudyTracker, failure_reason, short

__all__ = ["StudyOptions", "StudyResult", "run_study"]

STUDY_FILE = "distill_study.json"
SAMPLER_SEED = 0  # the default --sampler-seed: a study's sequence of configs is reproducible
SMOKE_TRIALS = 3
SMOKE_EPOCHS = 2
MAX_FAILURES = 2
#: Errors of a trial's own config or training (ConfigError, DataError, a shape mismatch, CUDA out
#: of memory, ...): a retry would fail the same way, so the trial ends as ``failed`` at once.
DETERMINISTIC = (UserError, ValueError, RuntimeError)


@dataclass(frozen=True)
class StudyOptions:
    """``distill-study run``'s options (None: the space's or preset's default)."""

    space: str
    trials: int | None = None
    epochs: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    seeds: int | None = None
    sampler: str | None = None
    sampler_seed: int = SAMPLER_SEED
    scheduler: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = MAX_FAILURES
    address: str | None = None
    tracking_uri: str | None = None
    storage: str = "runs/studies"
    name: str | None = None
    resume: bool = False
    smoke_test: bool = False
    overrides: tuple[str, ...] = ()

    def command(self) -> str:
        """The ``distill-study run`` command that reproduces this study."""
        args = ["distill-study", "run", self.space, "--name", str(self.name)]
        for flag, value in [
            ("--trials", self.trials), ("--epochs", self.epochs), ("--dataset", self.dataset),
            ("--data-dir", self.data_dir), ("--seeds", self.seeds), ("--sampler", self.sampler),
            ("--sampler-seed", self.sampler_seed),
            ("--scheduler", self.scheduler), ("--cpus-per-trial", self.cpus_per_trial),
            ("--gpus-per-trial", self.gpus_per_trial or None), ("--max-concurrent", self.max_concurrent),
            ("--max-failures", self.max_failures), ("--tracking-uri", _without_password(self.tracking_uri)),
            ("--storage", self.storage),
        ]:  # fmt: skip
            if value is not None:
                args += [flag, str(value)]
        args += ["--smoke-test"] if self.smoke_test else []
        for item in self.overrides:
            args += ["--set", item]
        return shlex.join(args)


def _without_password(uri: str | None) -> str | None:
    """``uri`` with any ``user:password@`` removed, so that the recorded command holds no secret."""
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------------------------
# What a trial needs: its configs (Plan) and the shared data set (SharedData).


@dataclass(frozen=True)
class Plan:
    """How a trial turns sampled overrides into one config per seed; shipped to every worker."""

    base: dict[str, Any]  # the space's BASE with the CLI's options and --set applied
    seeds: tuple[int, ...]
    threads: int
    objectives: tuple[str, ...]  # metrics every report must hold (NaN when a seed diverged)
    smoke_epochs: int = 0  # > 0: --smoke-test, with this many epochs

    def tree(self, sampled: dict[str, Any]) -> dict[str, Any]:
        tree = apply_overrides(self.base, sampled)
        return fit_to_epochs(shrink(tree, self.smoke_epochs) if self.smoke_epochs else tree)

    def config(self, sampled: dict[str, Any], seed: int) -> Config:
        return make_config(self.tree(sampled), {"run.seed": seed})


def shrink(tree: dict[str, Any], epochs: int = SMOKE_EPOCHS) -> dict[str, Any]:
    """``--smoke-test``: any space in seconds (synthetic data, MLPs, a few epochs)."""
    tree = copy.deepcopy(tree)
    tree["data"] = {"name": "synthetic"}
    tree["model"] = {"name": "mlp"}
    teacher = tree.setdefault("teacher", {})
    teacher.update(model="mlp", epochs=SMOKE_EPOCHS, batch_size=64, save_epochs=None)
    method = tree.setdefault("method", {})
    if method.get("ta_model"):
        method["ta_model"] = "mlp"
    method.pop("peer_models", None)
    tree.setdefault("run", {}).update(epochs=epochs, batch_size=64)
    return tree


def fit_to_epochs(tree: dict[str, Any]) -> dict[str, Any]:
    """Clamp epoch-valued choices to the run's length, so that --epochs can shorten any space."""
    tree = copy.deepcopy(tree)
    run_epochs = tree.get("run", {}).get("epochs", Config().run.epochs)
    teacher = tree.get("teacher", {})
    teacher_epochs = teacher.get("epochs", Config().teacher.epochs)
    if teacher.get("epoch") is not None:
        teacher["epoch"] = min(teacher["epoch"], teacher_epochs)
    if teacher.get("save_epochs") is not None:
        teacher["save_epochs"] = [e for e in teacher["save_epochs"] if e <= teacher_epochs]
    for sched, epochs in (
        (tree.get("schedule"), run_epochs),
        (teacher.get("schedule"), teacher_epochs),
    ):
        if not sched:
            continue
        if "milestones" in sched:
            sched["milestones"] = [m for m in sched["milestones"] if 0 < m < epochs]
        if sched.get("warmup_epochs", 0) >= epochs:
            sched["warmup_epochs"] = epochs - 1
    method = tree.get("method", {})
    if method.get("kd_stop_epoch") is not None:
        method["kd_stop_epoch"] = min(method["kd_stop_epoch"], run_epochs)
    return tree


@dataclass(frozen=True)
class SharedData:
    """A loaded data set as numpy arrays: Ray shares them zero-copy between a node's trials."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    name: str
    num_classes: int
    augment: bool

    @classmethod
    def load(cls, cfg: DataConfig) -> SharedData:
        s = load_data(cfg)
        arrays = {
            k: getattr(s, k).numpy()
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return cls(cfg.model_dump(), arrays, s.name, s.num_classes, s.augment)

    def splits(self, cfg: DataConfig) -> Splits:
        """The shared tensors, or a fresh load for a config that asks for other data."""
        if cfg.model_dump() != self.config:
            return load_data(cfg)
        with warnings.catch_warnings():  # the arrays are read-only views of the object store
            warnings.simplefilter("ignore", UserWarning)
            tensors = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        return Splits(name=self.name, num_classes=self.num_classes, augment=self.augment, **tensors)


# ---------------------------------------------------------------------------------------------
# The trial: K seeds in lock-step, one report (and checkpoint) per epoch.


class _Stop(Exception):
    """Ends a seed's thread when its trial ends first."""


class _SeedThread:
    """``fit`` for one seed in a thread that pauses after every epoch until told to go on."""

    def __init__(self, cfg: Config, data: Splits, resume_from: dict[str, Any] | None) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._go = threading.Semaphore(0)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, args=(cfg, data, resume_from), daemon=True
        )
        self._thread.start()

    def _run(self, cfg: Config, data: Splits, resume_from: dict[str, Any] | None) -> None:
        try:
            self.events.put(
                ("done", fit(cfg, on_epoch=self._on_epoch, resume_from=resume_from, data=data))
            )
        except _Stop:
            pass
        except BaseException as exc:  # handed to the trial's thread, which raises it
            self.events.put(("error", exc))

    def _on_epoch(self, report: Any) -> None:
        self.events.put(("epoch", report))
        self._go.acquire()
        if self._stopping:
            raise _Stop

    def next(self) -> tuple[str, Any]:
        """The next event: ``epoch`` (a report), ``done`` (the result) or ``failed`` (the error)."""
        kind, payload = self.events.get()
        if kind == "error":
            if not isinstance(payload, DETERMINISTIC):
                raise payload  # the trial fails and Ray retries it
            kind = "failed"
        return kind, payload

    def go(self) -> None:
        self._go.release()

    def stop(self) -> None:
        """End the seed at its pause (it is paused whenever the trial thread runs)."""
        self._stopping = True
        self._go.release()
        self._thread.join()


def _ended(kind: str, payload: Any, epoch: int) -> dict[str, Any]:
    """A seed's end from its thread's last event: its ``FitResult``, or the error it failed with."""
    if kind == "failed":
        return {"status": "failed", "final": {}, "epochs": epoch, "reason": failure_reason(payload)}
    result: FitResult = payload
    return {"status": result.status, "final": result.final, "epochs": len(result.history)}


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over seeds: what the searcher and scheduler see."""
    keys = set().union(*rows) if rows else set()
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def _row(
    reports: dict[int, Any],
    now_ended: dict[int, dict[str, Any]],
    broken: bool,
    objectives: tuple[str, ...],
) -> dict[str, Any]:
    """One Tune report: seed means at top level, each seed's epoch (and end) under ``seeds``."""
    seeds = {str(s): {"epoch": r.epoch, "metrics": r.metrics} for s, r in reports.items()}
    for s, e in now_ended.items():
        seeds.setdefault(str(s), {}).update(e)
    row = _means([r.metrics for r in reports.values()])
    row.update(
        _means([e["final"] for e in now_ended.values() if e["status"] in ("completed", "crashed")])
    )
    if broken:  # one diverged or failed seed fails the config (NaN: a failed trial for Optuna)
        row.update(dict.fromkeys(objectives, math.nan))
    epochs = [r.epoch for r in reports.values()] + [e["epochs"] for e in now_ended.values()]
    return {**row, "epoch": max(epochs, default=0), "seeds": seeds}


def lockstep(
    cfgs: dict[int, Config],
    data: Splits,
    saved: dict[str, Any],
    save: Callable[[dict[str, Any]], str],
    objectives: tuple[str, ...],
) -> Iterator[tuple[dict[str, Any], str]]:
    """Run every seed's ``fit`` one epoch at a time; yield (report row, checkpoint folder) per epoch.

    ``saved`` is a previous checkpoint (``{"states": {seed: state}, "ended": {seed: end}}``) to
    continue from; ``save`` writes one and returns its folder. A seed that diverges or fails
    (``DETERMINISTIC`` errors) ends the trial: its other seeds stop (``early-stopped``) and the
    objectives are reported as NaN.
    A trial restored after its last report has nothing left to report (a scheduler that paused
    it there would otherwise pause it again, forever).
    """
    ended: dict[int, dict[str, Any]] = dict(saved.get("ended", {}))
    states = saved.get("states", {})
    live = {s: _SeedThread(c, data, states.get(s)) for s, c in cfgs.items() if s not in ended}
    epoch = 0  # the last epoch reported
    try:
        while live:
            reports, now_ended = {}, {}
            for seed, thread in live.items():
                kind, payload = thread.next()
                if kind == "epoch":
                    reports[seed] = payload
                else:
                    now_ended[seed] = _ended(kind, payload, epoch)
            epoch = max((r.epoch for r in reports.values()), default=epoch)
            if any(r.epoch == cfgs[s].run.epochs for s, r in reports.items()):
                for seed in reports:  # the last epoch: let them compute their test metrics
                    live[seed].go()
                    now_ended[seed] = _ended(*live[seed].next(), epoch)
            broken = any(
                e["status"] in ("diverged", "failed")
                for e in [*ended.values(), *now_ended.values()]
            )
            if broken:
                for seed in set(reports) - set(now_ended):
                    live[seed].stop()
                    now_ended[seed] = {
                        "status": "early-stopped",
                        "final": {},
                        "epochs": reports[seed].epoch,
                    }
            ended.update(now_ended)
            for seed in now_ended:
                del live[seed]
            folder = save({"states": {s: reports[s].state() for s in live}, "ended": ended})
            yield {**_row(reports, now_ended, broken, objectives), "finished": not live}, folder
            # Only now: a trial stopped at its report leaves no seed computing in the background.
            for thread in live.values():
                thread.go()
    finally:
        for thread in live.values():
            thread.stop()


def train_trial(config: dict[str, Any], *, plan: Plan, data: Any) -> None:
    """The Ray Tune trainable: ``config`` holds the sampled dotted overrides."""
    torch.set_num_threads(plan.threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a "checkpoint created" per epoch
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    try:
        cfgs = {seed: plan.config(config, seed) for seed in plan.seeds}
        splits = shared.splits(next(iter(cfgs.values())).data)
    except DETERMINISTIC as exc:  # a sampled config the trainer refuses, data that cannot load
        end = {"status": "failed", "final": {}, "epochs": 0, "reason": failure_reason(exc)}
        tune.report(
            {**_row({}, dict.fromkeys(plan.seeds, end), True, plan.objectives), "finished": True}
        )
        return
    saved: dict[str, Any] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / "state.pt", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:

        def save(state: dict[str, Any]) -> str:
            folder = tempfile.mkdtemp(dir=tmp)
            torch.save(state, Path(folder) / "state.pt")
            return folder

        for row, folder in lockstep(cfgs, splits, saved, save, plan.objectives):
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


# ---------------------------------------------------------------------------------------------
# Setting a study up.


@dataclass
class _Study:
    """A study's resolved settings and where it lives."""

    options: StudyOptions
    space: SearchSpace
    folder: Path
    plan: Plan
    trials: int
    sampler: str
    scheduler: str
    tracking_uri: str
    experiment_id: str = ""
    parent_run_id: str = ""


def _check_options(o: StudyOptions, space: SearchSpace) -> tuple[str, str, int, int]:
    """Sampler, scheduler, trials and seeds after defaults; raises UserError for what cannot run."""
    sampler = o.sampler or space.sampler
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; use --sampler {' | '.join(SAMPLERS)}")
    multi = sampler == "nsga2"
    scheduler = o.scheduler or ("none" if multi else "asha")
    if scheduler not in SCHEDULERS:
        raise UserError(
            f"unknown scheduler {scheduler!r}; use --scheduler {' | '.join(SCHEDULERS)}"
        )
    if multi and len(space.objectives) < 2:
        raise UserError(
            f"--sampler nsga2 is multi-objective but {space.name} declares one objective "
            f"({space.objectives[0][0]}); add OBJECTIVES to the space or use --sampler tpe"
        )
    if multi and scheduler != "none":
        names = ", ".join(m for m, _ in space.objectives)
        raise UserError(
            f"--scheduler {scheduler} stops trials on one metric, but nsga2 optimises several ({names}); "
            "pass --scheduler none"
        )
    grid = space.grid_size + len(space.baselines)
    trials = (grid if sampler == "grid" else space.trials) if o.trials is None else o.trials
    if o.smoke_test and o.trials is None:
        trials = min(trials, SMOKE_TRIALS)
    if sampler == "grid" and trials > grid:
        raise UserError(
            f"the grid of {space.name} has {grid} points, so --trials {trials} would repeat some; "
            f"pass --trials {grid} or fewer (repeat configs with --seeds)"
        )
    seeds = (1 if o.smoke_test else space.seeds) if o.seeds is None else o.seeds
    for flag, value in (
        ("--trials", trials),
        ("--seeds", seeds),
        ("--max-concurrent", 1 if o.max_concurrent is None else o.max_concurrent),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}; pass {flag} 1 or more")
    if o.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be > 0, got {o.cpus_per_trial}")
    if o.gpus_per_trial < 0 or (o.gpus_per_trial > 1 and o.gpus_per_trial != int(o.gpus_per_trial)):
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} is not possible; use a fraction up to 1 "
            "(0.25 packs four trials per GPU) or a whole number"
        )
    if o.max_failures < 0:
        raise UserError(f"--max-failures must be at least 0, got {o.max_failures}; pass 0 or more")
    require_writable(o.storage, "pass a writable --storage folder")
    if o.address:  # here, before data or Ray start: ray.init retries an unreachable head for long
        _check_address(o.address)
    return sampler, scheduler, trials, seeds


def _plan(o: StudyOptions, space: SearchSpace, seeds: int, storage: Path) -> Plan:
    """The base config of every trial: the space's BASE, then the CLI's options, then --set."""
    cli: dict[str, Any] = {
        "run.device": "cuda" if o.gpus_per_trial > 0 else "cpu",
        "run.teacher_store": str(storage / "teachers"),
    }
    if o.dataset:
        cli["data.name"] = o.dataset
    if o.data_dir:
        cli["data.dir"] = str(Path(o.data_dir).expanduser().resolve())
    if o.epochs is not None:
        cli["run.epochs"] = o.epochs
    threads = max(1, int(o.cpus_per_trial))
    cli["run.threads"] = threads  # recorded, so that an exported config re-runs bit for bit
    base = apply_overrides(apply_overrides(space.base, cli), list(o.overrides))
    first = base.get("run", {}).get("seed", Config().run.seed)
    smoke_epochs = (o.epochs or SMOKE_EPOCHS) if o.smoke_test else 0
    objectives = tuple(m for m, _ in space.objectives)
    return Plan(base, tuple(range(first, first + seeds)), threads, objectives, smoke_epochs)


def _sample_once(space: SearchSpace, plan: Plan) -> None:
    """Sample the space on a throwaway Optuna study and build the configs, to fail before Ray."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SAMPLER_SEED)).ask()
        points = [{}, space.space(trial), *space.grid_points()]
    except Exception as exc:
        raise UserError(
            f"search space {space.name}: space(trial) failed ({type(exc).__name__}: {exc}); fix the "
            "module (GRID must give a value to every parameter space() asks for)"
        ) from None
    for point in points:
        try:
            plan.config(point, plan.seeds[0])
        except UserError as exc:
            what = point or "its base config"
            raise UserError(
                f"search space {space.name} gives an invalid config for {what}: {exc}"
            ) from None


def _free_name(space: str, storage: Path, client: Any) -> str:
    """``space``, else ``space-2``, ``space-3``, ...: the first name no study uses yet."""
    for n in range(1, 10_000):
        name = space if n == 1 else f"{space}-{n}"
        if not (storage / name).exists() and client.get_experiment_by_name(name) is None:
            return name
    raise UserError(f"too many studies named {space}-N in {storage}; pass --name")


def _latest_name(space: str, storage: Path) -> str | None:
    """The most recent study of ``space`` in ``storage`` (for --resume without --name)."""
    found = [p for p in storage.glob(f"{space}*") if (p / STUDY_FILE).is_file()]
    found = [p for p in found if p.name == space or p.name.removeprefix(f"{space}-").isdigit()]
    return max(found, key=lambda p: (p / STUDY_FILE).stat().st_mtime).name if found else None


def _check_address(address: str) -> None:
    """Fail fast with the fix when a Ray head does not answer (ray.init would retry for long)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot reach the Ray cluster at --address {address} ({exc}); start its head with "
            "`ray start --head --port 6379` and pass HOST:6379, or drop --address to run locally"
        ) from None


def _connect_ray(o: StudyOptions) -> bool:
    """Join ``--address`` (checked by ``_check_options``) or start a local Ray (reusing one running here)."""
    if ray.is_initialized():
        return False
    if o.gpus_per_trial > 0 and not o.address and not torch.cuda.is_available():
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} but this machine has no GPU; drop --gpus-per-trial "
            "or join a cluster with GPUs via --address"
        )
    if o.address:
        try:
            ray.init(address=o.address, log_to_driver=True)
        except ConnectionError as exc:
            cause = exc.__cause__ or exc
            raise UserError(
                f"cannot join the Ray cluster at --address {o.address} ({type(cause).__name__}); if it uses "
                "token authentication, export RAY_AUTH_MODE=token with its token in ~/.ray/auth_token or "
                "RAY_AUTH_TOKEN (see docs/studies.md)"
            ) from None
    else:
        # "local": always a new Ray of our own, never one that `ray start` left on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return True


def _check_resources(o: StudyOptions) -> None:
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if o.gpus_per_trial > 0 and gpus == 0:
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} but the Ray cluster has no GPU; drop --gpus-per-trial "
            "or join a cluster with GPUs via --address"
        )
    if o.gpus_per_trial > gpus:
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} exceeds the {gpus:g} GPUs of the largest node; lower it"
        )
    if o.cpus_per_trial > cpus:
        raise UserError(
            f"--cpus-per-trial {o.cpus_per_trial:g} exceeds the {cpus:g} CPUs of the largest node; lower it"
        )


def _quiet_tune(o: StudyOptions) -> None:
    """Tune settings that the driver reads from the environment."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # and verbose=0: no status tables, our lines
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # With a searcher Tune starts one trial at a time; allow as many pending as can run at once.
    slots = int(ray.cluster_resources().get("CPU", 1) // o.cpus_per_trial)
    pending = max(1, min(slots, o.max_concurrent or slots))
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(pending))


def _prepare(o: StudyOptions) -> tuple[_Study, Any]:
    """Resolve and check everything; find the study to resume, or a free name for a new one.

    Returns the study and an MLflow client of its tracking store.
    """
    storage = Path(o.storage).expanduser().resolve()
    space = load_space(o.space)
    if o.name is not None and (not o.name or "/" in o.name or o.name.startswith(".")):
        raise UserError(
            f"--name {o.name!r} must be a plain name (no '/'), e.g. --name {space.name}-lr"
        )
    saved: dict[str, Any] = {}
    if o.resume:
        name = o.name or _latest_name(space.name, storage)
        folder = storage / (name or space.name)
        if not (folder / STUDY_FILE).is_file():
            raise UserError(
                f"no study to resume at {folder}; start it without --resume "
                "(or pass the --name and --storage it ran with)"
            )
        saved = json.loads((folder / STUDY_FILE).read_text())
        kept = {**saved["options"], "overrides": tuple(saved["options"]["overrides"])}
        options = replace(StudyOptions(**kept), resume=True, address=o.address)
        checked = _check_options(options, space)
        client = tracking.open_client(saved["tracking_uri"])
    else:
        checked = _check_options(o, space)  # before the MLflow store is opened (or created)
        client = tracking.open_client(o.tracking_uri)
        taken = o.name and ((storage / o.name).exists() or client.get_experiment_by_name(o.name))
        if taken:
            raise UserError(
                f"a study named {o.name!r} exists (in {storage} or the MLflow store); continue it "
                "with --resume, or choose another --name"
            )
        name = o.name or _free_name(space.name, storage, client)
        # a user module by its absolute path, so that --resume finds it from anywhere
        options = replace(o, space=space.path or space.name, name=name, storage=str(storage))
        folder = storage / name
    sampler, scheduler, trials, seeds = checked
    plan = _plan(options, space, seeds, storage)
    _sample_once(space, plan)
    study = _Study(options, space, folder, plan, trials, sampler, scheduler, client.tracking_uri)
    if saved:
        study.experiment_id, study.parent_run_id = saved["experiment_id"], saved["parent_run_id"]
    return study, client


def _start_tracking(study: _Study, client: Any) -> None:
    """Create the experiment and parent run of a new study and write its study file."""
    o, space = study.options, study.space
    objective, mode = space.objectives[0]
    exp_tags = {"distill.space": space.name, "distill.objective": objective, "distill.mode": mode}
    study.experiment_id = tracking.get_or_create_experiment(client, str(o.name), exp_tags)
    objectives = space.objectives if study.sampler == "nsga2" else space.objectives[:1]
    tags = {
        **exp_tags,
        "distill.objectives": ",".join(m for m, _ in objectives),
        "distill.scientific": ",".join(space.scientific),
        "distill.nuisance": ",".join(space.nuisance),
        "distill.axes": ",".join(space.axes),
        "distill.command": o.command(),
    }
    params = {
        "study.space": space.name, "study.sampler": study.sampler,
        "study.sampler_seed": o.sampler_seed, "study.scheduler": study.scheduler,
        "study.trials": study.trials, "study.seeds": len(study.plan.seeds), "study.smoke_test": o.smoke_test,
        "study.cpus_per_trial": o.cpus_per_trial, "study.gpus_per_trial": o.gpus_per_trial,
        "study.max_failures": o.max_failures,
    }  # fmt: skip
    study.parent_run_id = tracking.start_study_run(
        client, study.experiment_id, str(o.name), tags, params
    )
    study.folder.mkdir(parents=True, exist_ok=True)
    record = {
        "options": asdict(o),
        "experiment_id": study.experiment_id,
        "parent_run_id": study.parent_run_id,
        "tracking_uri": study.tracking_uri,
    }
    (study.folder / STUDY_FILE).write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------------------------------------
# Teachers, once per study, before the trials.


@ray.remote
def _train_teacher(
    root: str, spec: Config, save_epochs: list[int] | None, data: SharedData, threads: int
) -> str:
    torch.set_num_threads(threads)
    TeacherStore(root).ensure(spec, save_epochs=save_epochs, data=data.splits(spec.data))
    return store_key(spec)


def teacher_stages(
    space: SearchSpace, plan: Plan
) -> list[dict[str, tuple[Config, list[int] | None]]]:
    """Every distinct teacher (stage 0) and TA (stage 1) the space's grid and baselines ask for."""
    stages: list[dict[str, tuple[Config, list[int] | None]]] = []
    for point in space.grid_points():
        cfg = plan.config(point, plan.seeds[0])
        for stage, (spec, _epoch, save) in enumerate(required_teachers(cfg)):
            if len(stages) <= stage:
                stages.append({})
            stages[stage].setdefault(store_key(spec), (spec, save))
    return stages


def train_teachers(study: _Study, data: Any, say: Callable[[str], None]) -> list[str]:
    """Train the missing teachers, each once, in parallel Ray tasks; returns the keys trained."""
    o = study.options
    store = TeacherStore(study.plan.base["run"]["teacher_store"])
    trained: list[str] = []
    stages = teacher_stages(study.space, study.plan)
    for stage in stages:
        todo = {k: v for k, v in stage.items() if store.meta(v[0]) is None}
        if not todo:
            continue
        kind = "teacher assistant" if stage is not stages[0] else "teacher"
        say(f"training {len(todo)} {kind}(s) once, before the trials: {', '.join(todo)}")
        task = _train_teacher.options(num_cpus=o.cpus_per_trial, num_gpus=o.gpus_per_trial)
        trained += ray.get(
            [task.remote(str(store.root), s, e, data, study.plan.threads) for s, e in todo.values()]
        )
    return trained


# ---------------------------------------------------------------------------------------------
# The Tuner.


def _dirname(trial: Any) -> str:
    return trial.trial_id


def _searcher(study: _Study) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning
    )  # QMC, NSGA-II
    space, seed = study.space, study.options.sampler_seed
    samplers: dict[str, Callable[[], Any]] = {
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(1, study.trials // 2))
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(space.grid, seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(
            population_size=max(2, min(50, study.trials // 2)), seed=seed
        ),
    }
    objectives = space.objectives if study.sampler == "nsga2" else space.objectives[:1]
    metric: Any = [m for m, _ in objectives] if len(objectives) > 1 else objectives[0][0]
    mode: Any = [d for _, d in objectives] if len(objectives) > 1 else objectives[0][1]
    searcher = OptunaSearch(
        space=space.space, metric=metric, mode=mode, sampler=samplers[study.sampler](),
        points_to_evaluate=space.baselines or None,
    )  # fmt: skip
    if study.options.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=study.options.max_concurrent)
    return searcher


def _scheduler(study: _Study) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    objective, mode = study.space.objectives[0]
    epochs = make_config(study.plan.tree({}), {"run.seed": study.plan.seeds[0]}).run.epochs
    grace = max(1, epochs // 5)  # never judge a trial on its first fifth of training
    if study.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=objective,
            mode=mode,
            max_t=epochs,
            grace_period=grace,
            reduction_factor=3,
        )
    if study.scheduler == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            metric=objective,
            mode=mode,
            grace_period=grace,
            min_samples_required=3,
        )
    return FIFOScheduler()


def _trainable(study: _Study, data: Any) -> Any:
    o = study.options
    trainable = tune.with_parameters(train_trial, plan=study.plan, data=data)
    return tune.with_resources(trainable, {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial})


def _tuner(study: _Study, data: Any) -> Any:
    # A study killed before Tune saved anything (e.g. while teachers trained) starts its trials anew.
    if study.options.resume and tune.Tuner.can_restore(study.folder):
        return tune.Tuner.restore(
            str(study.folder), trainable=_trainable(study, data), resume_unfinished=True
        )
    tracker = StudyTracker(
        tracking_uri=study.tracking_uri,
        experiment_id=study.experiment_id,
        parent_run_id=study.parent_run_id,
        plan=study.plan,
        space=study.space.name,
        axes=study.space.axes,
        objective=study.space.objectives[0][0],
    )
    return tune.Tuner(
        _trainable(study, data),
        tune_config=tune.TuneConfig(
            search_alg=_searcher(study),
            scheduler=_scheduler(study),
            num_samples=study.trials,
            trial_dirname_creator=_dirname,
            reuse_actors=True,  # a trial's process is reused: no torch import per trial
        ),
        run_config=tune.RunConfig(
            name=study.folder.name,
            storage_path=str(study.folder.parent),
            callbacks=[tracker],
            # num_to_keep=1 also makes Tune save the study's state after every checkpoint (every
            # reported epoch), so a killed driver loses at most the step it was in.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=study.options.max_failures),
            verbose=0,
        ),
    )


# ---------------------------------------------------------------------------------------------
# Running it.


@dataclass(frozen=True)
class StudyResult:
    """What ``run_study`` returns: the study's name, folder, MLflow ids and outcome."""

    name: str
    folder: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    status: str  # completed | interrupted
    trials: int
    teachers_trained: list[str]
    best: list[dict[str, Any]]  # the best trial, or the Pareto front for nsga2


def run_study(options: StudyOptions, say: Callable[[str], None] = print) -> StudyResult:
    """Run (or ``--resume``) a study; see the module docstring for the steps.

    Raises:
        UserError: bad input, before any trial starts.
    """
    study, client = _prepare(options)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # importing MLflow reset it to INFO
    # A restored trial reports its replayed epochs to Optuna again, which ignores them.
    warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
    # ASHA's cut-off over rungs where every trial failed or diverged (NaN objectives)
    warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
    o = study.options
    data = SharedData.load(study.plan.config({}, study.plan.seeds[0]).data)
    started = _connect_ray(o)
    try:
        _check_resources(o)
        _quiet_tune(o)
        if o.resume:
            say(f"resuming study {o.name} from {study.folder} with its saved settings")
            where = {
                "space": "",
                "name": None,
                "storage": "",
                "address": None,
                "tracking_uri": None,
            }
            if replace(options, **where) != StudyOptions(resume=True, **where):
                say("note: --resume ignores the other options given (the study keeps its own)")
            tracking.set_study_status(client, study.parent_run_id, "running")
        else:
            _start_tracking(study, client)
        seeds = f", {len(study.plan.seeds)} seeds each" if len(study.plan.seeds) > 1 else ""
        say(
            f"study {o.name}: {study.space.name}, {study.trials} trials{seeds}, sampler {study.sampler}, "
            f"scheduler {study.scheduler}; folder {study.folder}"
        )
        ref = ray.put(data)
        trained = train_teachers(study, ref, say)
        grid = _tuner(study, ref).fit()
        finished = grid.num_terminated + grid.num_errors
        status = "completed" if finished >= study.trials else "interrupted"
        tracking.set_study_status(client, study.parent_run_id, status)
        best = _best(study, grid) if status == "completed" else []
        result = StudyResult(
            str(o.name), study.folder, study.tracking_uri, study.experiment_id, study.parent_run_id,
            status, len(grid), trained, best,
        )  # fmt: skip
        _summary(study, result, say)
        return result
    finally:
        if started:
            ray.shutdown()


def _best(study: _Study, grid: Any) -> list[dict[str, Any]]:
    """The best trial on the validation objective among those that trained every epoch; for
    nsga2 every trial on the Pareto front of the objectives. The first one's config is written
    to ``best_config.yaml``."""
    objectives = study.space.objectives if study.sampler == "nsga2" else study.space.objectives[:1]
    signs = [1 if mode == "max" else -1 for _, mode in objectives]

    def score(r: Any) -> list[float]:
        return [
            sign * r.metrics.get(m, math.nan)
            for sign, (m, _) in zip(signs, objectives, strict=True)
        ]

    rows = [
        r
        for r in grid
        if r.metrics and r.metrics.get("finished") and all(map(math.isfinite, score(r)))
    ]
    scores = {id(r): score(r) for r in rows}
    front = [r for r in rows if not any(_dominates(scores[id(o)], scores[id(r)]) for o in rows)]
    front.sort(key=score, reverse=True)
    if len(objectives) == 1:
        front = front[:1]  # of tied trials, the first
    if front:
        path = study.folder / "best_config.yaml"
        path.write_text(study.plan.config(front[0].config, study.plan.seeds[0]).to_yaml())
    return [
        {"trial_id": r.metrics["trial_id"], "sampled": r.config, "metrics": r.metrics}
        for r in front
    ]


def _dominates(a: list[float], b: list[float]) -> bool:
    """Whether score ``a`` is at least as good as ``b`` everywhere and better somewhere (max)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def _summary(study: _Study, result: StudyResult, say: Callable[[str], None]) -> None:
    o = study.options
    if result.status == "interrupted":
        say(f"interrupted before all {study.trials} trials finished; continue with:")
        say(f"  {o.command()} --resume")
        return
    if not result.best:
        say(
            "no trial trained every epoch; see the failure reasons above (tag distill.failure_reason)"
        )
    n = len(study.plan.seeds)
    for i, b in enumerate(result.best):
        what = (
            "best trial" if len(result.best) == 1 else f"Pareto front {i + 1}/{len(result.best)}:"
        )
        say(f"{what} {b['trial_id']} ({f'mean of {n} seeds' if n > 1 else 'one seed'}):")
        say("  " + "  ".join(f"{k}={short(v)}" for k, v in b["sampled"].items()))
        m = b["metrics"]
        for split in ("val", "test"):
            keys = [
                f"{split}_{k}"
                for k in ("acc", "nll", "ece", "agreement", "kl")
                if f"{split}_{k}" in m
            ]
            say(f"  {split:<4} " + "  ".join(f"{k} {m[k]:.4f}" for k in keys))
    if result.best:
        path = study.folder / "best_config.yaml"
        say(f"config of the best: {path} (run it with distill-study train --config {path})")
    say(
        f"mlflow: experiment {o.name!r} at {result.tracking_uri} (parent run {result.parent_run_id})"
    )
    if result.tracking_uri.startswith(("http://", "https://")):
        say(f"  open {result.tracking_uri} in a browser")
    else:
        uri = "" if o.tracking_uri is None else f" --tracking-uri {shlex.quote(o.tracking_uri)}"
        say(f"  open it with: distill-study ui{uri}")
