"""KD cost: seconds per epoch of KD vs scratch training of the same student (teacher excluded).

Student cnn_small, teacher resnet20 (trained for one epoch into a temporary store before the first
timed epoch: its quality does not change the cost). On MNIST-5k (not augmented; digits with
--quick) the teacher's
logits on the training set can be computed once and reused every epoch (target: KD <= 1.15x
scratch); on CIFAR-shaped images with random crop + flip the teacher must run on every batch
(reported, no target). Both sides time training plus the validation pass, warm-up epoch dropped.

python -m benchmarks.kd_cost [--quick] [--threads N]
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from benchmarks import common, workloads
from distill_core import Splits, make_config

TARGET = ("ratio", "<=", 1.15)


def kd_vs_scratch(
    tree: dict[str, Any], data: Splits | None, store: str, threads: int, epochs: int
) -> tuple[list[float], list[float]]:
    """Per-epoch seconds of the KD run of ``tree`` and of the same student trained from scratch."""
    base = {
        **tree,
        "model": {"name": "cnn_small"},
        "teacher": {"model": "resnet20", "epochs": 1},
        "schedule": {"name": "constant"},
        "run": {"epochs": epochs, "threads": threads, "device": "cpu", "teacher_store": store},
    }
    kd = workloads.epoch_seconds(make_config(base, {"method.name": "kd"}), data)
    scratch = workloads.epoch_seconds(make_config(base, {"method.name": "scratch"}), data)
    return kd, scratch


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    start = common.start(args.threads)
    threads = start.threads
    epochs = 2 if args.quick else 3
    plain = "digits" if args.quick else "mnist5k"
    n_train, n_val = (128, 32) if args.quick else (2048, 256)
    images, labels = workloads.cifar_shaped_images(n_train + n_val)
    mean, std = workloads.channel_stats(images[:n_train])
    cifar = workloads.splits(images, labels, n_val=n_val, augment=True, mean=mean, std=std)
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for case, tree, data, target in [
            (
                f"{plain}, not augmented: teacher logits cacheable",
                {"data": {"name": plain}},
                None,
                TARGET,
            ),
            (
                f"CIFAR-shaped, augmented ({n_train} images): teacher runs per batch",
                {},
                cifar,
                None,
            ),
        ]:
            # A store per case: the store keys teachers by config, and the CIFAR-shaped images
            # are passed to fit() directly, not named by the config.
            kd, scratch = kd_vs_scratch(tree, data, f"{store}/{len(rows)}", threads, epochs)
            rows.append(
                common.compare(
                    case,
                    "s/epoch",
                    float(np.mean(kd)),
                    float(np.mean(scratch)),
                    value_label="kd",
                    baseline_label="scratch",
                    target=target,
                    kd_epoch_s=kd,
                    scratch_epoch_s=scratch,
                )
            )
    settings = {
        "threads": threads,
        "student": "cnn_small",
        "teacher": "resnet20",
        "epochs_timed": epochs - 1,
    }
    common.write(args, "kd_cost", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
