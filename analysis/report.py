"""The study report: ``report.md`` plus the PNG plots, also logged to the study's parent run.

Configs are ranked on the validation objective only; test metrics sit beside them and never
decide anything (DESIGN.md, selection discipline). Every accuracy carries its noise: a 95%
Student-t interval over seeds, or for one seed the binomial standard error of its evaluation set
(``val_n``, ``test_n``); the best config says whether the runner-up is within noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.outdir import prepare_out
from analysis.stats import binomial_se, difference, verdict, wilson_interval
from analysis.study import (
    TEST_METRICS,
    Study,
    eval_size,
    is_proportion,
)
from tracking import schema
from tracking.schema import BROKEN, FINISHED, Status

TOP_CONFIGS = 5
ARTIFACT_DIR = "report"


def write_report(study: Study, out: Path, *, force: bool = False) -> list[Path]:
    """Write ``report.md`` and the plots into ``out``, log them under ``report/`` of the parent run.

    Returns:
        The files written, ``report.md`` first.
    """
    prepare_out(out, lambda p: p.name == "report.md" or p.suffix == ".png", force=force)
    groups = study.groups()
    drawn = [
        plots.learning_curves(study, groups, out),
        *plots.isolation_plots(study, groups, out),
        *plots.axis_plots(study, groups, out),
        plots.importance_plot(study, groups, out),
        plots.pareto_plot(study, groups, out),
        plots.status_plot(study, out),
        *([plots.fidelity_plot(study, out)] if plots.FIDELITY_AXIS in study.axes else []),
    ]
    (out / "report.md").write_text(render(study, groups, drawn))
    files = [out / "report.md", *(out / p.file for p in drawn if p.file)]
    for path in files:
        study.client.log_artifact(study.parent_run_id, str(path), ARTIFACT_DIR)
    return files


def render(study: Study, groups: pd.DataFrame, drawn: list[plots.Plot]) -> str:
    """The Markdown report: summary, noise, best config, reproducing command, top configs, plots,
    failed runs and every config."""
    runs = study.runs
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    ranked = groups[groups["rankable"]]
    lines = [
        f"# Study `{study.name}`",
        "",
        f"- search space: `{study.tags.get(schema.SPACE, '?')}`; objective: `{study.objective}` ({study.mode}), "
        f"study status: {study.tags.get(schema.STUDY_STATUS, '?')}",
        f"- {len(runs)} runs of {len(groups)} configs ({statuses}); {len(ranked)} configs ranked",
        f"- sampled: {', '.join(f'`{a}`' for a in study.axes) or 'nothing'}; "
        f"scientific: {', '.join(f'`{a}`' for a in study.scientific) or 'none declared'}; "
        f"nuisance: {', '.join(f'`{a}`' for a in study.nuisance) or 'none declared'}",
        f"- tracking: `{study.client.tracking_uri}`, experiment {study.experiment_id}, "
        f"parent run `{study.parent_run_id}`",
        f"- crashes: {plots.crash_sentence(study)}",
        f"- best config: {best_config(study, ranked)}",
        "",
        noise_note(study),
        "",
        "Reproduce the study:",
        "",
        "```",
        study.command or "(not recorded: tag distill.command is missing)",
        "```",
        "",
        f"## Top configs (ranked on validation `{study.objective}` only)",
        "",
        "Means ± std are over the finished seeds (n) of each config; a `noise` column gives the 95% "
        "Student-t interval of the mean over seeds, or for a single seed the binomial standard error "
        "of its evaluation set (n examples). Test metrics are shown beside them and "
        "were never used to rank. Take them away with "
        f"`distill-study export {study.name} --top-k {min(3, max(len(ranked), 1))} --out DIR`.",
        "",
        markdown_table(table(study, ranked.head(TOP_CONFIGS))),
        "",
        "## Plots",
        "",
    ]
    for plot in drawn:
        lines += [f"### {plot.title}", ""]
        if plot.file:
            lines += [f"![{plot.title}]({plot.file})", ""]
        lines += [plot.sentence, ""]
    lines += failures(study)
    lines += [
        "## All configs",
        "",
        "Unranked configs have a diverged or failed seed, or no finished seed yet.",
        "",
        markdown_table(table(study, groups)),
        "",
    ]
    return "\n".join(lines)


def failures(study: Study) -> list[str]:
    """The "Failed runs" section: every failed or diverged run with its reason; abandoned runs."""
    runs = study.runs[study.runs["status"].isin(BROKEN)]
    lines = ["## Failed runs", ""]
    if runs.empty:
        lines.append("None failed or diverged.")
    else:
        lines += [
            "Their configs are never ranked. A config or training error fails a trial at once (a "
            "retry would fail the same way); a trial whose worker process died fails only after "
            "`--max-failures` retries from its last checkpoint (tag `distill.retries`).",
            "",
            markdown_table(
                pd.DataFrame(
                    {
                        "run": runs["run_name"],
                        "config": runs["group"],
                        "seed": runs["seed"],
                        "status": runs["status"],
                        "reason": runs["reason"].fillna("not recorded"),
                    }
                )
            ),
        ]
    cancelled = study.runs[study.runs["status"] == Status.CANCELLED]
    if len(cancelled):
        lines += [
            "",
            f"Cancelled (not failed, not ranked): {_runs(len(cancelled))} stopped because another "
            f"seed of their trial diverged or failed: {', '.join(cancelled['run_name'].astype(str))}.",
        ]
    if study.abandoned:
        lines += [
            "",
            f"Left out: {len(study.abandoned)} runs abandoned on resume (the driver stopped before "
            f"Ray Tune saved their trials, so their configs were sampled again): "
            f"{', '.join(study.abandoned)}.",
        ]
    return [*lines, ""]


def table(study: Study, groups: pd.DataFrame) -> pd.DataFrame:
    """Display table of ``groups``: rank, config (sampled values), metric mean ± std, status."""
    metrics = list(dict.fromkeys([study.objective, "val_agreement", *TEST_METRICS]))
    shown = pd.DataFrame(index=groups.index)
    shown["rank"] = groups["rank"].map(lambda r: "-" if pd.isna(r) else str(r))
    shown["config"] = groups.index
    for axis in study.axes:
        shown[axis] = groups[axis].map(_cell)
    for m in metrics:
        if m == study.objective or groups[f"{m} mean"].notna().any():
            shown[m] = [
                mean_std(mu, sd)
                for mu, sd in zip(groups[f"{m} mean"], groups[f"{m} std"], strict=True)
            ]
            if m == study.objective or is_proportion(m):
                shown[f"{m} noise"] = [noise(row, m) for _, row in groups.iterrows()]
    stopped = groups[f"{study.objective} stopped"]
    at_stop = (shown[study.objective] == "-") & stopped.notna()
    shown.loc[at_stop, study.objective] = stopped[at_stop].map(lambda v: f"{v:.4f} (at stop)")
    shown["n"] = groups["n"].astype(str) + "/" + groups["runs"].astype(str)
    shown["seeds"] = groups["seeds"]
    if (groups["trials"] != groups.index).any():  # the runner's groups are its trials: say it once
        shown["trials"] = groups["trials"]
    shown["status"] = groups["status"]
    return shown


def noise(row: pd.Series, metric: str) -> str:
    """The uncertainty of a config's ``metric``: its 95% t interval over seeds, or with one seed
    the binomial SE of an accuracy on its evaluation set (``n unknown`` when not logged)."""
    count = row[f"{metric} count"]
    if count >= 2:
        return f"95% CI [{row[f'{metric} low']:.4f}, {row[f'{metric} high']:.4f}]"
    if count == 0:
        return "-"
    if not is_proportion(metric):
        return "1 seed: no interval"
    size = eval_size(metric)
    n = row[size] if size else math.nan
    if pd.isna(n):
        return "SE ? (n unknown)"
    return f"SE {binomial_se(row[f'{metric} mean'], int(n)):.4f} (n={int(n)})"


def noise_note(study: Study) -> str:
    """The sentence at the top: how many points of accuracy one evaluation set can resolve."""
    finished = study.runs["status"].isin(FINISHED)
    sizes = study.metric("val_n")[finished].dropna()
    seeds = "Configs with several seeds show mean ± std and the 95% Student-t interval over seeds"
    if sizes.empty:
        return (
            f"**Noise.** The runs did not log their evaluation set sizes (metrics `val_n`, "
            f"`test_n`: n unknown), so a single seed's accuracy has no error bar here. {seeds}."
        )
    n = int(sizes.min())
    shown_n = (
        f"n = {n}" if sizes.nunique() == 1 else f"n = {n} (the smallest; up to {int(sizes.max())})"
    )
    p = study.metric("val_acc")[finished].median()
    p = 0.5 if pd.isna(p) else p  # the largest binomial SE: a bound
    se = binomial_se(p, n)
    low, high = wilson_interval(round(p * n), n)
    if se > 0:
        noise_words = (
            f"an accuracy near {p:.2f} (the median run) has a binomial standard error of "
            f"{100 * se:.1f} points (95% Wilson interval of one run: [{low:.3f}, {high:.3f}]): "
            f"differences between single runs below {200 * se:.1f} points (2 SE) are within noise"
        )
    else:
        noise_words = (
            f"the median run's accuracy of {p:.2f} has no binomial spread, yet its 95% Wilson "
            f"interval is [{low:.3f}, {high:.3f}]: read single-run differences against that"
        )
    return (
        f"**Noise.** At {shown_n} validation examples one example is {100 / n:.1f} points of "
        f"accuracy, and {noise_words}. {seeds} (cut to [0, 1] for accuracies); configs with one "
        "seed show the binomial SE of their evaluation set."
    )


def best_config(study: Study, ranked: pd.DataFrame) -> str:
    """The best config, and whether the runner-up is within noise of it.

    With two or more seeds on both: the Welch 95% interval of the difference of seed means
    (``stats.difference``) judged by ``stats.verdict`` (within noise unless the whole interval
    favours the best). Otherwise, for an accuracy with known n: within noise when the difference
    is below twice the combined binomial SE, ``sqrt(se_best^2 + se_runner_up^2)``.
    """
    if ranked.empty:
        return "none ranked yet."
    obj = study.objective
    best = ranked.index[0]
    row = ranked.iloc[0]
    shown = f"`{best}`, {obj} {mean_std(row[f'{obj} mean'], row[f'{obj} std'])}, {noise(row, obj)}"
    if len(ranked) < 2:
        return f"{shown}; no runner-up to compare with."
    other, second = ranked.index[1], ranked.iloc[1]
    values = {
        g: study.metric(obj)[(study.runs["group"] == g) & study.runs["status"].isin(FINISHED)]
        for g in (best, other)
    }
    scale, unit = (100.0, " points") if is_proportion(obj) else (1.0, "")
    if min(len(v.dropna()) for v in values.values()) >= 2:
        d = difference(values[best], values[other])
        v = verdict(
            d.estimate,
            d.low,
            d.high,
            threshold=0.0,
            direction="greater" if study.mode == "max" else "less",
            n=min(d.n_a, d.n_b),
            unit=unit,
            scale=scale,
        )
        within = v.outcome != "reproduced"
        g = "n/a" if math.isnan(d.effect_size) else f"{d.effect_size:.2f}"
        why = f"best minus runner-up, Welch 95% interval, {v.sentence} (Hedges' g {g})"
    else:
        size = eval_size(obj)
        n = [row[size], second[size]] if size and is_proportion(obj) else [math.nan]
        if any(pd.isna(x) for x in n):
            return (
                f"{shown}; runner-up `{other}`: no noise estimate (a single seed, and "
                f"{'n unknown' if is_proportion(obj) else f'{obj} is not an accuracy'}), "
                "run more seeds to tell them apart."
            )
        gap = row[f"{obj} mean"] - second[f"{obj} mean"]
        se = math.hypot(
            binomial_se(row[f"{obj} mean"], int(n[0])),
            binomial_se(second[f"{obj} mean"], int(n[1])),
        )
        within = abs(gap) < 2 * se
        why = (
            f"|difference| {100 * abs(gap):.1f} points {'<' if within else '>='} 2 x combined "
            f"binomial SE = {200 * se:.1f} points (n = {int(n[0])}, {int(n[1])}; a config with one seed)"
        )
    said = "is within noise of it" if within else "is beaten beyond noise"
    return f"{shown}; the runner-up `{other}` {said}: {why}."


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _cell(value: object) -> str:
    """A sampled value: ``-`` where the parameter does not apply, floats short."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def mean_std(mean: float, std: float) -> str:
    """``0.9375 ± 0.0100``; the mean alone with one seed, ``-`` with none."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (``DataFrame.to_markdown`` needs the absent ``tabulate`` package)."""
    if frame.empty:
        return "(none)"
    rows = [list(frame.columns), ["---"] * len(frame.columns), *frame.astype(str).values.tolist()]
    return "\n".join(
        "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows
    )
