"""``distill-study run`` and ``distill-study spaces`` (registered at the end of studies/cli.py).

Ray and Optuna are imported inside ``run`` so that the rest of the CLI starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from distill_core import DATASETS
from studies.spaces import SAMPLERS, SCALES, SCHEDULERS, list_spaces


def cluster_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options where a study runs and what it keeps, shared by ``run`` and ``reproduce``."""
    for option in reversed(CLUSTER_OPTIONS):
        command = option(command)
    return command


CLUSTER_OPTIONS = [
    click.option(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        show_default=True,
        help="CPUs per trial; torch uses as many threads.",
    ),
    click.option(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        show_default=True,
        help="GPUs per trial; 0.25 packs four trials on one GPU.",
    ),
    click.option(
        "--max-concurrent",
        type=int,
        default=None,
        help="At most this many trials at once (default: as resources allow).",
    ),
    click.option(
        "--address",
        default=None,
        help="Join this Ray cluster (HOST:6379) instead of starting a local Ray.",
    ),
    click.option(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI or store folder (default: ./runs/mlflow.db).",
    ),
    click.option(
        "--storage",
        default="runs/studies",
        show_default=True,
        help="Folder or s3://BUCKET/PREFIX of study state, checkpoints and teachers (S3: endpoint "
        "and keys from the AWS_* variables).",
    ),
]


@click.command()
@click.argument("space", metavar="SPACE_OR_PRESET")
@click.option(
    "--trials",
    type=int,
    default=None,
    help="Configs to sample (default: the space's; grid: its size).",
)
@click.option("--epochs", type=int, default=None, help="Epochs per trial (run.epochs).")
@click.option(
    "--dataset",
    default=None,
    help=f"Data set (data.name): {', '.join(DATASETS.names())}.",
)
@click.option(
    "--data-dir", default=None, help="Folder holding a torchvision-layout data set (data.dir)."
)
@click.option(
    "--seeds",
    type=int,
    default=None,
    help="Seeds per sampled config; the objective is their mean (default: the space's, else 1).",
)
@click.option(
    "--sampler",
    default=None,
    help=f"Optuna sampler: {' | '.join(SAMPLERS)} (default: the space's, else tpe).",
)
@click.option(
    "--sampler-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the sampler: another seed, another sequence of configs (repeat a study with it).",
)
@click.option(
    "--scheduler",
    default=None,
    help=f"Early stopping: {' | '.join(SCHEDULERS)} (default: asha; none for nsga2).",
)
@click.option(
    "--max-failures",
    type=int,
    default=2,
    show_default=True,
    help="Retries of a trial whose worker died (from its last checkpoint); config errors are not retried.",
)
@cluster_options
@click.option(
    "--name", default=None, help="Study name (default: the space's name, numbered if taken)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted study (the latest of SPACE, or --name) with its settings.",
)
@click.option(
    "--smoke-test",
    is_flag=True,
    help="Shrink the study to seconds: synthetic data, MLPs, 2 epochs, 3 trials.",
)
@click.option(
    "--scale",
    type=click.Choice(SCALES),
    default="paper",
    show_default=True,
    help="A seed preset at its paper's scale, or at laptop scale (embedded data, small models, "
    "the whole schedule shortened).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override of the base config (repeatable).",
)
def run(space: str, **kwargs: object) -> None:
    """Run a study: sample SPACE_OR_PRESET with Optuna, train trials with Ray Tune, record them in MLflow.

    \b
    SPACE_OR_PRESET is a name from `distill-study spaces` or the path of your own module.
    Examples:
      distill-study run quickstart
      distill-study run alpha --trials 16 --seeds 2
      distill-study run dkel_decay --gpus-per-trial 0.25 --address HEAD:6379 --tracking-uri http://HOST:5000
      distill-study run alpha --resume
    """
    from studies.runner import StudyOptions, run_study
    from tracking.schema import StudyStatus

    result = run_study(StudyOptions(space=space, **kwargs), say=click.echo)  # type: ignore[arg-type]
    if result.status == StudyStatus.INTERRUPTED:
        sys.exit(130)


@click.command()
def spaces() -> None:
    """List the search spaces and presets, with their axes, objective and default sampler."""
    found = list_spaces()
    groups = [
        ("spaces (one design axis each):", [s for s in found if s.is_axis], "summary"),
        ("presets (a seed paper's setup: --scale laptop runs it on a laptop; `distill-study reproduce` judges its claims):", [s for s in found if s.preset], "preset"),
    ]  # fmt: skip
    for title, group, what in groups:
        click.echo(title)
        for s in group:
            metric, mode = s.objectives[0]
            size = (
                f"{s.grid_size + len(s.baselines)} grid points"
                if s.sampler == "grid"
                else f"{s.trials} trials"
            )
            seeds = f" x {s.seeds} seeds" if s.seeds > 1 else ""
            extra = f" | {len(s.claims)} claims of paper {s.paper}" if s.claims else ""
            click.echo(f"  {s.name:<17} {getattr(s, what)}")
            click.echo(
                f"  {'':<17} scientific {', '.join(s.scientific)} | nuisance {', '.join(s.nuisance) or '-'}"
                f" | objective {metric} ({mode}) | {s.sampler}, {size}{seeds}, scheduler {s.scheduler}{extra}"
            )
    click.echo(
        "run one: distill-study run NAME (--smoke-test: a few seconds); write your own: docs/studies.md"
    )


@click.command()
@click.argument("paper", required=False, metavar="PAPER")
@click.option("--list", "listing", is_flag=True, help="List the claims, one line each, and exit.")
@click.option(
    "--scale",
    type=click.Choice(SCALES),
    default="laptop",
    show_default=True,
    help="laptop: embedded data, small models, a shortened schedule (2 CPU cores); paper: the "
    "paper's data (--data-dir), models and schedules.",
)
@click.option("--seeds", type=int, default=None, help="Seeds per arm (default: the preset's).")
@click.option(
    "--data-dir", default=None, help="Folder of the paper's data set (paper scale), data.dir."
)
@cluster_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted reproduction (or judge a finished one again).",
)
@click.option(
    "--smoke-test", is_flag=True, help="Every arm in seconds (synthetic data, MLPs): plumbing only."
)
def reproduce(paper: str | None, listing: bool, **kwargs: object) -> None:
    """Re-run a seed paper's claims and judge each: reproduced, not reproduced or inconclusive.

    \b
    PAPER is a seed paper's id (000 ... 004) or all.
    Examples:
      distill-study reproduce --list
      distill-study reproduce 000                 # laptop scale, 15-25 minutes on 2 cores
      distill-study reproduce all --seeds 5
      distill-study reproduce 002 --scale paper --data-dir ~/data --gpus-per-trial 0.25
    Writes reproduction.md and reproduction.json into the study folder (also logged to MLflow).
    """
    from studies.options import StudyOptions
    from studies.reproduce import claim_lines, papers, reproduce_all
    from tracking.schema import StudyStatus

    if listing:
        for line in claim_lines():
            click.echo(line)
        return
    if paper is None:
        raise click.UsageError("give a PAPER (000 ... 004, or all) or --list")
    chosen = papers(paper)
    options = StudyOptions(space=chosen[0].name, **kwargs)  # type: ignore[arg-type]
    done = reproduce_all(chosen, options, say=click.echo)
    if any(r.status != StudyStatus.COMPLETED for r in done):
        sys.exit(130)
