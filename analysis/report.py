"""The study report: ``report.md`` plus the PNG plots, also logged to the study's parent run.

Configs are ranked on the validation objective only; test metrics sit beside them and never
decide anything (DESIGN.md, selection discipline).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.outdir import prepare_out
from analysis.study import BROKEN, TEST_METRICS, Study

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
    ]
    (out / "report.md").write_text(render(study, groups, drawn))
    files = [out / "report.md", *(out / p.file for p in drawn if p.file)]
    for path in files:
        study.client.log_artifact(study.parent_run_id, str(path), ARTIFACT_DIR)
    return files


def render(study: Study, groups: pd.DataFrame, drawn: list[plots.Plot]) -> str:
    """The Markdown report: summary, reproducing command, top configs, plots, failed runs and
    every config."""
    runs = study.runs
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    ranked = groups[groups["rankable"]]
    lines = [
        f"# Study `{study.name}`",
        "",
        f"- search space: `{study.tags.get('distill.space', '?')}`; objective: `{study.objective}` ({study.mode}), "
        f"study status: {study.tags.get('distill.status', '?')}",
        f"- {len(runs)} runs of {len(groups)} configs ({statuses}); {len(ranked)} configs ranked",
        f"- sampled: {', '.join(f'`{a}`' for a in study.axes) or 'nothing'}; "
        f"scientific: {', '.join(f'`{a}`' for a in study.scientific) or 'none declared'}; "
        f"nuisance: {', '.join(f'`{a}`' for a in study.nuisance) or 'none declared'}",
        f"- tracking: `{study.client.tracking_uri}`, experiment {study.experiment_id}, "
        f"parent run `{study.parent_run_id}`",
        "",
        "Reproduce the study:",
        "",
        "```",
        study.command or "(not recorded: tag distill.command is missing)",
        "```",
        "",
        f"## Top configs (ranked on validation `{study.objective}` only)",
        "",
        "Means ± std are over the finished seeds (n) of each config. Test metrics are shown beside them and "
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
    stopped = groups[f"{study.objective} stopped"]
    at_stop = (shown[study.objective] == "-") & stopped.notna()
    shown.loc[at_stop, study.objective] = stopped[at_stop].map(lambda v: f"{v:.4f} (at stop)")
    shown["n"] = groups["n"].astype(str) + "/" + groups["runs"].astype(str)
    shown["seeds"] = groups["seeds"]
    if (groups["trials"] != groups.index).any():  # the runner's groups are its trials: say it once
        shown["trials"] = groups["trials"]
    shown["status"] = groups["status"]
    return shown


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
