"""The benchmark scripts (benchmarks/, docs/benchmarks.md): what their --quick runs write.

Not timing tests: a quick run's numbers mean nothing on a shared machine. What is checked is the
record: machine info, every row's measurements positive and finite, ratio = value / baseline,
the target judged as stated, and the results table listing every benchmark.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import (
    gpu_study,
    kd_cost,
    memory,
    search_efficiency,
    study_efficiency,
    study_vs_optuna,
    trainer_throughput,
)
from benchmarks.common import OPS
from benchmarks.report import BENCHMARKS, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the module, so that the table is checked with every result in it."""
    return tmp_path_factory.mktemp("bench")


def check(out: Path, name: str, rows: int) -> list[dict[str, Any]]:
    """The JSON record of ``name`` is complete and consistent; the table shows its rows."""
    record = json.loads((out / f"{name}.json").read_text())
    assert record["benchmark"] == name and record["quick"] is True
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1
    assert machine["cpu_count"] >= 1 and machine["date"]
    assert record["settings"]["threads"] == 1
    assert record["peak_rss_mb"] > 0 and record["wall_s"] > 0
    assert len(record["rows"]) == rows
    table = (out / "README.md").read_text()
    for row in record["rows"]:
        for key in ("value", "baseline"):
            assert math.isfinite(row[key]) and row[key] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-12)
        if row["target"] is None:
            assert row["pass"] is None
        else:
            field, op, limit = row["target"].split()
            assert row["pass"] is OPS[op](row[field], float(limit)), row
        assert f"| {row['case']} |" in table
    return record["rows"]


def test_trainer_throughput(out: Path) -> None:
    trainer_throughput.main(
        [
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
            "--cases",
            "mnist5k-cnn_small",
            "cifar-cnn_small",
        ]
    )
    for row in check(out, "trainer_throughput", rows=2):
        assert len(row["fit_epoch_s"]) == len(row["loop_epoch_s"]) == 1  # warm-up epoch dropped
        assert row["value"] == pytest.approx(row["train_images"] / row["fit_epoch_s"][0])
        assert row["baseline"] == pytest.approx(row["train_images"] / row["loop_epoch_s"][0])


def test_kd_cost(out: Path) -> None:
    kd_cost.main(["--quick", "--threads", "1", "--out", str(out)])
    cached, augmented, floor, bf16 = check(out, "kd_cost", rows=4)
    assert cached["target"] == "ratio <= 1.15" and augmented["target"] is None
    assert cached["value"] == pytest.approx(sum(cached["kd_epoch_s"]) / len(cached["kd_epoch_s"]))
    # The floor: the scratch epoch plus the teacher's inference alone, measured in the same run.
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert floor["target"] == "ratio <= 1.15" and floor["value"] == augmented["value"]
    scratch, teacher = augmented["scratch_epoch_s"], augmented["teacher_kd_pass_s"]
    assert floor["baseline"] == pytest.approx(mean(scratch) + mean(teacher))
    assert bf16["baseline"] == floor["baseline"] and bf16["target"] is None
    assert bf16["value"] == pytest.approx(mean(augmented["kd_bf16_epoch_s"]))


def test_memory(out: Path) -> None:
    memory.main(["--quick", "--threads", "1", "--out", str(out)])
    peers, side_by_side, added = check(out, "memory", rows=3)
    single = peers["singles"][0]
    assert (
        peers["baseline"] == single["peak_mb"] and side_by_side["baseline"] == 3 * single["peak_mb"]
    )
    assert {peers["dml"]["status"], single["status"]} <= {"completed", "crashed"}  # 1 epoch
    assert added["value"] == pytest.approx(peers["dml"]["peak_mb"] - peers["dml"]["before_fit_mb"])


def test_gpu_script_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "benchmark": "gpu",
        "skipped": True,
        "reason": f"no CUDA device is visible to torch {torch.__version__}",
    }
    assert "gpu benchmark skipped: no CUDA device" in done.stderr
    assert not list(tmp_path.iterdir())  # a skipped run never overwrites real GPU results


def test_gpu_study_without_cuda_says_so_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_study.main(["--quick", "--out", str(tmp_path)]) == 0
    assert "gpu_study: no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    check(out, "gpu", rows=3)


@pytest.mark.slow
def test_study_efficiency(out: Path, ray_session: str) -> None:
    study_efficiency.main(["--quick", "--threads", "1", "--out", str(out)])
    wall, teachers = check(out, "study_efficiency", rows=2)
    assert wall["trials"] == 8
    assert teachers["value"] == teachers["baseline"] == teachers["fit_teachers"] == 1
    assert teachers["pass"] is True


@pytest.mark.slow
def test_study_vs_optuna(out: Path, ray_session: str) -> None:
    study_vs_optuna.main(["--quick", "--threads", "1", "--out", str(out)])
    wall, accuracy, fixed, per_trial = check(out, "study_vs_optuna", rows=4)
    assert (
        wall["target"] == "ratio <= 0.6" and wall["study_epochs"] > 0 and wall["plain_epochs"] > 0
    )
    # both sides try the same number of trials, each epoch at most once per trial
    assert (
        wall["study_epochs"] <= study_vs_optuna.QUICK_TRIALS * study_vs_optuna.QUICK["run.epochs"]
    )
    se = (accuracy["baseline"] / 100 * (1 - accuracy["baseline"] / 100) / accuracy["val_n"]) ** 0.5
    assert accuracy["gap_se"] == pytest.approx(
        (accuracy["baseline"] - accuracy["value"]) / 100 / se
    )
    assert fixed["target"] == "value <= 10" and per_trial["target"] == "value <= 1"


@pytest.mark.slow
def test_search_efficiency(out: Path, ray_session: str) -> None:
    search_efficiency.main(["--quick", "--threads", "1", "--out", str(out)])
    accuracy, epochs = check(out, "search_efficiency", rows=2)
    (seed,) = accuracy["seeds"]
    assert epochs["baseline"] == seed["grid_epochs"] == 25 * 2
    assert epochs["value"] == seed["tpe_epochs"] == sum(seed["tpe_trial_epochs"])
    assert len(seed["tpe_trial_epochs"]) == 4 and all(1 <= e <= 2 for e in seed["tpe_trial_epochs"])
    # TPE samples grid values: its best is a grid config, which the grid trained identically.
    assert seed["tpe_best_val_acc"] == pytest.approx(seed["grid_val_acc_of_tpe_best"])
    assert accuracy["gap_points"] == pytest.approx(
        100 * (seed["grid_best_val_acc"] - seed["tpe_best_val_acc"])
    )


def test_table_lists_every_benchmark(out: Path) -> None:
    """Runs last in this module: a row per result of whatever ran above, a line for the rest."""
    table = render(out).read_text()
    for name in BENCHMARKS:
        path = out / f"{name}.json"
        if path.exists():
            rows = json.loads(path.read_text())["rows"]
            assert table.count(f"\n| {name} (quick) |") == len(rows) > 0
        else:
            assert f"\n| {name} | not run: `python -m benchmarks.{name}`" in table
