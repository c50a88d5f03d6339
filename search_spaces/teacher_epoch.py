"""Which teacher checkpoint distils best: an early-stopped teacher, with KD and with ESKD (seed 003).

A ResNet-20 teacher trained once for 8 epochs, every epoch saved; the student (small CNN, MNIST-5k)
distils from the sampled epoch. ESKD also samples when its KD term stops.
"""

from __future__ import annotations

from typing import Any

from search_spaces._bases import kd_mnist5k

BASE = kd_mnist5k(**{"teacher.epochs": 8})
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
