"""Data and timing shared by the CPU benchmarks (these need the project installed)."""

from __future__ import annotations

import time

import numpy as np
import torch

from distill_core import DATASETS, Config, Splits, fit
from distill_core.config import DataConfig


def mnist5k_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` MNIST-5k training images as uint8 ``N,H,W,C`` (how torchvision keeps them), labels."""
    x, y, _, _ = DATASETS.get("mnist5k").load(DataConfig(name="mnist5k"))
    images = np.round(x[:n] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), y[:n]


def cifar_shaped_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 32x32 RGB uint8 images and labels of 10 classes: CIFAR-10's shapes, no download."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``N,H,W,C`` images scaled to [0, 1] (for ``Normalize``)."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2), ddof=1).tolist()


def splits(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_val: int,
    augment: bool,
    mean: list[float],
    std: list[float],
) -> Splits:
    """The same images as ``fit`` holds them: normalised ``N,C,H,W`` float tensors; the last
    ``n_val`` images are the validation split (and the test split, which is only used once)."""
    x = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y = torch.as_tensor(labels, dtype=torch.long)
    train, val = slice(0, len(y) - n_val), slice(len(y) - n_val, None)
    return Splits(
        name="benchmark",
        train_x=x[train],
        train_y=y[train],
        val_x=x[val],
        val_y=y[val],
        test_x=x[val],
        test_y=y[val],
        num_classes=10,
        augment=augment,
    )


def epoch_seconds(cfg: Config, data: Splits | None = None) -> list[float]:
    """Wall seconds of every epoch of ``fit(cfg)`` but the first (the warm-up), each its training
    and its validation pass: the time between consecutive ``on_epoch`` calls. Teacher training
    and data loading come before the first epoch, so they are not counted."""
    stamps: list[float] = []
    fit(cfg, data=data, on_epoch=lambda _: stamps.append(time.perf_counter()))
    if len(stamps) < 2:
        raise ValueError(f"need run.epochs >= 2 (one warm-up), got {cfg.run.epochs}")
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
