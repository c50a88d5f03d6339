"""The report's plots: matplotlib PNGs of one fixed size, each readable on its own.

Every function takes the study, its seed groups (``Study.groups()``) and the output folder, writes
its PNG(s) and returns ``Plot`` records whose sentence says what the plot shows; a plot that cannot
be drawn (too few trials, no such metric) comes back with ``file=None`` and the reason.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)

from analysis.quiet import quiet_optuna
from analysis.stats import slope, slope_difference, summarize, verdict
from analysis.study import Study, feasible
from tracking.schema import BROKEN, FINISHED, Status

FIGSIZE = (8.0, 5.0)
DPI = 100  # with FIGSIZE: 800 x 500 pixel PNGs
MAX_BINS = 8  # a continuous parameter with more distinct values is cut into quantile bins
MIN_PER_BIN = 3  # ... of at least this many points where there are enough
FIDELITY_AXIS = "init.interp_lambda"
TOP_COLORS = ("tab:blue", "tab:green", "tab:purple")  # none of them a status colour
TOP_CURVES = len(TOP_COLORS)
CRASHED_METRIC = "crashed"  # the trainer's per-epoch flag (a metric, not the run status)
RECOVERED = "recovered"  # a completed run that was flagged crashed in some epoch
STATUS_COLORS = {
    Status.COMPLETED: "tab:blue",
    RECOVERED: "tab:cyan",
    Status.EARLY_STOPPED: "tab:gray",
    Status.CRASHED: "tab:red",
    Status.DIVERGED: "tab:orange",
    Status.FAILED: "black",
    Status.CANCELLED: "tab:pink",
    Status.RUNNING: "tab:olive",
    Status.INTERRUPTED: "tab:brown",
}
HOLLOW = (Status.EARLY_STOPPED, Status.CANCELLED)  # their objective is where they stopped


@dataclass
class Plot:
    """One plot of the report: its file (None when not drawn), title and one-sentence reading."""

    file: str | None
    title: str
    sentence: str


def slug(key: str) -> str:
    """A file-name part for a dotted key: ``method.alpha`` -> ``method_alpha``."""
    return "".join(c if c.isalnum() else "_" for c in key)


def figure(title: str) -> tuple[Figure, Axes]:
    """A figure of the report's size. Matplotlib's object API, without pyplot: no backend or global
    figure state to set, so importing this module changes nothing in the process."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI)  # no bbox_inches="tight": every PNG keeps FIGSIZE x DPI pixels
    return name


def _fmt(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4f}"


def _show(value: object) -> str:
    """A parameter value; ``-`` where it does not apply (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_log(values: pd.Series) -> bool:
    """Numeric, positive and spanning more than a decade: draw on a log axis."""
    v = values.dropna()
    return bool(len(v)) and v.dtype.kind == "f" and v.min() > 0 and v.max() / v.min() > 10


def bins(values: pd.Series) -> pd.Series:
    """Bin labels of numeric ``values``: the values themselves when there are at most
    ``MAX_BINS`` distinct ones (a grid), else quantile bins of ``MIN_PER_BIN`` or more points
    (at most ``MAX_BINS``, at least 2)."""
    if values.nunique() <= MAX_BINS:
        return values
    return pd.qcut(values, min(MAX_BINS, max(2, len(values) // MIN_PER_BIN)), duplicates="drop")


def binned(
    x: pd.Series, y: pd.Series, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> pd.DataFrame:
    """``y`` summarised per bin of numeric ``x`` (``bins``), pairs with a NaN left out.

    Returns:
        One row per bin, by ``x``: ``x`` (median of the bin), ``x_low``, ``x_high`` (its range),
        ``n``, ``mean`` and the 95% Student-t interval ``low``, ``high`` (NaN for one point), cut
        to ``bounds`` (the range ``y`` can take).
    """
    keep = x.notna() & y.notna()
    x, y = x[keep].astype(float), y[keep].astype(float)
    rows = []
    for members in x.groupby(bins(x), observed=True).groups.values():
        s, xs = summarize(y[members]), x[members]
        low, high = max(s.low, bounds[0]), min(s.high, bounds[1])  # NaN stays NaN
        rows.append((xs.median(), xs.min(), xs.max(), s.n, s.mean, low, high))
    columns = ["x", "x_low", "x_high", "n", "mean", "low", "high"]
    return pd.DataFrame(rows, columns=columns).sort_values("x", ignore_index=True)


def _bin_words(values: pd.Series) -> str:
    """How ``bins`` cut ``values``, for a sentence."""
    if values.nunique() <= MAX_BINS:
        return "per value"
    return f"per quantile bin ({bins(values).nunique()} bins)"


def _yerr(mean: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """Asymmetric error bars from an interval; none where the interval is missing."""
    return np.array([(mean - low).fillna(0).to_numpy(), (high - mean).fillna(0).to_numpy()])


def learning_curves(study: Study, groups: pd.DataFrame, out: Path) -> Plot:
    """Objective and training loss per epoch: the top configs, and every unstable run."""
    runs = study.runs
    top = groups[groups["rankable"]].head(TOP_CURVES)
    unstable = runs[
        runs["status"].isin([Status.CRASHED, Status.DIVERGED])
        | (study.metric("crashed_epochs") > 0)
    ]
    top_runs = [runs[runs["group"] == group] for group in top.index]  # best config first
    shown = pd.concat([*top_runs, unstable]).drop_duplicates("run_id")
    hist = study.history(list(shown["run_id"]), [study.objective, "train_loss", CRASHED_METRIC])
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_obj, ax_loss = fig.subplots(1, 2)
    fig.suptitle(
        f"{study.name}: learning curves (top {len(top)} configs, {len(unstable)} unstable runs)"
    )
    labelled: set[str] = set()
    for _, run in shown.iterrows():
        curves = {
            k: h.set_index("step")["value"]
            for k, h in hist[hist["run_id"] == run["run_id"]].groupby("key")
        }
        if run["run_id"] in set(unstable["run_id"]):
            color, style, label = STATUS_COLORS.get(run["status"], "tab:red"), "--", run["status"]
            if run["status"] == Status.COMPLETED:
                color, label = STATUS_COLORS["recovered"], "recovered from a crash"
        else:
            rank = int(groups.loc[run["group"], "rank"])
            color, style, label = TOP_COLORS[rank - 1], "-", f"#{rank} {run['group']}"
        kw = {"color": color, "linestyle": style, "linewidth": 1.4, "alpha": 0.9}
        kw["label"] = None if label in labelled else label
        labelled.add(label)
        for ax, key in ((ax_obj, study.objective), (ax_loss, "train_loss")):
            if key in curves:
                ax.plot(curves[key].index, curves[key].values, marker=".", **kw)
        crashed = curves.get("crashed")
        if crashed is not None and study.objective in curves and crashed.any():
            at = crashed[crashed > 0].index.intersection(curves[study.objective].index)
            ax_obj.plot(at, curves[study.objective][at], "x", color="tab:red", markersize=8)
        # The non-finite loss itself is not logged: mark the last finite one.
        if run["status"] == Status.DIVERGED and "train_loss" in curves:
            ax_loss.plot(
                curves["train_loss"].index[-1:],
                curves["train_loss"].values[-1:],
                "X",
                color=color,
                markersize=10,
            )
    ax_obj.set(
        xlabel="epoch", ylabel=study.objective, title=f"{study.objective} (x: epoch at chance)"
    )
    ax_loss.set(
        xlabel="epoch",
        ylabel="train_loss",
        yscale="log",
        title="train_loss (X: diverged next epoch)",
    )
    for ax in (ax_obj, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_obj.legend(fontsize=8)
    name = save(fig, out, "learning_curves.png")
    n_crashed = int((unstable["status"] == Status.CRASHED).sum())
    n_diverged = int((unstable["status"] == Status.DIVERGED).sum())
    n_recovered = len(unstable) - n_crashed - n_diverged
    sentence = (
        f"{study.objective} and training loss per epoch for every seed of the top {len(top)} configs (solid) and of "
        f"{n_crashed} crashed, {n_diverged} diverged and {n_recovered} recovered runs (dashed)"
        + (
            ": unstable training shows as curves that drop to chance or stop early."
            if len(unstable)
            else "."
        )
    )
    return Plot(name, "Learning curves", sentence)


def axis_plots(study: Study, groups: pd.DataFrame, out: Path) -> list[Plot]:
    """Objective against each sampled parameter: one dot per run coloured by status, and the
    mean of finished runs with its 95% t interval per bin (continuous) or per value (categorical)."""
    plots = []
    runs = study.runs
    score = study.metric(study.objective)
    recovered = runs["status"].eq(Status.COMPLETED) & (study.metric("crashed_epochs") > 0)
    for axis in study.axes:
        values = study.values(axis)
        fig, ax = figure(f"{study.name}: {study.objective} vs {axis}")
        x, ticks = _positions(values)
        for status, color in STATUS_COLORS.items():
            # No comparable objective: a mark on the bottom edge.
            if status in BROKEN:
                picked = runs["status"].eq(status) & x.notna()
                ax.plot(
                    x[picked],
                    np.full(picked.sum(), 0.03),
                    "x",
                    color=color,
                    markersize=9,
                    transform=ax.get_xaxis_transform(),
                    label=f"{status} ({picked.sum()})" if picked.any() else None,
                )
                continue
            picked = runs["status"].eq(status) & score.notna() & x.notna()
            if status == Status.COMPLETED:
                picked &= ~recovered
            if status == "recovered":
                picked = recovered & score.notna() & x.notna()
            ax.scatter(
                x[picked],
                score[picked],
                s=36,
                label=f"{status} ({picked.sum()})" if picked.any() else None,
                facecolors="none" if status in HOLLOW else color,
                edgecolors=color,
                alpha=0.85,
            )
        finished = runs["status"].isin(FINISHED) & score.notna() & x.notna()
        if ticks is None:
            b = binned(values[finished], score[finished], feasible(study.objective))
            summary = f"mean of finished runs {_bin_words(values[finished])} with its 95% interval"
            ax.fill_between(b["x"], b["low"], b["high"], color="tab:blue", alpha=0.15)
            ax.plot(b["x"], b["mean"], "-", color="tab:blue", linewidth=2, label=summary)
        else:
            per = [summarize(score[finished & x.eq(i)]) for i in range(len(ticks))]
            mean = pd.Series([p.mean for p in per])
            lo, hi = feasible(study.objective)
            low = pd.Series([max(p.low, lo) for p in per])
            high = pd.Series([min(p.high, hi) for p in per])
            summary = "mean of finished runs per value with its 95% interval"
            ax.errorbar(
                np.arange(len(ticks)) + 0.2,
                mean,
                yerr=_yerr(mean, low, high),
                fmt="D",
                color="tab:blue",
                capsize=5,
                label=summary,
            )
        means = groups[groups["rankable"]]
        if axis in means:
            mx, _ = _positions(means[axis], ticks)
            ax.scatter(
                mx,
                means[f"{study.objective} mean"],
                marker="_",
                s=400,
                color="black",
                label="config mean over seeds",
            )
        _x_axis(ax, axis, values, ticks)
        ax.set_ylabel(study.objective)
        ax.legend(fontsize=8)
        name = save(fig, out, f"axis_{slug(axis)}.png")
        best = (
            f"the best config has {axis}={_show(means[axis].iloc[0])}."
            if len(means)
            else "no config is ranked yet."
        )
        sentence = (
            f"{study.objective} of every run against {axis} (black bars: config means over seeds, "
            f"crosses at the bottom: diverged or failed runs; blue: {summary}, Student-t over "
            f"the runs it holds); {best}"
        )
        plots.append(Plot(name, f"Axis plot: {axis}", sentence))
    return plots


def isolation_plots(study: Study, groups: pd.DataFrame, out: Path) -> list[Plot]:
    """Best config per value (or quantile bin) of each scientific parameter, nuisance parameters
    tuned away, with its 95% interval; points are not joined."""
    plots = []
    ranked = groups[groups["rankable"]]
    if not study.scientific:
        why = "Not drawn: the study declares no scientific parameter (tag distill.scientific)."
        return [Plot(None, "Isolation plots", why)]
    if ranked.empty:
        return [Plot(None, "Isolation plots", "Not drawn: no config is ranked yet.")]
    obj = study.objective
    mean, std, low, high = (f"{obj} {s}" for s in ("mean", "std", "low", "high"))
    nuisance = ", ".join(study.nuisance) or "the other sampled parameters"
    for axis in (a for a in study.scientific if a in ranked and ranked[a].notna().any()):
        applies = ranked[ranked[axis].notna()]  # a conditional parameter: only where it was sampled
        values = applies[axis]
        continuous = values.dtype.kind == "f"
        key = bins(values) if continuous else values.astype(str)
        per_value = applies.groupby(key, sort=False, observed=True)[mean]
        best = per_value.idxmax() if study.mode == "max" else per_value.idxmin()
        rows = applies.loc[best.values].sort_values(axis, key=_sort_key)
        fig, ax = figure(f"{study.name}: isolation plot of {axis}")
        x, ticks = _positions(rows[axis])
        label = f"best config per {'bin' if continuous else 'value'} (tuned: {nuisance})"
        xerr = None
        if continuous:
            spans = values.groupby(key, observed=True).agg(["min", "max"])
            span = spans.loc[key[rows.index]].set_index(rows.index)
            xerr = np.array([(x - span["min"]).to_numpy(), (span["max"] - x).to_numpy()])
            ax.fill_between(x, rows[low], rows[high], color="tab:blue", alpha=0.15)
        ax.errorbar(
            x,
            rows[mean],
            yerr=_yerr(rows[mean], rows[low], rows[high]),
            xerr=xerr if xerr is not None and xerr.any() else None,
            fmt="o",
            color="tab:blue",
            capsize=5,
            label=f"{label}: mean with 95% interval",
        )
        seeds = study.runs[
            study.runs["group"].isin(rows.index) & study.runs["status"].isin(FINISHED)
        ]
        sx, _ = _positions(study.values(axis)[seeds.index], ticks)
        ax.scatter(
            sx,
            study.metric(obj)[seeds.index],
            s=18,
            color="tab:gray",
            zorder=3,
            label="its seeds",
        )
        _x_axis(ax, axis, rows[axis], ticks)
        ax.set_ylabel(f"best {obj}")
        ax.legend(fontsize=8)
        name = save(fig, out, f"isolation_{slug(axis)}.png")
        top = rows.loc[rows[mean].idxmax() if study.mode == "max" else rows[mean].idxmin()]
        cut = (
            f" ({_bin_words(values)}, horizontal bars: the bin's range)"
            if continuous and values.nunique() > MAX_BINS
            else ""
        )
        spread = f" ± {_fmt(top[std])}" if pd.notna(top[std]) else ", one seed"
        within = (
            f", 95% interval [{_fmt(top[low])}, {_fmt(top[high])}]" if pd.notna(top[low]) else ""
        )
        plots.append(
            Plot(
                name,
                f"Isolation plot: {axis}",
                (
                    f"The best seed-mean {obj} reached at each value of {axis}{cut} once "
                    f"{nuisance} is tuned away, with its 95% interval (Student-t over its seeds; "
                    f"for one seed, Wilson over the evaluation set); best at "
                    f"{axis}={_show(top[axis])} ({_fmt(top[mean])}{spread}{within}). "
                    "Values whose intervals overlap are not told apart by this study."
                ),
            )
        )
    return plots


def importance_plot(study: Study, groups: pd.DataFrame, out: Path) -> Plot:
    """fANOVA and PED-ANOVA importances of the sampled parameters for the objective."""
    title = "Parameter importance"
    opt = _optuna_study(study, groups)
    if len(opt.trials) < 2 or not any(t.distributions for t in opt.trials):
        return Plot(
            None,
            title,
            f"Not drawn: importance needs at least 2 ranked configs with a varying parameter, "
            f"this study has {len(opt.trials)}.",
        )
    if len({t.value for t in opt.trials}) == 1:  # fANOVA raises on zero variance
        return Plot(
            None,
            title,
            f"Not drawn: every ranked config scored the same {study.objective} "
            f"({opt.trials[0].value:.4g}): there is no variation for a parameter to explain.",
        )
    evaluators = {
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(),
    }
    scores: dict[str, dict[str, float]] = {}
    for label, evaluator in evaluators.items():
        with warnings.catch_warnings():
            # Both warn at length about small studies; the sentence says so.
            warnings.simplefilter("ignore")
            scores[label] = optuna.importance.get_param_importances(opt, evaluator=evaluator)
    table = pd.DataFrame(scores).fillna(0.0).sort_values("fANOVA")
    fig, ax = figure(f"{study.name}: importance for {study.objective} ({len(opt.trials)} configs)")
    table.plot.barh(ax=ax, color=["tab:blue", "tab:orange"])
    ax.set_xlabel("normalised importance")
    name = save(fig, out, "importance.png")
    first = table["fANOVA"].idxmax()
    return Plot(
        name,
        title,
        (
            f"How much each sampled parameter explains {study.objective} across {len(opt.trials)} ranked configs "
            f"(fANOVA: variance explained; PED-ANOVA: what separates the top 10%); most important: {first}"
            + (
                " (few configs: read as a hint, not a measurement)."
                if len(opt.trials) < 20
                else "."
            )
        ),
    )


def pareto_plot(study: Study, groups: pd.DataFrame, out: Path) -> Plot:
    """Config means of val_acc against val_agreement, the Pareto front highlighted."""
    title = "Accuracy vs fidelity"
    both = groups[groups["rankable"]].dropna(subset=["val_acc mean", "val_agreement mean"])
    if both.empty:
        why = "no run logged val_agreement (fidelity needs a teacher)"
        if study.metric("val_agreement").notna().any():
            why = "no ranked config has both val_acc and val_agreement"
        return Plot(None, title, f"Not drawn: {why}.")
    with quiet_optuna():
        front_study = optuna.create_study(directions=["maximize", "maximize"])
    for group, row in both.iterrows():
        front_study.add_trial(
            optuna.trial.create_trial(
                values=[row["val_acc mean"], row["val_agreement mean"]], user_attrs={"group": group}
            )
        )
    front = both.loc[[t.user_attrs["group"] for t in front_study.best_trials]].sort_values(
        "val_acc mean"
    )
    fig, ax = figure(f"{study.name}: val_acc vs val_agreement (config means)")
    ax.errorbar(
        both["val_agreement mean"],
        both["val_acc mean"],
        xerr=both["val_agreement std"].fillna(0),
        yerr=both["val_acc std"].fillna(0),
        fmt="o",
        color="tab:gray",
        alpha=0.6,
        label="config ± std over seeds",
    )
    ax.plot(
        front["val_agreement mean"],
        front["val_acc mean"],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    labels = front.assign(label=[f"#{r} {g}" for g, r in front["rank"].items()])
    # Tied configs share one label.
    for (x, y), same in labels.groupby(["val_agreement mean", "val_acc mean"]):
        ax.annotate(
            ", ".join(same["label"]), (x, y), fontsize=8, textcoords="offset points", xytext=(4, 4)
        )
    ax.set(xlabel="val_agreement (top-1 agreement with the teacher)", ylabel="val_acc")
    ax.legend(fontsize=8)
    name = save(fig, out, "pareto.png")
    return Plot(
        name,
        title,
        (
            f"Validation accuracy against agreement with the teacher for {len(both)} configs; "
            + (
                f"the {len(front)} on the red front are not beaten on both at once, so moving along it trades accuracy "
                "for fidelity."
                if len(front) > 1
                else "one config is best on both, so here accuracy and fidelity agree."
            )
        ),
    )


def status_plot(study: Study, out: Path) -> Plot:
    """Share of runs per final status (recovered: completed after a crash), and the crash share."""
    status = study.runs["status"].where(
        ~(study.metric("crashed_epochs") > 0) | (study.runs["status"] != Status.COMPLETED),
        RECOVERED,
    )
    # A zero bar is news too.
    always = (
        Status.COMPLETED,
        Status.EARLY_STOPPED,
        Status.CRASHED,
        Status.DIVERGED,
        Status.FAILED,
    )
    counts = status.value_counts().reindex(
        [s for s in STATUS_COLORS if s in always or s in set(status)], fill_value=0
    )
    share = counts / counts.sum()
    fig, ax = figure(f"{study.name}: outcome of {counts.sum()} runs")
    bars = ax.bar(share.index, share.values * 100, color=[STATUS_COLORS[s] for s in share.index])
    ax.bar_label(bars, labels=[f"{n} ({p:.0%})" for n, p in zip(counts, share, strict=True)])
    ax.set_ylabel("share of runs (%)")
    ax.set_ylim(0, 110)
    name = save(fig, out, "status.png")
    bad = share.reindex([Status.CRASHED, Status.DIVERGED, Status.FAILED]).fillna(0).sum()
    stopped = share.get(Status.EARLY_STOPPED, 0.0)
    cancelled = int(counts.get(Status.CANCELLED, 0))
    return Plot(
        name,
        "Run outcomes",
        (
            f"How the {counts.sum()} runs ended: {bad:.0%} crashed, diverged or failed and "
            f"{stopped:.0%} were stopped early by the scheduler"
            + (
                f"; {cancelled} cancelled (another seed of their trial diverged or failed: "
                "not counted as failed)"
                if cancelled
                else ""
            )
            + f". {crash_sentence(study)} A large crashed share means the search space reaches "
            "unstable settings."
        ),
    )


def crash_sentence(study: Study) -> str:
    """Every run flagged crashed, whether it ended crashed or recovered."""
    c = study.crash_counts()
    if not c["flagged"]:
        return "No run was flagged crashed at any epoch."
    other = (
        f", {c['other']} stopped, cancelled or failed after a crashed epoch" if c["other"] else ""
    )
    return (
        f"{c['flagged']} of {c['runs']} runs ({c['flagged'] / c['runs']:.0%}) were flagged "
        f"crashed: {c['ended']} ended crashed (status crashed), {c['recovered']} recovered "
        f"(completed with crashed_epochs > 0){other}."
    )


def fidelity_plot(study: Study, out: Path) -> Plot:
    """Seed 004: agreement and predictive KL against ``init.interp_lambda``, on the training
    subset and on validation, mean with its 95% t interval per lambda (or quantile bin)."""
    title = "Fidelity vs lambda"
    runs = study.runs
    lam = study.values(FIDELITY_AXIS)
    finished = runs["status"].isin(FINISHED) & lam.notna()
    panels = {
        "top-1 agreement with the teacher": ("train_agreement", "val_agreement"),
        "KL(p_t || p_s), tau 1": ("train_pred_kl", "val_kl"),
    }
    logged = [m for ms in panels.values() for m in ms if study.metric(m)[finished].notna().any()]
    if not logged:
        return Plot(
            None,
            title,
            "Not drawn: no finished run logged train_agreement, val_agreement, train_pred_kl or "
            "val_kl (fidelity needs a teacher).",
        )
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    fig.suptitle(f"{study.name}: fidelity vs {FIDELITY_AXIS} (finished runs)")
    colors = {"train": "tab:orange", "val": "tab:blue"}
    where = {"train": "training subset", "val": "validation"}
    for ax, (ylabel, metrics) in zip(axes, panels.items(), strict=True):
        for m in metrics:
            y = study.metric(m)[finished]
            if y.isna().all():
                continue
            split = m.split("_", 1)[0]
            b = binned(lam[finished], y, feasible(m))
            ax.fill_between(b["x"], b["low"], b["high"], color=colors[split], alpha=0.2)
            ax.errorbar(
                b["x"],
                b["mean"],
                yerr=_yerr(b["mean"], b["low"], b["high"]),
                fmt="s--" if split == "train" else "o-",  # dashed: visible where they overlap
                color=colors[split],
                capsize=4,
                label=f"{m} ({where[split]})",
            )
        ax.set(xlabel=FIDELITY_AXIS, ylabel=ylabel, title=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    name = save(fig, out, "fidelity_lambda.png")
    return Plot(
        name,
        title,
        (
            f"Agreement with the teacher (left) and predictive KL (right) against "
            f"{FIDELITY_AXIS}, mean over the finished runs {_bin_words(lam[finished])} with its "
            "95% Student-t interval; orange: the fixed training subset the student is distilled "
            f"on, blue: validation. {fidelity_claim(study, lam, finished)}"
        ),
    )


def fidelity_claim(study: Study, lam: pd.Series, finished: pd.Series) -> str:
    """Seed 004's claim, agreement rises with lambda, judged on the OLS slope over runs."""
    slopes = {}
    for m in ("train_agreement", "val_agreement"):
        s = slope(lam[finished], study.metric(m)[finished])
        if not math.isnan(s.estimate):
            slopes[m] = s
    if not slopes:
        return "Too few runs or lambda values to fit a slope of agreement on lambda."
    said = [
        f"{m}: "
        + verdict(
            s.estimate,
            s.low,
            s.high,
            threshold=0.0,
            direction="greater",
            n=s.n,
            unit=" per unit lambda",
            noun="run",
        ).sentence
        for m, s in slopes.items()
    ]
    text = "Seed 004 claims agreement rises with lambda (OLS slope over runs): " + "; ".join(said)
    if len(slopes) == 2:
        d = slope_difference(
            lam[finished],
            study.metric("train_agreement")[finished],
            lam[finished],
            study.metric("val_agreement")[finished],
        )
        text += (
            f". Train minus validation slope: {d.estimate:+.3g} [{d.low:.3g}, {d.high:.3g}] "
            "(joint regression with a lambda x split interaction; the two sets come from the "
            "same runs, so read it as indicative)"
        )
    return text + "."


def _optuna_study(study: Study, groups: pd.DataFrame) -> optuna.Study:
    """The ranked configs as a finished Optuna study (params rebuilt from their values)."""
    ranked = groups[groups["rankable"]]
    distributions: dict[str, BaseDistribution] = {}
    for axis in study.axes:
        values = ranked[axis].dropna()
        if values.nunique() < 2:  # a constant explains nothing
            continue
        if values.dtype.kind == "f":
            distributions[axis] = FloatDistribution(values.min(), values.max(), log=_is_log(values))
        else:
            distributions[axis] = CategoricalDistribution(sorted(set(values), key=str))
    direction = "maximize" if study.mode == "max" else "minimize"
    with quiet_optuna():
        opt = optuna.create_study(direction=direction)
    for _, row in ranked.iterrows():
        params = {a: row[a] for a in distributions if not pd.isna(row[a])}
        opt.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={a: distributions[a] for a in params},
                value=row[f"{study.objective} mean"],
            )
        )
    return opt


def _positions(
    values: pd.Series, ticks: list[object] | None = None
) -> tuple[pd.Series, list[object] | None]:
    """x positions: numbers as they are, other values at 0, 1, ... in sorted order (``ticks``)."""
    if values.dtype.kind == "f" and ticks is None:
        return values, None
    if ticks is None:
        ticks = sorted(set(values.dropna()), key=_sort_value)
    index = {str(t): i for i, t in enumerate(ticks)}
    return values.map(lambda v: index.get(str(v), math.nan)).astype(float), ticks


def _x_axis(ax: Axes, axis: str, values: pd.Series, ticks: list[object] | None) -> None:
    ax.set_xlabel(axis)
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        ax.set_xlim(-0.5, len(ticks) - 0.5)
    elif _is_log(values):
        ax.set_xscale("log")


def _sort_value(v: object) -> tuple[int, float, str]:
    return (0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v))


def _sort_key(s: pd.Series) -> pd.Series:
    return s.map(_sort_value)
