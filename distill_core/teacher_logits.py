"""The teacher's logits on the training split, computed once and reused by every epoch and trial.

Without augmentation a KD student sees the same training images every epoch, so its teacher's
logits on them never change. They are computed once per teacher checkpoint and training tensor
(eval mode, inference mode, in batches), kept by the run that asked for them, and stored beside
the checkpoint for later runs::

    <run.teacher_store>/<store key>/logits/epoch_NNNN-<fingerprint>.pt

The fingerprint hashes the training tensor and the teacher's weights, so another split, subset,
data set or retrained teacher never reuses stale logits. A file that cannot be read or has the
wrong shape is recomputed and rewritten; files are written atomically (temp file, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from distill_core.config import Config
from distill_core.data import Splits
from distill_core.models import predict
from distill_core.storage import is_local, write_atomic
from distill_core.teachers import TeacherStore, required_teachers

if TYPE_CHECKING:
    from upath import UPath


def fingerprint(train_x: torch.Tensor, teacher: nn.Module) -> str:
    """A hash of the training tensor and the teacher's weights and buffers (any memory format)."""
    h = hashlib.sha256()
    for name, t in [("train_x", train_x), *sorted(teacher.state_dict().items())]:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def train_logits(cfg: Config, teacher: nn.Module, data: Splits) -> torch.Tensor:
    """The teacher's float32 logits on every row of ``data.train_x``: from the store, or computed.

    ``teacher`` is the network ``cfg`` distils from (the last of ``required_teachers(cfg)``);
    the disk cache is used only when that entry is in ``cfg.run.teacher_store``.
    """
    train_x = data.train_x
    spec, epoch, _ = required_teachers(cfg)[-1]
    folder = TeacherStore(cfg.run.teacher_store).path(spec)
    path = folder / "logits" / f"epoch_{epoch:04d}-{fingerprint(train_x, teacher)}.pt"
    logits = _load(path, (len(train_x), data.num_classes), train_x.device)
    if logits is None:
        # Outside any autocast of the caller: the cache holds full-precision logits.
        with torch.autocast(train_x.device.type, enabled=False):
            logits = predict(teacher, train_x, cfg.run.eval_batch_size)
        if folder.is_dir():
            _save(path, logits)
    return logits


def _load(path: UPath, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """The stored logits, or None when missing, unreadable, or not a float32 tensor of ``shape``."""
    try:
        logits = torch.load(io.BytesIO(path.read_bytes()), map_location=device, weights_only=True)
    except Exception:  # a missing, truncated or foreign file is recomputed, whatever the error
        return None
    ok = isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    return logits if ok and tuple(logits.shape) == shape else None


def _save(path: UPath, logits: torch.Tensor) -> None:
    """Write atomically. A store that cannot be written (read-only, or the entry being retrained)
    only costs the next process a recomputation, so write errors are ignored."""
    buffer = io.BytesIO()
    torch.save(logits.cpu(), buffer)
    with contextlib.suppress(OSError):
        if is_local(path):
            path.parent.mkdir(exist_ok=True)
        write_atomic(path, buffer.getvalue())
