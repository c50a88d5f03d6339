"""CE + MSE-on-logits distillation at alpha 0, 0.5, 1, four runs each (seed 001, anvelezec/distillation).

Full scale: ResNet-50 teacher, ResNet-18 student, 25 epochs, batch 32, SGD lr 0.001 momentum 0.9,
lr x0.1 every 7 epochs, on CIFAR-10 (the original used the small hymenoptera set). Seed 001's alpha
weights CE; here ``method.alpha`` weights the distillation term, so its alpha a is our 1 - a (the
grid is symmetric). Logged: accuracy, teacher accuracy and ``diff_t_s``.

    distill-study run alpha_mse --data-dir ~/data      # cifar-10-batches-py under ~/data
"""

from __future__ import annotations

from typing import Any

PRESET = "001 (CE + MSE logits): alpha in {0, 0.5, 1} x 4 runs; ResNet-50 -> ResNet-18"
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet18"},
    "teacher": {
        "model": "resnet50",
        "epochs": 25,
        "batch_size": 32,
        "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
        "schedule": {"name": "step", "milestones": [7, 14, 21], "gamma": 0.1},
    },
    "method": {"name": "kd", "loss": "mse", "alpha": 0.5},
    "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
    "schedule": {"name": "step", "milestones": [7, 14, 21], "gamma": 0.1},
    "run": {"epochs": 25, "batch_size": 32},
}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.alpha"]
NUISANCE: list[str] = []
GRID = {"method.alpha": [0.0, 0.5, 1.0]}
SAMPLER = "grid"
SEEDS = 4


def space(trial: Any) -> dict[str, Any]:
    return {"method.alpha": trial.suggest_categorical("method.alpha", [0.0, 0.5, 1.0])}
