"""DKEL's decaying ensemble weight: rate beta and decay kind (exp, cos, linear) against PCL.

Seed 002 at full scale: ResNet-32 peers (3) on CIFAR-10, SGD Nesterov momentum 0.9, batch 128,
lr 0.1 decayed 10x at epochs 150 and 225 of 300, EMA teachers at 0.5, each DKEL teacher initialised
by one CE step at lr 0.01. The PCL baseline runs first. Expected shape: exponential decay best,
small beta better, a large beta zeroes the ensemble term after about two epochs.

    distill-study run dkel_decay --data-dir ~/data          # full scale (needs CIFAR-10 on disk)
    distill-study run dkel_decay --dataset digits --epochs 20  # embedded data
"""

from __future__ import annotations

from typing import Any

PRESET = "002 (DKEL): beta x decay kind, PCL baseline; ResNet-32 x3 peers on CIFAR-10"
AXIS = True
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet32"},
    "method": {"name": "dkel", "peers": 3},
    "dkel": {"beta": 0.1, "decay": "exp", "ema_decay": 0.5, "init_steps": 1, "init_lr": 0.01},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "step", "milestones": [150, 225], "gamma": 0.1},
    "run": {"epochs": 300, "batch_size": 128},
}
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.name", "dkel.beta", "dkel.decay"]
NUISANCE: list[str] = []
GRID = {
    "method.name": ["dkel"],
    "dkel.beta": [0.01, 0.1, 1.0],
    "dkel.decay": ["exp", "cos", "linear"],
}
BASELINES = [{"method.name": "pcl"}]
SAMPLER = "grid"


def space(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"method.name": trial.suggest_categorical("method.name", ["dkel", "pcl"])}
    if out["method.name"] == "dkel":
        out["dkel.beta"] = trial.suggest_float("dkel.beta", 0.005, 2.0, log=True)
        out["dkel.decay"] = trial.suggest_categorical("dkel.decay", ["exp", "cos", "linear"])
    return out
