"""KD vs DML under two optimiser configs, 5 seeds each (seed 000, a critical analysis of DML).

Full scale: Fashion-MNIST, ResNet-50 teacher distilled into a ResNet-18 student (KD) against two
ResNet-18 peers trained mutually (DML), 100 epochs, batch 1024. Config 1 is Adam at a constant lr
0.01 (DML peers collapse to chance, KD reaches ~89.5%); config 2 is AdamW with a one-cycle
schedule peaking at lr 0.005 after 10% of training (DML stable and competitive). The teacher is
trained with the same optimiser config as the students.

    distill-study run dml_vs_kd --data-dir ~/data      # FashionMNIST/raw under ~/data
"""

from __future__ import annotations

from typing import Any

PRESET = "000 (DML vs KD): method x optimiser config 1/2, 5 seeds; ResNet-50 teacher, ResNet-18 students, Fashion-MNIST"
BASE: dict[str, Any] = {
    "data": {"name": "fashion_mnist"},
    "model": {"name": "resnet18"},
    "teacher": {"model": "resnet50", "epochs": 100, "batch_size": 1024},
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0, "peers": 2},
    "run": {"epochs": 100, "batch_size": 1024},
}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.name", "optim.name"]
NUISANCE: list[str] = []
# optim.name picks the whole optimiser config: 1 = adam, 2 = adamw + one-cycle.
CONFIGS: dict[str, dict[str, Any]] = {
    "adam": {
        "optim.name": "adam",
        "optim.lr": 0.01,
        "optim.weight_decay": 0.0,
        "schedule.name": "constant",
    },
    "adamw": {
        "optim.name": "adamw",
        "optim.lr": 0.005,
        "optim.weight_decay": 0.01,
        "schedule.name": "onecycle",
        "schedule.max_lr": 0.005,
        "schedule.pct_start": 0.1,
    },
}
GRID = {"method.name": ["kd", "dml"], "optim.name": ["adam", "adamw"]}
SAMPLER = "grid"
SEEDS = 5


def space(trial: Any) -> dict[str, Any]:
    optim = CONFIGS[trial.suggest_categorical("optim.name", list(CONFIGS))]
    teacher = {f"teacher.{k}": v for k, v in optim.items()}
    return {
        "method.name": trial.suggest_categorical("method.name", ["kd", "dml"]),
        **optim,
        **teacher,
    }
