"""Multi-branch networks (PCL, DKEL; seed 002): a shared trunk, m branches, a fused ensemble head.

A registered model is cut into a trunk (the early layers), a body (the last stage, pooled to a
feature vector) and a head (the final linear layer). ``build_branches`` builds the model m times,
keeps the trunk of the first copy and the body and head of every copy, so each branch starts
from its own random initialisation, and adds the ensemble head: a linear layer over the
concatenated branch features. This is the network of the official DKEL code
(shaoeric/Decoupled-Knowledge-with-Ensemble-Learning-for-Online-Distillation,
``src/models/resnet.py``: ``extract`` = stem + layer1 + layer2, ``Branch`` = layer3 + pool + fc,
``en_fc`` over the concatenated features). There the branches are ``deepcopy``s of one branch
whose convolutions are then re-initialised but whose ``fc`` layers stay identical; here every
branch layer is drawn independently.

Cuts (``SPLITS``): the CIFAR ResNets (``resnet20/32/56/110``) as the official code (trunk = stem
+ stages 1-2, branch = stage 3); ``resnet18/50``: trunk through ``layer3``, branch = ``layer4``;
``cnn_small``: trunk = the first two conv blocks (with their pooling), branch = the third block;
``mlp``: trunk = the first Linear + ReLU, branch = the second.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from distill_core.errors import ConfigError
from distill_core.models import CifarResNet, build_model

# A split takes a freshly built model and returns (trunk, body, head): body ends in a flat
# feature vector, head is the final nn.Linear.
Split = Callable[[nn.Module], tuple[nn.Module, nn.Module, nn.Linear]]


def _cifar_resnet(net: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
    assert isinstance(net, CifarResNet)
    n = len(net.layers) // 3
    trunk = nn.Sequential(net.conv, net.bn, nn.ReLU(), *net.layers[: 2 * n])
    body = nn.Sequential(*net.layers[2 * n :], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, body, net.fc


def _torchvision_resnet(net: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )
    body = nn.Sequential(net.layer4, net.avgpool, nn.Flatten())
    return trunk, body, net.fc


def _sequential(trunk_end: int) -> Split:
    """A cut of an ``nn.Sequential`` whose last module is the head."""

    def split(net: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
        assert isinstance(net, nn.Sequential)
        return net[:trunk_end], net[trunk_end:-1], net[-1]

    return split


SPLITS: dict[str, Split] = {
    **{f"resnet{depth}": _cifar_resnet for depth in (20, 32, 56, 110)},
    "resnet18": _torchvision_resnet,
    "resnet50": _torchvision_resnet,
    "cnn_small": _sequential(8),  # conv-bn-relu-pool twice
    "mlp": _sequential(3),  # flatten, linear, relu
}


def check_split(model: str, method: str) -> None:
    """Raise ``ConfigError`` unless ``model`` can be cut into a trunk and branches."""
    if model not in SPLITS:
        raise ConfigError(
            f"model.name={model} has no trunk/branch split, which method {method} needs; "
            f"set model.name to one of: {', '.join(sorted(SPLITS))}"
        )


class MultiBranch(nn.Module):
    """A shared trunk, ``m`` branches (body + head each) and an ensemble head over their features."""

    def __init__(
        self, trunk: nn.Module, bodies: list[nn.Module], heads: list[nn.Linear], num_classes: int
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.bodies = nn.ModuleList(bodies)
        self.heads = nn.ModuleList(heads)
        self.ensemble = nn.Linear(sum(h.in_features for h in heads), num_classes)

    @property
    def num_branches(self) -> int:
        return len(self.bodies)

    def forward(
        self, x: torch.Tensor, branch: int | None = None, ensemble: bool = True
    ) -> torch.Tensor:
        """Logits of every branch, then of the ensemble head, stacked ``(m + 1, B, K)``.

        Args:
            x: ``(B, C, H, W)``, one input for all branches (the trunk runs once), or
                ``(m, B, C, H, W)``, one view per branch (the trunk runs on each view).
            branch: return only this branch's logits ``(B, K)`` on ``x`` ``(B, C, H, W)``.
            ensemble: False leaves the ensemble head out (and out of the graph): ``(m, B, K)``.
        """
        if branch is not None:
            return self.heads[branch](self.bodies[branch](self.trunk(x)))
        if x.dim() == 5:
            hidden = [self.trunk(view) for view in x]
        else:
            hidden = [self.trunk(x)] * self.num_branches
        features = [body(h) for body, h in zip(self.bodies, hidden, strict=True)]
        logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        if ensemble:
            logits.append(self.ensemble(torch.cat(features, 1)))
        return torch.stack(logits)

    def branch(self, i: int) -> nn.Module:
        """Branch ``i`` through the trunk as a model of its own (for evaluation)."""
        return BranchOutput(self, i)


class BranchOutput(nn.Module):
    """One branch of a ``MultiBranch`` as a plain ``x -> logits`` model; shares its weights and mode."""

    def __init__(self, net: MultiBranch, branch: int) -> None:
        super().__init__()
        self.net = net
        self.index = branch
        self.training = net.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, branch=self.index)


def build_branches(
    name: str, in_channels: int, num_classes: int, image_size: int, branches: int, method: str
) -> MultiBranch:
    """A ``MultiBranch`` cut from the registered model ``name`` (uses the current torch RNG).

    Raises:
        ConfigError: ``name`` has no entry in ``SPLITS``.
    """
    check_split(name, method)
    cut = [
        SPLITS[name](build_model(name, in_channels, num_classes, image_size))
        for _ in range(branches)
    ]
    trunk = cut[0][0]
    return MultiBranch(trunk, [body for _, body, _ in cut], [head for *_, head in cut], num_classes)
