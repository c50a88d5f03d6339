"""``distill-study run``'s options, and their check against a search space before anything starts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from distill_core import UserError
from studies.spaces import SAMPLERS, SCALES, SCHEDULERS, SearchSpace

SAMPLER_SEED = 0  # the default --sampler-seed: a study's sequence of configs is reproducible
SMOKE_TRIALS = 3
MAX_FAILURES = 2
DEFAULT_STORAGE = "runs/studies"


@dataclass(frozen=True)
class StudyOptions:
    """``distill-study run``'s options (None: the space's or preset's default)."""

    space: str
    trials: int | None = None
    epochs: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    seeds: int | None = None
    sampler: str | None = None
    sampler_seed: int = SAMPLER_SEED
    scheduler: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = MAX_FAILURES
    address: str | None = None
    tracking_uri: str | None = None
    storage: str = DEFAULT_STORAGE
    name: str | None = None
    resume: bool = False
    smoke_test: bool = False
    scale: str = "paper"
    overrides: tuple[str, ...] = ()

    def command(self) -> str:
        """The ``distill-study run`` command that reproduces this study."""
        args = ["distill-study", "run", self.space, "--name", str(self.name)]
        for flag, value in [
            ("--trials", self.trials), ("--epochs", self.epochs), ("--dataset", self.dataset),
            ("--data-dir", self.data_dir), ("--seeds", self.seeds), ("--sampler", self.sampler),
            ("--sampler-seed", self.sampler_seed),
            ("--scheduler", self.scheduler), ("--cpus-per-trial", self.cpus_per_trial),
            ("--gpus-per-trial", self.gpus_per_trial or None), ("--max-concurrent", self.max_concurrent),
            ("--max-failures", self.max_failures), ("--tracking-uri", without_password(self.tracking_uri)),
            ("--storage", self.storage), ("--scale", None if self.scale == "paper" else self.scale),
        ]:  # fmt: skip
            if value is not None:
                args += [flag, str(value)]
        args += ["--smoke-test"] if self.smoke_test else []
        for item in self.overrides:
            args += ["--set", item]
        return shlex.join(args)


def without_password(uri: str | None) -> str | None:
    """``uri`` with any ``user:password@`` removed, so that a recorded command holds no secret."""
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """What the options resolve to for one space: the defaults filled in and checked."""

    sampler: str
    scheduler: str
    trials: int
    seeds: int

    @property
    def multi_objective(self) -> bool:
        return self.sampler == "nsga2"


def resolve(o: StudyOptions, space: SearchSpace) -> Settings:
    """The options' sampler, scheduler, trials and seeds after the space's defaults.

    Raises:
        UserError: a choice that cannot run (one line with the fix).
    """
    sampler = o.sampler or space.sampler
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; use --sampler {' | '.join(SAMPLERS)}")
    multi = sampler == "nsga2"
    scheduler = o.scheduler or ("none" if multi else space.scheduler)
    if scheduler not in SCHEDULERS:
        raise UserError(
            f"unknown scheduler {scheduler!r}; use --scheduler {' | '.join(SCHEDULERS)}"
        )
    if multi and len(space.objectives) < 2:
        raise UserError(
            f"--sampler nsga2 is multi-objective but {space.name} declares one objective "
            f"({space.objectives[0][0]}); add OBJECTIVES to the space or use --sampler tpe"
        )
    if multi and scheduler != "none":
        names = ", ".join(m for m, _ in space.objectives)
        raise UserError(
            f"--scheduler {scheduler} stops trials on one metric, but nsga2 optimises several ({names}); "
            "pass --scheduler none"
        )
    grid = space.grid_size + len(space.baselines)
    trials = (grid if sampler == "grid" else space.trials) if o.trials is None else o.trials
    if o.smoke_test and o.trials is None:
        trials = min(trials, SMOKE_TRIALS)
    if sampler == "grid" and trials > grid:
        raise UserError(
            f"the grid of {space.name} has {grid} points, so --trials {trials} would repeat some; "
            f"pass --trials {grid} or fewer (repeat configs with --seeds)"
        )
    seeds = (1 if o.smoke_test else space.seeds) if o.seeds is None else o.seeds
    for flag, value in (
        ("--trials", trials),
        ("--seeds", seeds),
        ("--max-concurrent", 1 if o.max_concurrent is None else o.max_concurrent),
        ("--epochs", 1 if o.epochs is None else o.epochs),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}; pass {flag} 1 or more")
    if o.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be > 0, got {o.cpus_per_trial}")
    if o.gpus_per_trial < 0 or (o.gpus_per_trial > 1 and o.gpus_per_trial != int(o.gpus_per_trial)):
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} is not possible; use a fraction up to 1 "
            "(0.25 packs four trials per GPU) or a whole number"
        )
    if o.scale not in SCALES:
        raise UserError(f"unknown scale {o.scale!r}; use --scale {' | '.join(SCALES)}")
    if o.scale == "laptop" and not space.laptop:
        raise UserError(
            f"{space.name} has no laptop scale (LAPTOP); drop --scale laptop or use --dataset/--epochs"
        )
    if o.max_failures < 0:
        raise UserError(f"--max-failures must be at least 0, got {o.max_failures}; pass 0 or more")
    if o.name is not None and (not o.name or "/" in o.name or o.name.startswith(".")):
        raise UserError(
            f"--name {o.name!r} must be a plain name (no '/'), e.g. --name {space.name}-lr"
        )
    return Settings(sampler, scheduler, trials, seeds)
