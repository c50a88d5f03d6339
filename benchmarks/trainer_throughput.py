"""Training images/s: an epoch of ``distill_core.fit`` vs the usual torchvision DataLoader loop.

The baseline is what a user writes: a map-style ``Dataset`` over uint8 images with per-sample
``ToTensor`` + ``Normalize`` (+ ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` where the
case is augmented), a ``DataLoader`` with ``shuffle=True, num_workers=0``, and a train loop with the
same model (``build_model``), batch size, optimizer and seed. Both sides time each epoch's training
and its validation pass, and drop their first epoch (warm-up). Images/s counts training images.

python -m benchmarks.trainer_throughput [--quick] [--threads N] [--cases mnist5k-cnn_small ...]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks import common, workloads
from distill_core import build_model, make_config

BATCH = 128
TARGET = ("ratio", ">=", 1.5)


@dataclass(frozen=True)
class Case:
    data: str  # mnist5k | cifar (CIFAR-shaped random images)
    model: str
    augment: bool
    sizes: tuple[int, int]  # training, validation images
    quick_sizes: tuple[int, int]


# ResNet-18 trains at ~100 images/s on a CPU: a subset keeps its epochs to seconds.
CASES = {
    "mnist5k-cnn_small": Case("mnist5k", "cnn_small", False, (3600, 400), (256, 64)),
    "mnist5k-resnet18": Case("mnist5k", "resnet18", False, (512, 128), (32, 16)),
    "cifar-cnn_small": Case("cifar", "cnn_small", True, (4096, 512), (256, 64)),
    "cifar-resnet18": Case("cifar", "resnet18", True, (512, 128), (32, 16)),
}


class ImageDataset(Dataset):
    """The usual map-style data set: uint8 ``H,W,C`` images, one transform per sample."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Any], torch.Tensor]
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def plain_loop_seconds(
    model: nn.Module,
    train: Dataset,
    val: Dataset,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    eval_batch_size: int,
) -> list[float]:
    """Seconds of each epoch (train, then validation accuracy) of the textbook loop, warm-up dropped."""
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=0)
    val_loader = DataLoader(val, batch_size=eval_batch_size, shuffle=False, num_workers=0)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_loader)
        assert 0 <= correct <= len(val)
        seconds.append(time.perf_counter() - t0)
    return seconds[1:]


def measure(name: str, case: Case, *, quick: bool, threads: int) -> dict[str, Any]:
    n_train, n_val = case.quick_sizes if quick else case.sizes
    epochs = 2 if quick else 3
    if case.data == "mnist5k":
        images, labels = workloads.mnist5k_images(n_train + n_val)
    else:
        images, labels = workloads.cifar_shaped_images(n_train + n_val)
    mean, std = workloads.channel_stats(images[:n_train])
    cfg = make_config(
        {
            "model": {"name": case.model},
            "method": {"name": "scratch"},
            "schedule": {"name": "constant"},
            "run": {"epochs": epochs, "batch_size": BATCH, "threads": threads, "device": "cpu"},
        }
    )
    data = workloads.splits(images, labels, n_val=n_val, augment=case.augment, mean=mean, std=std)
    fit_s = workloads.epoch_seconds(cfg, data)

    per_sample = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    train = ImageDataset(
        images[:n_train],
        labels[:n_train],
        transforms.Compose(per_sample + (augment if case.augment else [])),
    )
    val = ImageDataset(images[n_train:], labels[n_train:], transforms.Compose(per_sample))
    torch.manual_seed(cfg.run.seed)
    model = build_model(case.model, images.shape[-1], 10, images.shape[1])
    o = cfg.optim
    optimizer = torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    loop_s = plain_loop_seconds(
        model,
        train,
        val,
        epochs=epochs,
        optimizer=optimizer,
        eval_batch_size=cfg.run.eval_batch_size,
    )
    what = f"{case.model}, {'MNIST-5k' if case.data == 'mnist5k' else 'CIFAR-shaped'}"
    return common.compare(
        f"{what}{', augmented' if case.augment else ''} ({n_train} images)",
        "img/s",
        n_train / float(np.mean(fit_s)),
        n_train / float(np.mean(loop_s)),
        value_label="fit()",
        baseline_label="DataLoader loop",
        target=TARGET,
        name=name,
        fit_epoch_s=fit_s,
        loop_epoch_s=loop_s,
        train_images=n_train,
        val_images=n_val,
    )


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = p.parse_args(argv)
    start = common.start(args.threads)
    threads = start.threads
    rows = [measure(n, CASES[n], quick=args.quick, threads=threads) for n in args.cases]
    settings = {
        "threads": threads,
        "batch_size": BATCH,
        "device": "cpu",
        "both_include": "validation pass",
    }
    common.write(args, "trainer_throughput", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
