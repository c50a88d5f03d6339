"""Methods: DML by hand, ESKD, TAKD, every method end to end (PCL and DKEL: test_online_methods.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core import load_config, make_config
from distill_core.config import Config
from distill_core.data import Batch, Splits, load_data
from distill_core.errors import ConfigError
from distill_core.methods import METHODS, Method
from distill_core.teachers import TeacherStore, assistant_spec, teacher_spec
from distill_core.trainer import EpochReport, fit, fit_epochs

CPU = torch.device("cpu")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def config(store: Path, **overrides: Any) -> Config:
    """A small digits run (640 training images): cnn_small students, mlp teacher, 2 epochs, CPU."""
    tree = {
        "data": {"name": "digits", "subset": 640},
        "model": {"name": "cnn_small"},
        "teacher": {"model": "mlp", "epochs": 2},
        "optim": {"lr": 0.05},
        "run": {"epochs": 2, "batch_size": 64, "device": "cpu", "teacher_store": str(store)},
    }
    return make_config(tree, overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher store for the module, so that each teacher is trained once."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_data(config(Path("unused")).data)


def build(cfg: Config, data: Splits, teacher: nn.Module | None = None) -> Method:
    torch.manual_seed(cfg.run.seed)
    return METHODS.get(cfg.method.name)(cfg, data, CPU, teacher)


def first(data: Splits, n: int) -> Batch:
    """The first ``n`` training examples as a batch."""
    return Batch(data.train_x[:n], data.train_y[:n], torch.arange(n))


def sgd(method: Method, lr: float) -> list[torch.optim.Optimizer]:
    return [torch.optim.SGD(net.parameters(), lr=lr) for net in method.nets]


# --- DML ------------------------------------------------------------------------------------


def kl_by_hand(target: torch.Tensor, student: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(p_target^tau || p_student^tau) * tau^2, averaged over the batch."""
    p = torch.softmax(target / tau, 1)
    return (p * (p.log() - torch.log_softmax(student / tau, 1))).sum(1).mean() * tau**2


def test_dml_two_peers_equals_hand_computation(tmp_path: Path, digits: Splits) -> None:
    cfg = config(tmp_path, **{"method.name": "dml", "model.name": "mlp", "method.temperature": 2.0})
    method = build(cfg, digits)
    net0, net1 = (copy.deepcopy(n) for n in method.nets)
    x, y = digits.train_x[:32], digits.train_y[:32]

    z0, z1 = net0(x), net1(x)
    loss0 = F.cross_entropy(z0, y) + kl_by_hand(z1.detach(), z0, 2.0)
    with torch.no_grad():  # peer 0 takes its SGD step first ...
        grads0 = torch.autograd.grad(loss0, list(net0.parameters()))
        for p, g in zip(net0.parameters(), grads0, strict=True):
            p -= 0.1 * g
    fresh_z0 = net0(x).detach()  # ... and peer 1 learns from its updated outputs
    loss1 = F.cross_entropy(z1, y) + kl_by_hand(fresh_z0, z1, 2.0)
    stale_loss1 = F.cross_entropy(z1, y) + kl_by_hand(z0.detach(), z1, 2.0)
    grads1 = torch.autograd.grad(loss1, list(net1.parameters()))

    loss = method.train_step(first(digits, 32), 0, sgd(method, 0.1)).item()
    assert loss == pytest.approx((loss0.item() + loss1.item()) / 2, rel=1e-6)
    assert abs(loss1.item() - stale_loss1.item()) > 1e-4  # the in-turn update matters here
    for name, a, b in [("peer0", method.nets[0], net0)]:
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    for p1, p_old, g in zip(method.nets[1].parameters(), net1.parameters(), grads1, strict=True):
        torch.testing.assert_close(p1, p_old - 0.1 * g, rtol=0, atol=1e-6)


def test_dml_counts_each_batch_once_in_bn_statistics(tmp_path: Path, digits: Splits) -> None:
    cfg = config(tmp_path, **{"method.name": "dml", "method.peers": 3})
    method = build(cfg, digits)
    method.train_step(first(digits, 64), 0, sgd(method, 0.1))
    assert [net[1].num_batches_tracked.item() for net in method.nets] == [1, 1, 1]


def test_dml_peers_may_differ(tmp_path: Path, digits: Splits) -> None:
    cfg = config(tmp_path, **{"method.name": "dml", "method.peer_models": ["mlp", "cnn_small"]})
    method = build(cfg, digits)
    assert [type(n[0]).__name__ for n in method.nets] == ["Flatten", "Conv2d"]


# --- ESKD, TAKD, early-stopped teachers -----------------------------------------------------


class Forbidden(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher must not run once KD has stopped")


def test_eskd_kd_weight_is_zero_after_the_stop_epoch(tmp_path: Path, digits: Splits) -> None:
    cfg = config(
        tmp_path,
        **{"method.name": "eskd", "method.kd_stop_epoch": 2, "run.epochs": 4, "model.name": "mlp"},
    )
    method = build(cfg, digits, teacher=Forbidden())
    assert [method.kd_weights(e).get("kl", 0.0) for e in range(4)] == [0.9, 0.9, 0.0, 0.0]
    assert method.kd_weights(2) == {"ce": 1.0}
    batch = first(digits, 64)
    with torch.no_grad():
        ce = F.cross_entropy(method.nets[0](batch.x), batch.y).item()
    assert method.train_step(batch, 2, sgd(method, 0.1)).item() == pytest.approx(ce, rel=1e-6)


def test_takd_trains_the_assistant_once_across_runs(tmp_path: Path) -> None:
    overrides = {
        "data.name": "synthetic",
        "model.name": "mlp",
        "method.name": "takd",
        "method.ta_model": "cnn_small",
        "teacher.epochs": 1,
        "run.epochs": 1,
    }
    trained: list[str] = []

    def log(line: str) -> None:
        if line.startswith("training"):
            trained.append(line)

    fit(config(tmp_path, **overrides), log=log)
    assert len(trained) == 2  # the teacher, then the TA
    fit(config(tmp_path, **overrides, **{"run.seed": 1}), log=log)
    assert len(trained) == 2
    entries = TeacherStore(tmp_path).entries()
    assert sorted((e["method"], e["model"]) for e in entries) == [
        ("kd", "cnn_small"),
        ("scratch", "mlp"),
    ]


@pytest.mark.parametrize("name", ["kd", "eskd", "takd"])
def test_teacher_epoch_selects_an_early_checkpoint(name: str, store: Path) -> None:
    cfg = config(
        store,
        **{"method.name": name, "method.ta_model": "mlp", "method.kd_stop_epoch": 1},
        **{"teacher.epoch": 1, "run.epochs": 1},
    )
    result = fit(cfg)
    teachers = TeacherStore(store)
    saved = teachers.meta(teacher_spec(cfg))["epochs"]
    assert saved["1"]["val_acc"] != saved["2"]["val_acc"]
    if name == "takd":  # the TA distils from teacher epoch 1; the student from the TA
        ta = teachers.meta(assistant_spec(cfg))
        assert ta["config"]["teacher"]["epoch"] == 1
        assert result.final["teacher_val_acc"] == ta["final"]["val_acc"]
    else:
        assert result.final["teacher_val_acc"] == saved["1"]["val_acc"]


# --- config errors and examples -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        ({"method.name": "dkel", "method.peers": 1}, "set method.peers >= 2"),
        ({"method.name": "pcl", "method.peers": 1}, "set method.peers >= 2"),
        ({"method.name": "dml", "method.peers": 1}, "set method.peers >= 2"),
        ({"method.name": "takd"}, "set method.ta_model"),
        ({"method.name": "eskd"}, "needs method.kd_stop_epoch"),
        ({"method.name": "pcl", "method.peer_models": ["mlp", "mlp"]}, "set method.name=dml"),
        ({"method.name": "dml", "method.peer_models": ["mlp"]}, "make them agree"),
        ({"method.name": "dkel", "dkel.decay": "step"}, "dkel.decay"),
        ({"method.name": "takd", "method.ta_model": "vgg"}, "set method.ta_model to one of"),
        ({"method.name": "dml", "method.peer_models": ["mlp", "vgg"]}, "set method.peer_models"),
        ({"method.name": "dml", "method.peers": 1, "method.peer_models": ["mlp"]}, "peers >= 2"),
    ],
)
def test_impossible_configs_are_one_line_errors(
    overrides: dict[str, Any], fix: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, **overrides)
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_only_a_method_module_compares_method_names() -> None:
    """The config, the store and the trainer ask the method class what it needs."""
    import re

    names = "|".join(METHODS.names())
    compare = re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({names})["']""")
    root = Path(__file__).resolve().parents[1] / "distill_core"
    found = [
        f"{path.relative_to(root)}:{i}: {line.strip()}"
        for path in root.rglob("*.py")
        if path.parent.name != "methods"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("name", ["dml", "pcl", "dkel", "takd", "eskd"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(EXAMPLES / f"{name}_digits.yaml")
    assert cfg.method.name == name and cfg.data.name == "digits"


# --- every registered method end to end -----------------------------------------------------

COMMON = ["train_loss", "lr", "epoch_time", "crashed", "val_acc", "val_nll", "val_ece"]
WITH_TEACHER = [
    "val_agreement",
    "val_kl",
    "teacher_val_acc",
    "val_acc_gap",
    "val_logit_diff",
    "train_agreement",
    "train_pred_kl",
]
WITH_PEERS = ["peer0_val_acc", "peer1_val_acc", "val_acc_mean", "val_acc_std", "peer1_crashed"]


def test_methods_declare_what_they_need() -> None:
    declared = {name: METHODS.get(name) for name in METHODS.names()}
    assert {n for n, m in declared.items() if m.needs_teacher} == {"kd", "eskd", "takd"}
    assert {n for n, m in declared.items() if m.has_peers} == {"dml", "pcl", "dkel"}
    assert {n: m.teacher_stages for n, m in declared.items() if m.teacher_stages} == {
        "kd": ("teacher",),
        "eskd": ("teacher",),
        "takd": ("teacher", "assistant"),
    }
    for method in declared.values():  # a method distils from a stored network iff it names one
        assert method.needs_teacher == bool(method.teacher_stages)
        assert not (method.needs_teacher and method.has_peers)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_and_reports(name: str, store: Path) -> None:
    method = METHODS.get(name)
    # Keys a method does not read are ignored; these make every registered method valid.
    cfg = config(
        store, **{"method.name": name, "method.ta_model": "mlp", "method.kd_stop_epoch": 2}
    )
    result = fit(cfg)
    assert result.status == "completed"
    first, last = result.history
    assert last["train_loss"] < first["train_loss"]
    expected = COMMON + WITH_TEACHER * method.needs_teacher + WITH_PEERS * method.has_peers
    for metrics in (first, last, result.final):
        assert set(expected) <= set(metrics), set(expected) - set(metrics)
    # Well above chance (0.1); takd's 2-epoch mlp assistant is the weakest teacher here.
    assert 0.3 < result.final["val_acc"] <= 1.0
    assert 0.3 < result.final["test_acc"] <= 1.0


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dml", "dkel"])
def test_resume_from_mid_training_matches_an_uninterrupted_run(name: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, **{"method.name": name, "run.epochs": 3, "method.peers": 3})
    captured: dict[str, Any] = {}

    def capture(report: EpochReport) -> None:
        if report.epoch == 1:  # the state holds live tensors: copy it now
            captured["state"] = copy.deepcopy(report.state())

    whole = fit(cfg, on_epoch=capture)
    resumed = fit(cfg, resume_from=captured["state"])

    def timeless(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if k != "epoch_time"}

    assert len(resumed.history) == 3
    assert [timeless(h) for h in resumed.history] == [timeless(h) for h in whole.history]
    assert timeless(resumed.final) == timeless(whole.final)


# --- speed: no waiting for the device within an epoch -----------------------------------------

DEVICE_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("name", METHODS.names())
def test_training_steps_never_read_values_back_from_the_device(
    name: str, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each such read would wait for the queued work: the loop reads once per epoch."""
    import distill_core.trainer as trainer

    reads: list[str] = []
    watching = {"on": False}

    def counted(method_name: str) -> Any:
        real = getattr(torch.Tensor, method_name)

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if watching["on"]:
                reads.append(method_name)
            return real(self, *args, **kwargs)

        return read

    real_batches = trainer.batches

    def watched(*args: Any, **kwargs: Any) -> Any:
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            watching["on"] = i > 0  # the first step may fill a cache (kd's teacher logits)
            yield batch
        watching["on"] = False

    for read_name in DEVICE_READS:
        monkeypatch.setattr(torch.Tensor, read_name, counted(read_name))
    monkeypatch.setattr(trainer, "batches", watched)
    cfg = config(
        store, **{"method.name": name, "method.ta_model": "mlp", "method.kd_stop_epoch": 1}
    )
    result = fit(cfg)
    assert result.status == "completed" and len(result.history) == 2
    assert reads == []


def test_kd_from_a_bf16_teacher_learns_as_from_an_fp32_one(store: Path) -> None:
    """run.teacher_amp (the teacher's per-batch inference in bfloat16, with augmentation): the
    teacher's predictions and the student's accuracy and agreement are unchanged beyond noise."""
    kw = {
        "method.name": "kd",
        "data.augment": True,
        "teacher.model": "cnn_small",
        "teacher.epochs": 2,
    }
    kw["run.epochs"] = 3
    finals = {amp: fit(config(store, **kw, **{"run.teacher_amp": amp})).final for amp in (0, 1)}
    fp32, bf16 = finals[False], finals[True]
    n = fp32["val_n"]
    for metric in ("val_acc", "val_agreement"):
        p = fp32[metric]
        se = (2 * max(p * (1 - p), 1 / n) / n) ** 0.5  # of a difference of two proportions
        assert abs(bf16[metric] - p) <= 3 * se, (metric, p, bf16[metric])
    # The teacher itself: bf16 logits pick the same class as fp32 on (nearly) every image.
    cfg = config(store, **kw, **{"run.teacher_amp": True})
    data = load_data(cfg.data)
    teacher = TeacherStore(store).teacher_for(cfg, data, CPU, train=fit_epochs)
    method = build(cfg, data, teacher)
    batch = first(data, 256)
    with torch.inference_mode():
        exact = teacher(batch.x).argmax(1)
    assert (method.teacher_logits(batch).argmax(1) == exact).float().mean() >= 0.97
