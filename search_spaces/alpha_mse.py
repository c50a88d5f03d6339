"""CE + MSE-on-logits distillation at seed 001's alpha 0, 0.5, 1, four runs each (anvelezec/distillation).

Seed 001's loss is ``alpha * CE + (1 - alpha) * MSE(student logits, teacher logits)``: its alpha
weights CE, the opposite of ``method.alpha``. The arms say it in the paper's convention and set
``method.weights`` explicitly: ``alpha=0`` is MSE alone, ``alpha=1`` CE alone.

Paper scale: a ResNet-50 teacher pretrained on ImageNet with a frozen backbone (only its head is
trained), distilled into an ImageNet-pretrained ResNet-18; 25 epochs, batch 32, SGD lr 0.001
momentum 0.9, lr x0.1 every 7 epochs, for teacher and student. ``model.pretrained: torchvision``
reads torchvision's ImageNet weights from the local torch hub cache (never downloaded: fetch them
once elsewhere). The seed used the small hymenoptera set, which is no registered data set here;
CIFAR-10 (``--data-dir``) stands in. The seed's ``diff_t_s`` is the mean absolute difference
between teacher and student logits: ``val_logit_diff`` / ``test_logit_diff`` here.

Laptop scale: no ImageNet weights offline, so teacher (``resnet20``) and student (``cnn_small``)
train from scratch on MNIST-5k, with lr 0.05 instead of 0.001 (lr 0.001 from scratch left the
teacher at 63%, a poor teacher for every arm); the teacher's backbone is not frozen (a frozen
random backbone learns nothing); 10 epochs instead of 25 (the step decays scale with them).
"""

from __future__ import annotations

from typing import Any

from search_spaces._claims import Claim, pick_arm

PRESET = "001 (CE + MSE logits): seed 001's alpha in {0, 0.5, 1} x 4 runs; ResNet-50 -> ResNet-18, pretrained"
PAPER = "001"
SGD = {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0}
STEPS = {"name": "step", "milestones": [7, 14, 21], "gamma": 0.1}
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet18", "pretrained": "torchvision"},
    "teacher": {
        "model": "resnet50",
        "pretrained": "torchvision",
        "freeze": True,
        "epochs": 25,
        "batch_size": 32,
        "optim": SGD,
        "schedule": STEPS,
    },
    "method": {"name": "kd", "loss": "mse"},
    "optim": SGD,
    "schedule": STEPS,
    "run": {"epochs": 25, "batch_size": 32},
}
LAPTOP = {
    "data.name": "mnist5k",
    "model.name": "cnn_small",
    "model.pretrained": None,
    "teacher.model": "resnet20",
    "teacher.pretrained": None,
    "teacher.freeze": False,
    "teacher.optim.lr": 0.05,
    "optim.lr": 0.05,
}
LAPTOP_EPOCHS = 10
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.weights"]
NUISANCE: list[str] = []
#: Seed 001's alpha (the weight of CE) -> the loss weights it means.
ARMS = {
    "alpha=0": {"method.weights": {"ce": 0.0, "mse": 1.0}},
    "alpha=0.5": {"method.weights": {"ce": 0.5, "mse": 0.5}},
    "alpha=1": {"method.weights": {"ce": 1.0, "mse": 0.0}},
}
GRID = {"arm": list(ARMS)}
SAMPLER = "grid"
SCHEDULER = "none"
SEEDS = 4

CLAIMS = [
    Claim(
        id="001-stable",
        sentence="Mixing CE into the MSE term (alpha 0.5) trains more stably than MSE alone: "
        "the validation accuracy jumps less from epoch to epoch.",
        source="README, Results (loss curves; MSE alone takes ~5 epochs to stabilise)",
        paper="epoch loss 1.48 ± 0.59 (alpha 0) vs 0.82 ± 0.29 (alpha 0.5)",
        kind="difference",
        metric="val_acc_jitter",
        arms=("alpha=0.5", "alpha=0"),
        direction="less",
        threshold=0.0,
    ),
    Claim(
        id="001-accuracy",
        sentence="The CE + MSE mix loses no accuracy against CE alone (within 1 point).",
        source="README, results table",
        paper="accuracy 0.9469 (alpha 0.5) vs 0.9412 (alpha 1)",
        kind="difference",
        metric="test_acc",
        arms=("alpha=0.5", "alpha=1"),
        threshold=-0.01,
    ),
    Claim(
        id="001-fidelity",
        sentence="Without the MSE term (CE alone) the student's logits end further from the "
        "teacher's than with the mix.",
        source="README, results table (diff_t_s)",
        paper="diff_t_s 1.34 (alpha 1) vs 0.96 (alpha 0.5)",
        kind="difference",
        metric="test_logit_diff",
        arms=("alpha=1", "alpha=0.5"),
        threshold=0.0,
    ),
]


def space(trial: Any) -> dict[str, Any]:
    return pick_arm(trial, ARMS)
