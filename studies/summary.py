"""What a study prints when it ends: the best config with its metrics, where things are."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.options import StudyOptions
from studies.plan import labels
from tracking.schema import StudyStatus


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class StudyResult:
    """What ``run_study`` returns: the study's name, folder, MLflow ids and outcome."""

    name: str
    folder: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    status: StudyStatus
    trials: int
    seeds: int
    teachers_trained: list[str]
    best: list[dict[str, Any]]  # the best trial, or the Pareto front for nsga2
    best_config: Path | None


def say_summary(o: StudyOptions, result: StudyResult, say: Callable[[str], None]) -> None:
    if result.status == StudyStatus.INTERRUPTED:
        say(f"interrupted before all {result.trials} trials finished; continue with:")
        say(f"  {o.command()} --resume")
        return
    if not result.best:
        say(
            "no trial trained every epoch; see the failure reasons above (tag distill.failure_reason)"
        )
    n = result.seeds
    for i, b in enumerate(result.best):
        what = (
            "best trial" if len(result.best) == 1 else f"Pareto front {i + 1}/{len(result.best)}:"
        )
        say(f"{what} {b['trial_id']} ({f'mean of {n} seeds' if n > 1 else 'one seed'}):")
        say("  " + "  ".join(f"{k}={short(v)}" for k, v in labels(b["sampled"]).items()))
        m = b["metrics"]
        for split in ("val", "test"):
            keys = [
                f"{split}_{k}"
                for k in ("acc", "nll", "ece", "agreement", "kl")
                if f"{split}_{k}" in m
            ]
            say(f"  {split:<4} " + "  ".join(f"{k} {m[k]:.4f}" for k in keys))
    if result.best_config is not None:
        path = result.best_config
        say(f"config of the best: {path} (run it with distill-study train --config {path})")
    say(
        f"mlflow: experiment {o.name!r} at {result.tracking_uri} (parent run {result.parent_run_id})"
    )
    if result.tracking_uri.startswith(("http://", "https://")):
        say(f"  open {result.tracking_uri} in a browser")
    else:
        uri = "" if o.tracking_uri is None else f" --tracking-uri {shlex.quote(o.tracking_uri)}"
        say(f"  open it with: distill-study ui{uri}")
