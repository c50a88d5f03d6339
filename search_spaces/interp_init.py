"""Interpolated initialisation (seed 004): theta_s = lambda * theta_t + (1 - lambda) * theta_random.

Self-distillation of a small CNN on MNIST-5k with the KD term alone (alpha 1), judged on fidelity:
top-1 agreement with the teacher on the validation split. Expect agreement to stay low for small
lambda and to jump near lambda ~ 0.375.
"""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "cnn_small"},
    "teacher": {"model": "cnn_small", "epochs": 5},
    "method": {"name": "kd", "alpha": 1.0, "temperature": 4.0},
    "init": {"interp_lambda": 0.5},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 10, "batch_size": 128},
}
OBJECTIVE, MODE = "val_agreement", "max"
OBJECTIVES = [("val_agreement", "max"), ("val_acc", "max")]
SCIENTIFIC = ["init.interp_lambda"]
NUISANCE = ["optim.lr"]
GRID = {"init.interp_lambda": [0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0], "optim.lr": [0.05]}


def space(trial: Any) -> dict[str, Any]:
    return {
        "init.interp_lambda": trial.suggest_float("init.interp_lambda", 0.0, 1.0),
        "optim.lr": trial.suggest_float("optim.lr", 0.005, 0.2, log=True),
    }
