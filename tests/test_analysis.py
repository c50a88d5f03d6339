"""analysis/: report, export and bad input, on a small study built with real ``fit`` runs (no Ray).

The fixture logs the study exactly in the docs/tracking.md layout through studies.tracking: KD on
the synthetic set (mlp teacher and student, 3 epochs), method.alpha x optim.lr x 2 seeds, plus a
forced divergence (lr 9), a run stopped early (as ASHA would), a failed run and a run abandoned on
resume (its trial was sampled again).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.plots import DPI, FIGSIZE
from distill_core import EpochReport, fit, make_config
from studies.cli import main
from tracking.client import RunLogger, get_or_create_experiment, open_client

STUDY = "alpha"
SEEDS = (0, 1)
CONFIGS = [(alpha, lr) for alpha in (0.1, 0.5, 0.9) for lr in (0.05, 0.2)]
COMMAND = "distill-study run kd_alpha --trials 9 --seeds 2 --epochs 3 --dataset synthetic"
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
    plan += [(0.5, 9.0, seed, None) for seed in SEEDS]  # diverges: non-finite loss
    plan += [(0.3, 0.01, 0, 1), (0.7, 0.01, 0, 2)]  # stopped after epoch 1; failed in epoch 2
    groups: dict[tuple[float, float], int] = {}
    for alpha, lr, seed, stop_after in plan:
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

        def on_epoch(
            report: EpochReport, logger: RunLogger = logger, stop_after: int | None = stop_after
        ) -> None:
            logger.log_epoch(report.epoch, report.metrics)
            if stop_after == report.epoch:
                raise Stop

        try:
            result = fit(cfg, on_epoch=on_epoch)
        except Stop:
            if stop_after == 1:
                logger.finish("early-stopped")
            else:
                logger.finish("failed", reason=OOM)
            continue
        logger.finish(result.status, result.final, step=len(result.history))
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
        result = fit(cfg, on_epoch=lambda r, logger=logger: logger.log_epoch(r.epoch, r.metrics))
        logger.finish(result.status, result.final, step=len(result.history))


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
        "importance.png",
        "pareto.png",
        "status.png",
    } <= names
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
