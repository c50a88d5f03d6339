"""Read a study back from MLflow (the docs/tracking.md layout) into pandas, and group its seeds.

Only MLflow is read, so a study run on another machine can be analysed from any client that
reaches its tracking server. One row of ``Study.runs`` is one trial x seed (a child run tagged
``distill.role=trial``); ``Study.groups()`` aggregates the seeds of each sampled config. Runs that
a resumed study abandoned (``distill.role=abandoned``: their trials were sampled again) are only
named, in ``Study.abandoned``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.stats import Summary, summarize, wilson_interval
from distill_core import UserError
from distill_core.config import parse_value
from tracking import schema
from tracking.client import runs_frame, search_runs
from tracking.schema import BROKEN, FINISHED, Role, Status

TEST_METRICS = ("test_acc", "test_nll", "test_ece", "test_agreement", "test_kl")
CONFIDENCE = 0.95
#: Why a run failed, diverged or was abandoned; a diverged run carries no tag.
DIVERGED_REASON = "non-finite training loss"


def list_studies(client: MlflowClient) -> dict[str, str]:
    """Study name -> experiment id, for every experiment holding a study parent run."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = search_runs(client, experiments, schema.STUDIES) if experiments else []
    ids = sorted({run.info.experiment_id for run in parents})
    return {client.get_experiment(i).name: i for i in ids}


def unknown_study(client: MlflowClient, name: str) -> UserError:
    known = (
        ", ".join(sorted(list_studies(client)))
        or "none yet (start one with distill-study run SPACE)"
    )
    return UserError(f"no study named {name!r} at {client.tracking_uri}; known studies: {known}")


@dataclass
class Study:
    """One study: its parent run's tags and one row per child trial run."""

    name: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    # Columns: run_id, run_name, trial_id, group, seed, status, reason, params.*, metrics.*.
    runs: pd.DataFrame
    client: MlflowClient
    abandoned: list[str] = field(default_factory=list)  # run names

    @property
    def objective(self) -> str:
        return self.tags.get(schema.OBJECTIVE, "val_acc")

    @property
    def mode(self) -> str:
        return self.tags.get(schema.MODE, "max")

    @property
    def command(self) -> str:
        return self.tags.get(schema.COMMAND, "")

    @property
    def scientific(self) -> list[str]:
        return _split(self.tags.get(schema.SCIENTIFIC, ""))

    @property
    def nuisance(self) -> list[str]:
        return _split(self.tags.get(schema.NUISANCE, ""))

    @cached_property
    def axes(self) -> list[str]:
        """The sampled parameters: tag ``distill.axes``, else every param that varies (but the seed)."""
        tagged = _split(self.tags.get(schema.AXES, ""))
        if tagged:
            return [a for a in tagged if f"params.{a}" in self.runs]
        params = [c for c in self.runs if c.startswith("params.") and c != "params.run.seed"]
        return [c.removeprefix("params.") for c in params if self.runs[c].nunique(dropna=False) > 1]

    def metric(self, name: str) -> pd.Series:
        """The last logged value of metric ``name`` for every run (NaN where absent)."""
        col = f"metrics.{name}"
        return self.runs[col] if col in self.runs else pd.Series(math.nan, index=self.runs.index)

    def values(self, axis: str) -> pd.Series:
        """Typed values of param ``axis`` per run; None where the run did not sample it.

        Params hold the full resolved config as strings, so a conditional parameter also has its
        default where it does not apply; a run's own ``distill.axes`` tag says which ones it sampled.
        """
        values = _typed(self.runs[f"params.{axis}"])
        if "tags.distill.axes" in self.runs:
            sampled = self.runs["tags.distill.axes"].map(
                lambda tag: not isinstance(tag, str) or axis in _split(tag)
            )
            values = values.where(sampled, None)
        return values

    def groups(self) -> pd.DataFrame:
        """One row per sampled config (``distill.group``), best first.

        Columns: ``trials``, ``seeds``, ``runs``, ``status``, the axes' values, ``val_n`` and
        ``test_n`` (evaluation set sizes, NaN where not logged), and for the objective,
        ``val_acc``, ``val_agreement`` and the test metrics: ``<metric> mean``, ``<metric> std``,
        ``<metric> count`` (finished seeds that logged it), ``<metric> low`` and ``<metric> high``
        (see ``interval``); then ``n`` (finished seeds), ``<objective> stopped`` (mean where
        early-stopped runs stopped), ``rankable`` and ``rank``. Means are over finished runs
        (completed or crashed: a crashed seed counts against its config); a config with a diverged
        or failed seed is never ranked. Ranking uses the validation objective only.
        """
        runs = self.runs
        by = runs.groupby("group", sort=False)
        out = pd.DataFrame(
            {
                "trials": by["trial_id"].agg(lambda s: ", ".join(dict.fromkeys(s.dropna()))),
                "seeds": by["seed"].agg(lambda s: ", ".join(sorted(set(s.dropna()), key=seed_key))),
                "runs": by.size(),
                "status": by["status"].agg(_status_summary),
            }
        )
        for axis in self.axes:
            out[axis] = self.values(axis).groupby(runs["group"], sort=False).first()
        finished = runs["status"].isin(FINISHED)
        for size in ("val_n", "test_n"):
            out[size] = self.metric(size)[finished].groupby(runs.loc[finished, "group"]).max()
        metrics = list(dict.fromkeys([self.objective, "val_acc", "val_agreement", *TEST_METRICS]))
        table = pd.DataFrame({m: self.metric(m) for m in metrics})[finished]
        rows = {}
        for group, seeds in table.groupby(runs.loc[finished, "group"], sort=False):
            row = {}
            for m in metrics:
                s = summarize(seeds[m], CONFIDENCE)
                size = eval_size(m)
                low, high = interval(s, m, out.at[group, size] if size else math.nan)
                row |= {f"{m} mean": s.mean, f"{m} std": s.std, f"{m} count": s.n}
                row |= {f"{m} low": low, f"{m} high": high}
            rows[group] = row
        out = out.join(pd.DataFrame.from_dict(rows, orient="index"))
        for m in metrics:
            out[f"{m} count"] = out[f"{m} count"].fillna(0).astype(int)
        out["n"] = finished.groupby(runs["group"], sort=False).sum().astype(int)
        stopped = runs["status"].eq(Status.EARLY_STOPPED)
        out[f"{self.objective} stopped"] = (
            self.metric(self.objective)[stopped].groupby(runs.loc[stopped, "group"]).mean()
        )
        broken = runs["status"].isin(BROKEN).groupby(runs["group"], sort=False).any()
        score = out[f"{self.objective} mean"]
        out["rankable"] = (out["n"] > 0) & ~broken & score.notna()
        out = out.sort_values(
            ["rankable", f"{self.objective} mean"],
            ascending=[False, self.mode == "min"],
            kind="stable",
        )
        out["rank"] = (
            pd.Series(range(1, len(out) + 1), index=out.index)
            .where(out["rankable"])
            .astype("Int64")
        )
        out.index.name = "group"
        return out

    def crash_counts(self) -> dict[str, int]:
        """Runs flagged crashed: ``ended`` (status crashed), ``recovered`` (completed after an
        epoch flagged crashed, metric ``crashed_epochs`` > 0), ``other`` (stopped, cancelled,
        diverged or failed after a flagged epoch), ``flagged`` (all three) and ``runs``."""
        status = self.runs["status"]
        flagged_epoch = self.metric("crashed_epochs") > 0
        ended = status.eq(Status.CRASHED)
        recovered = status.eq(Status.COMPLETED) & flagged_epoch
        flagged = ended | flagged_epoch
        return {
            "ended": int(ended.sum()),
            "recovered": int(recovered.sum()),
            "other": int((flagged & ~ended & ~recovered).sum()),
            "flagged": int(flagged.sum()),
            "runs": len(status),
        }

    def history(self, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
        """Per-epoch metrics of ``run_ids``: long format with columns run_id, key, step, value."""
        rows = [
            (run_id, m.key, m.step, m.value)
            for run_id in run_ids
            for key in keys
            for m in self.client.get_metric_history(run_id, key)
        ]
        frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
        return frame.sort_values(["run_id", "key", "step"], kind="stable")


def load_study(client: MlflowClient, name: str) -> Study:
    """Read study ``name`` from the tracking store behind ``client``.

    Raises:
        UserError: no such study (the known ones are listed), or it has no finished trials.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise unknown_study(client, name)
    parents = search_runs(
        client, [exp.experiment_id], schema.STUDIES, order_by=["attributes.start_time DESC"]
    )
    if not parents:
        raise unknown_study(client, name)
    parent = parents[0]
    tags = dict(parent.data.tags)
    found = [exp.experiment_id]
    runs = _tidy(runs_frame(search_runs(client, found, schema.children(parent.info.run_id))))
    abandoned = search_runs(client, found, schema.children(parent.info.run_id, Role.ABANDONED))
    names = sorted(r.data.tags.get(schema.RUN_NAME, r.info.run_id) for r in abandoned)
    if not runs["status"].isin(FINISHED).any():
        counts = (
            ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
            or "no trial runs"
        )
        raise UserError(
            f"study {name!r} has no finished trials yet ({counts}); wait until one completes, "
            f"or resume it with its command plus --resume"
        )
    return Study(name, exp.experiment_id, parent.info.run_id, tags, runs, client, names)


def is_proportion(metric: str) -> bool:
    """Accuracies and agreements: a share of ``n`` examples, so binomial noise applies."""
    return metric.endswith(("_acc", "_agreement"))


def eval_size(metric: str) -> str | None:
    """The metric holding the evaluation set size of ``metric`` (``val_n``, ``test_n``), if any."""
    for split in ("test", "val"):
        if metric.startswith(f"{split}_") or f"_{split}_" in metric:
            return f"{split}_n"
    return None


def feasible(metric: str) -> tuple[float, float]:
    """The range a metric can take: [0, 1] for shares, [0, inf) for losses and divergences."""
    if is_proportion(metric) or metric.endswith("_ece"):
        return 0.0, 1.0
    if metric.endswith(("_kl", "_nll", "_loss")):
        return 0.0, math.inf
    return -math.inf, math.inf


def interval(summary: Summary, metric: str, n_examples: float) -> tuple[float, float]:
    """The 95% interval shown for a config: Student-t over its seeds when it has two or more
    (cut to the metric's ``feasible`` range: with two seeds, t(1) = 12.7 easily leaves [0, 1]);
    with one seed of an accuracy, the Wilson interval of its ``n_examples`` evaluation examples;
    otherwise none (NaN, NaN)."""
    if summary.n >= 2:
        lo, hi = feasible(metric)
        return max(summary.low, lo), min(summary.high, hi)
    if summary.n == 1 and is_proportion(metric) and n_examples > 0:
        n = int(n_examples)
        return wilson_interval(round(summary.mean * n), n, CONFIDENCE)
    return math.nan, math.nan


def _tidy(children: pd.DataFrame) -> pd.DataFrame:
    """Child runs with the layout's tags as plain columns, in trial order."""
    named = {
        "run_id": "run_id",
        f"tags.{schema.RUN_NAME}": "run_name",
        f"tags.{schema.TRIAL_ID}": "trial_id",
        f"tags.{schema.GROUP}": "group",
        f"tags.{schema.SEED}": "seed",
        f"tags.{schema.STATUS}": "status",
        f"tags.{schema.FAILURE_REASON}": "reason",
    }
    # MLflow's own run status (FINISHED, FAILED) would clash with the layout's status tag.
    runs = children.rename(columns={"status": "mlflow_status"})
    runs = runs.reindex(columns=[*named, *runs.columns.drop(list(named), errors="ignore")])
    runs = runs.rename(columns=named)
    # A tag no run has comes back as a float NaN column.
    runs[list(named.values())] = runs[list(named.values())].astype(object)
    runs["group"] = runs["group"].fillna(runs["trial_id"]).fillna(runs["run_id"])
    runs["status"] = runs["status"].fillna(Status.RUNNING)
    runs["reason"] = runs["reason"].where(runs["status"] != Status.DIVERGED, DIVERGED_REASON)
    order = runs["start_time"] if "start_time" in runs else runs.index
    return (
        runs.assign(_order=order)
        .sort_values("_order", kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _typed(values: pd.Series) -> pd.Series:
    """Param strings as YAML reads them (``str(None)`` is missing); all numbers (not booleans): float."""
    parsed = values.map(lambda v: parse_value(v) if isinstance(v, str) and v != "None" else None)
    present = parsed.dropna()
    if len(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    ):
        return parsed.astype(float)
    return parsed.map(
        lambda v: v if v is None or isinstance(v, str | bool | int | float) else str(v)
    )


def _status_summary(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{s} x{n}" for s, n in counts.items())


def seed_key(seed: Any) -> tuple[int, str]:
    """Sort key: numeric seeds in numeric order, anything else after them."""
    return (int(seed), "") if str(seed).isdigit() else (1 << 30, str(seed))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
