"""Which teacher checkpoint distils best: an early-stopped teacher, with KD and with ESKD (seed 003).

A ResNet-20 teacher trained once for 8 epochs, every epoch saved; the student (small CNN, MNIST-5k)
distils from the sampled epoch. ESKD also samples when its KD term stops.
"""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "cnn_small"},
    "teacher": {"model": "resnet20", "epochs": 8},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 10, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["teacher.epoch", "method.name"]
NUISANCE = ["method.kd_stop_epoch"]
GRID = {"teacher.epoch": [1, 2, 4, 8], "method.name": ["kd", "eskd"], "method.kd_stop_epoch": [5]}


def space(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "teacher.epoch": trial.suggest_categorical("teacher.epoch", list(range(1, 9))),
        "method.name": trial.suggest_categorical("method.name", ["kd", "eskd"]),
    }
    if out["method.name"] == "eskd":
        out["method.kd_stop_epoch"] = trial.suggest_int("method.kd_stop_epoch", 1, 9)
    return out
