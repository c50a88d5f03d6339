"""KD alpha: how much weight the distillation term should get (CE gets 1 - alpha).

ResNet-20 teacher (trained once, shared by every trial) distilled into a small CNN on the
embedded MNIST-5k set; the learning rate is tuned away as a nuisance parameter.
"""

from __future__ import annotations

from typing import Any

from search_spaces._bases import kd_mnist5k

BASE = kd_mnist5k()
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
