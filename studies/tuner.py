"""The Ray Tune ``Tuner`` of a study: a new one, or the one restored from the study's folder."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from studies import search
from studies.options import Settings, StudyOptions
from studies.plan import Plan
from studies.spaces import SearchSpace
from studies.trial import train_trial


class SavedStateBarrier(tune.Callback):
    """Waits, at the end of each Tune step, until the upload of the experiment state (trial
    statuses, searcher state: what ``--resume`` restores) that the step launched has finished.

    Tune writes that state into a staging folder and uploads the folder in a background thread;
    when the next write starts while an upload still runs, the upload finds a temporary file
    renamed under it and logs ``Saving experiment state ... failed ... FileNotFoundError``, and a
    file can be copied half-written. Tune saves after every reported epoch here
    (``num_to_keep=1``), and once more after the last step, with no callback in between: waiting
    at the end of each step (its save comes before ``on_step_end``) leaves no upload running when
    the next save starts. The upload thread belongs to the driver's storage context, which Tune
    copies shallowly into every trial it creates (a study restored by ``--resume`` shares it with
    the trials created after the restore).
    """

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for syncer in {id(t.storage.syncer): t.storage.syncer for t in trials}.values():
            syncer.wait()


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
            callbacks=[tracker, SavedStateBarrier(), JsonLoggerCallback()],
            # num_to_keep=1 also makes Tune save the study's state after every checkpoint (every
            # reported epoch), so a killed driver loses at most the step it was in.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
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
