"""analysis/: report, export and bad input, on a small study built with real ``fit`` runs (no Ray).

The fixture logs the study exactly in the docs/tracking.md layout through studies.tracking: KD on
the synthetic set (mlp teacher and student, 3 epochs), method.alpha x optim.lr x 2 seeds, a config
with one seed, plus a forced divergence (lr 9), a run stopped early (as ASHA would), a failed run
whose other seed was cancelled, and a run abandoned on resume (its trial was sampled again). The
runs also log ``val_n`` and ``test_n`` (the evaluation set sizes), which the trainer only logs on
another branch. A second store holds a seed-004 study over ``init.interp_lambda``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis import plots
from analysis.plots import DPI, FIGSIZE
from analysis.study import Study
from distill_core import Config, EpochReport, fit, load_config, load_data, make_config
from distill_core.losses import weighted_loss
from distill_core.methods import kd
from studies.cli import main
from tracking.client import RunLogger, get_or_create_experiment, open_client
from tracking.schema import Status

STUDY = "alpha"
SEEDS = (0, 1)
CONFIGS = [(alpha, lr) for alpha in (0.1, 0.5, 0.9) for lr in (0.05, 0.2)]
COMMAND = "distill-study run kd_alpha --trials 9 --seeds 2 --epochs 3 --dataset synthetic"
LAMBDA_STUDY = "lambda"
LAMBDAS = (0.0, 0.5, 1.0)
DIVERGING_LR = 9.0
NAN = float("nan")
OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


class Stop(Exception):
    """Stands in for the scheduler stopping a trial (early-stopped) or a crash (failed)."""


def build_study(root: Path, name: str = STUDY) -> str:
    """Log a small study (and a study with nothing finished, ``empty``) under ``root``; returns the URI."""
    client = open_client(str(root))
    tags = {"distill.space": "kd_alpha", "distill.objective": "val_acc", "distill.mode": "max"}
    exp = get_or_create_experiment(client, name, tags=tags)
    parent = client.create_run(
        exp,
        run_name=name,
        tags={
            **tags,
            "distill.role": "study",
            "distill.objectives": "val_acc,val_agreement",
            "distill.scientific": "method.alpha",
            "distill.nuisance": "optim.lr",
            "distill.axes": "method.alpha,optim.lr",
            "distill.command": COMMAND,
            "distill.status": "running",
        },
    ).info.run_id
    base = {
        "data": {"name": "synthetic"},
        "model": {"name": "mlp"},
        "teacher": {"model": "mlp", "epochs": 3},
        "method": {"name": "kd"},
        "run": {"epochs": 3, "device": "cpu", "teacher_store": str(root / "teachers")},
    }
    plan = [(alpha, lr, seed, None) for alpha, lr in CONFIGS for seed in SEEDS]
    plan += [(0.5, DIVERGING_LR, seed, None) for seed in SEEDS]  # diverges: non-finite loss
    # Stopped after epoch 1; failed in epoch 2, its other seed cancelled after epoch 1.
    plan += [(0.3, 0.01, 0, ("early-stopped", 1)), (0.7, 0.01, 0, ("failed", 2))]
    plan += [
        (0.7, 0.01, 1, (Status.CANCELLED, 1)),
        (0.3, 0.05, 0, None),
    ]  # ... and a one-seed config
    groups: dict[tuple[float, float], int] = {}
    for alpha, lr, seed, stop in plan:
        number = groups.setdefault((alpha, lr), len(groups))
        trial_id = f"{number:05d}"
        cfg = make_config(base, {"method.alpha": alpha, "optim.lr": lr, "run.seed": seed})
        logger = RunLogger.start(
            client,
            exp,
            cfg,
            run_name=f"{trial_id}-s{seed}",
            tags={
                "mlflow.parentRunId": parent,
                "distill.role": "trial",
                "distill.trial_id": trial_id,
                "distill.group": f"g{number}",
                "space": "kd_alpha",
            },
        )

        val_n, test_n = eval_sizes(cfg)

        def on_epoch(
            report: EpochReport,
            logger: RunLogger = logger,
            stop: tuple[str, int] | None = stop,
            val_n: int = val_n,
        ) -> None:
            logger.log_epoch(report.epoch, {**report.metrics, "val_n": val_n})
            if stop is not None and stop[1] == report.epoch:
                raise Stop

        try:
            with pytest.MonkeyPatch.context() as patch:
                if lr == DIVERGING_LR:  # a loss that turns non-finite, whatever the init draws
                    patch.setattr(kd, "weighted_loss", lambda *a, **k: weighted_loss(*a, **k) * NAN)
                result = fit(cfg, on_epoch=on_epoch)
        except Stop:
            logger.finish(stop[0], reason=OOM if stop[0] == "failed" else None)
            continue
        logger.finish(result.status, {**result.final, "test_n": test_n}, step=len(result.history))
    abandoned = client.create_run(
        exp,
        run_name="dead0000-s0",
        tags={"mlflow.parentRunId": parent, "distill.role": "abandoned", "seed": "0",
              "distill.trial_id": "dead0000", "status": "abandoned"},
    ).info.run_id  # fmt: skip
    client.log_batch(abandoned, metrics=[Metric("val_acc", 0.99, 0, 1)])  # would rank first
    client.set_terminated(abandoned, "FAILED")
    client.set_tag(parent, "distill.status", "completed")
    client.set_terminated(parent)

    build_kinds(client, base)

    # A study whose only trial is still running: nothing to report yet.
    exp = get_or_create_experiment(client, "empty")
    parent = client.create_run(exp, run_name="empty", tags={"distill.role": "study"}).info.run_id
    RunLogger.start(
        client, exp, make_config(base), tags={"mlflow.parentRunId": parent, "distill.role": "trial"}
    )
    return client.tracking_uri


def eval_sizes(cfg: Config) -> tuple[int, int]:
    """``val_n`` and ``test_n`` of a run: what the trainer logs on the core branch."""
    data = load_data(cfg.data)
    return len(data.val_y), len(data.test_y)


def unsized(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in ("val_n", "test_n")}


def build_kinds(client: MlflowClient, base: dict) -> None:
    """Study ``kinds``: categorical axes and a conditional one (optim.momentum, sgd only)."""
    tags = {"distill.space": "kinds", "distill.objective": "val_acc", "distill.mode": "max"}
    exp = get_or_create_experiment(client, "kinds", tags=tags)
    axes = ["method.name", "optim.name", "optim.momentum"]
    parent = client.create_run(
        exp,
        run_name="kinds",
        tags={
            **tags,
            "distill.role": "study",
            "distill.axes": ",".join(axes),
            "distill.scientific": "method.name",
            "distill.nuisance": "optim.name,optim.momentum",
        },
    ).info.run_id
    plan = [
        ("scratch", "sgd", 0.9),
        ("kd", "sgd", 0.5),
        ("scratch", "adam", None),
        ("kd", "adam", None),
    ]
    for number, (method, optim, momentum) in enumerate(plan):
        sampled = {
            "method.name": method,
            "optim.name": optim,
            "optim.lr": 0.01 if optim == "adam" else 0.1,
        }
        if momentum is not None:
            sampled["optim.momentum"] = momentum
        cfg = make_config(base, sampled)
        logger = RunLogger.start(
            client,
            exp,
            cfg,
            run_name=f"{number:05d}-s0",
            tags={
                "mlflow.parentRunId": parent,
                "distill.role": "trial",
                "distill.trial_id": f"{number:05d}",
                "distill.group": f"{number:05d}",
                "distill.axes": ",".join(a for a in axes if a in sampled),
            },
        )
        # Logged without the set sizes, as a store written before val_n/test_n existed.
        result = fit(
            cfg, on_epoch=lambda r, logger=logger: logger.log_epoch(r.epoch, unsized(r.metrics))
        )
        logger.finish(result.status, unsized(result.final), step=len(result.history))


def build_lambda_study(root: Path) -> str:
    """Seed 004's study: init.interp_lambda in LAMBDAS x 2 seeds (KD, mlp teacher and student,
    2 epochs), plus two hand-logged unstable runs at lambda 0.25 (a DML-like collapse to chance
    that ends crashed, and a run that recovered after a crashed epoch); returns the URI.

    ``train_agreement`` and ``train_pred_kl`` are stand-ins (the validation values) until the
    trainer logs them itself (core branch).
    """
    client = open_client(str(root))
    tags = {"distill.space": "interp_init", "distill.objective": "val_acc", "distill.mode": "max"}
    exp = get_or_create_experiment(client, LAMBDA_STUDY, tags=tags)
    axis = "init.interp_lambda"
    parent = client.create_run(
        exp,
        run_name=LAMBDA_STUDY,
        tags={**tags, "distill.role": "study", "distill.axes": axis, "distill.scientific": axis},
    ).info.run_id
    base = {
        "data": {"name": "synthetic"},
        "model": {"name": "mlp"},
        "teacher": {"model": "mlp", "epochs": 3},
        "method": {"name": "kd"},
        "run": {"epochs": 2, "device": "cpu", "teacher_store": str(root / "teachers")},
    }

    def start(number: int, cfg: Config) -> RunLogger:
        return RunLogger.start(
            client,
            exp,
            cfg,
            run_name=f"{number:05d}-s{cfg.run.seed}",
            tags={
                "mlflow.parentRunId": parent,
                "distill.role": "trial",
                "distill.trial_id": f"{number:05d}",
                "distill.group": f"g{number}",
            },
        )

    for number, lam in enumerate(LAMBDAS):
        for seed in SEEDS:
            cfg = make_config(base, {axis: lam, "run.seed": seed})
            logger = start(number, cfg)
            val_n, test_n = eval_sizes(cfg)

            def on_epoch(r: EpochReport, logger: RunLogger = logger, val_n: int = val_n) -> None:
                stand_ins = {"train_agreement": "val_agreement", "train_pred_kl": "val_kl"}
                extra = {k: r.metrics[v] for k, v in stand_ins.items()}
                logger.log_epoch(r.epoch, {**r.metrics, **extra, "val_n": val_n})

            result = fit(cfg, on_epoch=on_epoch)
            final = {**result.final, "test_n": test_n}
            logger.finish(result.status, final, step=len(result.history))
    val_n, test_n = eval_sizes(make_config(base))
    chance = 0.1  # 10 classes
    for seed, accs in ((0, (0.62, chance)), (1, (chance, 0.58))):
        logger = start(len(LAMBDAS), make_config(base, {axis: 0.25, "run.seed": seed}))
        for epoch, acc in enumerate(accs, 1):
            crashed = [a == chance for a in accs[:epoch]]
            metrics = {"train_loss": 1.0, "val_acc": acc, "val_n": val_n}
            logger.log_epoch(
                epoch, metrics | {"crashed": crashed[-1], "crashed_epochs": sum(crashed)}
            )
        status = "crashed" if accs[-1] == chance else "completed"
        logger.finish(status, {"test_acc": accs[-1], "test_n": test_n}, step=len(accs))
    client.set_tag(parent, "distill.status", "completed")
    client.set_terminated(parent)
    return client.tracking_uri


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on 2 shared cores: torch's thread pool costs 30x more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study_uri(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_study(tmp_path_factory.mktemp("store"))


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def trial_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY)
    return [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("distill.role") == "trial"
    ]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def table_rows(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    """Rows of the first table after ``heading``, keyed by config."""
    section = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(section) if ln.startswith("|"))
    end = next(
        (i for i in range(start, len(section)) if not section[i].startswith("|")), len(section)
    )
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in section[start:end]]
    rows = [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]
    return {row["config"]: row for row in rows}


@pytest.fixture(scope="module")
def report_dir(study_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    result = invoke("report", STUDY, "--tracking-uri", study_uri, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_report_writes_every_promised_file(report_dir: Path) -> None:
    names = {p.name for p in report_dir.iterdir()}
    expected = {
        "report.md",
        "learning_curves.png",
        "axis_method_alpha.png",
        "axis_optim_lr.png",
        "isolation_method_alpha.png",
        "importance.png",
        "pareto.png",
        "status.png",
    }
    assert names == expected
    for png in report_dir.glob("*.png"):
        assert png.stat().st_size > 10_000, f"{png.name} looks empty"
        assert png_size(png) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    text = (report_dir / "report.md").read_text()
    for png in report_dir.glob("*.png"):
        assert f"]({png.name})" in text
    assert COMMAND in text
    assert "Not drawn" not in text


def test_report_numbers_equal_mlflow(study_uri: str, report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    rows = table_rows(text, "## All configs")
    by_group: dict[str, list] = {}
    for run in trial_runs(study_uri):
        by_group.setdefault(run.data.tags["distill.group"], []).append(run)
    assert set(rows) == set(by_group)
    for group, runs in by_group.items():
        finished = [r for r in runs if r.data.tags["status"] in ("completed", "crashed")]
        row = rows[group]
        assert row["n"] == f"{len(finished)}/{len(runs)}"
        for metric in ("val_acc", "test_acc"):
            values = [r.data.metrics[metric] for r in finished]
            if not values:
                stopped = [
                    r.data.metrics[metric]
                    for r in runs
                    if r.data.tags["status"] == "early-stopped" and metric in r.data.metrics
                ]
                shown = f"{sum(stopped) / len(stopped):.4f} (at stop)" if stopped else "-"
                assert row[metric] == shown
                continue
            mean = sum(values) / len(values)
            std = (
                (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                if len(values) > 1
                else None
            )
            assert row[metric] == (f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}")
    ranked = sorted((r for r in rows.values() if r["rank"] != "-"), key=lambda r: int(r["rank"]))
    means = [float(r["val_acc"].split()[0]) for r in ranked]
    assert means == sorted(means, reverse=True), "ranked on seed-mean val_acc, best first"
    assert rows["g6"]["rank"] == "-" and rows["g6"]["status"] == "diverged"  # lr 9 never ranks
    top = table_rows(text, "## Top configs")
    assert list(top) == [r["config"] for r in ranked[: len(top)]]


def test_report_lists_failed_runs_with_reasons_and_leaves_out_abandoned_ones(
    report_dir: Path,
) -> None:
    text = (report_dir / "report.md").read_text()
    section = text.split("## Failed runs", 1)[1].split("## All configs", 1)[0]
    cells = [
        [c.strip() for c in ln.strip("|").split("|")]
        for ln in section.splitlines()
        if ln.startswith("|")
    ]
    rows = [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]
    assert {(r["run"], r["status"], r["reason"]) for r in rows} == {
        ("00006-s0", "diverged", "non-finite training loss"),
        ("00006-s1", "diverged", "non-finite training loss"),
        ("00008-s0", "failed", OOM),
    }
    assert "Left out: 1 runs abandoned on resume" in section and "dead0000-s0" in section
    assert "dead0000" not in text.split("## All configs", 1)[1]


def test_report_on_categorical_and_conditional_axes(study_uri: str, tmp_path: Path) -> None:
    result = invoke("report", "kinds", "--tracking-uri", study_uri, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "axis_method_name.png",
        "axis_optim_name.png",
        "axis_optim_momentum.png",
        "isolation_method_name.png",
        "importance.png",
        "pareto.png",
    } <= names
    rows = table_rows((tmp_path / "report.md").read_text(), "## All configs")
    assert [rows[g]["optim.momentum"] for g in ("00000", "00001", "00002", "00003")] == [
        "0.9",
        "0.5",
        "-",
        "-",
    ]
    assert {rows[g]["method.name"] for g in rows} == {"scratch", "kd"}
    assert (
        "val_agreement" in rows["00001"] and rows["00000"]["val_agreement"] == "-"
    )  # scratch has no teacher
    # One seed each and no val_n logged: no error bar, and the report says why.
    assert {rows[g]["val_acc noise"] for g in rows} == {"SE ? (n unknown)"}
    text = (tmp_path / "report.md").read_text()
    assert "(metrics `val_n`, `test_n`: n unknown)" in text
    assert "no noise estimate (a single seed, and n unknown)" in text


def test_report_logged_to_parent_run(study_uri: str, report_dir: Path) -> None:
    client = MlflowClient(study_uri)
    exp = client.get_experiment_by_name(STUDY)
    parent = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("distill.role") == "study"
    ][0]
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {p.name for p in report_dir.iterdir()}


def test_report_refuses_foreign_files_unless_forced(
    study_uri: str, report_dir: Path, tmp_path: Path
) -> None:
    rerun = invoke("report", STUDY, "--tracking-uri", study_uri, "--out", str(report_dir))
    assert rerun.exit_code == 0, "a folder holding only an earlier report is reused"
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("report", STUDY, "--tracking-uri", study_uri, "--out", str(out))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "notes.txt" in result.output and "--force" in result.output


def test_export_round_trip(study_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "best"
    result = invoke("export", STUDY, "--top-k", "2", "--out", str(out), "--tracking-uri", study_uri)
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["alpha-1.yaml", "alpha-2.yaml"]
    text = files[0].read_text()
    group = re.search(r"config (g\d+), trials", text).group(1)
    seed = int(re.search(r"this file runs seed (\d+)", text).group(1))
    assert "rank 1 on validation val_acc" in text and "val_acc " in text and "±" in text
    [run] = [
        r
        for r in trial_runs(study_uri)
        if r.data.tags["distill.group"] == group and r.data.tags["seed"] == str(seed)
    ]
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies",
            "train",
            "--config",
            str(files[0]),
            "--no-tracking",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    final = json.loads(train.stdout.strip().splitlines()[-1])["final"]
    assert final["val_acc"] == pytest.approx(run.data.metrics["val_acc"], abs=1e-6)
    assert final["val_agreement"] == pytest.approx(run.data.metrics["val_agreement"], abs=1e-6)


def test_export_final_runs(study_uri: str, tmp_path: Path) -> None:
    result = invoke(
        "export",
        STUDY,
        "--top-k",
        "1",
        "--out",
        str(tmp_path / "f"),
        "--final",
        "--seeds",
        "2",
        "--tracking-uri",
        study_uri,
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"final alpha-1\.yaml: test_acc \d\.\d{4} ± \d\.\d{4}", result.output)
    client = MlflowClient(study_uri)
    exp = client.get_experiment_by_name(STUDY)
    finals = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("distill.role") == "final"
    ]
    assert sorted(r.data.tags["seed"] for r in finals) == ["0", "1"]
    assert all(
        r.data.params["data.val_fraction"] == "0.0" and "test_acc" in r.data.metrics for r in finals
    )
    assert {r.data.tags["mlflow.parentRunId"] for r in finals} == {
        r.data.tags["mlflow.parentRunId"] for r in trial_runs(study_uri)
    }
    # Each final run holds its student as an MLflow PyTorch model: loaded back, it scores the
    # test accuracy the run logged.
    import mlflow.pytorch

    cfg = load_config(tmp_path / "f" / "alpha-1.yaml")
    data = load_data(make_config(cfg.model_dump(mode="json"), {"data.val_fraction": 0.0}).data)
    for run in finals:
        with mlflow.tracking._tracking_service.utils._use_tracking_uri(study_uri):
            model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        with torch.no_grad():
            acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
        assert acc == pytest.approx(run.data.metrics["test_acc"], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["report", "nosuch"], "known studies: alpha, empty, kinds"),
        (["export", "nosuch"], "known studies: alpha, empty, kinds"),
        (["export", STUDY, "--top-k", "0"], "--top-k must be at least 1"),
        (["export", STUDY, "--seeds", "2"], "add --final"),
        (["ui", "--tracking-uri", "http://127.0.0.1:5000"], "already a tracking server"),
    ],
)
def test_bad_input_exits_2_with_one_line(study_uri: str, args: list[str], needle: str) -> None:
    result = invoke(*args, *(["--tracking-uri", study_uri] if args[0] != "ui" else []))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert needle in result.output


def test_export_refuses_foreign_files_unless_forced(study_uri: str, tmp_path: Path) -> None:
    (tmp_path / "keep.yaml").write_text("x: 1\n")
    args = ["export", STUDY, "--top-k", "1", "--out", str(tmp_path), "--tracking-uri", study_uri]
    refused = invoke(*args)
    assert (
        refused.exit_code == 2 and "keep.yaml" in refused.output and refused.output.count("\n") == 1
    )
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "alpha-1.yaml").is_file() and (
        tmp_path / "keep.yaml"
    ).read_text() == "x: 1\n"


def test_study_without_finished_trials_exits_2(study_uri: str) -> None:
    result = invoke("report", "empty", "--tracking-uri", study_uri)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no finished trials yet (1 running)" in result.output


@pytest.mark.slow
def test_report_and_export_on_a_real_smoke_study(tmp_path: Path) -> None:
    """End to end with the Ray runner: `run alpha --smoke-test`, report it, export and re-run the best config."""
    store = tmp_path / "runs"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies",
            "run",
            "alpha",
            "--smoke-test",
            "--seeds",
            "2",
            "--name",
            "smoke",
            "--tracking-uri",
            str(store),
            "--storage",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    uri = open_client(str(store)).tracking_uri
    report = invoke("report", "smoke", "--tracking-uri", uri, "--out", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {
        "report.md",
        "learning_curves.png",
        "axis_method_alpha.png",
        "isolation_method_alpha.png",
        "pareto.png",
        "status.png",
    } <= names
    # three smoke configs on the synthetic set may all score alike: then the report says so
    alike = "every ranked config scored the same" in (tmp_path / "report" / "report.md").read_text()
    assert alike != ("importance.png" in names)
    export = invoke(
        "export", "smoke", "--top-k", "1", "--out", str(tmp_path / "best"), "--tracking-uri", uri
    )
    assert export.exit_code == 0, export.output
    text = (tmp_path / "best" / "smoke-1.yaml").read_text()
    group = re.search(r"config (\S+), seeds", text).group(1)
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies",
            "train",
            "--config",
            str(tmp_path / "best" / "smoke-1.yaml"),
            "--no-tracking",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    [trial] = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("distill.group") == group and r.data.tags.get("seed") == "0"
    ]
    final = json.loads(train.stdout.strip().splitlines()[-1])["final"]
    assert final["val_acc"] == pytest.approx(trial.data.metrics["val_acc"], abs=1e-6)


def finished_by_group(uri: str, study: str = STUDY) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        tags = run.data.tags
        if tags.get("distill.role") == "trial" and tags["status"] in ("completed", "crashed"):
            out.setdefault(tags["distill.group"], []).append(run)
    return out


def test_report_gives_every_accuracy_its_noise(study_uri: str, report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    finished = finished_by_group(study_uri)
    sizes = {r.data.metrics["val_n"] for runs in finished.values() for r in runs}
    [val_n] = sizes
    assert val_n == 64  # 10% of the 640 synthetic training images
    assert f"**Noise.** At n = {int(val_n)} validation examples" in text
    rows = table_rows(text, "## All configs")
    single = 0
    for group, row in rows.items():
        runs = finished.get(group, [])
        for metric in ("val_acc", "val_agreement", "test_acc", "test_agreement"):
            values = [r.data.metrics[metric] for r in runs]
            cell = row[f"{metric} noise"]
            if len(values) >= 2:
                mean = sum(values) / len(values)
                if len(set(values)) == 1:
                    low = high = mean
                else:
                    low, high = stats.t.interval(
                        0.95, len(values) - 1, loc=mean, scale=stats.sem(values)
                    )
                low, high = max(low, 0.0), min(high, 1.0)  # accuracies: cut to [0, 1]
                assert cell == f"95% CI [{low:.4f}, {high:.4f}]", (group, metric)
            elif len(values) == 1:
                n = runs[0].data.metrics["test_n" if metric.startswith("test") else "val_n"]
                se = math.sqrt(values[0] * (1 - values[0]) / n)
                assert cell == f"SE {se:.4f} (n={int(n)})", (group, metric)
                single += 1
            else:
                assert cell == "-"
    assert single == 4, "the one-seed config shows the binomial SE of all four accuracies"
    assert rows["g9"]["test_acc noise"].endswith(
        "(n=160)"
    )  # the test set: 20% of the 800 synthetic images


def test_best_config_line_says_whether_the_runner_up_is_within_noise(
    study_uri: str, report_dir: Path
) -> None:
    text = (report_dir / "report.md").read_text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("- best config: ")]
    best, second = list(table_rows(text, "## Top configs"))[:2]
    finished = finished_by_group(study_uri)
    a, b = ([r.data.metrics["val_acc"] for r in finished[g]] for g in (best, second))
    assert line.startswith(f"- best config: `{best}`, val_acc ")
    if min(len(a), len(b)) >= 2:
        if len(set(a)) == len(set(b)) == 1:  # no spread on either side: the difference is exact
            low = a[0] - b[0]
        else:
            low = stats.ttest_ind(a, b, equal_var=False).confidence_interval().low
        within = low <= 0
        assert "Welch 95% interval" in line and ("inconclusive" if within else "reproduced") in line
    else:
        n = 160
        se = math.hypot(*(math.sqrt(p * (1 - p) / n) for p in (np.mean(a), np.mean(b))))
        within = abs(np.mean(a) - np.mean(b)) < 2 * se
        assert f"2 x combined binomial SE = {200 * se:.1f} points" in line
    said = "is within noise of it" if within else "is beaten beyond noise"
    assert f"the runner-up `{second}` {said}: " in line


def test_cancelled_runs_are_shown_but_neither_ranked_nor_failed(
    study_uri: str, report_dir: Path
) -> None:
    text = (report_dir / "report.md").read_text()
    assert "Cancelled (not failed, not ranked): 1 run stopped because another seed" in text
    assert "diverged or failed: 00008-s1." in text
    row = table_rows(text, "## All configs")["g8"]
    assert row["rank"] == "-" and row["n"] == "0/2"
    assert sorted(row["status"].split(", ")) == ["cancelled x1", "failed x1"]
    statuses = re.search(r"\((\d+ [a-z-]+(?:, \d+ [a-z-]+)*)\); \d+ configs ranked", text).group(1)
    assert "1 cancelled" in statuses.split(", ")
    assert "; 1 cancelled (another seed of their trial diverged or failed" in text


def test_crash_share_counts_the_flags_of_every_run(study_uri: str, report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    runs = trial_runs(study_uri)
    flagged = [
        r
        for r in runs
        if r.data.tags["status"] == "crashed" or r.data.metrics.get("crashed_epochs", 0) > 0
    ]
    if flagged:
        assert f"{len(flagged)} of {len(runs)} runs" in text
    else:
        assert "- crashes: No run was flagged crashed at any epoch." in text


def fake_study(values: np.ndarray, scores: np.ndarray) -> Study:
    """A one-seed-per-config study over a continuous optim.lr, built without MLflow."""
    runs = pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(len(values))],
            "run_name": [f"{i:05d}-s0" for i in range(len(values))],
            "trial_id": [f"{i:05d}" for i in range(len(values))],
            "group": [f"{i:05d}" for i in range(len(values))],
            "seed": "0",
            "status": "completed",
            "reason": None,
            "params.optim.lr": [str(v) for v in values],
            "metrics.val_acc": scores,
        }
    )
    tags = {"distill.axes": "optim.lr", "distill.scientific": "optim.lr"}
    return Study("fake", "0", "parent", tags, runs, client=None)  # type: ignore[arg-type]


def test_continuous_axis_is_binned_not_joined(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lr = 10 ** rng.uniform(-3, 0, 30)
    acc = 0.7 + 0.05 * np.log10(lr) + rng.normal(0, 0.02, 30)
    study = fake_study(lr, acc)
    groups = study.groups()
    [axis] = plots.axis_plots(study, groups, tmp_path)
    [iso] = plots.isolation_plots(study, groups, tmp_path)
    for plot in (axis, iso):
        assert png_size(tmp_path / plot.file) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        assert "per quantile bin (8 bins)" in plot.sentence
    b = plots.binned(study.values("optim.lr"), study.metric("val_acc"))
    assert len(b) == 8 and b["n"].sum() == 30 and (b["n"] >= 3).all()
    assert b["x"].is_monotonic_increasing and (b["x_high"].shift() < b["x_low"]).iloc[1:].all()
    for _, row in b.iterrows():
        inside = acc[(lr >= row["x_low"]) & (lr <= row["x_high"])]
        low, high = stats.t.interval(
            0.95, len(inside) - 1, loc=inside.mean(), scale=stats.sem(inside)
        )
        assert (row["n"], row["mean"]) == (len(inside), pytest.approx(inside.mean()))
        assert (row["low"], row["high"]) == (pytest.approx(low), pytest.approx(high))


def test_grid_values_are_their_own_bins() -> None:
    b = plots.binned(pd.Series([0.0, 0.0, 0.5, 0.5, 1.0, 1.0]), pd.Series([1, 3, 2, 2, 5, 7.0]))
    assert b["x"].tolist() == [0.0, 0.5, 1.0] and b["n"].tolist() == [2, 2, 2]
    assert b["mean"].tolist() == [2.0, 2.0, 6.0]
    assert (b["low"].iloc[1], b["high"].iloc[1]) == (2.0, 2.0)  # no spread: zero width


@pytest.fixture(scope="module")
def lambda_report(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    uri = build_lambda_study(tmp_path_factory.mktemp("lambda_store"))
    out = tmp_path_factory.mktemp("lambda_report")
    result = invoke("report", LAMBDA_STUDY, "--tracking-uri", uri, "--out", str(out))
    assert result.exit_code == 0, result.output
    return uri, out


def test_fidelity_plot_for_an_interp_lambda_study(lambda_report: tuple[str, Path]) -> None:
    uri, out = lambda_report
    names = {p.name for p in out.iterdir()}
    assert {
        "fidelity_lambda.png",
        "axis_init_interp_lambda.png",
        "isolation_init_interp_lambda.png",
    } <= names
    assert png_size(out / "fidelity_lambda.png") == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    text = (out / "report.md").read_text()
    section = text.split("### Fidelity vs lambda", 1)[1].split("\n### ", 1)[0]
    assert "![Fidelity vs lambda](fidelity_lambda.png)" in section
    runs = [r for rs in finished_by_group(uri, LAMBDA_STUDY).values() for r in rs]
    with_teacher = [r for r in runs if "val_agreement" in r.data.metrics]
    assert len(with_teacher) == len(LAMBDAS) * len(SEEDS)
    lam = [float(r.data.params["init.interp_lambda"]) for r in with_teacher]
    for metric in ("train_agreement", "val_agreement"):
        fit_ = stats.linregress(lam, [r.data.metrics[metric] for r in with_teacher])
        half = stats.t.ppf(0.975, len(lam) - 2) * fit_.stderr
        outcome = (
            "reproduced"
            if fit_.slope - half > 0
            else "not reproduced"
            if fit_.slope + half < 0
            else "inconclusive"
        )
        said = f"{metric}: {outcome}: {fit_.slope:+.3g} per unit lambda [{fit_.slope - half:.3g}"
        assert said in section
        assert f"over {len(lam)} runs" in section
    assert "Train minus validation slope: " in section


def test_crash_share_with_a_collapsed_run(lambda_report: tuple[str, Path]) -> None:
    _, out = lambda_report
    text = (out / "report.md").read_text()
    share = (
        "2 of 8 runs (25%) were flagged crashed: 1 ended crashed (status crashed), "
        "1 recovered (completed with crashed_epochs > 0)."
    )
    assert f"- crashes: {share}" in text
    status = text.split("### Run outcomes", 1)[1].split("\n### ", 1)[0]
    assert share in status and "12% crashed, diverged or failed" in status
    row = table_rows(text, "## All configs")["g3"]
    assert row["n"] == "2/2" and sorted(row["status"].split(", ")) == ["completed x1", "crashed x1"]


@pytest.mark.parametrize("method", ["dml", "pcl"])
def test_exported_network_is_the_one_whose_test_accuracy_is_reported(method: str) -> None:
    """With peers or branches the trainer reports the one with the best validation accuracy:
    the network ``export --final`` logs as an MLflow model is that one, not the first."""
    from analysis.export import student

    cfg = make_config(
        {
            "data": {"name": "synthetic"},
            "model": {"name": "mlp"},
            "method": {"name": method, "peers": 3},
            "run": {"epochs": 2, "batch_size": 64, "seed": 0},
        }
    )
    data = load_data(cfg.data)
    reports = []
    final = fit(cfg, on_epoch=reports.append, data=data).final
    best = max(range(3), key=lambda i: reports[-1].metrics[f"peer{i}_val_acc"])
    assert best != 0, "pick a seed where the first peer is not the best (else this proves nothing)"
    net = student(cfg, reports[-1], data)
    with torch.no_grad():
        acc = (net(data.test_x).argmax(1) == data.test_y).float().mean().item()
    assert acc == pytest.approx(final[f"peer{best}_test_acc"], abs=1e-6)
    assert acc == pytest.approx(final["test_acc"], abs=1e-6)


def test_importance_of_configs_that_all_score_the_same_is_not_drawn(tmp_path: Path) -> None:
    """A smoke study can score every config alike; fANOVA raises there, the report says why."""
    study = fake_study(np.array([0.01, 0.1, 0.5]), np.array([0.9, 0.9, 0.9]))
    plot = plots.importance_plot(study, study.groups(), tmp_path)
    assert (
        plot.file is None and "every ranked config scored the same val_acc (0.9)" in plot.sentence
    )
    assert list(tmp_path.iterdir()) == []
