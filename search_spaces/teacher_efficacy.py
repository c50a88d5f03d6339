"""Teacher efficacy (seed 003): early-stopped teachers, ESKD and a teacher assistant against plain KD.

Paper scale (Cho & Hariharan 2019, "On the efficacy of KD"; Mirzadeh et al. 2020, TAKD):
CIFAR-10, a ResNet-110 teacher trained for 200 epochs (SGD lr 0.1, x0.2 at 60, 120, 160),
ResNet-20 students for 200 epochs, KD alpha 0.9 and tau 4. The arms:
- ``kd``: KD from the fully trained teacher;
- ``kd-early``: KD from an early-stopped teacher as the papers train it: to completion on a
  schedule a quarter as long (50 epochs, its lr decays scaled: 15, 30, 40; seed 003's 15/50);
- ``kd-snapshot``: KD from epoch 50 of the long run (an un-annealed snapshot, not what the papers
  call early-stopped: shown for the difference);
- ``eskd``: KD stopped after 50 of the student's 200 epochs, cross-entropy alone afterwards;
- ``takd``: the teacher distilled into a ResNet-56 teacher assistant, which the student distils;
- ``scratch``: the student alone (the papers' NOKD).

Laptop scale: MNIST-5k and TAKD's own plain CNNs (``plain_cnn10`` teacher, ``plain_cnn6``
assistant, ``plain_cnn2`` student): the capacity gap the papers are about appears between these,
where a ResNet-110 and a ResNet-20 would take hours, with lr 0.01 as TAKD's code trains its plain
CNNs; 15 epochs instead of 200 (the teacher's too: the early teacher is trained to completion in 4,
ESKD stops after 4, the lr decays at 4, 9, 12).
"""

from __future__ import annotations

from typing import Any

from search_spaces._claims import Claim, pick_arm

PRESET = "003 (teacher efficacy): early-stopped teacher, ESKD, TAKD vs KD; ResNet-110 -> (ResNet-56 TA) -> ResNet-20"
PAPER = "003"
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
SCHEDULE = {"name": "step", "milestones": [60, 120, 160], "gamma": 0.2}
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet20"},
    "teacher": {
        "model": "resnet110",
        "epochs": 200,
        "save_epochs": [50],  # and the last: what the arms load (not all 200 checkpoints)
        "optim": SGD,
        "schedule": SCHEDULE,
    },
    "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0, "ta_model": "resnet56"},
    "optim": SGD,
    "schedule": SCHEDULE,
    "run": {"epochs": 200, "batch_size": 128},
}
LAPTOP = {
    "data.name": "mnist5k",
    "model.name": "plain_cnn2",
    "teacher.model": "plain_cnn10",
    "method.ta_model": "plain_cnn6",
    "teacher.optim.lr": 0.01,
    "optim.lr": 0.01,
}
LAPTOP_EPOCHS = 15
OBJECTIVE, MODE = "val_acc", "max"
OBJECTIVES = [("val_acc", "max"), ("val_agreement", "max")]
SCIENTIFIC = ["method.name", "teacher.epoch", "teacher.early_stop"]
NUISANCE: list[str] = []
EARLY = 50  # of the teacher's 200 epochs: seed 003's 15/50 schedule
ARMS: dict[str, dict[str, Any]] = {
    "scratch": {"method.name": "scratch"},
    "kd": {"method.name": "kd"},
    "kd-early": {"method.name": "kd", "teacher.epoch": EARLY, "teacher.early_stop": "shortened"},
    "kd-snapshot": {"method.name": "kd", "teacher.epoch": EARLY, "teacher.early_stop": "snapshot"},
    "eskd": {"method.name": "eskd", "method.kd_stop_epoch": EARLY},
    "takd": {"method.name": "takd"},
}
GRID = {"arm": list(ARMS)}
SAMPLER = "grid"
SCHEDULER = "none"
SEEDS = 5

CLAIMS = [
    Claim(
        id="003-takd",
        sentence="With a large capacity gap, distilling through a teacher assistant (TAKD) beats "
        "distilling the large teacher directly.",
        source="Mirzadeh et al. 2020, Tables 1-2 (TAKD vs BLKD)",
        paper="TAKD above baseline KD for plain CNNs 10 -> 6 -> 2 and ResNets 110 -> 56 -> 8",
        kind="difference",
        metric="test_acc",
        arms=("takd", "kd"),
    ),
    Claim(
        id="003-early-teacher",
        sentence="A teacher trained to completion on a short schedule distils better than the "
        "fully trained teacher.",
        source="Cho & Hariharan 2019, early-stopped teachers (seed 003: 15/50 vs 60/200)",
        paper="every early-stopped teacher above the fully trained one",
        kind="difference",
        metric="test_acc",
        arms=("kd-early", "kd"),
    ),
    Claim(
        id="003-eskd",
        sentence="Stopping the KD term early (ESKD) is no worse than KD throughout (within 1 point).",
        source="Cho & Hariharan 2019, ESKD",
        paper="ESKD above full KD on ImageNet; degradation with teacher size remains",
        kind="difference",
        metric="test_acc",
        arms=("eskd", "kd"),
        threshold=-0.01,
    ),
]


def space(trial: Any) -> dict[str, Any]:
    return pick_arm(trial, ARMS)
