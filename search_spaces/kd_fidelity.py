"""Fidelity of self-distillation: interpolation lambda x temperature (seed 004, "Does KD really work?").

Full scale: CIFAR-100, ResNet-56 teacher and student, distillation term alone (alpha 1), the
student initialised at lambda * teacher + (1 - lambda) * random with batch-norm statistics
re-estimated. Judged on top-1 agreement and predictive KL against the teacher (validation split);
accuracy, NLL and ECE are logged alongside. Expect agreement to jump near lambda ~ 0.375.

    distill-study run kd_fidelity --data-dir ~/data     # cifar-100-python under ~/data
"""

from __future__ import annotations

from typing import Any

PRESET = "004 (fidelity): lambda grid x temperature, agreement/KL; ResNet-56 self-distillation on CIFAR-100"
BASE: dict[str, Any] = {
    "data": {"name": "cifar100"},
    "model": {"name": "resnet56"},
    "teacher": {"model": "resnet56", "epochs": 200},
    "method": {"name": "kd", "alpha": 1.0, "temperature": 4.0},
    "init": {"interp_lambda": 0.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 100, "batch_size": 128},
}
OBJECTIVE, MODE = "val_agreement", "max"
OBJECTIVES = [("val_agreement", "max"), ("val_acc", "max")]
SCIENTIFIC = ["init.interp_lambda", "method.temperature"]
NUISANCE: list[str] = []
GRID = {
    "init.interp_lambda": [0.0, 0.125, 0.25, 0.375, 0.5, 0.75],
    "method.temperature": [1.0, 4.0],
}
SAMPLER = "grid"


def space(trial: Any) -> dict[str, Any]:
    return {
        "init.interp_lambda": trial.suggest_float("init.interp_lambda", 0.0, 1.0),
        "method.temperature": trial.suggest_float("method.temperature", 1.0, 8.0, log=True),
    }
