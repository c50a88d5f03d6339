"""MLflow tracking conventions (DESIGN.md, Tracking). distill_core never imports this.

Default store: ``./runs/mlflow.db`` (SQLite, absolute URI) with artifacts in ``./runs/artifacts``.
One experiment per study (or ``train`` for single runs), tagged as a machine-learning experiment so
that MLflow's UI opens on the runs table; params are the flattened resolved config; metrics are
logged per epoch with ``step=epoch``; the resolved config is the ``config.yaml`` artifact.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from distill_core import Config, UserError
from distill_core.errors import require_writable

# MLflow sets up its own INFO logging on import (database migrations etc.): keep the CLI quiet.
logging.getLogger("mlflow").setLevel(logging.WARNING)

DEFAULT_STORE = Path("runs")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MAX_PARAM_LENGTH = 6000
FAILURE_REASON = "distill.failure_reason"  # tag: why a run failed or was abandoned, one line
#: MLflow's run status for each final ``status`` tag (``interrupted`` runs continue on resume).
RUN_STATUS = {
    "completed": RunStatus.FINISHED,
    "crashed": RunStatus.FINISHED,
    "early-stopped": RunStatus.FINISHED,
    "diverged": RunStatus.FAILED,
    "failed": RunStatus.FAILED,
    "interrupted": RunStatus.KILLED,
    "abandoned": RunStatus.FAILED,
}


def default_tracking_uri(store: str | Path = DEFAULT_STORE) -> str:
    """``sqlite:////abs/path/runs/mlflow.db`` for a store folder (created if missing)."""
    root = Path(store).expanduser().resolve()
    require_writable(root, "pass a writable --tracking-uri folder")
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None, store: str | Path = DEFAULT_STORE) -> str:
    """A plain folder or ``None`` becomes the SQLite store in that folder; URIs pass through."""
    if uri is None:
        return default_tracking_uri(store)
    if "://" in uri or uri.startswith("sqlite:"):
        return uri
    return default_tracking_uri(uri)


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``runs/artifacts``); a server chooses its own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def get_or_create_experiment(
    client: MlflowClient, name: str, tags: dict[str, str] | None = None
) -> str:
    """The id of experiment ``name``, created (as a machine-learning experiment) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{name}" if root else None
    tags = {**EXPERIMENT_KIND, **(tags or {})}
    return client.create_experiment(name, artifact_location=location, tags=tags)


def config_params(cfg: Config) -> list[Param]:
    """The flattened resolved config as MLflow params."""
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(cfg.flat().items())]


def epoch_metrics(metrics: dict[str, float], step: int) -> list[Metric]:
    """Finite metrics of one epoch as MLflow metrics at ``step=epoch`` (non-finite ones dropped)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]


class RunLogger:
    """Logs one training run to MLflow; a callback for ``distill_core.fit``."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        cfg: Config,
        *,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunLogger:
        base = {"method": cfg.method.name, "seed": str(cfg.run.seed), "status": "running"}
        run = client.create_run(experiment_id, tags={**base, **(tags or {})}, run_name=run_name)
        logger = cls(client, run.info.run_id)
        params = config_params(cfg)
        for i in range(0, len(params), 100):
            client.log_batch(logger.run_id, params=params[i : i + 100])
        client.log_text(logger.run_id, cfg.to_yaml(), "config.yaml")
        return logger

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=epoch_metrics(metrics, epoch))

    def finish(
        self,
        status: str,
        final: dict[str, float] | None = None,
        step: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Log test metrics (those not logged per epoch), the status tag and the reason of a
        failure, then end the run."""
        once = {k: v for k, v in (final or {}).items() if k.startswith(("test_", "teacher_test_"))}
        tags = [RunTag("status", status)] + ([RunTag(FAILURE_REASON, reason)] if reason else [])
        self.client.log_batch(self.run_id, metrics=epoch_metrics(once, step or 0), tags=tags)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RUN_STATUS[status]))


def start_study_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    params: dict[str, object],
) -> str:
    """The parent run of a study (``distill.role=study``, ``distill.status=running``); its id."""
    base = {"distill.role": "study", "distill.status": "running"}
    run = client.create_run(experiment_id, run_name=name, tags={**base, **tags})
    values = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
    client.log_batch(run.info.run_id, params=values)
    return run.info.run_id


def set_study_status(client: MlflowClient, run_id: str, status: str) -> None:
    """``running`` (re)opens the parent run; ``completed`` and ``interrupted`` end it."""
    client.set_tag(run_id, "distill.status", status)
    if status == "running":
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        end = RunStatus.FINISHED if status == "completed" else RunStatus.KILLED
        client.set_terminated(run_id, RunStatus.to_string(end))


def last_step(client: MlflowClient, run_id: str, metric: str = "train_loss") -> int:
    """The last epoch logged to a run (0 if none): a resumed trial must not log an epoch twice."""
    return max((m.step for m in client.get_metric_history(run_id, metric)), default=0)


def open_client(uri: str | None, store: str | Path = DEFAULT_STORE) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` (default: the local SQLite store), checked to answer.

    Raises:
        UserError: the tracking server cannot be reached.
    """
    resolved = resolve_tracking_uri(uri, store)
    if resolved.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(resolved)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises several types for an unreachable or broken store
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach the MLflow tracking store at {resolved} ({first}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000) or pass a reachable --tracking-uri"
        ) from None
    return client
