"""The teacher store: each teacher (or teacher assistant) is trained once and served at any saved epoch.

A teacher is identified by a content hash of the config that trains it (data, model, optimizer,
schedule, epochs, seed; for a TA also its own teacher). Checkpoints are written atomically with a
SHA-256 checksum; a file lock makes concurrent requests train it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from filelock import FileLock

from distill_core.config import Config, make_config
from distill_core.data import Splits
from distill_core.errors import TeacherError
from distill_core.models import build_model

# Keys that do not change what a teacher learns, so they do not enter its hash.
_NOT_HASHED = {
    ("data", "dir"),
    ("run", "device"),
    ("run", "teacher_store"),
    ("run", "eval_batch_size"),
    ("run", "amp"),
    ("run", "threads"),
}


def _stage_spec(cfg: Config, model: str, method: dict[str, Any], teacher: bool) -> Config:
    """A store entry's training config: ``cfg``'s data, the teacher's optimizer, schedule and length."""
    t = cfg.teacher
    tree = {
        "data": cfg.data.model_dump(),
        "model": {"name": model},
        "method": method,
        "optim": t.optim.model_dump(),
        "schedule": t.schedule.model_dump(),
        "run": {
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "device": cfg.run.device,
            "teacher_store": cfg.run.teacher_store,
            "eval_batch_size": cfg.run.eval_batch_size,
        },
    }
    if teacher:
        tree["teacher"] = t.model_dump()
    return make_config(tree)


def teacher_spec(cfg: Config) -> Config:
    """The scratch-training config of ``cfg``'s teacher."""
    return _stage_spec(cfg, cfg.teacher.model, {"name": "scratch"}, teacher=False)


def assistant_spec(cfg: Config) -> Config:
    """The KD-training config of ``cfg``'s teacher assistant (TAKD): distilled from the teacher."""
    m = cfg.method
    kd = {
        "name": "kd",
        "alpha": m.alpha,
        "temperature": m.temperature,
        "loss": m.loss,
        "weights": m.weights,
    }
    assert m.ta_model is not None
    return _stage_spec(cfg, m.ta_model, kd, teacher=True)


class Requirement(NamedTuple):
    """A store entry a run needs: its training config, the epoch loaded, the epochs it keeps."""

    spec: Config
    epoch: int
    save_epochs: list[int] | None  # None: every epoch


def required_teachers(cfg: Config) -> list[Requirement]:
    """Every store entry ``cfg`` needs, in training order (teacher, then TA for takd)."""
    if not cfg.uses_teacher:
        return []
    needed = [Requirement(teacher_spec(cfg), cfg.teacher.resolved_epoch, cfg.teacher.save_epochs)]
    if cfg.method.name == "takd":
        needed.append(Requirement(assistant_spec(cfg), cfg.teacher.epochs, None))
    return needed


def store_key(spec: Config) -> str:
    """Content hash of what a store entry learns from."""
    tree = spec.model_dump(mode="json")
    for section, key in _NOT_HASHED:
        tree[section].pop(key, None)
    if spec.uses_teacher:
        tree["teacher"].pop("save_epochs")
        tree["teacher"]["epoch"] = spec.teacher.resolved_epoch
    else:
        del tree["teacher"]
    del tree["dkel"], tree["init"]
    blob = json.dumps(tree, sort_keys=True).encode()
    return f"{spec.model.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TeacherStore:
    """A folder of trained teachers: ``<root>/<key>/epoch_NNNN.pt`` plus ``meta.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def path(self, spec: Config) -> Path:
        return self.root / store_key(spec)

    def meta(self, spec: Config) -> dict[str, Any] | None:
        meta = self.path(spec) / "meta.json"
        return json.loads(meta.read_text()) if meta.is_file() else None

    def ensure(
        self,
        spec: Config,
        *,
        save_epochs: list[int] | None = None,
        data: Splits | None = None,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Train ``spec`` unless stored (one process trains, others wait on the lock); return its meta."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.path(spec)
        with FileLock(str(folder) + ".lock"):
            meta = self.meta(spec)
            if meta is not None:
                return meta
            folder.mkdir(exist_ok=True)
            keep = set(save_epochs or range(1, spec.run.epochs + 1)) | {spec.run.epochs}
            saved: dict[str, dict[str, Any]] = {}
            say = log or (lambda _: None)
            say(
                f"training {spec.model.name} teacher {folder.name} for {spec.run.epochs} epochs (stored for reuse)"
            )

            def save(report: Any) -> None:
                say(
                    f"  teacher epoch {report.epoch}: val_acc {report.metrics.get('val_acc', float('nan')):.4f}"
                )
                if report.epoch in keep:
                    ckpt = folder / f"epoch_{report.epoch:04d}.pt"
                    weights = report.state()["method"]["nets"][0]
                    _atomic_write(ckpt, lambda tmp: torch.save(weights, tmp))
                    saved[str(report.epoch)] = {
                        "file": ckpt.name,
                        "sha256": _sha256(ckpt),
                        **report.metrics,
                    }

            from distill_core.trainer import fit

            result = fit(spec, on_epoch=save, data=data, log=log)
            meta = {
                "key": folder.name,
                "model": spec.model.name,
                "method": spec.method.name,
                "status": result.status,
                "epochs": saved,
                "final": result.final,
                "config": spec.model_dump(mode="json"),
            }
            _atomic_write(
                folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1))
            )
            return meta

    def load(self, spec: Config, epoch: int, data: Splits, device: torch.device) -> nn.Module:
        """The stored network of ``spec`` at ``epoch``, checksum-verified, in eval mode."""
        meta = self.meta(spec)
        folder = self.path(spec)
        if meta is None:
            raise TeacherError(
                f"teacher {folder.name} is not in the store {self.root}; train it first (fit does this)"
            )
        entry = meta["epochs"].get(str(epoch))
        if entry is None and meta["status"] == "diverged":
            saved = ", ".join(meta["epochs"]) or "none"
            raise TeacherError(
                f"teacher {folder.name} diverged (non-finite loss) before epoch {epoch} (saved: {saved}); "
                "lower teacher.optim.lr (that trains a new teacher) or set teacher.epoch to a saved epoch"
            )
        if entry is None:
            saved = ", ".join(meta["epochs"])
            raise TeacherError(
                f"teacher epoch {epoch} was never saved for {folder.name} (saved: {saved}); set teacher.epoch to "
                f"one of those, or delete {folder} and add {epoch} to teacher.save_epochs to retrain it"
            )
        ckpt = folder / entry["file"]
        if not ckpt.is_file() or _sha256(ckpt) != entry["sha256"]:
            raise TeacherError(
                f"teacher checkpoint {ckpt} is missing or corrupted (checksum mismatch); delete {folder} to retrain it"
            )
        model = build_model(spec.model.name, data.in_channels, data.num_classes, data.image_size)
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        return model.to(device).eval().requires_grad_(False)

    def teacher_for(
        self,
        cfg: Config,
        data: Splits,
        device: torch.device,
        log: Callable[[str], None] | None = None,
    ) -> nn.Module:
        """The network ``cfg`` distils from (the TA for takd), training the chain once if needed."""
        model = None
        for spec, epoch, save_epochs in required_teachers(cfg):
            self.ensure(spec, save_epochs=save_epochs, data=data, log=log)
            model = self.load(spec, epoch, data, device)
        assert model is not None
        return model

    def entries(self) -> list[dict[str, Any]]:
        """Meta of every stored teacher."""
        if not self.root.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/meta.json"))]
