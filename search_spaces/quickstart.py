"""Quickstart (`make study`): KD alpha x temperature on MNIST-5k, TPE with ASHA early stopping.

A small-CNN teacher (trained once with Adam, shared by every trial) distilled into an MLP: 30
trials of up to 20 epochs, a few minutes on 2 CPU cores. The learning rate is a nuisance parameter.
"""

from __future__ import annotations

from typing import Any

PRESET = "make study: KD alpha x temperature on MNIST-5k, a few minutes on 2 CPU cores"
BASE: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "mlp"},
    "teacher": {"model": "cnn_small", "epochs": 10, "optim": {"name": "adam", "lr": 0.01}},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 20, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["method.alpha", "method.temperature"]
NUISANCE = ["optim.lr"]
GRID = {"method.alpha": [0.0, 0.5, 0.9], "method.temperature": [1.0, 4.0, 16.0], "optim.lr": [0.05]}
TRIALS = 30


def space(trial: Any) -> dict[str, Any]:
    return {
        "method.alpha": trial.suggest_float("method.alpha", 0.0, 1.0),
        "method.temperature": trial.suggest_float("method.temperature", 1.0, 20.0, log=True),
        "optim.lr": trial.suggest_float("optim.lr", 0.01, 0.3, log=True),
    }
