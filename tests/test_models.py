"""Every registered model: shapes for 1 and 3 channels, small-image stems, sizes from the papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from distill_core.config import ConfigError
from distill_core.models import MODELS, CifarResNet, build_model

DESIGN_MODELS = {
    "resnet18",
    "resnet50",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "cnn_small",
    "mlp",
}
BIG = {"resnet50", "resnet110"}  # slow to build: checked at 8 and 32 px only


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_design_models() -> None:
    assert set(MODELS.names()) == DESIGN_MODELS


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="unknown model 'vgg'; set model.name to one of: cnn_small"
    ):
        build_model("vgg", 3, 10, 32)


SHAPES = [(1, 8, 10), (1, 28, 10), (3, 32, 100)]
FORWARD_CASES = [
    (name, *shape)
    for name in MODELS.names()
    for shape in SHAPES
    if name not in BIG or shape[1] != 28
]


@pytest.mark.parametrize(("name", "channels", "size", "classes"), FORWARD_CASES)
def test_forward_maps_batch_to_class_logits(
    name: str, channels: int, size: int, classes: int
) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, classes, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "cnn_small", "resnet20", "resnet18"])
def test_train_mode_backward_gives_finite_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, 10, 16).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("name", ["mlp", "cnn_small", "resnet20"])
def test_initial_weights_follow_the_torch_seed(name: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, 1, 10, 8).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_resnets_have_a_small_image_stem(name: str, channels: int) -> None:
    model = build_model(name, channels, 10, 32)
    conv = model.conv1
    assert (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) == (
        channels,
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert isinstance(model.maxpool, nn.Identity)


def test_resnet18_has_the_cifar_parameter_count() -> None:
    # the well-known CIFAR ResNet-18 (3x3 stem, no max-pool, 10 classes): 11,173,962 parameters
    assert n_params(build_model("resnet18", 3, 10, 32)) == 11_173_962


@pytest.mark.parametrize(
    ("depth", "millions"),
    [(20, 0.27), (32, 0.46), (56, 0.85), (110, 1.7)],  # He et al. (2016), Table 6
)
def test_cifar_resnets_match_the_paper(depth: int, millions: float) -> None:
    model = build_model(f"resnet{depth}", 3, 10, 32)
    assert isinstance(model, CifarResNet)
    assert n_params(model) / 1e6 == pytest.approx(millions, rel=0.03)
    assert len(model.layers) == 3 * (depth - 2) // 6  # three stages of n blocks
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # depth counts the convolutions plus the final linear layer


def test_cifar_resnet_downsamples_twice() -> None:
    model = build_model("resnet20", 3, 10, 32).eval()
    shapes = []
    hooks = [
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
        for block in model.layers
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes[0] == (1, 16, 32, 32)
    assert shapes[3] == (1, 32, 16, 16)
    assert shapes[-1] == (1, 64, 8, 8)


def test_cnn_small_is_three_conv_bn_blocks() -> None:
    model = build_model("cnn_small", 1, 10, 8)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
