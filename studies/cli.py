"""The ``distill-study`` command line (also ``python -m studies``).

Every user mistake (``UserError``) is printed as one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

import click

from analysis.cli import export, report, ui
from distill_core import (
    DATASETS,
    METHODS,
    Config,
    EpochReport,
    TeacherStore,
    UserError,
    fit,
    load_config,
    load_data,
)
from studies.run_cli import reproduce, run, spaces


class Group(click.Group):
    """A click group that turns ``UserError`` and bad options into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
        except click.UsageError as exc:  # click's own checks of options and arguments
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {exc.format_message().rstrip('.')} (see {where} --help)", err=True)
        ctx.exit(2)


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
def main() -> None:
    """Hyperparameter studies for knowledge distillation.

    \b
    train     one run from a YAML config (no Ray)
    run       a study: Ray Tune trials sampled by Optuna, recorded in MLflow
    spaces    the search spaces and presets, with their axes
    reproduce re-run a seed paper's claims and judge each one
    report    plots and a Markdown report of a study
    export    the best configs of a study as runnable YAML
    ui        the MLflow UI over the study store
    config    the default config and the reference of every key
    methods   the registered training methods
    teachers  the teacher checkpoint store
    """
    # MLflow sets up INFO logging of its own (database migrations, ...) when it is imported: its
    # own variable sets the level it starts with. This process is the command's.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def epoch_line(report: EpochReport, epochs: int) -> str:
    """One progress line: loss, val accuracy, agreement with the teacher, lr, epoch time."""
    m = report.metrics
    parts = [
        f"epoch {report.epoch:>3}/{epochs}",
        f"loss {m['train_loss']:.4f}",
        f"val_acc {m.get('val_acc', float('nan')):.4f}",
    ]
    if "val_agreement" in m:
        parts.append(f"val_agreement {m['val_agreement']:.4f}")
    if "val_acc_mean" in m:
        parts.append(f"peers {m['val_acc_mean']:.4f}±{m['val_acc_std']:.4f}")
    parts += [f"lr {m['lr']:.4g}", f"{m['epoch_time']:.1f}s"]
    if m.get("crashed"):
        parts.append("CRASHED (collapsed: at chance, one class or constant logits)")
    return "  ".join(parts)


def summary_lines(status: str, final: dict[str, float]) -> list[str]:
    keys = [
        "val_acc",
        "val_nll",
        "val_ece",
        "val_agreement",
        "val_kl",
        "test_acc",
        "test_nll",
        "test_ece",
        "test_agreement",
        "test_kl",
        "teacher_test_acc",
        "val_logit_diff",
        "val_acc_gap",
    ]
    shown = [f"{k} {final[k]:.4f}" for k in keys if k in final]
    return [f"status: {status}", "  ".join(shown)]


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML run config.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, e.g. --set method.alpha=0.5 (repeatable).",
)
@click.option(
    "--device",
    default=None,
    help="cpu, cuda, cuda:N (default: run.device, auto = cuda if available).",
)
@click.option(
    "--data-dir",
    default=None,
    help="Folder of an on-disk data set ("
    + ", ".join(n for n in DATASETS.names() if not DATASETS.get(n).embedded)
    + "): data.dir.",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI or store folder (default: ./runs/mlflow.db).",
)
@click.option("--no-tracking", is_flag=True, help="Do not record the run in MLflow.")
@click.option(
    "--experiment", default="train", show_default=True, help="MLflow experiment for the run."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the final result as one JSON object on stdout (progress goes to stderr).",
)
def train(
    config_path: str,
    overrides: tuple[str, ...],
    device: str | None,
    data_dir: str | None,
    tracking_uri: str | None,
    no_tracking: bool,
    experiment: str,
    as_json: bool,
) -> None:
    """Train one run from a YAML config: teacher (once, from the store), then the student.

    \b
    Methods: scratch, kd, eskd, takd, dml, pcl, dkel (see `distill-study methods`).
    Example:  distill-study train --config examples/kd_mnist5k.yaml --set method.alpha=0.5
    """
    extra = [
        *([f"run.device={device}"] if device else []),
        *([f"data.dir={data_dir}"] if data_dir else []),
    ]
    cfg = load_config(config_path, [*overrides, *extra])
    say = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    # Bad data, a teacher epoch never saved and (below) an unreachable store fail before anything is written.
    data = load_data(cfg.data)
    TeacherStore(cfg.run.teacher_store).check(cfg)
    logger = None
    if not no_tracking:
        from tracking.client import RunLogger, get_or_create_experiment, open_client
        from tracking.schema import KIND, Status

        client = open_client(tracking_uri)
        logger = RunLogger.start(
            client, get_or_create_experiment(client, experiment), cfg, tags={KIND: "train"}
        )
        say(f"mlflow: run {logger.run_id} in experiment {experiment!r} at {client.tracking_uri}")

    def on_epoch(report: EpochReport) -> None:
        say(epoch_line(report, cfg.run.epochs))
        if logger is not None:
            logger.log_epoch(report.epoch, report.metrics)

    try:
        result = fit(cfg, on_epoch=on_epoch, data=data, log=say)
    except KeyboardInterrupt:
        if logger is not None:
            logger.finish(Status.INTERRUPTED)
        say("interrupted: the epochs done so far are recorded")
        sys.exit(130)
    except BaseException:
        if logger is not None:
            logger.finish(Status.FAILED)
        raise
    if logger is not None:
        logger.finish(Status(result.status), result.final, step=len(result.history))
    for line in summary_lines(result.status, result.final):
        say(line)
    if as_json:
        out = {**result.to_dict(), "mlflow_run_id": logger.run_id if logger else None}
        out["final"] = {
            k: v if math.isfinite(v) else None for k, v in result.final.items()
        }  # NaN is not JSON
        click.echo(json.dumps(out))


@main.command("config")
@click.option(
    "--markdown", is_flag=True, help="Print the config reference as a Markdown table instead."
)
def config_cmd(markdown: bool) -> None:
    """Print the default config as YAML (a starting point for --config), or the reference table."""
    from distill_core.configure import reference, reference_markdown

    if markdown:
        click.echo(reference_markdown(), nl=False)
        return
    notes = {key: meaning for key, _, _, meaning in reference()}
    section = ""
    for line in Config().to_yaml().splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
            click.echo(line)
            continue
        key = line.strip().split(":")[0]
        dotted = f"{section}.{key}"
        note = notes.get(dotted, "")
        click.echo(f"{line}  # {note}" if note else line)


@main.command()
def methods() -> None:
    """List the registered training methods."""
    for name in METHODS.names():
        doc = (METHODS.get(name).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:<8} {doc}")


@main.group(cls=Group)
def teachers() -> None:
    """The teacher checkpoint store (trained once, reused by every run that asks for it)."""


@teachers.command("list")
@click.option(
    "--store",
    default=Config().run.teacher_store,
    show_default=True,
    help="Teacher store folder (run.teacher_store).",
)
def teachers_list(store: str) -> None:
    """Show stored teachers, their saved epochs and validation accuracy."""
    entries = TeacherStore(store).entries()
    if not entries:
        click.echo(f"no teachers in {TeacherStore(store).root}")
        return
    click.echo(
        f"{'key':<28} {'method':<7} {'data':<13} {'epochs saved':<14} {'val_acc (last)':<14} status"
    )
    for e in entries:
        epochs = sorted(map(int, e["epochs"]))
        span = f"{epochs[0]}..{epochs[-1]} ({len(epochs)})" if epochs else "-"
        acc = e["final"].get("val_acc", float("nan"))
        click.echo(
            f"{e['key']:<28} {e['method']:<7} {e['config']['data']['name']:<13} {span:<14} {acc:<14.4f} {e['status']}"
        )


# Commands defined next to the code they drive, one line each.
for command in (run, spaces, reproduce, report, export, ui):
    main.add_command(command)
