"""The searcher (Optuna, through Ray Tune's ``OptunaSearch``) and the trial scheduler of a study."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optuna

from studies.options import Settings
from studies.spaces import SearchSpace

GRACE_FRACTION = 5  # never judge a trial on its first fifth of training


def objectives(space: SearchSpace, settings: Settings) -> list[tuple[str, str]]:
    """The objectives the searcher optimises: all of the space's for nsga2, else the first."""
    return space.objectives if settings.multi_objective else space.objectives[:1]


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II that survives pickling (Ray Tune pickles the searcher with the study).

    Optuna 5.1's genetic samplers hold a ``threading.Lock`` and no ``__getstate__``, so pickling
    them fails; the lock is left out and made anew on unpickling.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def sampler(space: SearchSpace, settings: Settings, seed: int) -> Any:
    """The Optuna sampler named by ``settings.sampler``, seeded."""
    trials = settings.trials
    samplers: dict[str, Callable[[], Any]] = {
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(1, trials // 2))
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(space.grid, seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed),
        "nsga2": lambda: NSGAIISampler(population_size=max(2, min(50, trials // 2)), seed=seed),
    }
    return samplers[settings.sampler]()


def searcher(
    space: SearchSpace, settings: Settings, *, seed: int, max_concurrent: int | None
) -> Any:
    """``OptunaSearch`` over the space's define-by-run function; the baselines run first."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    chosen = objectives(space, settings)
    metric: Any = [m for m, _ in chosen] if len(chosen) > 1 else chosen[0][0]
    mode: Any = [d for _, d in chosen] if len(chosen) > 1 else chosen[0][1]
    found = OptunaSearch(
        space=space.space,
        metric=metric,
        mode=mode,
        sampler=sampler(space, settings, seed),
        points_to_evaluate=space.baselines or None,
    )
    return ConcurrencyLimiter(found, max_concurrent=max_concurrent) if max_concurrent else found


def scheduler(space: SearchSpace, settings: Settings, epochs: int) -> Any:
    """ASHA, the median stopping rule, or none (FIFO: every trial runs its full schedule)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    objective, mode = space.objectives[0]
    grace = max(1, epochs // GRACE_FRACTION)
    if settings.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=objective,
            mode=mode,
            max_t=epochs,
            grace_period=grace,
            reduction_factor=3,
        )
    if settings.scheduler == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            metric=objective,
            mode=mode,
            grace_period=grace,
            min_samples_required=3,
        )
    return FIFOScheduler()
