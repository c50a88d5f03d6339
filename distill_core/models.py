"""Models by name. Every builder takes ``(in_channels, num_classes, image_size)`` and returns an ``nn.Module``.

A model is declared with ``@register_model(name, head=...)``: ``head`` picks its classifier from
a built network (what ``model.freeze`` keeps trainable); ``weights`` names torchvision's ImageNet
weights of the architecture, if it has any (``model.pretrained: torchvision``).

Also what is done to any model: ``speed_up`` (memory format, compilation), ``predict``, loading
pretrained weights (``pretrained_file``, ``load_pretrained``) and freezing all but the head.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core.errors import ConfigError
from distill_core.registry import Registry

Builder = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What is declared about an architecture, and its builder."""

    name: str
    build: Builder
    head: Callable[[nn.Module], nn.Module]  # the classifier of a built network
    weights: str | None  # torchvision's ImageNet weights, if any (a get_weight name)


MODELS: Registry[ModelSpec] = Registry("model", "model.name")


def register_model(
    name: str,
    *,
    head: Callable[[nn.Module], nn.Module],
    weights: str | None = None,
) -> Callable[[Builder], Builder]:
    """Register the decorated builder as architecture ``name`` (``model.name``)."""

    def add(build: Builder) -> Builder:
        MODELS.register(name)(ModelSpec(name, build, head, weights))
        return build

    return add


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Instantiate a registered model (uses the current torch RNG for its initial weights)."""
    return MODELS.get(name).build(in_channels, num_classes, image_size)


def pretrained_file(model: str, source: str, key: str) -> Path:
    """The weights file ``source`` names for architecture ``model``; ``key`` is the config key.

    ``source`` is a path to a state-dict file, or ``torchvision``: torchvision's ImageNet weights
    of the architecture in the torch hub cache (``torch.hub.get_dir()/checkpoints``), which is
    never downloaded into.

    Raises:
        ConfigError: the file is absent, or the architecture has no torchvision weights.
    """
    if source != "torchvision":
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{key}: weights file {path} does not exist; set {key} to a state-dict file or to torchvision"
            )
        return path
    weights = MODELS.get(model).weights
    if weights is None:
        offered = [n for n in MODELS.names() if MODELS.get(n).weights is not None]
        raise ConfigError(
            f"{key}=torchvision: {model} has no torchvision weights (only {', '.join(offered)}); "
            f"set {key} to a state-dict file"
        )
    import torchvision  # not at import time: it pulls in torch._dynamo (a second per process)

    url = torchvision.models.get_weight(weights).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise ConfigError(
            f"{key}=torchvision: {path} is missing and is never downloaded; on a machine with "
            f"internet run torchvision.models.{model}(weights='DEFAULT') and copy the file it "
            f"writes to {path} (or point TORCH_HOME at a folder holding hub/checkpoints/{path.name})"
        )
    return path


def load_pretrained(net: nn.Module, path: Path) -> list[str]:
    """Load the state dict in ``path`` into ``net``; returns a note per tensor skipped.

    A tensor whose shape differs from the network's (a small-image stem, a classifier for
    another number of classes) is skipped; every other tensor of either side must match.

    Raises:
        ConfigError: the file is not a state dict of plain tensors, or of another architecture.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{path} is not a state dict of plain tensors ({first}); save one with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"{path} is not a state dict of plain tensors; save one with torch.save(model.state_dict(), path)"
        )
    own = net.state_dict()
    # Old checkpoints lack batch-norm's step counter; load_state_dict fills it in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not fit the {type(net).__name__} built here (missing: {_few(missing)}; "
            f"unexpected: {_few(unexpected)}); use weights of the same architecture"
        )
    skipped = [k for k in state if state[k].shape != own[k].shape]
    net.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return [
        f"pretrained {path.name}: skipped {k} (shape {tuple(state[k].shape)}, this network's "
        f"{tuple(own[k].shape)}: kept its initialisation)"
        for k in skipped
    ]


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") or "none"


def freeze_all_but_head(net: nn.Module, head: nn.Module) -> None:
    """Only ``head``'s parameters keep ``requires_grad`` (``model.freeze``)."""
    net.requires_grad_(False)
    head.requires_grad_(True)


def train_mode(net: nn.Module) -> None:
    """``net.train()``, except batch-norm layers whose parameters are frozen: they stay in eval
    mode, so that a frozen network keeps its running statistics as well as its weights."""
    net.train()
    for m in net.modules():
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.affine
            and not m.weight.requires_grad
        ):
            m.eval()


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


@register_model("mlp", head=lambda net: net[-1])
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


@register_model("cnn_small", head=lambda net: net[-1])
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


def _small_image_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet ``name`` with a 3x3 stride-1 first conv and no max-pool, for 8-32 px
    images (torchvision imported here, when such a model is built: it costs a second)."""
    import torchvision

    net = getattr(torchvision.models, name)(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@register_model("resnet18", head=lambda net: net.fc, weights="ResNet18_Weights.DEFAULT")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _small_image_resnet("resnet18", num_classes, in_channels)


@register_model("resnet50", head=lambda net: net.fc, weights="ResNet50_Weights.DEFAULT")
def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _small_image_resnet("resnet50", num_classes, in_channels)


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
    @register_model(f"resnet{depth}", head=lambda net: net.fc)
    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return CifarResNet(depth, in_channels, num_classes)


for _depth in (20, 32, 56, 110):
    _register_cifar_resnet(_depth)


#: TAKD's plain CNNs for 10 classes ("plane" networks of Mirzadeh et al. 2020, seed 003): conv
#: layers of n channels (3x3, batch norm, ReLU), 2x2 max-pools, then fully connected layers on the
#: flattened features; the last FC is the classifier.
PLAIN_CNNS: dict[int, list[str]] = {
    2: ["Conv16", "MaxPool", "Conv16", "MaxPool", "FC"],
    4: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "FC"],
    6: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "FC"],
    8: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool",
        "Conv128", "Conv128", "MaxPool", "FC64", "FC"],
    10: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "Conv128", "Conv128", "MaxPool",
         "Conv256", "Conv256", "Conv256", "Conv256", "MaxPool", "FC128", "FC"],
}  # fmt: skip


def plain_cnn(spec: list[str], in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A network from a ``PLAIN_CNNS`` spec. Pools round up (``ceil_mode``), so that 8-pixel
    images keep a pixel through the 10-layer net's four pools (CIFAR's 32 pixels divide evenly)."""
    modules: list[nn.Module] = []
    channels, size = in_channels, image_size
    for layer in spec:
        if layer.startswith("Conv"):
            width = int(layer.removeprefix("Conv"))
            modules += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        elif layer == "MaxPool":
            modules.append(nn.MaxPool2d(2, ceil_mode=True))
            size = (size + 1) // 2
        else:
            if not any(isinstance(m, nn.Flatten) for m in modules):
                modules.append(nn.Flatten())
                channels *= size * size
            width = int(layer.removeprefix("FC") or num_classes)
            modules.append(nn.Linear(channels, width))
            if layer != "FC":
                modules.append(nn.ReLU())
            channels = width
    return nn.Sequential(*modules)


def _register_plain_cnn(layers: int) -> None:
    @register_model(f"plain_cnn{layers}", head=lambda net: net[-1])
    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return plain_cnn(PLAIN_CNNS[layers], in_channels, num_classes, image_size)


for _layers in PLAIN_CNNS:
    _register_plain_cnn(_layers)
