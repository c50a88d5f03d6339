"""The Ray Tune trainable: one sampled config, its seeds trained in lock-step, one report per epoch.

Each seed is a ``distill_core.fit_epochs`` iterator; a trial advances them in turn, one epoch each,
in one thread, and reports the seed means (what the searcher and scheduler see) with every seed's
own metrics and a checkpoint of every seed's training state. Stopping a trial is stopping the
iteration. Errors: ``retryable`` decides, by kind, whether Ray retries the trial from its last
checkpoint or it ends now as ``failed``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from distill_core import Config, FitResult, Splits, UserError, fit_epochs, load_data
from distill_core.config import DataConfig
from studies.plan import Plan
from tracking.schema import BROKEN, FINISHED, Status

#: Words of a RuntimeError that mean the machine, not the config, ran out of something.
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "CUDA error")


def retryable(exc: BaseException) -> bool:
    """Whether an error is the infrastructure's (retried from the last checkpoint, up to
    ``--max-failures``) rather than the trial's own (a retry would fail the same way).

    Retried: a lost worker, node or object (Ray errors), out of memory (host or device), I/O and
    network errors. Not retried: user errors (a config the trainer refuses, data that cannot be
    read) and every other error of the training code (a shape mismatch, a bug).
    """
    if isinstance(exc, UserError):
        return False
    if isinstance(exc, ray.exceptions.RayError | MemoryError | OSError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in OUT_OF_MEMORY)


def failure_reason(exc: BaseException) -> str:
    """``Type: first line of its message``: an exception in one line (``distill.failure_reason``)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()[:500]


@dataclass(frozen=True)
class SharedData:
    """A loaded data set as numpy arrays: Ray shares them zero-copy between a node's trials."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    name: str
    num_classes: int
    augment: bool

    @classmethod
    def load(cls, cfg: DataConfig) -> SharedData:
        s = load_data(cfg)
        arrays = {
            k: getattr(s, k).numpy()
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return cls(cfg.model_dump(), arrays, s.name, s.num_classes, s.augment)

    def splits(self, cfg: DataConfig) -> Splits:
        """The shared tensors, or a fresh load for a config that asks for other data."""
        if cfg.model_dump() != self.config:
            return load_data(cfg)
        with warnings.catch_warnings():  # the arrays are read-only views of the object store
            warnings.simplefilter("ignore", UserWarning)
            tensors = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        return Splits(name=self.name, num_classes=self.num_classes, augment=self.augment, **tensors)


def ended(result: FitResult) -> dict[str, Any]:
    """A seed's end as reported: its status, final metrics and number of epochs (plain values:
    checkpoints load with ``weights_only=True``)."""
    return {
        "status": Status(result.status).value,
        "final": result.final,
        "epochs": len(result.history),
    }


def failed(exc: BaseException, epochs: int) -> dict[str, Any]:
    reason = failure_reason(exc)
    return {"status": Status.FAILED.value, "final": {}, "epochs": epochs, "reason": reason}


def means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over seeds: what the searcher and scheduler see."""
    keys = set().union(*rows) if rows else set()
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def row(
    reports: dict[int, Any],
    now_ended: dict[int, dict[str, Any]],
    broken: bool,
    objectives: tuple[str, ...],
) -> dict[str, Any]:
    """One Tune report: seed means at top level, each seed's epoch (and end) under ``seeds``."""
    seeds: dict[str, dict[str, Any]] = {
        str(s): {"epoch": r.epoch, "metrics": r.metrics} for s, r in reports.items()
    }
    for s, e in now_ended.items():
        seeds.setdefault(str(s), {}).update(e)
    out = means([r.metrics for r in reports.values()])
    out.update(means([e["final"] for e in now_ended.values() if e["status"] in FINISHED]))
    if broken:  # one diverged or failed seed fails the config (NaN: a failed trial for Optuna)
        out.update(dict.fromkeys(objectives, math.nan))
    epochs = [r.epoch for r in reports.values()] + [e["epochs"] for e in now_ended.values()]
    return {**out, "epoch": max(epochs, default=0), "seeds": seeds}


def lockstep(
    cfgs: dict[int, Config], data: Splits, saved: dict[str, Any], objectives: tuple[str, ...]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Advance every seed one epoch at a time; yield (report row, state to checkpoint) per epoch.

    ``saved`` is a previous state (``{"states": {seed: state}, "ended": {seed: end}}``). A seed
    that diverges or fails ends the trial: its other seeds are cancelled (status ``cancelled``,
    with the reason) and the objectives are reported as NaN. A trial restored after its last report
    has nothing left to report.
    """
    done: dict[int, dict[str, Any]] = dict(saved.get("ended", {}))
    states = saved.get("states", {})
    live = {
        seed: fit_epochs(cfg, resume_from=states.get(seed), data=data)
        for seed, cfg in cfgs.items()
        if seed not in done
    }
    epoch = max((s["epoch"] for s in states.values()), default=0)
    while live:
        reports, now_ended = {}, {}
        for seed, epochs in live.items():
            try:
                report = next(epochs)
            except Exception as exc:
                if retryable(exc):
                    raise
                now_ended[seed] = failed(exc, epoch)
                continue
            reports[seed] = report
            if report.result is not None:
                now_ended[seed] = ended(report.result)
        epoch = max((r.epoch for r in reports.values()), default=epoch)
        broke = [s for s, e in [*done.items(), *now_ended.items()] if e["status"] in BROKEN]
        if broke:
            why = f"seed {broke[0]} of its trial {(done | now_ended)[broke[0]]['status']}"
            for seed in set(live) - set(now_ended):
                live[seed].close()
                now_ended[seed] = {
                    "status": Status.CANCELLED.value,
                    "final": {},
                    "epochs": epoch,
                    "reason": f"stopped because {why}",
                }
        done.update(now_ended)
        for seed in now_ended:
            del live[seed]
        state = {"states": {s: reports[s].state() for s in live}, "ended": done}
        yield {**row(reports, now_ended, bool(broke), objectives), "finished": not live}, state


def train_trial(config: dict[str, Any], *, plan: Plan, data: Any) -> None:
    """The Ray Tune trainable: ``config`` holds the sampled parameters."""
    torch.set_num_threads(plan.threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a "checkpoint created" per epoch
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    try:
        cfgs = {seed: plan.config(config, seed) for seed in plan.seeds}
        splits = shared.splits(next(iter(cfgs.values())).data)
    except Exception as exc:  # a sampled config the trainer refuses, data that cannot load
        if retryable(exc):
            raise
        end = failed(exc, 0)
        tune.report(
            {**row({}, dict.fromkeys(plan.seeds, end), True, plan.objectives), "finished": True}
        )
        return
    saved: dict[str, Any] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / "state.pt", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n, (report, state) in enumerate(lockstep(cfgs, splits, saved, plan.objectives)):
            folder = Path(tmp, str(n))
            folder.mkdir()
            torch.save(state, folder / "state.pt")
            # the node that ran this epoch: nothing but Ray's id tells the nodes of one host apart
            node = ray.get_runtime_context().get_node_id()
            tune.report(
                {**report, "node": node}, checkpoint=tune.Checkpoint.from_directory(str(folder))
            )
