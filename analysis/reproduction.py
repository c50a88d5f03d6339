"""Verdicts on a seed paper's claims from the runs of a reproduction study (``distill-study reproduce``).

Each claim (``search_spaces/_claims.py``) names arms of the study (tag ``distill.arm``), a metric
and a threshold fixed in advance. Its values are one per finished run (``completed`` or
``crashed``): a run's last logged value of the metric, or a quantity derived from the run
(``DERIVED``). The estimate and its 95% interval:

- ``difference``: Welch's interval of mean(a) - mean(b) over seeds; for a yes/no quantity
  (``crashed``) Newcombe's interval of the difference of the two shares;
- ``level``: the Student-t interval of one arm's mean;
- ``trend``: the OLS slope of the metric over the axis (every seed of every arm a point);
- ``trend_gap``: the slope of one metric minus the slope of another.

``analysis.stats.verdict`` turns it into ``reproduced``, ``not reproduced`` or ``inconclusive``
(with the number of seeds that would settle it). A claim marked "needs paper scale" is run and
reported but not counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.report import markdown_table
from analysis.stats import (
    Summary,
    Verdict,
    difference,
    number,
    proportion_difference,
    slope,
    slope_difference,
    summarize,
    verdict,
    wilson_interval,
)
from analysis.study import Study
from tracking import schema
from tracking.schema import FINISHED, Status

CONFIDENCE = 0.95
ARTIFACT_DIR = "reproduction"
CRASHED_METRIC = "crashed"  # the trainer's per-epoch flag; as a claim metric: crashed in any epoch


def _crashed(study: Study) -> pd.Series:
    """1 for a run in which any evaluated model collapsed in some epoch (or at the end), else 0."""
    flagged = study.metric("crashed_epochs").fillna(0) > 0
    return (flagged | study.runs["status"].eq(Status.CRASHED)).astype(float)


def _val_acc_jitter(study: Study) -> pd.Series:
    """Mean absolute change of validation accuracy from one epoch to the next: how unsteadily a
    run trains (seed 001's stability)."""
    history = study.history(list(study.runs["run_id"]), ["val_acc"])
    jitter = history.groupby("run_id")["value"].agg(lambda v: float(np.abs(np.diff(v)).mean()))
    return study.runs["run_id"].map(jitter).astype(float)


#: Claim metrics that are not logged as such, from the runs they describe.
DERIVED: dict[str, Callable[[Study], pd.Series]] = {
    CRASHED_METRIC: _crashed,
    "val_acc_jitter": _val_acc_jitter,
}
BINARY = {CRASHED_METRIC}
#: The per-epoch metric a claim's curves show (test metrics exist only at the end).
CURVE = {
    "test_acc": "val_acc",
    "test_agreement": "val_agreement",
    "test_logit_diff": "val_logit_diff",
    CRASHED_METRIC: "val_acc",
    "val_acc_jitter": "val_acc",
}


SCALE_NOTES = {
    "laptop": "Embedded data, small models and a shortened schedule, chosen so that each effect "
    "has a chance to appear on a laptop: these are not the paper's numbers.",
    "paper": "The paper's data, models and schedules.",
    "smoke test": "Synthetic data, MLPs, two epochs: a check of the plumbing; no verdict here "
    "says anything about the paper.",
}


@dataclass(frozen=True)
class Result:
    """A claim's numbers and verdict."""

    claim: Any
    arms: dict[str, Summary]
    estimate: float
    low: float
    high: float
    effect_size: float
    verdict: Verdict

    @property
    def counted(self) -> bool:
        return not self.claim.needs_paper_scale


def values(study: Study, metric: str) -> pd.Series:
    """The claim metric of every run of the study (NaN where a run has none)."""
    found = DERIVED.get(metric)
    return found(study) if found else study.metric(metric)


def arm_of(study: Study) -> pd.Series:
    column = f"tags.{schema.ARM}"
    return study.runs[column] if column in study.runs else pd.Series(None, index=study.runs.index)


def _finished(study: Study, arms: Sequence[str]) -> pd.Series:
    return arm_of(study).isin(arms) & study.runs["status"].isin(FINISHED)


def evaluate(study: Study, claims: Sequence[Any]) -> list[Result]:
    """Every claim's estimate, interval, effect size and verdict."""
    return [_evaluate(study, claim) for claim in claims]


def _evaluate(study: Study, claim: Any) -> Result:
    v = values(study, claim.metric)
    arms = {a: _summary(v[_finished(study, [a])], claim.metric) for a in claim.arms}
    scale, unit = _units(claim.metric)
    if claim.kind == "difference":
        a, b = (v[_finished(study, [arm])].dropna() for arm in claim.arms)
        if claim.metric in BINARY:
            d = proportion_difference(int(a.sum()), len(a), int(b.sum()), len(b), CONFIDENCE)
        else:
            d = difference(a, b, CONFIDENCE)
        est, low, high, effect, n = d.estimate, d.low, d.high, d.effect_size, min(d.n_a, d.n_b)
    elif claim.kind == "level":
        s = arms[claim.arms[0]]
        est, low, high, n = s.mean, s.low, s.high, s.n
        effect = (s.mean - claim.threshold) / s.std if s.std and s.std > 0 else math.nan
    else:
        rows = _finished(study, claim.arms)
        x = pd.to_numeric(study.runs.loc[rows, f"params.{claim.axis}"], errors="coerce")
        if claim.kind == "trend":
            fit = slope(x, v[rows], CONFIDENCE)
        else:
            fit = slope_difference(x, v[rows], x, values(study, claim.other)[rows], CONFIDENCE)
        est, low, high, effect = fit.estimate, fit.low, fit.high, fit.estimate
        n = min(s.n for s in arms.values())
    judged = verdict(
        est, low, high, threshold=claim.threshold, direction=claim.direction, n=n,
        confidence=CONFIDENCE, unit=unit, scale=scale, signed=claim.kind != "level",
    )  # fmt: skip
    return Result(claim, arms, est, low, high, effect, judged)


def _summary(values: pd.Series, metric: str) -> Summary:
    """Mean over seeds with its interval: Student-t, or Wilson's for a yes/no quantity."""
    s = summarize(values, CONFIDENCE)
    if metric not in BINARY or s.n == 0:
        return s
    low, high = wilson_interval(int(values.dropna().sum()), s.n, CONFIDENCE)
    return replace(s, low=low, high=high)


def _units(metric: str) -> tuple[float, str]:
    """How a metric's numbers read: accuracies and agreements in points, shares in percent."""
    if metric in BINARY:
        return 100.0, "%"
    if metric.endswith(("_acc", "_agreement", "_jitter")):
        return 100.0, " points"
    return 1.0, ""


def write(study: Study, results: list[Result], setting: dict[str, Any], out: Path) -> list[Path]:
    """``reproduction.md``, ``reproduction.json`` and a plot per claim in ``out``, also logged to
    the study's parent run under ``reproduction/``. Returns the files, the Markdown first."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = {r.claim.id: _plot(study, r, out) for r in results}
    (out / "reproduction.md").write_text(render(results, setting, drawn))
    (out / "reproduction.json").write_text(json.dumps(to_json(results, setting), indent=1))
    files = [out / "reproduction.md", out / "reproduction.json"]
    files += [out / name for name in drawn.values() if name]
    for path in files:
        study.client.log_artifact(study.parent_run_id, str(path), ARTIFACT_DIR)
    return files


def tally(results: Sequence[Result]) -> dict[str, int]:
    """Counted verdicts: how many claims were reproduced, not reproduced, inconclusive."""
    counts = dict.fromkeys(("reproduced", "not reproduced", "inconclusive"), 0)
    for r in results:
        if r.counted:
            counts[r.verdict.outcome] += 1
    return counts


def render(results: list[Result], setting: dict[str, Any], drawn: dict[str, str | None]) -> str:
    """The Markdown report: the setting first (so that a laptop result is never taken for the
    paper's), a table of verdicts, then each claim with its arms and plot."""
    scale = setting["scale"]
    counts = tally(results)
    lines = [
        f"# Reproduction of seed {setting['paper']}: {setting['title']}",
        "",
        f"**Scale: {scale}.** " + SCALE_NOTES[scale],
        "",
        f"- data: `{setting['data']}`; models: {setting['models']}",
        f"- epochs: {setting['epochs']} (paper: {setting['paper_epochs']}); seeds per arm: "
        f"{setting['seeds']}; arms: {', '.join(f'`{a}`' for a in setting['arms'])}",
        f"- study `{setting['study']}` (MLflow experiment of that name, parent run "
        f"`{setting['parent_run_id']}`); {setting['date']}, {setting['machine']}",
        f"- verdicts (95% intervals over seeds): {counts['reproduced']} reproduced, "
        f"{counts['not reproduced']} not reproduced, {counts['inconclusive']} inconclusive"
        + (
            f"; {sum(not r.counted for r in results)} need paper scale (not counted)"
            if any(not r.counted for r in results)
            else ""
        ),
        "",
        "| claim | paper | ours | effect size | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        verdict_cell = r.verdict.outcome + ("" if r.counted else " (needs paper scale)")
        lines.append(
            f"| `{r.claim.id}` {r.claim.sentence} | {r.claim.paper} | {_ours(r)} | "
            f"{_num(r.effect_size)} | **{verdict_cell}** |"
        )
    for r in results:
        lines += ["", f"## `{r.claim.id}`", "", r.claim.sentence, ""]
        lines += [
            f"- paper: {r.claim.paper} ({r.claim.source})",
            f"- test: {_test(r.claim)}",
            f"- verdict: {r.verdict.sentence}",
        ]
        if r.claim.laptop:
            lines.append(f"- at laptop scale: {r.claim.laptop}")
        lines += ["", markdown_table(_arm_table(r)), ""]
        if drawn.get(r.claim.id):
            lines += [f"![{r.claim.id}]({drawn[r.claim.id]})", ""]
    return "\n".join(lines) + "\n"


def _num(x: float | None, scale: float = 1.0, signed: bool = False) -> str:
    return number(None if x is None else x * scale, signed)


def _ours(r: Result) -> str:
    scale, unit = _units(r.claim.metric)
    if math.isnan(r.low):
        return f"{_num(r.estimate, scale)}{unit} (no interval)"
    signed = r.claim.kind != "level"
    return f"{_num(r.estimate, scale, signed)}{unit} [{_num(r.low, scale)}, {_num(r.high, scale)}]"


def _test(claim: Any) -> str:
    """The claim as the test it is: what is estimated, and on which side of what it must lie."""
    side = ">" if claim.direction == "greater" else "<"
    scale, unit = _units(claim.metric)
    arms = claim.arms
    if claim.kind == "difference":
        what = f"`{claim.metric}` of `{arms[0]}` minus `{arms[1]}`"
    elif claim.kind == "level":
        what = f"mean `{claim.metric}` of `{arms[0]}`"
    elif claim.kind == "trend":
        what = f"slope of `{claim.metric}` over `{claim.axis}`"
    else:
        what = f"slope of `{claim.metric}` minus slope of `{claim.other}` over `{claim.axis}`"
    return f"{what} {side} {_num(claim.threshold, scale) if claim.threshold else 0}{unit}"


def _arm_table(r: Result) -> pd.DataFrame:
    scale, unit = _units(r.claim.metric)
    rows = []
    for arm, s in r.arms.items():
        interval = "-" if math.isnan(s.low) else f"[{s.low * scale:.3g}, {s.high * scale:.3g}]"
        rows.append(
            {
                "arm": arm,
                "n": s.n,
                f"mean {r.claim.metric}{unit}": _num(s.mean, scale),
                "std": _num(s.std, scale),
                "95% interval": interval,
            }
        )
    return pd.DataFrame(rows)


def to_json(results: list[Result], setting: dict[str, Any]) -> dict[str, Any]:
    """The report as data: the setting, and per claim its definition, numbers and verdict."""

    def clean(x: Any) -> Any:
        return None if isinstance(x, float) and not math.isfinite(x) else x

    claims = []
    for r in results:
        claims.append(
            {
                **{k: clean(v) for k, v in asdict(r.claim).items()},
                "arms_summary": {
                    a: {k: clean(v) for k, v in asdict(s).items()} for a, s in r.arms.items()
                },
                "estimate": clean(r.estimate),
                "low": clean(r.low),
                "high": clean(r.high),
                "effect_size": clean(r.effect_size),
                "verdict": r.verdict.outcome,
                "seeds_needed": r.verdict.seeds_needed,
                "verdict_sentence": r.verdict.sentence,
                "counted": r.counted,
            }
        )
    return {"setting": setting, "tally": tally(results), "claims": claims}


def _plot(study: Study, r: Result, out: Path) -> str | None:
    """Curves per arm of the claim's metric (mean and spread over seeds), or for a trend the
    metric against the axis with the fitted line."""
    if r.claim.kind in ("trend", "trend_gap"):
        return _trend_plot(study, r, out)
    metric = CURVE.get(r.claim.metric, r.claim.metric)
    arm = arm_of(study)
    fig, ax = plots.figure(f"{r.claim.id}: {metric} per epoch (mean, band: min-max over seeds)")
    drawn = False
    for name in r.claim.arms:
        ids = list(study.runs.loc[arm.eq(name), "run_id"])
        history = study.history(ids, [metric])
        if history.empty:
            continue
        by_epoch = history.groupby("step")["value"]
        line = ax.plot(by_epoch.mean().index, by_epoch.mean().values, label=name)[0]
        ax.fill_between(
            by_epoch.min().index, by_epoch.min().values, by_epoch.max().values,
            color=line.get_color(), alpha=0.2,
        )  # fmt: skip
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend()
    return plots.save(fig, out, f"claim-{r.claim.id}.png")


def _trend_plot(study: Study, r: Result, out: Path) -> str | None:
    rows = _finished(study, r.claim.arms)
    x = pd.to_numeric(study.runs.loc[rows, f"params.{r.claim.axis}"], errors="coerce")
    fig, ax = plots.figure(f"{r.claim.id}: against {r.claim.axis} (points: seeds; line: OLS fit)")
    for metric in [r.claim.metric, *([r.claim.other] if r.claim.other else [])]:
        y = values(study, metric)[rows]
        keep = x.notna() & y.notna()
        if keep.sum() < 2:
            continue
        dots = ax.scatter(x[keep], y[keep], label=metric, alpha=0.7)
        b, a = np.polyfit(x[keep], y[keep], 1)
        grid = np.linspace(float(x[keep].min()), float(x[keep].max()), 50)
        ax.plot(grid, a + b * grid, color=dots.get_facecolor()[0])
    ax.set_xlabel(r.claim.axis)
    ax.legend()
    return plots.save(fig, out, f"claim-{r.claim.id}.png")
