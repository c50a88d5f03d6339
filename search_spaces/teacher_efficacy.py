"""Teacher checkpoint epoch x KD / ESKD / TAKD (seed 003: a bigger, later teacher is not always better).

Full scale: CIFAR-10, ResNet-110 teacher trained for 200 epochs (checkpoints kept at 25, 50, 100,
200), ResNet-56 teacher assistant for TAKD (distilled from the chosen teacher checkpoint), ResNet-20
student, SGD lr 0.1 with step decays. ESKD stops the KD term after 50 of the student's 200 epochs.

    distill-study run teacher_efficacy --data-dir ~/data
"""

from __future__ import annotations

from typing import Any

PRESET = "003 (teacher efficacy): teacher epoch x KD/ESKD/TAKD; ResNet-110 -> (ResNet-56 TA) -> ResNet-20"
SCHEDULE = {"name": "step", "milestones": [60, 120, 160], "gamma": 0.2}
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet20"},
    "teacher": {
        "model": "resnet110",
        "epochs": 200,
        "save_epochs": [25, 50, 100, 200],
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": SCHEDULE,
    },
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0, "ta_model": "resnet56"},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": SCHEDULE,
    "run": {"epochs": 200, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["teacher.epoch", "method.name"]
NUISANCE: list[str] = []
GRID = {"teacher.epoch": [25, 50, 100, 200], "method.name": ["kd", "eskd", "takd"]}
SAMPLER = "grid"


def space(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "teacher.epoch": trial.suggest_categorical("teacher.epoch", [25, 50, 100, 200]),
        "method.name": trial.suggest_categorical("method.name", ["kd", "eskd", "takd"]),
    }
    if out["method.name"] == "eskd":
        out["method.kd_stop_epoch"] = 50
    return out
