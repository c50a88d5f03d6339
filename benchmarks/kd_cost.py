"""KD cost: seconds per epoch of KD vs scratch training of the same student, and vs its floor.

Student cnn_small, teacher resnet20 (trained for one epoch into a temporary store before the first
timed epoch: its quality does not change the cost). On MNIST-5k (not augmented; digits with
--quick) the teacher's logits on the training set can be computed once and reused every epoch
(target: KD <= 1.15x scratch). On CIFAR-shaped images with random crop + flip the teacher must run
on every batch, so a KD epoch cannot cost less than its floor: the scratch epoch plus the teacher's
inference alone over the same batches (same seed, same augmentation), measured in the same run
(target: KD <= 1.15x the floor). The floor itself is lowered by ``run.teacher_amp`` (the teacher's
inference in bfloat16): that KD epoch is reported against the float32 floor. Both sides time
training plus the validation pass, warm-up epoch dropped.

python -m benchmarks.kd_cost [--quick] [--threads N]
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch

from benchmarks import common, workloads
from distill_core import Config, Splits, TeacherStore, fit_epochs, make_config
from distill_core.data import batches
from distill_core.models import speed_up

TARGET = ("ratio", "<=", 1.15)


def configs(tree: dict[str, Any], store: str, threads: int, epochs: int) -> dict[str, Config]:
    """The KD run of ``tree``, the same with the teacher in bfloat16, and the student from scratch."""
    base = {
        **tree,
        "model": {"name": "cnn_small"},
        "teacher": {"model": "resnet20", "epochs": 1},
        "schedule": {"name": "constant"},
        "run": {"epochs": epochs, "threads": threads, "device": "cpu", "teacher_store": store},
    }
    return {
        "kd": make_config(base, {"method.name": "kd"}),
        "kd_bf16": make_config(base, {"method.name": "kd", "run.teacher_amp": True}),
        "scratch": make_config(base, {"method.name": "scratch"}),
    }


def teacher_pass(cfg: Config, data: Splits, epochs: int) -> list[float]:
    """Seconds per epoch (warm-up dropped) of the teacher's inference alone over the batches that
    ``cfg``'s KD epochs draw: the same seed and augmentation, drawn before the clock starts."""
    device = torch.device(cfg.run.device)
    store = TeacherStore(cfg.run.teacher_store)
    teacher = store.teacher_for(cfg, data, device, train=fit_epochs)
    speed_up(teacher, channels_last=cfg.run.channels_last, compile=False).eval()
    generator = torch.Generator().manual_seed(cfg.run.seed)
    seconds = []
    for _ in range(epochs):
        drawn = list(
            batches(
                data.train_x, data.train_y, cfg.run.batch_size, generator=generator, augment=True
            )
        )
        t0 = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(device.type, torch.bfloat16, cfg.run.teacher_amp),
        ):
            for batch in drawn:
                teacher(batch.x)
        seconds.append(time.perf_counter() - t0)
    return seconds[1:]


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
        # A store per case: the store keys teachers by config, and the CIFAR-shaped images
        # are passed to fit() directly, not named by the config.
        cfgs = configs({"data": {"name": plain}}, f"{store}/plain", threads, epochs)
        kd = workloads.epoch_seconds(cfgs["kd"])
        scratch = workloads.epoch_seconds(cfgs["scratch"])
        rows.append(
            common.compare(
                f"{plain}, not augmented: teacher logits cacheable",
                "s/epoch",
                float(np.mean(kd)),
                float(np.mean(scratch)),
                value_label="kd",
                baseline_label="scratch",
                target=TARGET,
                kd_epoch_s=kd,
                scratch_epoch_s=scratch,
            )
        )
        cfgs = configs({}, f"{store}/cifar", threads, epochs)
        times = {name: workloads.epoch_seconds(cfg, cifar) for name, cfg in cfgs.items()}
        teacher = {name: teacher_pass(cfgs[name], cifar, epochs) for name in ("kd", "kd_bf16")}
        floor = float(np.mean(times["scratch"]) + np.mean(teacher["kd"]))
        low = float(np.mean(times["scratch"]) + np.mean(teacher["kd_bf16"]))
        case = f"CIFAR-shaped, augmented ({n_train} images): teacher runs per batch"
        raw = {f"{k}_epoch_s": v for k, v in times.items()}
        raw.update({f"teacher_{k}_pass_s": v for k, v in teacher.items()})
        rows += [
            common.compare(
                f"{case}, vs scratch",
                "s/epoch",
                float(np.mean(times["kd"])),
                float(np.mean(times["scratch"])),
                value_label="kd",
                baseline_label="scratch",
                **raw,
            ),
            common.compare(
                f"{case}, vs its floor",
                "s/epoch",
                float(np.mean(times["kd"])),
                floor,
                value_label="kd",
                baseline_label="scratch + teacher inference",
                target=TARGET,
            ),
            common.compare(
                f"{case}, teacher in bf16 (run.teacher_amp) vs the fp32 floor",
                "s/epoch",
                float(np.mean(times["kd_bf16"])),
                floor,
                value_label="kd, teacher bf16",
                baseline_label="scratch + fp32 teacher inference",
                bf16_floor_s=low,
            ),
        ]
    settings = {
        "threads": threads,
        "student": "cnn_small",
        "teacher": "resnet20",
        "epochs_timed": epochs - 1,
    }
    common.write(args, "kd_cost", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
