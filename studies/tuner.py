"""The Ray Tune ``Tuner`` of a study: a new one, or the one restored from the study's folder."""

from __future__ import annotations

import inspect
from typing import Any

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from studies import search
from studies.options import Settings, StudyOptions
from studies.plan import Plan
from studies.spaces import SearchSpace
from studies.trial import train_trial


class SavedState(tune.Callback):
    """Keeps what ``--resume`` restores consistent with the trial checkpoints on storage.

    Tune saves the study's state (trial statuses and their latest checkpoints, the searcher) into a
    staging folder every ``cluster.STATE_PERIOD_S`` seconds, between two steps of its loop, and
    uploads the folder in a background thread. Two things go wrong with Tune's own settings, and this callback
    does them instead:

    - **An upload running into the next save**: the upload then finds a temporary file renamed
      under it and logs ``Saving experiment state ... failed ... FileNotFoundError``, and a file can
      be copied half-written. Waiting at the end of each step (a step saves before
      ``on_step_end``; Tune waits for its very last upload itself) leaves none running.
    - **Old checkpoints deleted too early**: with ``CheckpointConfig(num_to_keep=k)`` Tune deletes a
      trial's older checkpoint as soon as it registers a newer one, before the state that refers to
      the newer one is uploaded; a driver killed in between leaves a state whose checkpoint is gone,
      and the resumed trial fails ("Could not recover from checkpoint as it does not exist on
      storage anymore"). So Tune keeps every checkpoint (``num_to_keep=None``), and this callback
      deletes a trial's older checkpoints once a state that refers to a newer one is uploaded.
      What stays at the end: each trial's last checkpoint and those of its last few seconds.

    The upload thread belongs to the storage context of Tune's controller, which no public API
    hands to a callback (the trials' storage contexts are deep copies, each with an idle upload
    thread of its own): ``setup``, which the controller calls, finds it on the call stack.
    """

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled with the Tuner; what it holds belongs to one run of the controller

    def setup(self, **info: Any) -> None:
        frame = inspect.currentframe()
        while frame is not None and not hasattr(frame.f_locals.get("self"), "_checkpoint_manager"):
            frame = frame.f_back
        if frame is None:
            raise RuntimeError(
                f"Ray {ray.__version__}: Tune's controller is not on the stack of Callback.setup "
                "(studies/tuner.py SavedState was written against Ray 2.60); install that"
            )
        self._syncer = frame.f_locals["self"]._storage.syncer
        self._kept: dict[str, int] = {}  # trial id -> its oldest checkpoint kept
        del frame

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._syncer._sync_process is None:  # this step saved nothing
            return
        saved = {t: t.checkpoint for t in trials if t.checkpoint is not None}  # what it refers to
        try:
            self._syncer.wait()
        except Exception:  # Tune logs it at its next save; the older state still holds
            return
        for trial, checkpoint in saved.items():
            self._delete_before(trial, checkpoint)

    def _delete_before(self, trial: Any, checkpoint: tune.Checkpoint) -> None:
        """Delete the trial's checkpoints older than ``checkpoint`` (their names count up)."""
        newest = index(checkpoint.path)
        if self._kept.get(trial.trial_id) == newest:
            return
        fs = checkpoint.filesystem
        for found in fs.get_file_info(pyarrow.fs.FileSelector(trial.storage.trial_fs_path)):
            if found.type == pyarrow.fs.FileType.Directory and 0 <= index(found.path) < newest:
                fs.delete_dir(found.path)
        self._kept[trial.trial_id] = newest


def index(path: str) -> int:
    """The number of a Tune checkpoint folder (``checkpoint_000007``: 7); -1 for other paths."""
    name = path.rstrip("/").rpartition("/")[2]
    number = name.removeprefix("checkpoint_")
    return int(number) if name.startswith("checkpoint_") and number.isdigit() else -1


def trainable(plan: Plan, data: Any, o: StudyOptions) -> Any:
    """``train_trial`` with the plan and the data's object reference bound, and its resources."""
    bound = tune.with_parameters(train_trial, plan=plan, data=data)
    return tune.with_resources(bound, {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial})


def new(
    space: SearchSpace,
    settings: Settings,
    plan: Plan,
    o: StudyOptions,
    data: Any,
    *,
    folder_name: str,
    storage: str,
    filesystem: Any,
    epochs: int,
    tracker: tune.Callback,
) -> tune.Tuner:
    """A Tuner for a new study, kept under ``storage`` (a path of the pyarrow ``filesystem``, or a
    local folder when it is None)."""
    return tune.Tuner(
        trainable(plan, data, o),
        tune_config=tune.TuneConfig(
            search_alg=search.searcher(
                space, settings, seed=o.sampler_seed, max_concurrent=o.max_concurrent
            ),
            scheduler=search.scheduler(space, settings, epochs),
            num_samples=settings.trials,
            trial_dirname_creator=lambda trial: trial.trial_id,
            reuse_actors=True,  # a trial's process is reused: no torch import per trial
        ),
        run_config=tune.RunConfig(
            name=folder_name,
            storage_path=storage,
            storage_filesystem=filesystem,
            # Tune's other default loggers (CSV, TensorBoard) are off (cluster.study_process):
            # MLflow has every metric; result.json stays, a trial's record in its folder.
            callbacks=[tracker, SavedState(), JsonLoggerCallback()],
            # every checkpoint is kept until a saved state no longer needs it (SavedState)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=o.max_failures),
            verbose=0,
        ),
    )


def restored(path: str, plan: Plan, data: Any, o: StudyOptions, filesystem: Any) -> tune.Tuner:
    """The Tuner of an interrupted study, with its unfinished trials to continue."""
    return tune.Tuner.restore(
        path,
        trainable=trainable(plan, data, o),
        resume_unfinished=True,
        storage_filesystem=filesystem,
    )
