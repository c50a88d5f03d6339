"""Ray for a study: join a cluster (``--address``) or start a local Ray, check its resources, and
the process settings a study runs under (set when it begins, restored when it ends)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import ray
import torch

from distill_core import UserError
from studies.options import StudyOptions

T = TypeVar("T")

#: How often, at most, Tune saves a study's state (what ``--resume`` restores), in seconds: a driver
#: killed outright loses at most this much training per trial (see tuner.SavedState).
STATE_PERIOD_S = 2

#: Loggers that would otherwise print a line per epoch or per database migration.
QUIET_LOGGERS = ("mlflow", "alembic", "ray.train", "ray.tune")


def check_address(address: str) -> None:
    """Fail fast with the fix when a Ray head does not answer (``ray.init`` retries for long)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot reach the Ray cluster at --address {address} ({exc}); start its head with "
            "`ray start --head --port 6379` and pass HOST:6379, or drop --address to run locally"
        ) from None


@contextlib.contextmanager
def connected(o: StudyOptions, meanwhile: Callable[[], T] | None = None) -> Iterator[T | None]:
    """Ray for the study: ``--address``'s cluster, a Ray already started in this process (tests,
    notebooks), or a new local one, which is shut down at the end. Yields what ``meanwhile``
    returns: it runs in a thread while Ray starts (a data set loading, say)."""
    pool = ThreadPoolExecutor(1)
    pending = pool.submit(meanwhile) if meanwhile is not None else None
    pool.shutdown(wait=False)
    with _ray(o):
        yield pending.result() if pending is not None else None


@contextlib.contextmanager
def _ray(o: StudyOptions) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    if o.gpus_per_trial > 0 and not o.address and not torch.cuda.is_available():
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} but this machine has no GPU; drop --gpus-per-trial "
            "or join a cluster with GPUs via --address"
        )
    if o.address:
        try:
            ray.init(address=o.address, log_to_driver=True)
        except ConnectionError as exc:
            cause = exc.__cause__ or exc
            raise UserError(
                f"cannot join the Ray cluster at --address {o.address} ({type(cause).__name__}); if it "
                "uses token authentication, export RAY_AUTH_MODE=token with its token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN (see docs/studies.md)"
            ) from None
        with _shut_down_at_exit():
            yield
        return
    # "local": always a new Ray of our own, never one that `ray start` left on this machine. Ray
    # turns on token authentication for it and says so in a warning nobody needs to act on.
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    finally:
        notice.setLevel(level)
    with _shut_down_at_exit():
        yield


@contextlib.contextmanager
def _shut_down_at_exit() -> Iterator[None]:
    try:
        yield
    finally:
        ray.shutdown()


def node_resources() -> list[dict[str, float]]:
    """The resources (``CPU``, ``GPU``, custom ones) of each live node of the connected Ray."""
    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def check_resources(o: StudyOptions) -> None:
    """Refuse per-trial resources that no node of the cluster has."""
    nodes = node_resources()
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if o.gpus_per_trial > 0 and gpus == 0:
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} but the Ray cluster has no GPU; drop --gpus-per-trial "
            "or join a cluster with GPUs via --address"
        )
    if o.gpus_per_trial > gpus:
        raise UserError(
            f"--gpus-per-trial {o.gpus_per_trial} exceeds the {gpus:g} GPUs of the largest node; lower it"
        )
    if o.cpus_per_trial > cpus:
        raise UserError(
            f"--cpus-per-trial {o.cpus_per_trial:g} exceeds the {cpus:g} CPUs of the largest node; lower it"
        )


@contextlib.contextmanager
def scoped_environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables that are not set already; restore them on exit."""
    added = {k: v for k, v in variables.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def study_process(o: StudyOptions) -> Iterator[None]:
    """What the driver of a study needs from its process, for the study's duration only: Tune's
    settings (read from the environment), quiet library loggers, and warning filters for messages
    that are expected in a study. Ray must be connected."""
    import optuna

    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // o.cpus_per_trial))
    tune_env = {
        "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no status tables, our own lines
        "TUNE_GLOBAL_CHECKPOINT_S": str(STATE_PERIOD_S),
        # a trial's checkpoints in that state: paths only (its metrics are in each result)
        "TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE": "1",
        # no CSV and TensorBoard files per trial (tuner.new keeps result.json): less per report
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # With a searcher Tune starts one trial at a time; allow as many pending as can run.
        "TUNE_MAX_PENDING_TRIALS_PG": str(max(1, min(slots, o.max_concurrent or slots))),
    }
    loggers = {name: logging.getLogger(name) for name in QUIET_LOGGERS}
    levels = {name: lg.level for name, lg in loggers.items()}
    verbosity = optuna.logging.get_verbosity()
    expected = ExpectedWarnings()
    for name in ExpectedWarnings.LOGGERS:
        logging.getLogger(name).addFilter(expected)
    with scoped_environment(tune_env), warnings.catch_warnings():
        for lg in loggers.values():
            lg.setLevel(logging.WARNING)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # A restored trial reports its replayed epochs to Optuna again, which ignores them.
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        # ASHA's cut-off over rungs where every trial failed or diverged (NaN objectives)
        warnings.filterwarnings("ignore", message="All-NaN slice encountered")
        try:
            yield
        finally:
            for name, lg in loggers.items():
                lg.setLevel(levels[name])
            optuna.logging.set_verbosity(verbosity)
            for name in ExpectedWarnings.LOGGERS:
                logging.getLogger(name).removeFilter(expected)


class ExpectedWarnings(logging.Filter):
    """Drops the warnings of a normal study that no user can act on: Optuna's grid sampler
    stopping its study when the grid is done (Ray's searcher tells Optuna outside an objective,
    so the stop is logged as a warning), and Tune's "... may be a performance bottleneck" when a
    busy machine slows the driver's result handling past half a second."""

    LOGGERS = ("ray.tune.search.optuna.optuna_search", "ray.tune.utils.util")
    MESSAGES = ("`Study.stop` is supposed to be invoked", "may be a performance bottleneck")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.getMessage() for m in self.MESSAGES)
