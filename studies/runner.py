"""The study runner: Ray Tune over ``distill_core.fit_epochs``, sampled by Optuna, recorded in MLflow.

``run_study(options)`` composes the parts, in order:

1. ``prepare``: resolve the options against the space (``options``), build and check the config of
   every grid point (``plan``), find the study to resume or a free name (``layout``): bad input
   fails with one ``UserError`` before anything is created;
2. load the data set once, while Ray starts, and put it in Ray's object store (``cluster``,
   ``trial.SharedData``);
3. train every teacher the space can ask for, once, in parallel Ray tasks (``teachers``);
4. ``Tuner.fit`` (``tuner``): each trial runs its seeds in lock-step (``trial``); the driver-side
   ``StudyTracker`` (``tracker``) is the only writer of MLflow;
5. select the best trial on validation (``select``) and print it (``summary``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import ray

from analysis.quiet import quiet_optuna
from distill_core import TeacherStore, UserError
from distill_core.storage import check_writable
from studies import cluster, layout, plan, search, select, teachers, tuner
from studies.layout import Layout
from studies.options import SAMPLER_SEED, Settings, StudyOptions, resolve
from studies.plan import Plan
from studies.spaces import SearchSpace, load_space
from studies.summary import StudyResult, say_summary
from studies.tracker import StudyTracker
from studies.trial import SharedData
from tracking import schema
from tracking.client import get_or_create_experiment, open_client, set_study_status, start_study_run
from tracking.schema import StudyStatus

__all__ = ["StudyOptions", "StudyResult", "run_study"]


@dataclass(frozen=True)
class Study:
    """A study's resolved settings and where it lives."""

    options: StudyOptions  # as recorded: a resumed study's own options
    space: SearchSpace
    settings: Settings
    plan: Plan
    layout: Layout
    tracking_uri: str
    saved: dict[str, Any]  # the study file of a resumed study, else {}

    @property
    def epochs(self) -> int:
        return self.plan.config({}, self.plan.seeds[0]).run.epochs


def run_study(options: StudyOptions, say: Callable[[str], None] = print) -> StudyResult:
    """Run (or ``--resume``) a study; see the module docstring for the steps.

    Raises:
        UserError: bad input, before any trial starts.
    """
    study, client = prepare(options)
    o = study.options
    if options.resume and _ignored(options):
        say("note: --resume ignores the other options given (the study keeps its own)")
    cfg = study.plan.config({}, study.plan.seeds[0])
    with cluster.connected(o, meanwhile=lambda: SharedData.load(cfg.data)) as data:
        cluster.check_resources(o)
        with cluster.study_process(o):
            experiment_id, parent_run_id = _start_tracking(study, client, say)
            seeds = f", {len(study.plan.seeds)} seeds each" if len(study.plan.seeds) > 1 else ""
            s = study.settings
            say(
                f"study {o.name}: {study.space.name}, {s.trials} trials{seeds}, sampler {s.sampler}, "
                f"scheduler {s.scheduler}; folder {study.layout.folder}"
            )
            ref = ray.put(data)
            store = TeacherStore(study.layout.teacher_store)
            resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}
            trained = teachers.train_missing(study.space, study.plan, store, ref, resources, say)
            grid = _tuner(study, ref, experiment_id, parent_run_id).fit()
    finished = grid.num_terminated + grid.num_errors
    status = StudyStatus.COMPLETED if finished >= study.settings.trials else StudyStatus.INTERRUPTED
    set_study_status(client, parent_run_id, status)
    best = []
    if status == StudyStatus.COMPLETED:
        best = select.best(grid, search.objectives(study.space, study.settings))
    best_config = None
    if best:
        best_config = study.layout.best_config
        best_config.write_text(study.plan.config(best[0]["sampled"], study.plan.seeds[0]).to_yaml())
    result = StudyResult(
        str(o.name), study.layout.folder, study.tracking_uri, experiment_id, parent_run_id, status,
        study.settings.trials, len(study.plan.seeds), trained, best, best_config,
    )  # fmt: skip
    say_summary(o, result, say)
    return result


def prepare(o: StudyOptions) -> tuple[Study, Any]:
    """Resolve and check everything; find the study to resume, or a free name for a new one.

    Returns the study and an MLflow client of its tracking store. Creates nothing but the
    tracking store of a new study (after every other check passed).
    """
    storage = layout.storage_root(o.storage)
    space = load_space(o.space)
    saved: dict[str, Any] = {}
    if o.resume:
        name = o.name or layout.latest_name(space.name, storage)
        where = Layout(storage, name or space.name)
        if not where.exists():
            raise UserError(
                f"no study to resume at {where.folder}; start it without --resume "
                "(or pass the --name and --storage it ran with)"
            )
        saved = where.read_record()
        kept = {**saved["options"], "overrides": tuple(saved["options"]["overrides"])}
        options = replace(StudyOptions(**kept), resume=True, address=o.address)
        settings = _checked(options, space)
        client = open_client(saved["tracking_uri"])
    else:
        settings = _checked(o, space)  # before the MLflow store is opened (or created)
        client = open_client(o.tracking_uri)
        if o.name and ((storage / o.name).exists() or client.get_experiment_by_name(o.name)):
            raise UserError(
                f"a study named {o.name!r} exists (in {storage} or the MLflow store); continue it "
                "with --resume, or choose another --name"
            )
        name = o.name or layout.free_name(
            space.name, storage, lambda n: client.get_experiment_by_name(n) is not None
        )
        # a user module by its absolute path, so that --resume finds it from anywhere
        options = replace(o, space=space.path or space.name, name=name, storage=str(storage))
        where = Layout(storage, name)
    study_plan = plan.build(options, space, settings, str(where.teacher_store))
    plan.check(space, study_plan, *_points(space))
    study = Study(options, space, settings, study_plan, where, client.tracking_uri, saved)
    return study, client


def _ignored(o: StudyOptions) -> bool:
    """Whether options other than those that find the study were given with ``--resume``."""
    where = {"space": "", "name": None, "storage": "", "address": None, "tracking_uri": None}
    return replace(o, **where) != StudyOptions(resume=True, **where)


def _checked(o: StudyOptions, space: SearchSpace) -> Settings:
    settings = resolve(o, space)
    check_writable(o.storage, "pass a writable --storage folder")  # before any trial starts
    if o.address:  # here, before data or Ray start: ray.init retries an unreachable head for long
        cluster.check_address(o.address)
    return settings


def _points(space: SearchSpace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every baseline and grid point (the arms); the base config and one randomly sampled point."""
    import optuna

    try:
        with quiet_optuna():
            trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(SAMPLER_SEED)).ask()
            return list(space.grid_points()), [{}, space.space(trial)]
    except Exception as exc:  # the user's module: any error is theirs to fix
        raise UserError(
            f"search space {space.name}: space(trial) failed ({type(exc).__name__}: {exc}); fix the "
            "module (GRID must give a value to every parameter space() asks for)"
        ) from None


def _start_tracking(study: Study, client: Any, say: Callable[[str], None]) -> tuple[str, str]:
    """The MLflow experiment and parent run: reopened for a resumed study, else created (with the
    study file that ``--resume`` reads)."""
    o, space, settings = study.options, study.space, study.settings
    if o.resume:
        say(f"resuming study {o.name} from {study.layout.folder} with its saved settings")
        set_study_status(client, study.saved["parent_run_id"], StudyStatus.RUNNING)
        return study.saved["experiment_id"], study.saved["parent_run_id"]
    objective, mode = space.objectives[0]
    exp_tags = {schema.SPACE: space.name, schema.OBJECTIVE: objective, schema.MODE: mode}
    experiment_id = get_or_create_experiment(client, str(o.name), exp_tags)
    tags = {
        **exp_tags,
        schema.OBJECTIVES: ",".join(m for m, _ in search.objectives(space, settings)),
        schema.SCIENTIFIC: ",".join(space.scientific),
        schema.NUISANCE: ",".join(space.nuisance),
        schema.AXES: ",".join(space.axes),
        schema.COMMAND: o.command(),
    }
    values = {
        "study.space": space.name, "study.sampler": settings.sampler,
        "study.sampler_seed": o.sampler_seed, "study.scheduler": settings.scheduler,
        "study.trials": settings.trials, "study.seeds": settings.seeds, "study.smoke_test": o.smoke_test,
        "study.cpus_per_trial": o.cpus_per_trial, "study.gpus_per_trial": o.gpus_per_trial,
        "study.max_failures": o.max_failures,
    }  # fmt: skip
    parent_run_id = start_study_run(client, experiment_id, str(o.name), tags, values)
    study.layout.write_record(
        {
            "options": asdict(o),
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
            "tracking_uri": study.tracking_uri,
        }
    )
    return experiment_id, parent_run_id


def _tuner(study: Study, data: Any, experiment_id: str, parent_run_id: str) -> Any:
    """A Tuner for a new study, or the restored one of a resumed study (a study killed before Tune
    saved anything, e.g. while teachers trained, starts its trials anew)."""
    o = study.options
    storage, filesystem = study.layout.tune_storage()
    folder = f"{storage}/{study.layout.name}"
    if o.resume and tuner.tune.Tuner.can_restore(folder, storage_filesystem=filesystem):
        return tuner.restored(folder, study.plan, data, o, filesystem)
    tracker = StudyTracker(
        tracking_uri=study.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        plan=study.plan,
        space=study.space.name,
        axes=study.space.axes,
        objective=study.space.objectives[0][0],
    )
    return tuner.new(
        study.space, study.settings, study.plan, o, data,
        folder_name=study.layout.name, storage=storage, filesystem=filesystem,
        epochs=study.epochs, tracker=tracker,
    )  # fmt: skip
