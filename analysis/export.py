"""Export the best configs of a study as runnable YAML, and optionally retrain them (final runs).

The exported file is the ``config.yaml`` artifact of the config's lowest finished seed, validated
again by ``distill_core.make_config``, with a header comment; ``distill-study train --config``
runs it unchanged. Final runs follow the Tuning Playbook: retrain on train+val
(``data.val_fraction=0``) with several seeds, report test metrics, and log them as child runs
tagged ``distill.role=final`` so they never mix with the search's trials; each final run also
logs its trained student as an MLflow PyTorch model (artifact ``model``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from analysis.outdir import prepare_out
from analysis.report import mean_std
from analysis.study import TEST_METRICS, Study, seed_key
from distill_core import (
    Config,
    EpochReport,
    Splits,
    UserError,
    build_model,
    fit,
    load_config,
    load_data,
    make_config,
)
from distill_core.methods import METHODS
from tracking import schema
from tracking.client import RunLogger
from tracking.schema import FINISHED, Role, Status


@dataclass
class Exported:
    """One exported config."""

    path: Path
    rank: int
    group: str
    config: Config


def export_configs(study: Study, *, top_k: int, out: Path, force: bool = False) -> list[Exported]:
    """Write the ``top_k`` best configs (validation objective, seed mean) as ``<study>-<rank>.yaml``.

    Raises:
        UserError: ``top_k`` < 1, no ranked config, or ``out`` holds other files (without ``force``).
    """
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}; pass e.g. --top-k 3")
    ranked = study.groups().query("rankable")
    if ranked.empty:
        raise UserError(
            f"study {study.name!r} has no ranked config (every config has a diverged or failed seed); "
            "widen or fix the search space and run it again"
        )
    pattern = re.compile(rf"{re.escape(study.name)}-\d+\.yaml")
    prepare_out(out, lambda p: bool(pattern.fullmatch(p.name)), force=force)
    exported = []
    for group, row in ranked.head(top_k).iterrows():
        runs = study.runs[(study.runs["group"] == group) & study.runs["status"].isin(FINISHED)]
        first = runs.loc[min(runs.index, key=lambda i: seed_key(runs.at[i, "seed"]))]
        cfg = _run_config(study, first["run_id"])
        path = out / f"{study.name}-{int(row['rank'])}.yaml"
        path.write_text(header(study, row, group, cfg, path) + cfg.to_yaml())
        load_config(path)  # the file as written, header and all, is what `train --config` reads
        exported.append(Exported(path, int(row["rank"]), str(group), cfg))
    return exported


def header(study: Study, row: pd.Series, group: str, cfg: Config, path: Path) -> str:
    """The comment block naming study, config, seeds and validation metrics (test beside, not used)."""
    obj = study.objective
    val = [f"{obj} {mean_std(row[f'{obj} mean'], row[f'{obj} std'])}"]
    if obj != "val_agreement" and pd.notna(row.get("val_agreement mean")):
        val.append(f"val_agreement {mean_std(row['val_agreement mean'], row['val_agreement std'])}")
    test = [
        f"{m} {mean_std(row[f'{m} mean'], row[f'{m} std'])}"
        for m in TEST_METRICS
        if pd.notna(row[f"{m} mean"])
    ]
    lines = [
        f"distill-study export of study '{study.name}' (space {study.tags.get(schema.SPACE, '?')}): "
        f"rank {int(row['rank'])} on validation {obj} ({study.mode})",
        f"config {group}{'' if row['trials'] == group else ', trials ' + row['trials']}, "
        f"seeds {row['seeds']} ({row['n']} finished); "
        f"this file runs seed {cfg.run.seed}",
        f"validation over seeds: {'; '.join(val)}",
        *([f"test over seeds (shown, never used to rank): {'; '.join(test)}"] if test else []),
        f"run it: distill-study train --config {path}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def final_runs(
    study: Study, exported: list[Exported], *, seeds: int, say: Callable[[str], None] = print
) -> pd.DataFrame:
    """Retrain each exported config on train+val with seeds 0..seeds-1; log child runs tagged ``final``.

    Returns:
        Test metrics per exported config: ``<metric> mean`` and ``<metric> std`` over the seeds.
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}; pass e.g. --seeds 3")
    rows = []
    for item in exported:
        for seed in range(seeds):
            cfg = make_config(
                item.config.model_dump(mode="json"), {"data.val_fraction": 0.0, "run.seed": seed}
            )
            tags = {
                schema.PARENT: study.parent_run_id,
                schema.ROLE: Role.FINAL,
                schema.GROUP: item.group,
                schema.RANK: str(item.rank),
                schema.SPACE_NAME: study.tags.get(schema.SPACE, ""),
            }
            logger = RunLogger.start(
                study.client,
                study.experiment_id,
                cfg,
                run_name=f"final-{item.rank}-s{seed}",
                tags=tags,
            )

            last: list[EpochReport] = []

            def on_epoch(
                report: EpochReport, logger: RunLogger = logger, last: list = last
            ) -> None:
                logger.log_epoch(report.epoch, report.metrics)
                last[:] = [report]

            try:
                data = load_data(cfg.data)
                result = fit(cfg, on_epoch=on_epoch, data=data)
                if result.status in FINISHED and last:
                    logger.log_model(student(cfg, last[0], data), data.test_x[:4].cpu().numpy())
            except BaseException:
                logger.finish(Status.FAILED)
                raise
            logger.finish(Status(result.status), result.final, step=len(result.history))
            say(
                f"final {item.path.name} seed {seed}: {result.status}, "
                + ", ".join(f"{m} {result.final[m]:.4f}" for m in TEST_METRICS if m in result.final)
            )
            rows.append(
                {
                    "config": item.path.name,
                    "group": item.group,
                    "seed": seed,
                    "status": result.status,
                    **{m: result.final.get(m) for m in TEST_METRICS},
                }
            )
    frame = pd.DataFrame(rows)
    metrics = [m for m in TEST_METRICS if frame[m].notna().any()]
    summary = frame.groupby("config", sort=False)[metrics].agg(["mean", "std"])
    summary.columns = [f"{m} {s}" for m, s in summary.columns]
    return summary


def student(cfg: Config, report: EpochReport, data: Splits) -> torch.nn.Module:
    """The network whose test numbers a run reports, at ``report``'s epoch, in eval mode: the
    student, or (peers, branches) the one with the best validation accuracy, as the trainer picks
    it (the first on a tie, e.g. without a validation split)."""
    state = report.state()["method"]
    method = METHODS.get(cfg.method.name)
    if not method.has_peers:
        net = build_model(cfg.model.name, data.in_channels, data.num_classes, data.image_size)
        net.load_state_dict(state["nets"][0])
        return net.eval()
    # Peer methods need no teacher. The weights come from the state: no pretrained file to read,
    # no compiled (unpicklable) module.
    cfg = make_config(cfg.model_dump(mode="json"), {"model.pretrained": None, "run.compile": False})
    peers = method(cfg, data, torch.device("cpu"), None)
    peers.load_state_dict(state)
    models = peers.eval_models()
    best = max(models, key=lambda n: report.metrics.get(f"{n}_val_acc", 0.0))
    return models[best].eval()


def _run_config(study: Study, run_id: str) -> Config:
    """The resolved config a trial ran with (its ``config.yaml`` artifact), validated by ``make_config``."""
    # A progress bar per small YAML is clutter.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = study.client.download_artifacts(run_id, "config.yaml", tmp)
        except Exception:  # MLflow raises store-specific errors for a missing artifact
            raise UserError(
                f"run {run_id} of study {study.name!r} has no config.yaml artifact; "
                "re-run the study with a current distill-study, which logs it"
            ) from None
        return load_config(path)
