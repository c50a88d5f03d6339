"""MLflow reads and writes of distill-study, through an ``MlflowClient`` built for one URI.

Default store: ``./runs/mlflow.db`` (SQLite, absolute URI) with artifacts in ``./runs/artifacts``.
Nothing here sets MLflow's global tracking URI: every function takes the client it works with.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from distill_core import Config, UserError
from distill_core.errors import require_writable
from tracking import schema
from tracking.schema import Role, Status, StudyStatus

DEFAULT_STORE = Path("runs")
MAX_PARAM_LENGTH = 6000
PAGE = 1000  # runs per search request


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


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow's HTTP client without retries and with a short timeout, for this block only.

    The reachability check must answer in seconds; later logging keeps MLflow's retries.
    """
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in fast}
    os.environ.update({k: v for k, v in fast.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def open_client(uri: str | None, store: str | Path = DEFAULT_STORE) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` (default: the local SQLite store), checked to answer.

    Raises:
        UserError: the tracking server cannot be reached.
    """
    resolved = resolve_tracking_uri(uri, store)
    client = MlflowClient(resolved)
    try:
        with _fail_fast():
            client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises several types for an unreachable or broken store
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach the MLflow tracking store at {resolved} ({first}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000) or pass a reachable --tracking-uri"
        ) from None
    return client


def get_or_create_experiment(
    client: MlflowClient, name: str, tags: dict[str, str] | None = None
) -> str:
    """The id of experiment ``name``, created (as a machine-learning experiment) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{name}" if root else None
    tags = {**schema.ML_EXPERIMENT, **(tags or {})}
    return client.create_experiment(name, artifact_location=location, tags=tags)


def params(values: dict[str, Any]) -> list[Param]:
    """Values as MLflow params (strings, cut at MLflow's length limit), sorted by name."""
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(values.items())]


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
        """Create a run with the resolved config as params and as ``config.yaml``."""
        base = {
            schema.METHOD: cfg.method.name,
            schema.SEED: str(cfg.run.seed),
            schema.STATUS: Status.RUNNING,
        }
        run = client.create_run(experiment_id, tags={**base, **(tags or {})}, run_name=run_name)
        logger = cls(client, run.info.run_id)
        values = params(cfg.flat())
        for i in range(0, len(values), 100):
            client.log_batch(logger.run_id, params=values[i : i + 100])
        client.log_text(logger.run_id, cfg.to_yaml(), "config.yaml")
        return logger

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=epoch_metrics(metrics, epoch))

    def finish(
        self,
        status: Status,
        final: dict[str, float] | None = None,
        step: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Log test metrics (those not logged per epoch), the status tag and the reason of a
        failure, then end the run."""
        status = Status(status)
        once = {k: v for k, v in (final or {}).items() if k.startswith(("test_", "teacher_test_"))}
        tags = [RunTag(schema.STATUS, status)]
        if reason:
            tags.append(RunTag(schema.FAILURE_REASON, reason))
        self.client.log_batch(self.run_id, metrics=epoch_metrics(once, step or 0), tags=tags)
        self.client.set_terminated(self.run_id, schema.RUN_STATUS[status])

    def log_model(self, model: torch.nn.Module, input_example: np.ndarray) -> None:
        """``model`` as an MLflow PyTorch model (artifact ``model``) with its input example and the
        signature inferred from it: ``mlflow.pytorch.load_model(f"runs:/{run_id}/model")``."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        # MLflow's fluent API is the only one that logs models; this URI only, not the process's
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        with _use_tracking_uri(self.client.tracking_uri), mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=input_example,
                signature=infer_signature(input_example, output),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )

    def reopen(self) -> None:
        """Continue an ``interrupted`` run (a resumed study)."""
        self.client.set_tag(self.run_id, schema.STATUS, Status.RUNNING)
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def abandon(self, reason: str) -> None:
        """Close a run whose trial was sampled again on resume; analysis never reads it."""
        self.client.set_tag(self.run_id, schema.ROLE, Role.ABANDONED)
        self.finish(Status.ABANDONED, reason=reason)


def start_study_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    values: dict[str, Any],
) -> str:
    """The parent run of a study (role ``study``, status ``running``); its id."""
    base = {schema.ROLE: Role.STUDY, schema.STUDY_STATUS: StudyStatus.RUNNING}
    run = client.create_run(experiment_id, run_name=name, tags={**base, **tags})
    client.log_batch(run.info.run_id, params=params(values))
    return run.info.run_id


def set_study_status(client: MlflowClient, run_id: str, status: StudyStatus) -> None:
    """``running`` (re)opens the parent run; ``completed`` and ``interrupted`` end it."""
    status = StudyStatus(status)
    client.set_tag(run_id, schema.STUDY_STATUS, status)
    mlflow_status = schema.STUDY_RUN_STATUS[status]
    if status == StudyStatus.RUNNING:
        client.update_run(run_id, status=mlflow_status)
    else:
        client.set_terminated(run_id, mlflow_status)


def last_step(client: MlflowClient, run_id: str, metric: str = "train_loss") -> int:
    """The last epoch logged to a run (0 if none): a resumed trial must not log an epoch twice."""
    return max((m.step for m in client.get_metric_history(run_id, metric)), default=0)


def search_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
) -> list[Any]:
    """Every run matching the filter (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=PAGE, order_by=order_by, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list[Any]) -> pd.DataFrame:
    """Runs as one row each, with ``run_id``, ``experiment_id``, ``status``, ``start_time`` and
    ``params.*``, ``metrics.*`` (last value), ``tags.*`` columns (``mlflow.search_runs``'s layout,
    without its global tracking URI)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
        }
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "experiment_id", "status"])
