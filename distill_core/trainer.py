"""The training loop. Read this file first.

``fit_epochs(config)`` loads the data, gets the teacher from the store (if the method uses one),
builds the method's networks, then for each epoch: train on batches, evaluate on the validation
split, yield an ``EpochReport``. Test metrics are computed once, after the last epoch, and never
used for selection; the last report carries the ``FitResult``. ``fit(config)`` is the same loop
with a callback.

For speed: the data live as tensors on the device and batches are drawn by index; networks are
channels-last (``run.channels_last``) and optionally compiled (``run.compile``); optimizers are
fused; the training loop never waits for the device (losses stay tensors; the epoch's mean loss
is read once, for the divergence check).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from distill_core.config import Config
from distill_core.data import Splits, batches, load_data
from distill_core.init import interpolate_, reestimate_bn
from distill_core.methods import METHODS, Method
from distill_core.metrics import (
    CRASH_WARMUP,
    agreement,
    classification_metrics,
    crash_flags,
    predictive_kl,
)
from distill_core.models import predict, speed_up
from distill_core.rng import RunRNG
from distill_core.schedules import build_optimizer, build_schedule
from distill_core.teacher_logits import fingerprint
from distill_core.teachers import TeacherStore, uses_teacher

FIDELITY_ROWS = 1024  # training images on which fidelity to the teacher is measured
#: Teacher logits on fixed rows, by teacher weights, rows and device (see ``fixed_logits``).
_FIXED_LOGITS: dict[tuple[str, str], torch.Tensor] = {}


@dataclass
class FitResult:
    status: str  # completed | crashed (collapsed in the last epoch: see crash_flags) | diverged
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # last epoch's val metrics plus test_*

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "final": self.final, "epochs": len(self.history)}


@dataclass
class EpochReport:
    """One epoch of a run (epochs count from 1), as ``fit_epochs`` yields it."""

    epoch: int
    metrics: dict[str, float]
    state: Callable[[], dict[str, Any]]  # full training state, for ``resume_from=``
    result: FitResult | None = None  # set on the last report only: the run's outcome


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(
    cfg: Config,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    resume_from: dict[str, Any] | None = None,
    data: Splits | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train one run of ``cfg`` and return its history, final metrics and status.

    ``on_epoch`` is called with every epoch's report except a diverged one; the other arguments
    are those of ``fit_epochs``.
    """
    for report in fit_epochs(cfg, resume_from=resume_from, data=data, log=log):
        result = report.result
        if result is not None and result.status == "diverged":
            return result
        if on_epoch is not None:
            on_epoch(report)
        if result is not None:
            return result
    raise AssertionError("fit_epochs ended without a result")


def fit_epochs(
    cfg: Config,
    *,
    resume_from: dict[str, Any] | None = None,
    data: Splits | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[EpochReport]:
    """Train one run of ``cfg``, yielding a report after every epoch.

    The last report carries the run's ``FitResult``: after the test metrics are computed, or on
    a non-finite training loss (status ``diverged``; that epoch's report ends the iterator).
    Resumed from the last epoch's state, it yields that epoch's report again, with the result.

    Args:
        cfg: a validated config.
        resume_from: a state from ``EpochReport.state()``; training continues after its epoch.
        data: pre-loaded splits (shared by trials); loaded from ``cfg.data`` when absent.
        log: where teacher training and other notes are printed (default: nowhere).
    """
    say = log or (lambda _: None)
    device = resolve_device(cfg.run.device)
    if cfg.run.threads is not None:
        torch.set_num_threads(cfg.run.threads)
    data = (data or load_data(cfg.data)).to(device)
    rng = RunRNG(cfg.run.seed, device)  # the run's own random state: see distill_core.rng
    generator = torch.Generator().manual_seed(cfg.run.seed)  # batch order and augmentation
    with rng.active():
        teacher = None
        if uses_teacher(cfg):  # trains the teacher first if the store lacks it
            store = TeacherStore(cfg.run.teacher_store)
            teacher = store.teacher_for(cfg, data, device, train=fit_epochs, log=log)
            speed_up(teacher, channels_last=cfg.run.channels_last, compile=False)
        method: Method = METHODS.get(cfg.method.name)(cfg, data, device, teacher)
        for note in dict.fromkeys(method.notes):  # once, not once per peer
            say(note)
        if cfg.init.interp_lambda is not None:
            assert teacher is not None
            interpolate_(method.nets[0], teacher, cfg.init.interp_lambda)
            shuffled = batches(data.train_x, data.train_y, cfg.run.batch_size, generator=generator)
            reestimate_bn(
                method.nets[0], [b.x for b in itertools.islice(shuffled, cfg.init.bn_batches)]
            )

    warmup = max(1, round(CRASH_WARMUP * cfg.run.epochs))  # epochs in which no crash is flagged
    steps_per_epoch = math.ceil(len(data.train_y) / cfg.run.batch_size)
    optimizers = [  # frozen parameters (model.freeze) are left out
        build_optimizer([p for p in net.parameters() if p.requires_grad], cfg.optim)
        for net in method.nets
    ]
    schedules = [
        build_schedule(o, cfg.schedule, epochs=cfg.run.epochs, steps_per_epoch=steps_per_epoch)
        for o in optimizers
    ]
    per_step = schedules[0][1]

    # Fidelity on the distillation data is measured on the training split's first rows (a
    # permutation fixed by data.split_seed); the teacher's logits on them and on val/test once.
    fidelity_x = data.train_x[:FIDELITY_ROWS]
    teacher_logits = {}
    if teacher is not None:
        teacher_logits = {
            split: fixed_logits(teacher, x, cfg.run.eval_batch_size)
            for split, x in (("train", fidelity_x), ("val", data.val_x), ("test", data.test_x))
        }

    history: list[dict[str, float]] = []
    start_epoch, crashed_epochs = 0, 0
    if resume_from is not None:
        # optimizer.load_state_dict keeps the given tensors: copy, or training would mutate the caller's state
        resume_from = copy.deepcopy(resume_from)
        method.load_state_dict(resume_from["method"])
        for o, s in zip(optimizers, resume_from["optimizers"], strict=True):
            o.load_state_dict(s)
        for (sch, _), s in zip(schedules, resume_from["schedules"], strict=True):
            sch.load_state_dict(s)
        generator.set_state(resume_from["generator"])
        rng.load_state_dict(resume_from["rng"])
        history = list(resume_from["history"])
        start_epoch, crashed_epochs = resume_from["epoch"], resume_from["crashed_epochs"]

    def state(epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "method": method.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "schedules": [s.state_dict() for s, _ in schedules],
            "generator": generator.get_state(),
            "rng": rng.state_dict(),
            "history": list(history),
            "crashed_epochs": crashed_epochs,
        }

    def finish() -> FitResult:
        final = dict(history[-1])
        final.pop("epoch")
        final.update(
            evaluate(
                method,
                data,
                "test",
                teacher_logits.get("test"),
                cfg.run.eval_batch_size,
                pick=final,
            )
        )
        return FitResult("crashed" if final.get("crashed") else "completed", history, final)

    if start_epoch == cfg.run.epochs:  # resumed after the last epoch: only the test metrics remain
        last = {k: v for k, v in history[-1].items() if k != "epoch"}
        yield EpochReport(start_epoch, last, lambda: state(start_epoch), finish())
        return

    for epoch in range(start_epoch, cfg.run.epochs):
        t0 = time.perf_counter()
        lr = optimizers[0].param_groups[0]["lr"]
        with rng.active():  # nothing in the block may yield: another run may draw in between
            method.train()
            losses = []
            for batch in batches(
                data.train_x,
                data.train_y,
                cfg.run.batch_size,
                generator=generator,
                augment=data.augment,
            ):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.run.amp):
                    losses.append(method.train_step(batch, epoch, optimizers))
                if per_step:
                    for s, _ in schedules:
                        s.step()
            if not per_step:
                for s, _ in schedules:
                    s.step()
        train_loss = (
            torch.stack(losses).float().mean().item()
        )  # the epoch's one wait for the device
        if not math.isfinite(train_loss):
            history.append({"epoch": epoch + 1, "train_loss": train_loss})
            result = FitResult("diverged", history, {"train_loss": train_loss})
            yield EpochReport(
                epoch + 1, {"train_loss": train_loss}, lambda e=epoch + 1: state(e), result
            )
            return

        metrics: dict[str, float] = {"train_loss": train_loss, "lr": lr}
        metrics.update(
            evaluate(method, data, "val", teacher_logits.get("val"), cfg.run.eval_batch_size)
        )
        if teacher is not None:
            metrics.update(
                train_fidelity(method, fidelity_x, teacher_logits["train"], cfg.run.eval_batch_size)
            )
        last = epoch + 1 == cfg.run.epochs
        flags = crash_flags(metrics, data.num_classes, history, final=last)
        if epoch + 1 <= warmup and not last:
            flags = dict.fromkeys(flags, False)  # a young network near chance is not a crash
        crashed = any(flags.values())
        crashed_epochs += crashed
        metrics.update({f"{name}crashed": float(flag) for name, flag in flags.items() if name})
        metrics.update(
            crashed=float(crashed),
            crashed_epochs=float(crashed_epochs),
            epoch_time=time.perf_counter() - t0,
        )
        history.append({"epoch": epoch + 1, **metrics})
        yield EpochReport(
            epoch + 1, metrics, lambda e=epoch + 1: state(e), finish() if last else None
        )


def fixed_logits(teacher: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The frozen teacher's logits on ``x`` (fidelity rows, val, test), computed once per process:
    a study's trial process trains one trial after another from the same teacher."""
    key = (fingerprint(x, teacher), str(x.device))
    if key not in _FIXED_LOGITS:
        if len(_FIXED_LOGITS) >= 16:  # a few teachers' worth; the oldest goes
            del _FIXED_LOGITS[next(iter(_FIXED_LOGITS))]
        _FIXED_LOGITS[key] = predict(teacher, x, batch_size)
    return _FIXED_LOGITS[key]


def evaluate(
    method: Method,
    data: Splits,
    split: str,
    teacher_logits: torch.Tensor | None,
    batch_size: int,
    pick: dict[str, float] | None = None,
) -> dict[str, float]:
    """Metrics of every evaluated model on ``split``; unprefixed names belong to the best model.

    With several models (peers), ``{peer}_{split}_acc`` etc. are reported for each, plus the
    mean and std of accuracy, and ``{split}_*`` are those of the peer with the best *validation*
    accuracy (``pick`` carries the validation metrics when ``split`` is test). With a teacher,
    also its accuracy and the gap ``{split}_acc_gap = teacher_{split}_acc - {split}_acc``.
    ``{split}_n`` is the number of examples (for binomial standard errors).
    """
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    if len(y) == 0:
        return {}
    out: dict[str, float] = {f"{split}_n": float(len(y))}
    if teacher_logits is not None:
        out[f"teacher_{split}_acc"] = (teacher_logits.argmax(1) == y).float().mean().item()
    models = method.eval_models()
    per_model = {
        name: classification_metrics(
            predict(model, x, batch_size), y, teacher_logits, prefix=f"{split}_"
        )
        for name, model in models.items()
    }
    if list(per_model) == [""]:
        out.update(per_model[""])
    else:
        for name, metrics in per_model.items():
            out.update({f"{name}_{k}": v for k, v in metrics.items()})
        accs = torch.tensor([m[f"{split}_acc"] for m in per_model.values()])
        out[f"{split}_acc_mean"] = accs.mean().item()
        out[f"{split}_acc_std"] = accs.std().item() if len(accs) > 1 else 0.0
        if pick is None:
            best = max(per_model, key=lambda n: per_model[n][f"{split}_acc"])
        else:
            best = max(per_model, key=lambda n: pick.get(f"{n}_val_acc", 0.0))
        out.update(per_model[best])
    if teacher_logits is not None:
        out[f"{split}_acc_gap"] = out[f"teacher_{split}_acc"] - out[f"{split}_acc"]
    return out


def train_fidelity(
    method: Method, x: torch.Tensor, teacher_logits: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Fidelity to the teacher on training images ``x`` (seed 004: on the distillation data).

    ``train_agreement`` (top-1) and ``train_pred_kl`` (KL(p_t || p_s) at tau 1) of every
    evaluated model, prefixed per peer as in ``evaluate``.
    """
    out = {}
    for name, model in method.eval_models().items():
        logits = predict(model, x, batch_size)
        prefix = f"{name}_" if name else ""
        out[f"{prefix}train_agreement"] = agreement(logits, teacher_logits)
        out[f"{prefix}train_pred_kl"] = predictive_kl(logits, teacher_logits)
    return out
