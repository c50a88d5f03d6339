"""Models by name. Every builder takes ``(in_channels, num_classes, image_size)`` and returns an ``nn.Module``.

Also the two things done to any model: ``speed_up`` (memory format, compilation) and ``predict``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from distill_core.registry import Registry

MODELS: Registry[Callable[[int, int, int], nn.Module]] = Registry("model", "model.name")


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Instantiate a registered model (uses the current torch RNG for its initial weights)."""
    return MODELS.get(name)(in_channels, num_classes, image_size)


def speed_up(model: nn.Module, *, channels_last: bool, compile: bool) -> nn.Module:
    """Make ``model`` channels-last and/or compiled, in place; its ``state_dict`` keys do not change.

    With channels-last weights the convolutions run channels-last: on CPU a training step of
    cnn_small got about 1.6x faster, of the ResNets 1.1-1.2x. ``nn.Module.compile`` (unlike
    ``torch.compile(model)``) keeps the module and its parameter names.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``model`` in eval mode over ``x``, in batches, as float32."""
    was_training = model.training
    model.eval()
    out = torch.cat(
        [model(x[i : i + batch_size]).float() for i in range(0, max(len(x), 1), batch_size)]
    )
    model.train(was_training)
    return out


@MODELS.register("mlp")
def mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Two hidden layers of 256 and 128 units on the flattened image."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@MODELS.register("cnn_small")
def cnn_small(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Three conv-BN-ReLU blocks (16, 32, 64 channels), max-pool after the first two, global average pool, linear head."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 16),
        nn.MaxPool2d(2, ceil_mode=True),
        *block(16, 32),
        nn.MaxPool2d(2, ceil_mode=True),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def _small_image_resnet(net: torchvision.models.ResNet, in_channels: int) -> nn.Module:
    """torchvision ResNet with a 3x3 stride-1 first conv and no max-pool, for 8-32 px images."""
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@MODELS.register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _small_image_resnet(torchvision.models.resnet18(num_classes=num_classes), in_channels)


@MODELS.register("resnet50")
def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _small_image_resnet(torchvision.models.resnet50(num_classes=num_classes), in_channels)


class _BasicBlock(nn.Module):
    """He et al. (2016) CIFAR block; option-A shortcut (stride-2 subsample, zero-padded channels)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: three stages of n blocks with 16, 32, 64 channels."""

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(_BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _register_cifar_resnet(depth: int) -> None:
    @MODELS.register(f"resnet{depth}")
    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return CifarResNet(depth, in_channels, num_classes)


for _depth in (20, 32, 56, 110):
    _register_cifar_resnet(_depth)
