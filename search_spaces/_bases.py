"""Base configs shared by several search spaces (a leading underscore: not a space itself)."""

from __future__ import annotations

from typing import Any

from distill_core.config import apply_overrides

# ResNet-20 teacher distilled into a small CNN on the embedded MNIST-5k set, SGD + cosine.
KD_MNIST5K: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"name": "cnn_small"},
    "teacher": {"model": "resnet20", "epochs": 5},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "run": {"epochs": 10, "batch_size": 128},
}


def kd_mnist5k(**changes: Any) -> dict[str, Any]:
    """A copy of ``KD_MNIST5K`` with dotted changes, e.g. ``kd_mnist5k(**{"teacher.epochs": 8})``."""
    return apply_overrides(KD_MNIST5K, changes)
