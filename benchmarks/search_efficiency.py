"""Search efficiency: TPE + ASHA vs the exhaustive grid on KD alpha x temperature (5 x 5).

For each of 3 study seeds (``run.seed``, the seed of every trial's training, and the sampler's
``--sampler-seed``): the grid trains all
25 configs of ``spaces/alpha_temperature.py`` for every epoch (``fit`` in this process, one thread
as a trial has, so its numbers are those a grid study would report); a Ray Tune study with Optuna's
TPE and ASHA (``run_study``, 2 trials at a time) samples the same values. Targets, as means over
the seeds: TPE + ASHA's best val accuracy within 0.5 points of the grid's best, using at most 1/3
of the grid's epochs. The study's epochs are counted from MLflow: each trial's last logged epoch.

python -m benchmarks.search_efficiency [--quick] [--threads N]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
from mlflow.tracking import MlflowClient

from benchmarks import common
from distill_core import fit, load_data, make_config
from distill_core.config import apply_overrides
from studies.runner import StudyOptions, StudyResult, run_study
from studies.spaces import load_space

SPACE = Path(__file__).resolve().parent / "spaces" / "alpha_temperature.py"
TRIALS, SEEDS = 12, 3
QUICK = {"data.name": "digits", "run.epochs": 2, "teacher.model": "mlp", "teacher.epochs": 1}


def grid(configs: dict[tuple[float, ...], Any]) -> dict[tuple[float, ...], float]:
    """Final val accuracy of every grid config, trained for all its epochs."""
    data = load_data(next(iter(configs.values())).data)
    return {point: fit(cfg, data=data).final["val_acc"] for point, cfg in configs.items()}


def study_epochs(result: StudyResult) -> list[int]:
    """Epochs each trial of a study trained: its last logged ``val_acc`` step."""
    client = MlflowClient(result.tracking_uri)
    children = client.search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    return [
        max((m.step for m in client.get_metric_history(r.info.run_id, "val_acc")), default=0)
        for r in children
    ]


def one_seed(seed: int, *, quick: bool, work: Path) -> dict[str, Any]:
    space = load_space(str(SPACE))
    keys = list(space.grid)
    changes = {
        **(QUICK if quick else {}),
        "run.seed": seed,
        "run.teacher_store": str(work / "teachers"),
    }
    base = apply_overrides(space.base, changes)
    # One thread and the CPU, as a trial with --cpus-per-trial 1 has: the same numbers.
    run = {"run.device": "cpu", "run.threads": 1}
    configs = {
        tuple(p[k] for k in keys): make_config(base, {**run, **p}) for p in space.grid_points()
    }
    grid_acc = grid(configs)
    trials = 4 if quick else TRIALS
    result = run_study(
        StudyOptions(
            space=str(SPACE),
            sampler="tpe",
            sampler_seed=seed,
            scheduler="asha",
            trials=trials,
            cpus_per_trial=1,
            storage=str(work / "studies"),
            tracking_uri=str(work / "mlruns"),
            name=f"search-seed{seed}",
            overrides=tuple(f"{k}={json.dumps(v)}" for k, v in changes.items()),
        )
    )
    best = result.best[0]
    epochs = study_epochs(result)
    return {
        "seed": seed,
        "grid_best_val_acc": max(grid_acc.values()),
        "grid_epochs": len(grid_acc) * next(iter(configs.values())).run.epochs,
        "tpe_best_val_acc": best["metrics"]["val_acc"],
        "tpe_best": best["sampled"],
        "grid_val_acc_of_tpe_best": grid_acc[tuple(best["sampled"][k] for k in keys)],
        "tpe_epochs": sum(epochs),
        "tpe_trial_epochs": epochs,
    }


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    start = common.start(args.threads)
    threads = start.threads
    seeds = range(1 if args.quick else SEEDS)
    # One local Ray for every study (run_study reuses it) unless one is up already.
    ours = not ray.is_initialized()
    if ours:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as work:
            per_seed = [one_seed(s, quick=args.quick, work=Path(work)) for s in seeds]
    finally:
        if ours:
            ray.shutdown()

    def mean(key: str) -> float:
        return float(np.mean([s[key] for s in per_seed]))

    gap = 100 * float(np.mean([s["grid_best_val_acc"] - s["tpe_best_val_acc"] for s in per_seed]))
    n = f"mean of {len(per_seed)} seed{'s' * (len(per_seed) > 1)}"
    rows = [
        common.compare(
            f"best val accuracy ({n})",
            "%",
            100 * mean("tpe_best_val_acc"),
            100 * mean("grid_best_val_acc"),
            value_label="TPE + ASHA",
            baseline_label="grid",
            target=("gap_points", "<=", 0.5),
            gap_points=gap,
            seeds=per_seed,
        ),
        common.compare(
            f"epochs trained ({n})",
            "epochs",
            mean("tpe_epochs"),
            mean("grid_epochs"),
            value_label="TPE + ASHA",
            baseline_label="grid",
            target=("ratio", "<=", 1 / 3),
        ),
    ]
    settings = {
        "threads": threads,
        "trials": 4 if args.quick else TRIALS,
        "space": SPACE.name,
        "quick_changes": QUICK,
    }
    common.write(args, "search_efficiency", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
