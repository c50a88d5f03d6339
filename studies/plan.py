"""How a study turns sampled parameters into configs: its base config, seeds, length and checks.

A ``Plan`` is shipped to every trial. ``Plan.config(sampled, seed)`` applies, in order: the
space's ``BASE``; the CLI's options and ``--set``; the sampled overrides; then ``--smoke-test``
(synthetic data, MLPs) and ``--epochs`` (the whole schedule scaled to that length).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core import Config, UserError, make_config
from distill_core.config import apply_overrides
from distill_core.schedules import scale_epochs
from studies.options import Settings, StudyOptions
from studies.spaces import SearchSpace

SMOKE_EPOCHS = 2
ARM = "arm"  # the label of a preset's arms: sampled, it names the overrides space() returns


@dataclass(frozen=True)
class Plan:
    """How a trial turns sampled overrides into one config per seed."""

    base: dict[str, Any]  # the space's BASE with the CLI's options and --set applied
    seeds: tuple[int, ...]
    threads: int
    objectives: tuple[str, ...]  # metrics every report must hold (NaN when a seed broke)
    epochs: int | None = None  # --epochs: the schedule is scaled to this many epochs
    smoke: bool = False  # --smoke-test

    def tree(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """The nested config of ``sampled`` (its dotted keys; labels such as ``arm`` are skipped)."""
        tree = apply_overrides(self.base, overrides(sampled))
        if self.smoke:
            tree = shrink(tree)
        epochs = self.epochs or (SMOKE_EPOCHS if self.smoke else None)
        return tree if epochs is None else scale_to(tree, epochs)

    def config(self, sampled: dict[str, Any], seed: int) -> Config:
        return make_config(self.tree(sampled), {"run.seed": seed})


def labels(sampled: dict[str, Any]) -> dict[str, Any]:
    """What names a sampled point in one line: its labels (``arm``) if it has any, else all of it."""
    return {k: v for k, v in sampled.items() if "." not in k} or sampled


def overrides(sampled: dict[str, Any]) -> dict[str, Any]:
    """The config overrides among sampled parameters: dotted keys. A name without a dot (e.g.
    ``arm``, which picks one of a preset's arms) is a label, not a config key."""
    return {k: v for k, v in sampled.items() if "." in k}


def build(o: StudyOptions, space: SearchSpace, settings: Settings, teacher_store: str) -> Plan:
    """The plan of a study: the space's BASE (at ``--scale``), then the CLI's options, then --set."""
    cli: dict[str, Any] = {
        "run.device": "cuda" if o.gpus_per_trial > 0 else "cpu",
        "run.teacher_store": teacher_store,
    }
    if o.dataset:
        cli["data.name"] = o.dataset
    if o.data_dir:
        cli["data.dir"] = str(Path(o.data_dir).expanduser().resolve())
    threads = max(1, int(o.cpus_per_trial))
    cli["run.threads"] = threads  # recorded, so that an exported config re-runs bit for bit
    base = apply_overrides(apply_overrides(space.base_at(o.scale), cli), list(o.overrides))
    first = base.get("run", {}).get("seed", Config().run.seed)
    epochs = o.epochs or (space.laptop_epochs if o.scale == "laptop" and not o.smoke_test else None)
    return Plan(
        base=base,
        seeds=tuple(range(first, first + settings.seeds)),
        threads=threads,
        objectives=tuple(m for m, _ in space.objectives),
        epochs=epochs,
        smoke=o.smoke_test,
    )


def shrink(tree: dict[str, Any]) -> dict[str, Any]:
    """``--smoke-test``: any space in seconds (synthetic data, MLPs, small batches)."""
    tree = copy.deepcopy(tree)
    tree["data"] = {"name": "synthetic"}
    tree["model"] = {"name": "mlp"}
    teacher = tree.setdefault("teacher", {})
    teacher.update(model="mlp", batch_size=64)
    teacher.pop("pretrained", None)
    method = tree.setdefault("method", {})
    if method.get("ta_model"):
        method["ta_model"] = "mlp"
    method.pop("peer_models", None)
    tree.setdefault("run", {}).update(batch_size=64)
    return tree


def scale_to(tree: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The whole schedule scaled to ``epochs`` student epochs, every epoch-valued setting by the
    same factor: the student's milestones, warm-up, KD stop and DKEL ramp-up; the teacher's length,
    checkpoint epochs and schedule. A setting that cannot fit raises ``UserError``; settings that
    collapse onto one epoch are the caller's to detect (``check``)."""
    tree = copy.deepcopy(tree)
    run = tree.setdefault("run", {})
    old = run.get("epochs", Config().run.epochs)
    if old == epochs:
        return tree
    factor = epochs / old

    def scaled(e: int, low: int = 1) -> int:
        return max(low, round(e * factor))

    run["epochs"] = epochs
    if tree.get("schedule"):
        tree["schedule"] = scale_epochs(tree["schedule"], old, epochs)
    method = tree.get("method", {})
    if method.get("kd_stop_epoch") is not None:
        method["kd_stop_epoch"] = min(scaled(method["kd_stop_epoch"], low=0), epochs)
    dkel = tree.get("dkel", {})
    if dkel.get("rampup_epochs") is not None:
        dkel["rampup_epochs"] = scaled(dkel["rampup_epochs"], low=0)
    teacher = tree.get("teacher")
    if teacher:
        t_old = teacher.get("epochs", Config().teacher.epochs)
        t_new = scaled(t_old)
        teacher["epochs"] = t_new
        if teacher.get("epoch") is not None:
            teacher["epoch"] = min(scaled(teacher["epoch"]), t_new)
        if teacher.get("save_epochs") is not None:
            teacher["save_epochs"] = sorted({min(scaled(e), t_new) for e in teacher["save_epochs"]})
        if teacher.get("schedule"):
            teacher["schedule"] = scale_epochs(teacher["schedule"], t_old, t_new)
    return tree


def check(
    space: SearchSpace,
    plan: Plan,
    arms: Iterable[dict[str, Any]],
    others: Iterable[dict[str, Any]] = (),
) -> None:
    """Build the config of every point and refuse two ``arms`` (grid points and baselines) that
    are one config; ``others`` (the base config, a sampled point) need only be valid.

    Two arms that are the same config (a preset shortened until two teacher checkpoints fall on
    one epoch, a grid whose parameter does not apply) would only repeat a run; they are refused
    with the two points named. Smoke tests shrink everything, so they may repeat.

    Raises:
        UserError: an invalid config (with the point that gives it), or duplicate arms.
    """
    seen: dict[str, dict[str, Any]] = {}
    arms = list(arms)
    for point in [*others, *arms]:
        try:
            cfg = plan.config(point, plan.seeds[0])
        except UserError as exc:
            what = point or "its base config"
            raise UserError(
                f"search space {space.name} gives an invalid config for {what}: {exc}"
            ) from None
        if plan.smoke or not any(point is arm for arm in arms):
            continue
        twin = seen.setdefault(cfg.digest(), point)
        if twin is not point:
            length = f" at --epochs {plan.epochs}" if plan.epochs else ""
            raise UserError(
                f"search space {space.name}: {twin} and {point} give the same config{length}, so "
                "one would only repeat the other; "
                + (
                    "pass more --epochs (epoch-valued settings scale with the schedule)"
                    if plan.epochs
                    else "fix the space so that its grid points differ (e.g. make a parameter "
                    "conditional on the one that uses it)"
                )
            )
