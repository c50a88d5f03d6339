"""Optimizer and learning-rate schedule for KD and DML, with each schedule's own parameters.

One-cycle samples its peak lr and the share of training spent rising to it; step decay its
milestones and gamma; cosine and linear decay their warm-up epochs (conditional parameters). The
method is a scientific axis too: seed 000's finding (DML with Adam at a constant 0.01 crashes,
AdamW one-cycle peaking at 0.005 does not) is one corner of this space, and its grid holds both
configs. DML runs as the paper's: 2 peers, no softening (tau 1); KD at alpha 0.9, tau 4.
"""

from __future__ import annotations

from typing import Any

from search_spaces._bases import kd_mnist5k

BASE = kd_mnist5k()
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.name", "schedule.name", "optim.name"]
NUISANCE = [
    "optim.lr",
    "schedule.max_lr",
    "schedule.pct_start",
    "schedule.milestones",
    "schedule.gamma",
    "schedule.warmup_epochs",
]
# Step-decay milestones as named patterns: Optuna's categorical choices must be scalars.
MILESTONES = {"half": [5], "two-thirds": [7], "thirds": [3, 6], "late": [6, 8]}
METHODS = {
    "kd": {"method.name": "kd"},
    "dml": {"method.name": "dml", "method.temperature": 1.0, "method.peers": 2},
}
GRID = {
    "method.name": list(METHODS),
    "optim.name": ["sgd", "adam", "adamw"],
    "schedule.name": ["constant", "step", "cosine", "onecycle", "linear"],
    "optim.lr": [0.01],
    "schedule.max_lr": [0.005],
    "schedule.pct_start": [0.1],
    "schedule.milestones": ["thirds"],
    "schedule.gamma": [0.1],
    "schedule.warmup_epochs": [1],
}


def space(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        **METHODS[trial.suggest_categorical("method.name", list(METHODS))],
        "optim.name": trial.suggest_categorical("optim.name", ["sgd", "adam", "adamw"]),
        "schedule.name": trial.suggest_categorical(
            "schedule.name", ["constant", "step", "cosine", "onecycle", "linear"]
        ),
        "optim.lr": trial.suggest_float("optim.lr", 1e-4, 0.2, log=True),
    }
    if out["schedule.name"] == "onecycle":
        out["schedule.max_lr"] = trial.suggest_float("schedule.max_lr", 1e-3, 0.2, log=True)
        out["schedule.pct_start"] = trial.suggest_float("schedule.pct_start", 0.05, 0.5)
    elif out["schedule.name"] == "step":
        out["schedule.milestones"] = MILESTONES[
            trial.suggest_categorical("schedule.milestones", list(MILESTONES))
        ]
        out["schedule.gamma"] = trial.suggest_float("schedule.gamma", 0.05, 0.5, log=True)
    elif out["schedule.name"] in ("cosine", "linear"):
        out["schedule.warmup_epochs"] = trial.suggest_int("schedule.warmup_epochs", 0, 3)
    return out
