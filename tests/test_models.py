"""Every registered model: shapes for 1 and 3 channels, small-image stems, sizes from the papers,
heads, pretrained weights and freezing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torchvision

from distill_core import METHODS, Method, fit, load_data, make_config
from distill_core.config import Config
from distill_core.errors import ConfigError
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
    *(f"plain_cnn{n}" for n in (2, 4, 6, 8, 10)),  # TAKD's plain CNNs (seed 003)
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


# --- heads, pretrained weights, freezing (seed 001) ------------------------------------------


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_declares_its_classifier_head(name: str) -> None:
    net = build_model(name, 1, 7, 8)
    head = MODELS.get(name).head(net)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert any(p is head.weight for p in net.parameters())


def digits_config(tmp_path: Path, **model: Any) -> Config:
    return make_config(
        {
            "data": {"name": "digits"},
            "model": {"name": "mlp", **model},
            "optim": {"lr": 0.05},
            "run": {"epochs": 1, "batch_size": 64, "device": "cpu", "teacher_store": str(tmp_path)},
        }
    )


def student(cfg: Config, seed: int = 0) -> Method:
    torch.manual_seed(seed)
    return METHODS.get(cfg.method.name)(cfg, load_data(cfg.data), torch.device("cpu"), None)


def test_a_state_dict_file_is_loaded_exactly(tmp_path: Path) -> None:
    torch.manual_seed(5)
    saved = build_model("mlp", 1, 10, 8).state_dict()
    torch.save(saved, tmp_path / "mlp.pt")
    method = student(digits_config(tmp_path, pretrained=str(tmp_path / "mlp.pt")))
    loaded = method.nets[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert method.notes == []
    fresh = student(digits_config(tmp_path)).nets[0].state_dict()
    assert not torch.equal(fresh["1.weight"], saved["1.weight"])


def test_a_classifier_for_other_classes_is_skipped_and_the_skip_logged(tmp_path: Path) -> None:
    torch.manual_seed(5)
    saved = build_model("mlp", 1, 3, 8).state_dict()  # a 3-class head; digits has 10
    torch.save(saved, tmp_path / "mlp3.pt")
    cfg = digits_config(tmp_path, pretrained=str(tmp_path / "mlp3.pt"))
    method = student(cfg, seed=1)
    net = method.nets[0].state_dict()
    assert torch.equal(net["1.weight"], saved["1.weight"]) and net["5.weight"].shape == (10, 128)
    assert torch.equal(net["5.weight"], student(digits_config(tmp_path), seed=1).nets[0][-1].weight)
    assert [n.split(" (")[0] for n in method.notes] == [
        "pretrained mlp3.pt: skipped 5.weight",
        "pretrained mlp3.pt: skipped 5.bias",
    ]
    lines: list[str] = []
    fit(cfg, log=lines.append)
    assert lines == method.notes


TORCHVISION_FILE = "resnet18-f37072fd.pth"  # torchvision.models.ResNet18_Weights.DEFAULT


def test_torchvision_weights_come_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(3)
    imagenet = torchvision.models.resnet18().state_dict()  # 7x7 RGB stem, 1000 classes
    torch.save(imagenet, checkpoints / TORCHVISION_FILE)
    method = student(digits_config(tmp_path, name="resnet18", pretrained="torchvision"))
    net = method.nets[0].state_dict()
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.weight"):
        assert torch.equal(net[key], imagenet[key]), key
    skipped = {n.split("skipped ")[1].split(" ")[0] for n in method.notes}
    assert skipped == {"conv1.weight", "fc.weight", "fc.bias"}  # small-image stem, 10 classes


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("resnet18", "torchvision", "hub/checkpoints/resnet18-f37072fd.pth is missing"),
        ("mlp", "torchvision", "mlp has no torchvision weights (only resnet18, resnet50)"),
        ("mlp", "nowhere.pt", "model.pretrained: weights file nowhere.pt does not exist"),
    ],
)
def test_missing_weights_are_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, pretrained: str, message: str
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        student(digits_config(tmp_path, name=model, pretrained=pretrained))
    assert message in str(err.value) and "\n" not in str(err.value)
    if pretrained == "torchvision" and model == "resnet18":
        assert "never downloaded" in str(err.value) and "TORCH_HOME" in str(err.value)


def test_weights_of_another_architecture_or_not_tensors_are_refused(tmp_path: Path) -> None:
    torch.save(build_model("cnn_small", 1, 10, 8).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(
        ConfigError,
        match=r"does not fit .*missing: 3.weight, 3.bias; unexpected: 0.weight, 1.running_mean",
    ):
        student(digits_config(tmp_path, pretrained=str(tmp_path / "cnn.pt")))
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ConfigError, match="is not a state dict of plain tensors"):
        student(digits_config(tmp_path, pretrained=str(tmp_path / "odd.pt")))


def test_freeze_trains_only_the_head_and_keeps_frozen_batch_norm_statistics(
    tmp_path: Path,
) -> None:
    cfg = digits_config(tmp_path, name="cnn_small", freeze=True)
    before = student(cfg).nets[0].state_dict()  # fit draws the initial weights from run.seed too
    states: list[dict[str, Any]] = []
    result = fit(cfg, on_epoch=lambda r: states.append(r.state()))
    after = states[-1]["method"]["nets"][0]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"13.weight", "13.bias"}  # the head; BN statistics included in the rest
    assert len(result.history) == 1
    assert len(states[-1]["optimizers"][0]["state"]) == 2  # only the head is optimised


def test_frozen_batch_norm_layers_stay_in_eval_mode(tmp_path: Path) -> None:
    method = student(digits_config(tmp_path, name="cnn_small", freeze=True))
    method.train()
    net = method.nets[0]
    assert net.training and net[-1].training
    assert [m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [False] * 3
    unfrozen = student(digits_config(tmp_path, name="cnn_small"))
    unfrozen.train()
    assert all(m.training for m in unfrozen.nets[0].modules())
