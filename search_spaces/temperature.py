"""KD temperature: how soft the teacher's targets should be (the KL term is scaled by tau^2).

Same setup as ``alpha``; alpha and the learning rate are nuisance parameters.
"""

from __future__ import annotations

from typing import Any

from search_spaces._bases import kd_mnist5k

BASE = kd_mnist5k()
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["method.temperature"]
NUISANCE = ["method.alpha", "optim.lr"]
GRID = {"method.temperature": [1.0, 2.0, 4.0, 8.0, 16.0], "method.alpha": [0.9], "optim.lr": [0.05]}


def space(trial: Any) -> dict[str, Any]:
    return {
        "method.temperature": trial.suggest_float("method.temperature", 1.0, 20.0, log=True),
        "method.alpha": trial.suggest_float("method.alpha", 0.5, 1.0),
        "optim.lr": trial.suggest_float("optim.lr", 0.01, 0.2, log=True),
    }
