"""Benchmark space (search_efficiency.py): KD alpha x temperature, a 5 x 5 grid, MLP student on MNIST-5k.

TPE samples the grid's own values, so that every config it tries is one the grid also trains.
A 20% validation split (800 images) keeps one image at 0.125 points of accuracy.
"""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "data": {"name": "mnist5k", "val_fraction": 0.2},
    "model": {"name": "mlp"},
    "teacher": {"model": "cnn_small", "epochs": 5, "optim": {"name": "adam", "lr": 0.01}},
    "method": {"name": "kd"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 10, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.alpha", "method.temperature"]
NUISANCE: list[str] = []
GRID = {
    "method.alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
    "method.temperature": [1.0, 2.0, 4.0, 8.0, 16.0],
}


def space(trial: Any) -> dict[str, Any]:
    return {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}
