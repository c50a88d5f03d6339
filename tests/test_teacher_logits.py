"""The teacher-logit cache: computed once per teacher and data, stored in the teacher store, never stale."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import distill_core.teacher_logits as teacher_logits
from distill_core import FitResult, TeacherStore, fit, fit_epochs, load_data, make_config
from distill_core.config import Config
from distill_core.data import Batch
from distill_core.methods import METHODS
from distill_core.methods.kd import KD
from distill_core.models import build_model, predict
from distill_core.teachers import teacher_spec


def config(store: Path, **overrides: Any) -> Config:
    """KD on digits: a 2-epoch cnn_small teacher (it has batch norm), an mlp student, 2 epochs."""
    tree = {
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "teacher": {"model": "cnn_small", "epochs": 2, "schedule": {"name": "constant"}},
        "method": {"name": "kd"},
        "run": {"epochs": 2, "batch_size": 64, "device": "cpu", "teacher_store": str(store)},
    }
    return make_config(tree, overrides)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the teacher (no logits), trained once for the module."""
    root = tmp_path_factory.mktemp("store")
    TeacherStore(root).ensure(teacher_spec(config(root)), train=fit_epochs)
    return root


@pytest.fixture
def store(trained_store: Path, tmp_path: Path) -> Path:
    """A private copy of ``trained_store`` (the store path is not part of the key)."""
    shutil.copytree(trained_store, tmp_path / "store")
    return tmp_path / "store"


def counted_predictions(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    """Rows of every ``predict`` call made through ``module``, per call."""
    rows: list[int] = []
    real = module.predict

    def counting(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        rows.append(len(x))
        return real(model, x, batch_size)

    monkeypatch.setattr(module, "predict", counting)
    return rows


@pytest.fixture
def predictions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the cache computed teacher logits for, per computation."""
    return counted_predictions(monkeypatch, teacher_logits)


def logit_files(store: Path, cfg: Config) -> list[Path]:
    return sorted((TeacherStore(store).path(teacher_spec(cfg)) / "logits").glob("*.pt"))


def close_histories(a: FitResult, b: FitResult, tol: float = 1e-5) -> None:
    assert a.status == b.status and len(a.history) == len(b.history)
    for ra, rb in [*zip(a.history, b.history, strict=True), (a.final, b.final)]:
        assert ra.keys() == rb.keys()
        for key in ra.keys() - {"epoch_time"}:
            assert ra[key] == pytest.approx(rb[key], rel=tol, abs=tol), key


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_cached_and_per_batch_teacher_logits_give_the_same_run(
    store: Path, predictions: list[int], monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    cfg = config(store, **{"method.loss": loss})
    cached = fit(cfg)
    assert predictions == [len(load_data(cfg.data).train_y)]  # one pass over the train split
    monkeypatch.setattr(KD, "uses_logit_cache", lambda self: False)
    per_batch = fit(cfg)
    assert len(predictions) == 1
    close_histories(cached, per_batch)
    assert cached.final["val_agreement"] > 0.5  # the student did learn from this teacher


def test_cached_and_per_batch_logits_both_come_from_the_eval_mode_teacher(
    tmp_path: Path, predictions: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A teacher handed over in train mode is put in eval mode: batch norm uses its running stats."""
    cfg = config(tmp_path)  # no stored teacher here: the cache stays in memory
    data = load_data(cfg.data)
    torch.manual_seed(0)
    teacher = build_model("cnn_small", data.in_channels, data.num_classes, data.image_size).train()
    with torch.no_grad():  # running statistics far from the batch's own
        teacher[1].running_mean.fill_(3.0)
    method = METHODS.get("kd")(cfg, data, torch.device("cpu"), teacher)
    assert not teacher.training
    batch = Batch(data.train_x[5:69], data.train_y[5:69], torch.arange(5, 69))
    cached = method.teacher_logits(batch)
    assert predictions == [len(data.train_y)]
    monkeypatch.setattr(KD, "uses_logit_cache", lambda self: False)
    per_batch = method.teacher_logits(batch)
    assert len(predictions) == 1
    torch.testing.assert_close(cached, per_batch, rtol=1e-5, atol=1e-5)
    train_mode = teacher.train()(batch.x).detach()
    assert (train_mode - per_batch).abs().max() > 0.1
    assert not any(tmp_path.iterdir())


def test_logits_are_stored_once_and_reused_from_disk(store: Path, predictions: list[int]) -> None:
    cfg = config(store, **{"run.epochs": 1})
    data = load_data(cfg.data)
    first = fit(cfg)
    (path,) = logit_files(store, cfg)
    assert path.name.startswith("epoch_0002-")  # the teacher's last epoch
    saved = torch.load(path, weights_only=True)
    assert saved.shape == (len(data.train_y), data.num_classes) and saved.dtype == torch.float32
    teacher = TeacherStore(store).load(teacher_spec(cfg), 2, data, torch.device("cpu"))
    torch.testing.assert_close(saved, predict(teacher, data.train_x, 1024))

    close_histories(fit(cfg), first, tol=0)  # from disk
    close_histories(fit(cfg), first, tol=0)
    assert len(predictions) == 1 and logit_files(store, cfg) == [path]


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"PK\x03\x04 truncated"),
        lambda p: p.write_bytes(b""),
        lambda p: torch.save(torch.zeros(3, 10), p),  # wrong shape
        lambda p: torch.save({"logits": 1}, p),  # not a tensor
    ],
    ids=["corrupted", "empty", "wrong_shape", "not_a_tensor"],
)
def test_a_damaged_file_is_recomputed_and_rewritten(
    store: Path, predictions: list[int], damage: Any
) -> None:
    cfg = config(store, **{"run.epochs": 1})
    first = fit(cfg)
    (path,) = logit_files(store, cfg)
    good = torch.load(path, weights_only=True)
    damage(path)
    close_histories(fit(cfg), first, tol=0)
    assert len(predictions) == 2
    torch.testing.assert_close(torch.load(path, weights_only=True), good, rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_other_data_or_teacher_epoch_never_reuse_stored_logits(
    store: Path, predictions: list[int]
) -> None:
    cfg = config(store, **{"run.epochs": 1})
    data = load_data(cfg.data)
    fit(cfg, data=data)
    fit(config(store, **{"run.epochs": 1, "teacher.epoch": 1}), data=data)  # earlier checkpoint
    fewer = replace(data, train_x=data.train_x[:300], train_y=data.train_y[:300])
    fit(cfg, data=fewer)  # same teacher, other training tensor (e.g. passed in by a runner)
    shifted = replace(data, train_x=data.train_x + 0.5)
    fit(cfg, data=shifted)  # same shape, other values
    n = len(data.train_y)
    assert predictions == [n, n, 300, n]
    names = [p.name for p in logit_files(store, cfg)]
    assert len(names) == 4 and sum(n.startswith("epoch_0001-") for n in names) == 1


def test_augmented_data_runs_the_teacher_on_every_batch(
    tmp_path: Path, predictions: list[int]
) -> None:
    cfg = config(
        tmp_path,
        **{
            **{"data.name": "synthetic", "data.augment": True, "teacher.epochs": 1},
            **{"run.epochs": 1, "run.batch_size": 50},
        },
    )
    seen: list[tuple[int, bool]] = []
    real = TeacherStore.teacher_for

    def watched(self: TeacherStore, *args: Any, **kwargs: Any) -> nn.Module:
        teacher = real(self, *args, **kwargs)
        teacher.register_forward_pre_hook(
            lambda m, inputs: seen.append((len(inputs[0]), m.training))
        )
        return teacher

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TeacherStore, "teacher_for", watched)
        result = fit(cfg)
    assert result.status == "completed" and predictions == []
    data = load_data(cfg.data)
    n = len(data.train_y)
    # the fidelity rows (train[:1024]), val and test once, before training; then every batch
    sizes = [min(1024, n), len(data.val_y), len(data.test_y), *[50] * (n // 50), n % 50]
    assert [size for size, _ in seen] == sizes
    assert not any(training for _, training in seen)
    assert not logit_files(tmp_path, cfg)


def test_fixed_rows_teacher_logits_are_computed_once_per_process(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fidelity rows, val and test: a reused trial process gets them from memory, the same run."""
    import distill_core.trainer as trainer

    rows = counted_predictions(monkeypatch, trainer)
    monkeypatch.setattr(trainer, "_FIXED_LOGITS", {})
    cfg = config(store, **{"run.epochs": 1})
    first = fit(cfg)
    data = load_data(cfg.data)
    fixed = sorted([min(1024, len(data.train_y)), len(data.val_y), len(data.test_y)])
    assert len(trainer._FIXED_LOGITS) == 3
    once, rows[:] = list(rows), []  # the teacher's and the student's predictions
    again = fit(cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 1})}))
    for n in fixed:  # the teacher's on the fixed rows are not computed again
        once.remove(n)
    assert sorted(rows) == sorted(once) and len(trainer._FIXED_LOGITS) == 3
    assert again.final != first.final  # another student
    close_histories(first, fit(cfg), tol=0)  # and the same run as with computed logits
