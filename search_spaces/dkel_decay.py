"""DKEL's decaying ensemble: rate beta and decay kind (exp, cos, linear) against PCL (seed 002).

Paper scale, as the official code (shaoeric/Decoupled-Knowledge-with-Ensemble-Learning-for-Online-
Distillation, configs/20220309_cifar10.yml and its src/): CIFAR-10, one ResNet-32 with 3 branches,
SGD Nesterov momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 decayed 10x at epochs 150 and 225
of 300, temperature 3, temporal-mean network by EMA 0.999 with the mean-teacher warm-up, DKEL's
decoupled initialisation (2 CE steps at lr/100), distillation ramped up over 80 epochs (the ramp
the code means; ``dkel.rampup: code`` is its bug, see docs/methods.md). The arms: PCL (the
baseline); DKEL with exponential decay at the paper's beta 0.5, a smaller 0.1 and a large 2.5
(its ensemble weight falls below 0.01, so to 0, after two epochs); and the cosine and linear
decays (they ignore beta, so each is one arm). Reported: ResNet-32 C10 DKEL ~94.6%, PCL ~94.3%.

Laptop scale: CIFAR-10 cannot be downloaded here, so MNIST-5k and a ``cnn_small`` with 3
branches; 20 epochs instead of 300 (the lr decays fall at 10 and 15, the ramp-up over 5 epochs).
MNIST gets no crop-and-flip augmentation (a flipped digit is another digit), so the branches see
the same images rather than one augmentation each. Beta is a rate per epoch and is not scaled: at
20 epochs beta 0.5 keeps the ensemble term for 9 of 20 epochs (9 of 300 in the paper), while the
large beta still zeroes it after two epochs.
"""

from __future__ import annotations

from typing import Any

from search_spaces._claims import Claim, pick_arm

PRESET = "002 (DKEL): beta x decay kind, PCL baseline; ResNet-32 3 branches on CIFAR-10"
PAPER = "002"
AXIS = True
BASE: dict[str, Any] = {
    "data": {"name": "cifar10"},
    "model": {"name": "resnet32"},
    "method": {"name": "dkel", "peers": 3, "temperature": 3.0},
    "dkel": {"beta": 0.5, "decay": "exp"},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "step", "milestones": [150, 225], "gamma": 0.1},
    "run": {"epochs": 300, "batch_size": 128},
}
LAPTOP = {"data.name": "mnist5k", "model.name": "cnn_small"}
LAPTOP_EPOCHS = 20
OBJECTIVE, MODE = "val_acc", "max"
SCIENTIFIC = ["method.name", "dkel.beta", "dkel.decay"]
NUISANCE: list[str] = []
ARMS: dict[str, dict[str, Any]] = {
    "pcl": {"method.name": "pcl"},
    "dkel-exp-0.1": {"method.name": "dkel", "dkel.decay": "exp", "dkel.beta": 0.1},
    "dkel-exp-0.5": {"method.name": "dkel", "dkel.decay": "exp", "dkel.beta": 0.5},
    "dkel-exp-2.5": {"method.name": "dkel", "dkel.decay": "exp", "dkel.beta": 2.5},
    "dkel-cos": {"method.name": "dkel", "dkel.decay": "cos"},
    "dkel-linear": {"method.name": "dkel", "dkel.decay": "linear"},
}
GRID = {"arm": list(ARMS)}
SAMPLER = "grid"
SCHEDULER = "none"
SEEDS = 3

_SMALL = "the paper's differences are a few tenths of a point: expect inconclusive at laptop noise"
CLAIMS = [
    Claim(
        id="002-dkel-pcl",
        sentence="DKEL (exponential decay, beta 0.5) beats its baseline PCL.",
        source="Table: ResNet-32 on CIFAR-10",
        paper="DKEL 94.6% vs PCL ~94.3% (CIFAR-10); 74.9% vs ~74.1% (CIFAR-100)",
        kind="difference",
        metric="test_acc",
        arms=("dkel-exp-0.5", "pcl"),
        laptop=_SMALL,
    ),
    Claim(
        id="002-exp-cos",
        sentence="The exponential decay of the ensemble weight beats the cosine decay.",
        source="Ablation of the decay function (exp best, cosine overfits late)",
        paper="exponential decay best",
        kind="difference",
        metric="test_acc",
        arms=("dkel-exp-0.5", "dkel-cos"),
        laptop=_SMALL,
    ),
    Claim(
        id="002-exp-linear",
        sentence="The exponential decay of the ensemble weight beats the linear decay.",
        source="Ablation of the decay function",
        paper="exponential decay best",
        kind="difference",
        metric="test_acc",
        arms=("dkel-exp-0.5", "dkel-linear"),
        laptop=_SMALL,
    ),
    Claim(
        id="002-small-beta",
        sentence="A small decay rate beats a large one, whose ensemble term is gone after two "
        "epochs.",
        source="Ablation of beta",
        paper="smaller beta better",
        kind="difference",
        metric="test_acc",
        arms=("dkel-exp-0.5", "dkel-exp-2.5"),
        laptop=_SMALL,
    ),
]


def space(trial: Any) -> dict[str, Any]:
    return pick_arm(trial, ARMS)
