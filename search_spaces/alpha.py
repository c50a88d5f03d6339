"""KD alpha: how much weight the distillation term should get (CE gets 1 - alpha).

ResNet-20 teacher (trained once, shared by every trial) distilled into a small CNN on the
embedded MNIST-5k set; the learning rate is tuned away as a nuisance parameter.
"""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "cnn_small"},
    "teacher": {"model": "resnet20", "epochs": 5},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 10, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["method.alpha"]
NUISANCE = ["optim.lr"]
GRID = {"method.alpha": [0.0, 0.25, 0.5, 0.75, 1.0], "optim.lr": [0.05]}


def space(trial: Any) -> dict[str, Any]:
    return {
        "method.alpha": trial.suggest_float("method.alpha", 0.0, 1.0),
        "optim.lr": trial.suggest_float("optim.lr", 0.01, 0.2, log=True),
    }
