"""Search spaces and presets: discovered in ``search_spaces/``, or loaded from a user's file.

A search-space module declares, at module level (see ``search_spaces/alpha.py``, docs/studies.md):

- ``BASE``: the nested config it varies (``{"method": {"name": "kd"}, ...}``);
- ``space(trial) -> dict``: an Optuna define-by-run function returning dotted config overrides
  (module-level, so that a restored study can unpickle its searcher);
- ``OBJECTIVE`` and ``MODE`` (a validation metric, ``max`` or ``min``);
- ``SCIENTIFIC`` and ``NUISANCE``: the dotted keys the study is about and those tuned away;
- ``GRID``: the values of each parameter ``space`` asks for, used by ``--sampler grid``.

Optional: ``OBJECTIVES`` (``[(metric, mode), ...]`` for ``--sampler nsga2``), ``BASELINES``
(points run before sampling, e.g. a baseline method), ``TRIALS``, ``SEEDS``, ``SAMPLER``,
``SCHEDULER`` (defaults of a preset; the scheduler defaults to ``none`` for a grid preset, whose
arms must run their full schedule, else ``asha``) and ``PRESET`` (which seed paper it reproduces;
makes it a preset). A parameter whose name has no dot (e.g. ``arm``) is a label that picks
overrides, not a config key.

A seed preset also declares ``PAPER`` (the seed paper's id, e.g. ``"000"``), ``CLAIMS`` (what
``distill-study reproduce`` tests, ``search_spaces/_claims.py``), and its laptop scale:
``LAPTOP`` (dotted overrides of ``BASE``: embedded data, small models) and ``LAPTOP_EPOCHS`` (the
length the whole schedule is scaled to, as ``--epochs`` does).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import pkgutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import search_spaces
from distill_core import UserError
from distill_core.config import Config, apply_overrides

__all__ = ["SearchSpace", "list_spaces", "load_space"]

SAMPLERS = ("tpe", "random", "grid", "qmc", "nsga2")
SCHEDULERS = ("asha", "median", "none")
SCALES = ("paper", "laptop")
REQUIRED = ("BASE", "space", "OBJECTIVE", "MODE", "SCIENTIFIC", "NUISANCE", "GRID")


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search-space module."""

    name: str
    module: ModuleType
    path: str | None  # the file of a user module given by path; None for a registered one

    @property
    def base(self) -> dict[str, Any]:
        return self.module.BASE

    def base_at(self, scale: str) -> dict[str, Any]:
        """``BASE`` at the paper's scale, or with the laptop overrides applied."""
        return apply_overrides(self.base, self.laptop) if scale == "laptop" else self.base

    @property
    def laptop(self) -> dict[str, Any]:
        return dict(getattr(self.module, "LAPTOP", {}))

    @property
    def laptop_epochs(self) -> int | None:
        return getattr(self.module, "LAPTOP_EPOCHS", None)

    @property
    def paper(self) -> str | None:
        """The seed paper a preset reproduces (``"000"``...), if it declares claims."""
        return getattr(self.module, "PAPER", None)

    @property
    def claims(self) -> list[Any]:
        return list(getattr(self.module, "CLAIMS", []))

    @property
    def space(self) -> Callable[[Any], dict[str, Any]]:
        return self.module.space

    @property
    def summary(self) -> str:
        return (self.module.__doc__ or self.name).strip().splitlines()[0]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``: the first is the single objective; nsga2 uses all of them."""
        extra = getattr(self.module, "OBJECTIVES", [])
        return [
            (self.module.OBJECTIVE, self.module.MODE),
            *[o for o in extra if o[0] != self.module.OBJECTIVE],
        ]

    @property
    def scientific(self) -> list[str]:
        return list(self.module.SCIENTIFIC)

    @property
    def nuisance(self) -> list[str]:
        return list(self.module.NUISANCE)

    @property
    def axes(self) -> list[str]:
        return [*self.scientific, *self.nuisance]

    @property
    def grid(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.module.GRID.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return list(getattr(self.module, "BASELINES", []))

    @property
    def preset(self) -> str | None:
        return getattr(self.module, "PRESET", None)

    @property
    def is_axis(self) -> bool:
        """Whether it is one of the design's search axes (a preset module may be one too)."""
        return getattr(self.module, "AXIS", self.preset is None)

    @property
    def trials(self) -> int:
        return getattr(self.module, "TRIALS", 16)

    @property
    def seeds(self) -> int:
        return getattr(self.module, "SEEDS", 1)

    @property
    def sampler(self) -> str:
        return getattr(self.module, "SAMPLER", "tpe")

    @property
    def scheduler(self) -> str:
        """Early stopping by default: none for a grid (every arm runs its whole schedule)."""
        return getattr(self.module, "SCHEDULER", "none" if self.sampler == "grid" else "asha")

    def grid_points(self) -> Iterator[dict[str, Any]]:
        """Every baseline and grid point, as the dotted overrides ``space`` returns for it."""
        from optuna.trial import FixedTrial

        keys = list(self.grid)
        points = [dict(zip(keys, v, strict=True)) for v in itertools.product(*self.grid.values())]
        for point in [*self.baselines, *points]:
            yield self.space(FixedTrial(point))


def _registered() -> dict[str, str]:
    """Module name -> import path of every module in ``search_spaces/`` (``_private`` ones excluded)."""
    return {
        m.name: f"search_spaces.{m.name}"
        for m in pkgutil.iter_modules(search_spaces.__path__)
        if not m.name.startswith("_")
    }


def list_spaces() -> list[SearchSpace]:
    """Every registered search space and preset, by name."""
    return [load_space(name) for name in sorted(_registered())]


def load_space(name_or_path: str) -> SearchSpace:
    """A registered space or preset by name, or a user module by ``.py`` path, validated.

    Raises:
        UserError: unknown name (the valid ones are listed), or a module that breaks the contract.
    """
    registered = _registered()
    if name_or_path in registered:
        module = importlib.import_module(registered[name_or_path])
        return _validate(SearchSpace(name_or_path, module, None))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".py":
        if not path.is_file():
            raise UserError(
                f"search-space file {path} does not exist; pass an existing .py file or a registered name"
            )
        # A stable module name, so that a restored study can unpickle ``space`` once this file is loaded again.
        module_name = f"distill_space_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: any error is theirs to fix
            del sys.modules[module_name]
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(
                f"search-space file {path} fails to import ({type(exc).__name__}: {first}); fix it "
                f"(python {path} shows the traceback)"
            ) from None
        return _validate(SearchSpace(path.stem, module, str(path.resolve())))
    axes = [n for n in sorted(registered) if load_space(n).is_axis]
    presets = [n for n in sorted(registered) if load_space(n).preset]
    # A bare name never imports a user's file (from the cwd or sys.path): only a path given as such.
    own = (
        f"./{name_or_path}.py"
        if Path(f"{name_or_path}.py").is_file()
        else "the path of your own module"
    )
    raise UserError(
        f"unknown search space or preset {name_or_path!r}; use one of: spaces {', '.join(axes)}; "
        f"presets {', '.join(presets)}; or {own} (see docs/studies.md)"
    )


def _validate(s: SearchSpace) -> SearchSpace:
    """Check the module's declarations; config values are checked when the runner samples it."""
    where = s.path or f"search_spaces/{s.name}.py"
    missing = [a for a in REQUIRED if not hasattr(s.module, a)]
    if missing:
        raise UserError(
            f"{where} does not declare {', '.join(missing)}; add them (see docs/studies.md)"
        )
    if not callable(s.space):
        raise UserError(
            f"{where}: space must be a function space(trial) -> dict of dotted overrides"
        )
    for metric, mode in s.objectives:
        if metric.startswith("test_"):
            raise UserError(
                f"{where}: objective {metric} is a test metric, and test metrics never select; "
                f"set OBJECTIVE to a validation metric such as val_{metric.removeprefix('test_')}"
            )
        if mode not in ("max", "min"):
            raise UserError(f"{where}: mode {mode!r} of {metric} must be 'max' or 'min'")
    known = set(Config().flat()) | {"method.weights"}
    unknown = [k for k in s.axes if k not in known]
    if unknown:
        raise UserError(
            f"{where}: SCIENTIFIC/NUISANCE name unknown config keys {unknown}; use dotted keys such as method.alpha"
        )
    if s.sampler not in SAMPLERS:
        raise UserError(f"{where}: SAMPLER={s.sampler!r}; use one of {', '.join(SAMPLERS)}")
    if s.scheduler not in SCHEDULERS:
        raise UserError(f"{where}: SCHEDULER={s.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    bad = [k for k in s.laptop if "." not in k]
    if bad:
        raise UserError(f"{where}: LAPTOP keys {bad} are not dotted config keys (e.g. data.name)")
    arms = set(s.grid.get("arm", []))
    for claim in s.claims:
        missing = [a for a in claim.arms if a not in arms]
        if missing:
            raise UserError(
                f"{where}: claim {claim.id} names arms {missing} that GRID['arm'] does not list"
            )
    return s
