"""Benchmark space (study_efficiency.py): 8 KD alphas, small CNN student and teacher on MNIST-5k."""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "cnn_small"},
    "teacher": {"model": "cnn_small", "epochs": 2, "optim": {"name": "adam", "lr": 0.01}},
    "method": {"name": "kd", "temperature": 4.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 30, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.alpha"]
NUISANCE: list[str] = []
GRID = {"method.alpha": [round(i / 7, 4) for i in range(8)]}
SAMPLER = "grid"
TRIALS = 8


def space(trial: Any) -> dict[str, Any]:
    return {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}
