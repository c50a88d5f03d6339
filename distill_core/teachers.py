"""The teacher store: each teacher (or teacher assistant) is trained once and served at any saved epoch.

A teacher is identified by a content hash of the config that trains it (data, model, optimizer,
schedule, epochs, seed; for a TA also its own teacher). Checkpoints are written atomically with a
SHA-256 checksum; a lease (a file lock, or a lease object on S3) makes concurrent requests train it
once. The store is a local folder or an ``s3://`` URI (``distill_core.storage``).

The store trains an entry with the trainer it is handed (``train=distill_core.fit_epochs``), so
that the trainer, which asks the store for its teacher, and the store do not import each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn as nn

from distill_core.config import Config, TeacherConfig, from_tree
from distill_core.data import Splits
from distill_core.errors import TeacherError, require_writable
from distill_core.methods import METHODS
from distill_core.models import build_model, pretrained_file
from distill_core.schedules import scale_epochs
from distill_core.storage import is_local, lease, location, remove_tree, write_atomic

if TYPE_CHECKING:
    from upath import UPath

    from distill_core.trainer import EpochReport

#: How the store trains an entry: ``distill_core.fit_epochs`` (called as ``train(spec, data=, log=)``).
Train = Callable[..., Iterator["EpochReport"]]

# Keys that do not change what a teacher learns, so they do not enter its hash.
_NOT_HASHED = {
    ("data", "dir"),
    ("run", "device"),
    ("run", "teacher_store"),
    ("run", "eval_batch_size"),
    ("run", "amp"),
    ("run", "teacher_amp"),
    ("run", "threads"),
    ("run", "channels_last"),
    ("run", "compile"),
}


def _stage_spec(
    cfg: Config,
    model: str,
    method: dict[str, Any],
    teacher: bool,
    model_keys: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> Config:
    """A store entry's training config: ``cfg``'s data, the teacher's optimizer, schedule and length.

    ``epochs`` shortens the run, with the schedule scaled to it (``schedules.scale_epochs``).
    """
    t = cfg.teacher
    schedule = t.schedule.model_dump()
    if epochs is not None:
        schedule = scale_epochs(schedule, t.epochs, epochs)
    tree = {
        "data": cfg.data.model_dump(),
        "model": {"name": model, **(model_keys or {})},
        "method": method,
        "optim": t.optim.model_dump(),
        "schedule": schedule,
        "run": {
            "epochs": epochs or t.epochs,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "device": cfg.run.device,
            "teacher_store": cfg.run.teacher_store,
            "eval_batch_size": cfg.run.eval_batch_size,
        },
    }
    if teacher:
        tree["teacher"] = t.model_dump()
    return from_tree(tree)


def teacher_spec(cfg: Config) -> Config:
    """The scratch-training config of ``cfg``'s teacher.

    A ``shortened`` early-stopped teacher (``teacher.early_stop``) is its own entry, trained to
    completion in ``teacher.epoch`` epochs; a ``snapshot`` is a checkpoint of the full run.
    """
    t = cfg.teacher
    weights = {"pretrained": t.pretrained, "freeze": t.freeze}
    epochs = t.epoch if _shortened(t) else None
    return _stage_spec(cfg, t.model, {"name": "scratch"}, False, weights, epochs)


def _shortened(t: TeacherConfig) -> bool:
    return t.early_stop == "shortened" and t.resolved_epoch < t.epochs


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


_STAGES: dict[str, Callable[[Config], Requirement]] = {
    "teacher": lambda cfg: Requirement(
        teacher_spec(cfg),
        cfg.teacher.resolved_epoch,
        [cfg.teacher.resolved_epoch] if _shortened(cfg.teacher) else cfg.teacher.save_epochs,
    ),
    "assistant": lambda cfg: Requirement(assistant_spec(cfg), cfg.teacher.epochs, None),
}


def uses_teacher(cfg: Config) -> bool:
    """Whether a run of ``cfg`` loads a network from the teacher store.

    It does when its method distils from one, or when ``init.interp_lambda`` starts the student
    from the teacher's weights.
    """
    return METHODS.get(cfg.method.name).needs_teacher or cfg.init.interp_lambda is not None


def required_teachers(cfg: Config) -> list[Requirement]:
    """Every store entry ``cfg`` needs, in training order (the method's ``teacher_stages``)."""
    if not uses_teacher(cfg):
        return []
    stages = METHODS.get(cfg.method.name).teacher_stages or ("teacher",)  # interp_lambda alone
    return [_STAGES[stage](cfg) for stage in stages]


def store_key(spec: Config) -> str:
    """Content hash of what a store entry learns from."""
    tree = spec.model_dump(mode="json")
    for section, key in _NOT_HASHED:
        tree[section].pop(key, None)
    if uses_teacher(spec):
        tree["teacher"].pop("save_epochs")
        tree["teacher"]["epoch"] = spec.teacher.resolved_epoch
    else:
        del tree["teacher"]
    del tree["dkel"], tree["init"]
    for section in ("model", "teacher"):
        if section in tree:
            _hash_weights(tree[section], "model" if section == "teacher" else "name")
    blob = json.dumps(tree, sort_keys=True).encode()
    return f"{spec.model.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


# Keys added after the first stored teachers: hashed only when set, so those keep their keys.
_LATER_KEYS = {"pretrained": None, "freeze": False, "early_stop": "snapshot"}


def _hash_weights(section: dict[str, Any], arch_key: str) -> None:
    """In a dumped model/teacher section: drop unset later keys; name pretrained weights by content."""
    for key, default in _LATER_KEYS.items():
        if section.get(key, default) == default:
            section.pop(key, None)
    if "pretrained" in section:
        path = pretrained_file(section[arch_key], section["pretrained"], "teacher.pretrained")
        section["pretrained"] = _sha256(path.read_bytes())


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class TeacherStore:
    """A folder of trained teachers: ``<root>/<key>/epoch_NNNN.pt`` plus ``meta.json``.

    ``meta.json`` is written last, so an entry without it (a run killed mid-training) is not
    stored and is trained again from scratch. A checkpoint whose SHA-256 differs from the one in
    ``meta.json`` is reported and its entry retrained; checkpoints load with ``weights_only=True``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = location(root)

    def path(self, spec: Config) -> UPath:
        return self.root / store_key(spec)

    def meta(self, spec: Config) -> dict[str, Any] | None:
        """The entry's meta, or None when it is not (completely) stored."""
        return _read_meta(self.path(spec) / "meta.json")

    def ensure(
        self,
        spec: Config,
        *,
        train: Train,
        save_epochs: list[int] | None = None,
        epoch: int | None = None,
        data: Splits | None = None,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Train ``spec`` with ``train`` unless stored (one process trains, others wait on the lock).

        Returns the entry's meta.

        With ``epoch``, that checkpoint must be stored: a corrupted one is reported and the entry
        retrained; one never saved raises ``TeacherError``.
        """
        say = log or (lambda _: None)
        folder = self.path(spec)
        meta = self._intact(folder, epoch, warn=None)
        if meta is None:
            with self._locked(folder):
                meta = self._intact(folder, epoch, warn=say)  # another process may have trained it
                if meta is None:
                    meta = self._train(spec, folder, train, save_epochs, data, log, say)
        if epoch is not None:
            _entry(meta, folder, epoch)
        return meta

    @contextmanager
    def _locked(self, folder: UPath) -> Iterator[None]:
        """Hold the entry's lease (freed when this process dies: by the OS, or by going stale)."""
        with ExitStack() as held:
            try:
                held.enter_context(lease(folder))
            except OSError as exc:
                raise TeacherError(
                    f"cannot write the teacher store {self.root} ({exc.strerror or exc}); "
                    "set run.teacher_store to a writable folder"
                ) from None
            yield

    def _intact(
        self, folder: UPath, epoch: int | None, warn: Callable[[str], None] | None
    ) -> dict[str, Any] | None:
        """The stored meta if ``epoch``'s checkpoint (when saved) matches its checksum, else None."""
        meta = _read_meta(folder / "meta.json")
        if meta is None or epoch is None or str(epoch) not in meta["epochs"]:
            return meta
        ckpt = folder / meta["epochs"][str(epoch)]["file"]
        if _read_checked(ckpt, meta["epochs"][str(epoch)]["sha256"]) is not None:
            return meta
        if warn is not None:
            warn(
                f"warning: teacher checkpoint {ckpt} is missing or corrupted (checksum mismatch); "
                f"retraining teacher {folder.name}"
            )
        return None

    def _train(
        self,
        spec: Config,
        folder: UPath,
        train: Train,
        save_epochs: list[int] | None,
        data: Splits | None,
        log: Callable[[str], None] | None,
        say: Callable[[str], None],
    ) -> dict[str, Any]:
        """Train the entry from scratch into ``folder`` (the caller holds its lock)."""
        remove_tree(folder)  # what a killed run or a corrupted entry left
        if is_local(folder):
            folder.mkdir()
        keep = set(save_epochs or range(1, spec.run.epochs + 1)) | {spec.run.epochs}
        saved: dict[str, dict[str, Any]] = {}
        say(
            f"training {spec.model.name} teacher {folder.name} for {spec.run.epochs} epochs (stored for reuse)"
        )

        result = None
        for report in train(spec, data=data, log=log):
            result = report.result
            if result is not None and result.status == "diverged":
                break
            say(
                f"  teacher epoch {report.epoch}: val_acc {report.metrics.get('val_acc', float('nan')):.4f}"
            )
            if report.epoch in keep:
                ckpt = folder / f"epoch_{report.epoch:04d}.pt"
                buffer = io.BytesIO()
                torch.save(report.state()["method"]["nets"][0], buffer)
                blob = buffer.getvalue()
                write_atomic(ckpt, blob)
                saved[str(report.epoch)] = {
                    "file": ckpt.name,
                    "sha256": _sha256(blob),
                    **report.metrics,
                }
        assert result is not None, "the trainer ended without a result"
        meta = {
            "key": folder.name,
            "model": spec.model.name,
            "method": spec.method.name,
            "status": result.status,
            "epochs": saved,
            "final": result.final,
            "config": spec.model_dump(mode="json"),
        }
        write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())
        return meta

    def load(self, spec: Config, epoch: int, data: Splits, device: torch.device) -> nn.Module:
        """The stored network of ``spec`` at ``epoch``, checksum-verified, in eval mode.

        Raises:
            TeacherError: not stored, epoch never saved, checkpoint corrupted or not plain tensors.
        """
        meta = self.meta(spec)
        folder = self.path(spec)
        if meta is None:
            raise TeacherError(
                f"teacher {folder.name} is not in the store {self.root}; train it first (fit does this)"
            )
        entry = _entry(meta, folder, epoch)
        ckpt = folder / entry["file"]
        blob = _read_checked(ckpt, entry["sha256"])
        if blob is None:
            raise TeacherError(
                f"teacher checkpoint {ckpt} is missing or corrupted (checksum mismatch); run again "
                f"(fit retrains it) or delete {folder}"
            )
        try:
            weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise TeacherError(
                f"teacher checkpoint {ckpt} is not plain tensors and was refused ({first}); "
                f"delete {folder} to retrain it"
            ) from None
        model = build_model(spec.model.name, data.in_channels, data.num_classes, data.image_size)
        model.load_state_dict(weights)
        return model.to(device).eval().requires_grad_(False)

    def check(self, cfg: Config) -> None:
        """Raise now, writing nothing, what ``fit`` would raise on the store for ``cfg``.

        Raises:
            TeacherError: a stored teacher never saved the epoch asked for, or diverged before it.
            UserError: the store cannot be written and a teacher still has to be trained.
        """
        for spec, epoch, _ in required_teachers(cfg):
            meta = self.meta(spec)
            if meta is None and is_local(self.root):  # trained by fit, with any entry after it
                require_writable(self.root, "set run.teacher_store to a writable folder")
                return
            _entry(meta, self.path(spec), epoch)

    def teacher_for(
        self,
        cfg: Config,
        data: Splits,
        device: torch.device,
        *,
        train: Train,
        log: Callable[[str], None] | None = None,
    ) -> nn.Module:
        """The network ``cfg`` distils from (the TA for takd), training the chain once if needed."""
        needed = required_teachers(cfg)
        for spec, epoch, save_epochs in needed:
            self.ensure(spec, train=train, save_epochs=save_epochs, epoch=epoch, data=data, log=log)
        spec, epoch, _ = needed[-1]
        return self.load(spec, epoch, data, device)

    def entries(self) -> list[dict[str, Any]]:
        """Meta of every stored teacher."""
        metas = (_read_meta(p) for p in sorted(self.root.glob("*/meta.json")))
        return [m for m in metas if m is not None]


def _read_meta(path: UPath) -> dict[str, Any] | None:
    """A ``meta.json``, or None when missing or unreadable (such an entry is retrained)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_checked(path: UPath, sha256: str) -> bytes | None:
    """The bytes of ``path`` if they match ``sha256``, else None (missing or corrupted)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    return blob if _sha256(blob) == sha256 else None


def _entry(meta: dict[str, Any], folder: UPath, epoch: int) -> dict[str, Any]:
    """The meta entry of a saved ``epoch``; TeacherError if it was never saved."""
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
    return entry
