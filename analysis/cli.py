"""``distill-study report | export | ui``: look at a finished study (registered in studies/cli.py).

Heavy imports (pandas, matplotlib, optuna, MLflow) happen inside the commands so that the rest of
the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from distill_core import UserError
from distill_core.errors import require_writable

TRACKING_HELP = "MLflow tracking URI or store folder (default: ./runs/mlflow.db)."
STORAGE_HELP = (
    "The --storage the study ran with (a folder or s3://BUCKET/PREFIX): its MLflow store is "
    "read from the study file there, and the files written are also kept there."
)


def _open(study: str, tracking_uri: str | None, storage: str | None) -> object:
    """The MLflow client of ``study``: ``--tracking-uri``, else the one its study file records."""
    from distill_core.storage import read_study_record
    from tracking.client import open_client

    if storage and not tracking_uri:
        tracking_uri = read_study_record(storage, study)["tracking_uri"]
    return open_client(tracking_uri)


def _keep(files: list[Path], storage: str | None, study: str, folder: str) -> None:
    """Copy ``files`` into ``<storage>/<study>/<folder>/``."""
    if storage:
        from distill_core.storage import copy_into, location

        copy_into(files, location(storage) / study / folder)
        click.echo(f"kept in {location(storage) / study / folder}")


@click.command()
@click.argument("study")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.md and the plots (default: ./runs/reports/STUDY).",
)
@click.option("--force", is_flag=True, help="Write into --out even if it holds other files.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def report(
    study: str, tracking_uri: str | None, out: Path | None, force: bool, storage: str | None
) -> None:
    """Plots and a Markdown report of STUDY, also logged to its MLflow parent run under report/.

    \b
    Example:  distill-study report alpha
              distill-study report dkel_decay --storage s3://lab-studies/dkel
    """
    from analysis.report import ARTIFACT_DIR, write_report
    from analysis.study import load_study

    out = out or Path("runs") / "reports" / study
    require_writable(out, "pass a writable --out folder")
    loaded = load_study(_open(study, tracking_uri, storage), study)
    files = write_report(loaded, out, force=force)
    click.echo(f"report: {files[0]} and {len(files) - 1} plots")
    _keep(files, storage, study, "report")
    click.echo(
        f"logged to MLflow run {loaded.parent_run_id} under {ARTIFACT_DIR}/ (see distill-study ui)"
    )


@click.command()
@click.argument("study")
@click.option(
    "--top-k",
    type=int,
    default=3,
    show_default=True,
    help="How many of the best configs to export.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for STUDY-1.yaml, ... (default: ./runs/exports/STUDY).",
)
@click.option("--force", is_flag=True, help="Write into --out even if it holds other files.")
@click.option(
    "--final", is_flag=True, help="Also retrain each config on train+val and report test metrics."
)
@click.option("--seeds", type=int, default=None, help="Seeds per config for --final (default: 3).")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--storage", default=None, help=STORAGE_HELP)
def export(
    study: str,
    top_k: int,
    out: Path | None,
    force: bool,
    final: bool,
    seeds: int | None,
    tracking_uri: str | None,
    storage: str | None,
) -> None:
    """Write the best configs of STUDY (ranked on validation) as YAML runnable by `train --config`.

    \b
    Example:  distill-study export alpha --top-k 3 --out best/
              distill-study train --config best/alpha-1.yaml
    With --final the configs are retrained on train+val with --seeds seeds and logged to the
    study as child runs tagged distill.role=final, each with its trained student as an MLflow
    PyTorch model (artifact path "model").
    """
    from analysis.export import export_configs, final_runs
    from analysis.report import mean_std
    from analysis.study import load_study

    if seeds is not None and not final:
        raise UserError("--seeds only applies to final runs; add --final or drop --seeds")
    out = out or Path("runs") / "exports" / study
    require_writable(out, "pass a writable --out folder")
    loaded = load_study(_open(study, tracking_uri, storage), study)
    exported = export_configs(loaded, top_k=top_k, out=out, force=force)
    for item in exported:
        click.echo(f"#{item.rank} {item.group}: {item.path}")
    _keep([item.path for item in exported], storage, study, "exports")
    if len(exported) < top_k:
        click.echo(
            f"only {len(exported)} configs of {study!r} are ranked (no diverged or failed seed)"
        )
    if final:
        summary = final_runs(loaded, exported, seeds=3 if seeds is None else seeds, say=click.echo)
        for name, row in summary.iterrows():
            metrics = [c.removesuffix(" mean") for c in summary.columns if c.endswith(" mean")]
            click.echo(
                f"final {name}: "
                + ", ".join(f"{m} {mean_std(row[f'{m} mean'], row[f'{m} std'])}" for m in metrics)
            )


@click.command()
@click.option(
    "--tracking-uri", default=None, help="SQLite tracking URI or store folder (default: ./runs)."
)
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    default=None,
    help="Store folder holding mlflow.db (default: ./runs).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port; a busy default moves to the next free port, a busy --port is an error.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface; 0.0.0.0 exposes the UI (no authentication).",
)
@click.pass_context
def ui(
    ctx: click.Context, tracking_uri: str | None, store: str | None, port: int, host: str
) -> None:
    """The MLflow UI over the study store, with one link per study; Ctrl-C stops it.

    \b
    Example:  distill-study ui            (then open the printed link)
    """
    from analysis.study import list_studies
    from analysis.ui import free_port, serve
    from tracking.client import artifact_root, open_client

    if tracking_uri and store:
        raise UserError("pass either --tracking-uri or --store, not both")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        raise UserError(
            f"{tracking_uri} is already a tracking server; open it in a browser instead of starting one"
        )
    move_port = ctx.get_parameter_source("port") is click.core.ParameterSource.DEFAULT
    free_port(host, port, move=move_port)  # a busy --port fails before the store is opened
    client = open_client(tracking_uri or store)
    uri = client.tracking_uri
    code = serve(
        uri,
        artifact_root(uri),
        list_studies(client),
        host=host,
        port=port,
        move_port=move_port,
        say=lambda line: click.echo(line, err=line.startswith("warning")),
    )
    raise SystemExit(code)
