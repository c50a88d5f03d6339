"""Study vs the plain Optuna loop: the quickstart space, 30 trials, both ways, each from a fresh store.

distill-study (``run_study``: Ray Tune, MLflow tracking, TPE + ASHA, one CPU per trial, a local
Ray it starts and stops itself) against the twenty lines a user would otherwise write: a
sequential ``optuna.create_study(sampler=TPESampler(seed), pruner=SuccessiveHalvingPruner(...))``
around ``fit_epochs`` with ``trial.report`` / ``trial.should_prune`` at the same rungs (grace
period epochs // 5, reduction factor 3), the same space, trials, epochs and configs, every thread
to one training, no Ray, no MLflow. Both wall times include loading the data and training the
teacher into their own new store; imports are excluded. Rows: the wall-time ratio; the best
validation accuracy of each (the study may be worse by at most one binomial standard error of the
validation set); the study's fixed costs (start to first result) and per-trial overhead.

python -m benchmarks.study_vs_optuna [--quick] [--threads N] [--trials N]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from benchmarks import common
from distill_core import fit_epochs, load_data, make_config
from studies import plan as plans
from studies.options import SAMPLER_SEED, resolve
from studies.runner import StudyOptions, run_study
from studies.search import GRACE_FRACTION
from studies.spaces import load_space

SPACE = "quickstart"
TARGET = ("ratio", "<=", 0.6)
QUICK = {"data.name": "digits", "teacher.model": "mlp", "teacher.epochs": 2, "run.epochs": 5}
QUICK_TRIALS = 8


def plain_optuna(options: StudyOptions, threads: int, store: Path) -> tuple[float, float, int]:
    """The user's own loop: (wall seconds, best val accuracy, epochs trained)."""
    t0 = time.perf_counter()
    space = load_space(options.space)
    settings = resolve(options, space)
    plan = plans.build(options, space, settings, str(store))
    objective, mode = space.objectives[0]
    epochs = plan.config({}, plan.seeds[0]).run.epochs
    data = load_data(plan.config({}, plan.seeds[0]).data)
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(
            seed=options.sampler_seed, n_startup_trials=min(10, max(1, settings.trials // 2))
        ),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, epochs // GRACE_FRACTION), reduction_factor=3
        ),
    )
    trained = 0

    def run(trial: optuna.Trial) -> float:
        nonlocal trained
        sampled = space.space(trial)
        cfg = make_config(plan.tree(sampled), {"run.seed": plan.seeds[0], "run.threads": threads})
        value = math.nan
        for report in fit_epochs(cfg, data=data):
            trained += 1
            value = report.metrics.get(objective, math.nan)
            trial.report(value, report.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(run, n_trials=settings.trials)
    return time.perf_counter() - t0, study.best_value, trained


def distill_study(options: StudyOptions) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, best val accuracy, timings) of ``run_study``, the timings read from its
    MLflow runs: a child run is created when its trial's first epoch is reported, the parent run
    ends when the last trial has."""
    t0, started = time.perf_counter(), time.time()
    said: list[tuple[float, str]] = []  # the study's own lines, when they were said
    result = run_study(options, say=lambda line: said.append((time.perf_counter() - t0, line)))
    wall = time.perf_counter() - t0
    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.experiment_id], max_results=1000)
    trials = [r for r in runs if r.info.run_id != result.parent_run_id]
    epochs, busy = 0, 0.0
    for r in trials:
        history = client.get_metric_history(r.info.run_id, "epoch_time")
        epochs += len(history)
        busy += sum(m.value for m in history)
    first = min(r.info.start_time for r in trials) / 1000 - started
    last = client.get_run(result.parent_run_id).info.end_time / 1000 - started
    slots = max(1, int((os.cpu_count() or 1) // options.cpus_per_trial))
    timings = {
        "trials": len(trials),
        "epochs": epochs,
        "first_report_s": first,
        # the trials' slots, from the first report to the last, less the epochs trained in them
        "per_trial_overhead_s": (slots * (last - first) - busy) / len(trials),
        "slots": slots,
        "teachers_trained": len(result.teachers_trained),
        "said_s": {line.split(":")[0][:60]: round(at, 2) for at, line in said},
        # teacher training is work both sides do (the plain loop trains the same teacher)
        "teacher_s": sum(
            float(line.split(" in ")[1].split()[0])
            for _, line in said
            if line.startswith("trained ")
        ),
    }
    return wall, result.best[0]["metrics"]["val_acc"], timings


def measure(*, quick: bool, threads: int, trials: int | None, work: Path) -> list[dict[str, Any]]:
    """Both sides in ``work``; returns the result rows."""
    changes = QUICK if quick else {}
    n = trials or (QUICK_TRIALS if quick else None)
    options = StudyOptions(
        space=SPACE,
        trials=n,
        sampler_seed=SAMPLER_SEED,
        storage=str(work / "studies"),
        tracking_uri=str(work / "mlruns"),
        name="study_vs_optuna",
        overrides=tuple(f"{k}={json.dumps(v)}" for k, v in changes.items()),
    )
    plain_s, plain_best, plain_epochs = plain_optuna(options, threads, work / "plain-teachers")
    study_s, study_best, timings = distill_study(options)
    val_n = len(load_data(plans.build(
        options, load_space(SPACE), resolve(options, load_space(SPACE)), str(work)
    ).config({}, 0).data).val_y)  # fmt: skip
    se = math.sqrt(plain_best * (1 - plain_best) / val_n)
    case = f"{timings['trials']} trials, {SPACE}{' (quick changes)' if quick else ''}"
    return [
        common.compare(
            f"wall time, {case}",
            "s",
            study_s,
            plain_s,
            value_label="distill-study, 1 CPU per trial",
            baseline_label=f"plain Optuna loop, {threads} threads",
            target=TARGET,
            study_epochs=timings["epochs"],
            plain_epochs=plain_epochs,
            study_said_s=timings["said_s"],
        ),
        common.compare(
            f"best val accuracy, {case}",
            "%",
            100 * study_best,
            100 * plain_best,
            value_label="distill-study",
            baseline_label="plain Optuna loop",
            target=("gap_se", "<=", 1.0),
            gap_se=(plain_best - study_best) / se if se > 0 else 0.0,
            val_n=val_n,
        ),
        common.compare(
            "fixed cost: study start to its first reported epoch, less training the teacher",
            "s",
            timings["first_report_s"] - timings["teacher_s"],
            10.0,
            value_label="distill-study",
            baseline_label="target",
            target=("value", "<=", 10.0),
            first_report_s=timings["first_report_s"],
            teacher_s=timings["teacher_s"],
        ),
        common.compare(
            "per-trial overhead: the trial slots' time minus the epochs trained",
            "s",
            timings["per_trial_overhead_s"],
            1.0,
            value_label=f"distill-study, mean of {timings['slots']} slots per trial",
            baseline_label="target",
            target=("value", "<=", 1.0),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument(
        "--trials", type=int, default=None, help="trials each way (default: the space's)"
    )
    args = p.parse_args(argv)
    start = common.start(args.threads)
    with tempfile.TemporaryDirectory() as work:
        rows = measure(quick=args.quick, threads=start.threads, trials=args.trials, work=Path(work))
    settings = {
        "threads": start.threads,
        "cpus_per_trial": 1,
        "space": SPACE,
        "quick_changes": QUICK,
    }
    common.write(args, "study_vs_optuna", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
