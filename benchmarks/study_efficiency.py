"""Study efficiency: an 8-trial Ray Tune study vs the same 8 ``fit()`` calls back to back.

The study (``run_study``: grid sampler, no early stopping, ``--cpus-per-trial 1``, MLflow
tracking) runs every config of ``spaces/kd_alpha8.py`` on a local Ray it starts itself; the
baseline trains the same configs one after another in this process with all threads. Both train
their teacher once (into separate temporary stores) and load the data once; the study's wall time
includes starting and stopping Ray. Also counted: teacher trainings, which must be exactly one per
distinct teacher config.

python -m benchmarks.study_efficiency [--quick] [--threads N]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from benchmarks import common
from distill_core import Config, TeacherStore, fit, load_data, make_config, required_teachers
from distill_core.config import apply_overrides
from distill_core.teachers import store_key
from studies.runner import StudyOptions, run_study
from studies.spaces import load_space

SPACE = Path(__file__).resolve().parent / "spaces" / "kd_alpha8.py"
TARGET = ("ratio", "<=", 0.75)
QUICK = {
    "data.name": "digits",
    "model.name": "mlp",
    "teacher.model": "mlp",
    "teacher.epochs": 1,
    "run.epochs": 1,
}


def sequential(configs: list[Config]) -> float:
    """Wall seconds of ``fit`` over ``configs`` in a row, data loaded once."""
    t0 = time.perf_counter()
    data = load_data(configs[0].data)
    for cfg in configs:
        fit(cfg, data=data)
    return time.perf_counter() - t0


def measure(*, quick: bool, threads: int, work: Path) -> list[dict[str, Any]]:
    """Both sides in ``work`` (stores, MLflow); returns the result rows."""
    space = load_space(str(SPACE))
    changes = QUICK if quick else {}
    points = list(space.grid_points())
    fit_store = work / "fit-teachers"
    run = {"run.device": "cpu", "run.threads": threads, "run.teacher_store": str(fit_store)}
    configs = [make_config(apply_overrides(space.base, changes), {**run, **p}) for p in points]
    distinct = {store_key(r.spec) for cfg in configs for r in required_teachers(cfg)}

    fit_s = sequential(configs)
    options = StudyOptions(
        space=str(SPACE),
        sampler="grid",
        scheduler="none",
        trials=len(points),
        cpus_per_trial=1,
        storage=str(work / "studies"),
        tracking_uri=str(work / "mlruns"),
        name="study_efficiency",
        overrides=tuple(f"{k}={json.dumps(v)}" for k, v in changes.items()),
    )
    t0 = time.perf_counter()
    result = run_study(options)
    study_s = time.perf_counter() - t0

    children = MlflowClient(result.tracking_uri).search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    trained = sorted(float(r.data.params["method.alpha"]) for r in children)
    if trained != sorted(p["method.alpha"] for p in points):
        raise RuntimeError(f"the study trained alphas {trained}, not the grid's {points}")
    study_teachers = len(TeacherStore(work / "studies" / "teachers").entries())
    fit_teachers = len(TeacherStore(fit_store).entries())
    return [
        common.compare(
            f"{len(points)} trials, {configs[0].model.name} on {configs[0].data.name}, "
            f"{configs[0].run.epochs} epochs",
            "s",
            study_s,
            fit_s,
            value_label="study, 1 CPU per trial",
            baseline_label=f"fit() in a row, {threads} threads",
            target=TARGET,
            trials=len(children),
        ),
        common.compare(
            "teacher trainings per distinct teacher config",
            "teachers",
            study_teachers,
            len(distinct),
            value_label="study's store",
            baseline_label="distinct configs",
            target=("ratio", "==", 1),
            fit_teachers=fit_teachers,
            study_reported_trained=len(result.teachers_trained),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    start = common.start(args.threads)
    threads = start.threads
    with tempfile.TemporaryDirectory() as work:
        rows = measure(quick=args.quick, threads=threads, work=Path(work))
    settings = {
        "threads": threads,
        "cpus_per_trial": 1,
        "space": SPACE.name,
        "quick_changes": QUICK,
    }
    common.write(args, "study_efficiency", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
