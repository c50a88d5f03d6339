"""``StudyTracker``: the Ray Tune callback, in the driver, that writes a study to MLflow.

One process writes the store (SQLite allows one writer): the tracker creates runs itself and queues
every other write (epochs, ends) to one writer thread, in order, off the trials' critical path;
the queue is flushed whenever Tune saves the study's state (``get_state``) and at the end, so that
what ``--resume`` restores is never ahead of MLflow. The MLflow store itself says which child
run belongs to which trial x seed (tags ``distill.trial_id`` and ``seed``): a resumed study finds
its runs there, in one search at setup, and continues them, so nothing depends on Tune having
saved this callback before the driver died. The layout is docs/tracking.md; what a user can rely
on after a crash is the README's "Fault tolerance".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune

from distill_core import UserError
from studies.plan import ARM, Plan, labels
from studies.trial import failure_reason
from tracking import schema
from tracking.client import RunLogger, last_step, params, search_runs
from tracking.schema import Role, Status

ABANDONED = (
    "the driver stopped before Ray Tune saved this trial, so its config was sampled again on resume"
)


def trial_error(trial: Any) -> str:
    """Why a Tune trial errored: the error Ray pickled into the trial's folder on the driver."""
    path = trial.pickled_error_file
    if not path or not Path(path).is_file():
        return "unknown error (see error.txt in the trial folder)"
    error = cloudpickle.loads(Path(path).read_bytes())
    cause = getattr(error, "cause", None)  # a RayTaskError wraps the trainable's exception
    return failure_reason(cause if isinstance(cause, BaseException) else error)


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StudyTracker(tune.Callback):
    """Writes each trial x seed of a study to MLflow as a child run of its parent run.

    On a resumed study, runs of trials that the restored Tune state does not know are closed as
    ``abandoned`` (tag ``distill.role=abandoned``, MLflow status FAILED, with the reason): their
    trials are sampled again, and analysis reads ``distill.role=trial`` only. A trial that Ray
    retries after a worker died keeps its runs; only its final failure closes them.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        plan: Plan,
        space: str,
        axes: list[str],
        objective: str,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.plan = plan
        self.space = space
        self.axes = axes
        self.objective = objective
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self._total = 0
        self._runs: dict[str, dict[str, str]] = {}  # trial id -> seed -> MLflow run id
        self._ended: set[str] = set()  # runs with a final status
        self._nodes: dict[str, str] = {}  # trial id -> the Ray node that ran its latest epoch
        self._reopen: set[str] = set()  # runs closed as interrupted, reopened at their next epoch
        self._steps: dict[str, int] = {}  # run id -> last epoch logged
        self._writer: ThreadPoolExecutor | None = None  # the one thread that writes to MLflow
        self._writes: list[Future[None]] = []  # queued writes, not yet known done
        self._checked = False  # runs of trials Tune does not know are closed at the first step

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the callback with the study: its settings; the runs are read from MLflow."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self._client = MlflowClient(self.tracking_uri)
        self._writer = ThreadPoolExecutor(1, "mlflow-writer")
        self._total = total_num_samples or 0
        children = schema.children(self.parent_run_id)
        for run in search_runs(self._client, [self.experiment_id], children):
            tags, run_id = run.data.tags, run.info.run_id
            self._runs.setdefault(tags[schema.TRIAL_ID], {})[tags[schema.SEED]] = run_id
            status = tags.get(schema.STATUS, Status.RUNNING)
            if status == Status.INTERRUPTED:
                self._reopen.add(run_id)
            elif status != Status.RUNNING:
                self._ended.add(run_id)

    def _write(self, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Queue one MLflow write (they run in order, in the writer thread)."""
        assert self._writer is not None, "setup() starts the writer"
        self._writes.append(self._writer.submit(write, *args, **kwargs))

    def _flush(self) -> None:
        """Wait until every queued write is done (raising the first error of one)."""
        writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def get_state(self) -> None:
        """Tune calls this as it saves the study's state: MLflow is flushed first, so that it is
        never behind that state. The tracker keeps no state of its own (see ``setup``)."""
        self._flush()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._checked:
            return
        self._checked = True
        known = {t.trial_id for t in trials}
        for trial_id in set(self._runs) - known:
            for run_id in self._runs.pop(trial_id).values():
                self._write(RunLogger(self._client, run_id).abandon, ABANDONED)

    def _run(self, trial: Any, seed: int) -> str:
        seeds = self._runs.setdefault(trial.trial_id, {})
        if str(seed) not in seeds:
            tags = {
                schema.PARENT: self.parent_run_id,
                schema.ROLE: Role.TRIAL,
                schema.TRIAL_ID: trial.trial_id,
                schema.GROUP: trial.trial_id,
                schema.AXES: ",".join(a for a in self.axes if a in trial.config),
                schema.SPACE_NAME: self.space,
            }
            if ARM in trial.config:
                tags[schema.ARM] = str(trial.config[ARM])
            name = f"{trial.trial_id}-s{seed}"
            try:
                cfg = self.plan.config(trial.config, seed)
            except UserError:  # a sampled config the trainer refuses: its failed run still shows
                tags.update({schema.SEED: str(seed), schema.STATUS: Status.RUNNING})
                run_id = self._client.create_run(
                    self.experiment_id, tags=tags, run_name=name
                ).info.run_id
                self._client.log_batch(run_id, params=params(trial.config))
            else:
                run_id = RunLogger.start(
                    self._client, self.experiment_id, cfg, run_name=name, tags=tags
                ).run_id
            seeds[str(seed)] = run_id
            self._steps[run_id] = 0
        run_id = seeds[str(seed)]
        if run_id in self._reopen:
            self._reopen.discard(run_id)
            RunLogger(self._client, run_id).reopen()
        return run_id

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        node = result.get("node")
        moved = node is not None and self._nodes.get(trial.trial_id) != node
        if moved:
            self._nodes[trial.trial_id] = node
        for seed, got in result.get("seeds", {}).items():
            run_id = self._run(trial, int(seed))
            if run_id in self._ended:
                continue
            if moved:
                self._write(self._client.set_tag, run_id, schema.NODE, node)
            logger = RunLogger(self._client, run_id)
            if "metrics" in got:
                if run_id not in self._steps:
                    self._steps[run_id] = last_step(self._client, run_id)
                if got["epoch"] > self._steps[run_id]:  # a restored trial replays no epoch
                    self._write(logger.log_epoch, got["epoch"], got["metrics"])
                    self._steps[run_id] = got["epoch"]
            if "status" in got:
                self._write(
                    logger.finish,
                    got["status"],
                    got["final"],
                    step=got["epochs"],
                    reason=got.get("reason"),
                )
                self._ended.add(run_id)

    def _close(self, trial: Any, status: Status, reason: str | None = None) -> None:
        for run_id in self._runs.get(trial.trial_id, {}).values():
            if run_id not in self._ended:
                self._write(RunLogger(self._client, run_id).finish, status, reason=reason)
                self._ended.add(run_id)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Trials that return end every run themselves; what is still open was stopped early.
        self._close(trial, Status.EARLY_STOPPED)
        self._say(trials, trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial whose worker failed and that Ray retries: its runs stay open and continue."""
        for run_id in self._runs.get(trial.trial_id, {}).values():
            self._write(self._client.set_tag, run_id, schema.RETRIES, str(trial.num_failures))
        print(
            f"trial {trial.trial_id}: {trial_error(trial)}; retrying from its last checkpoint "
            f"(retry {trial.num_failures} of {trial.max_failures})",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for seed in self.plan.seeds:  # also a trial that failed before its first report
            self._run(trial, seed)
        self._close(trial, Status.FAILED, trial_error(trial))
        self._say(trials, trial, failed=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """An interrupted study leaves no run RUNNING: unfinished ones are ``interrupted`` (KILLED).

        Only runs of unfinished trials are still open here (Tune marks the trials it stops at
        the end TERMINATED without telling callbacks, so their status cannot say it).
        """
        for seeds in self._runs.values():
            for run_id in set(seeds.values()) - self._ended - self._reopen:
                self._write(RunLogger(self._client, run_id).finish, Status.INTERRUPTED)
                self._reopen.add(run_id)
        self._flush()
        if self._writer is not None:
            self._writer.shutdown()

    def _say(self, trials: list[Any], trial: Any, failed: bool = False) -> None:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + 1
        last = trial.last_result or {}
        sampled = "  ".join(f"{k}={short(v)}" for k, v in labels(trial.config).items())
        value = last.get(self.objective, math.nan)
        failures = [s for s in last.get("seeds", {}).values() if s.get("status") == Status.FAILED]
        if failed:
            attempts = f", after {trial.num_failures} attempts" if trial.num_failures > 1 else ""
            outcome = f"failed{attempts}: {trial_error(trial)} (error.txt in its trial folder)"
        elif failures:
            outcome = f"failed after {failures[0]['epochs']} epochs: {failures[0]['reason']}"
        elif last.get("finished") and math.isnan(value):
            outcome = f"diverged at epoch {last.get('epoch', 0)} (non-finite loss)"
        else:
            ended = Status.COMPLETED if last.get("finished") else Status.EARLY_STOPPED
            outcome = f"{ended} at epoch {last.get('epoch', 0)}: {self.objective} {value:.4f}"
        print(f"trial {done}/{self._total} {trial.trial_id} {outcome}  [{sampled}]", flush=True)
