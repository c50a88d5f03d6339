"""The bad-input matrix: every command refuses bad input with one ``error:`` line and exit code 2.

One parametrized test runs each case through the real CLI (in-process, click's ``CliRunner``)
against a store built once for the module (an MLflow store holding a ``train`` run and a small
study, and a teacher store holding that run's teacher), and checks that no case starts Ray or a
server, prints a traceback, or changes a single file of the store.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from distill_core import fit, make_config
from studies.cli import main
from tracking.client import RunLogger, get_or_create_experiment, open_client

STUDY = "tiny"
# Teacher epochs 1 and 3 are stored (save_epochs [1] keeps the last too); epoch 2 never is.
GOOD = {
    "data": {"name": "digits"},
    "model": {"name": "mlp"},
    "teacher": {
        "model": "mlp",
        "epochs": 3,
        "save_epochs": [1],
        "batch_size": 64,
        "schedule": {"name": "constant"},
    },
    "method": {"name": "kd"},
    "schedule": {"name": "constant"},
    "run": {"epochs": 1, "batch_size": 64, "device": "cpu"},
}


def write_yaml(path: Path, tree: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's IDX format: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_truncated_fashion(root: Path) -> None:
    """Fashion-MNIST in torchvision's layout whose gzipped training images stop half-way."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, array in {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(40) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10) % 10,
    }.items():
        blob = gzip.compress(idx_bytes(array))
        (raw / (name + ".gz")).write_bytes(
            blob[: len(blob) // 2] if "train-images" in name else blob
        )


def write_truncated_cifar(root: Path) -> None:
    """CIFAR-10 in torchvision's layout (python pickles) whose first batch is cut off."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), b"labels": [1] * 8}
        blob = pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(blob[: len(blob) // 2] if name == "data_batch_1" else blob)


def log_study(tracking: Path, teachers: Path) -> None:
    """A finished study of one trial in the docs/tracking.md layout (no Ray needed)."""
    client = open_client(str(tracking))
    tags = {"distill.space": "lr", "distill.objective": "val_acc", "distill.mode": "max"}
    exp = get_or_create_experiment(client, STUDY, tags=tags)
    parent = client.create_run(exp, run_name=STUDY, tags={**tags, "distill.role": "study"})
    cfg = make_config(
        {
            "data": {"name": "synthetic"},
            "model": {"name": "mlp"},
            "run": {"epochs": 1, "device": "cpu", "teacher_store": str(teachers)},
        }
    )
    logger = RunLogger.start(
        client,
        exp,
        cfg,
        run_name="00000-s0",
        tags={
            "mlflow.parentRunId": parent.info.run_id,
            "distill.role": "trial",
            "distill.trial_id": "00000",
            "distill.group": "00000",
        },
    )
    result = fit(cfg, on_epoch=lambda r: logger.log_epoch(r.epoch, r.metrics))
    logger.finish(result.status, result.final, step=len(result.history))
    client.set_terminated(parent.info.run_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The stored state every case must leave alone, the bad inputs, and a busy port."""
    store, work = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("work")
    good = write_yaml(work / "good.yaml", {**GOOD, "run": {**GOOD["run"], "teacher_store": str(store / "teachers")}})  # fmt: skip
    trained = CliRunner().invoke(
        main, ["train", "--config", good, "--tracking-uri", str(store / "mlruns")]
    )
    assert trained.exit_code == 0, trained.output
    log_study(store / "mlruns", store / "teachers")

    bad = yaml.safe_load(Path(good).read_text())
    write_yaml(work / "unknown_key.yaml", {**bad, "method": {"name": "kd", "alhpa": 0.5}})
    write_yaml(work / "section_type.yaml", {**bad, "optim": 0.1})
    (work / "tabs.yaml").write_text("run:\n\tepochs: 2\n")
    (work / "list.yaml").write_text("- run\n- epochs\n")
    (work / "broken_space.py").write_text("BASE = {\nOBJECTIVE = 'val_acc'\n")
    (work / "blocker").write_text("a file where a folder is expected\n")
    write_truncated_fashion(work / "fashion")
    write_truncated_cifar(work / "cifar")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        yield {
            "store": str(store),
            "work": str(work),
            "good": good,
            "busy": str(busy.getsockname()[1]),
        }
    finally:
        busy.close()


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under ``root``: size, mtime and content hash."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
        )
        for p in sorted(root.rglob("*"))
    }


TRAIN = ["train", "--config", "{good}", "--tracking-uri", "{store}/mlruns"]
RUN = ["--storage", "{store}/studies", "--tracking-uri", "{store}/mlruns"]
MLRUNS = ["--tracking-uri", "{store}/mlruns"]

# (id, arguments, words the error line must hold: the problem and the fix)
CASES = [
    # train: YAML configs
    ("unknown-key", ["train", "--config", "{work}/unknown_key.yaml"], ["unknown config key 'method.alhpa'", "valid keys in 'method'"]),
    ("section-wrong-type", ["train", "--config", "{work}/section_type.yaml"], ["optim=0.1 is invalid", "set optim to"]),
    ("malformed-yaml", ["train", "--config", "{work}/tabs.yaml"], ["is not valid YAML", "fix the file"]),
    ("yaml-not-a-mapping", ["train", "--config", "{work}/list.yaml"], ["must hold a mapping of sections"]),
    ("missing-config", ["train", "--config", "{work}/nope.yaml"], ["nope.yaml does not exist", "pass an existing YAML file"]),
    # train: values
    ("out-of-range", [*TRAIN, "--set", "method.alpha=1.5"], ["method.alpha=1.5 is invalid", "in [0.0, 1.0]"]),
    ("wrong-type", [*TRAIN, "--set", "optim.lr=abc"], ["optim.lr='abc' is invalid", "set optim.lr to a value"]),
    ("unknown-model", [*TRAIN, "--set", "model.name=vgg"], ["unknown model 'vgg'", "set model.name to one of"]),
    ("unknown-dataset", [*TRAIN, "--set", "data.name=imagenet"], ["unknown data set 'imagenet'", "set data.name to one of"]),
    ("unknown-method", [*TRAIN, "--set", "method.name=fitnet"], ["unknown method 'fitnet'", "set method.name to one of"]),
    # train: data
    ("missing-data-dir", [*TRAIN, "--set", "data.name=cifar10", "--data-dir", "{work}/nowhere"], ["data directory", "does not exist", "CIFAR10(root=DIR, download=True)"]),
    ("truncated-fashion-mnist", [*TRAIN, "--set", "data.name=fashion_mnist", "--data-dir", "{work}/fashion"], ["train-images-idx3-ubyte.gz cannot be read", "download the data set again"]),
    ("truncated-cifar", [*TRAIN, "--set", "data.name=cifar10", "--data-dir", "{work}/cifar"], ["data_batch_1 is not a CIFAR pickle", "download the data set again"]),
    # train: teachers, stores
    ("teacher-epoch-beyond", [*TRAIN, "--set", "teacher.epoch=5"], ["teacher.epoch=5 is never saved", "set teacher.epoch to one of them"]),
    ("teacher-epoch-not-stored", [*TRAIN, "--set", "teacher.epoch=2", "--set", "teacher.save_epochs=null"], ["teacher epoch 2 was never saved", "(saved: 1, 3)", "add 2 to teacher.save_epochs"]),
    ("unreachable-tracking-server", ["train", "--config", "{good}", "--tracking-uri", "http://127.0.0.1:1"], ["cannot reach the MLflow tracking store", "pass a reachable --tracking-uri"]),
    ("unwritable-tracking-dir", ["train", "--config", "{good}", "--tracking-uri", "{work}/blocker/mlruns"], ["blocker is a file", "pass a writable --tracking-uri folder"]),
    ("unwritable-teacher-store", [*TRAIN, "--set", "run.teacher_store={work}/blocker/teachers"], ["blocker is a file", "set run.teacher_store to a writable folder"]),
    # run
    ("run-unknown-space", ["run", "nope", *RUN], ["unknown search space or preset 'nope'", "use one of: spaces alpha"]),
    ("run-broken-module", ["run", "{work}/broken_space.py", *RUN], ["broken_space.py fails to import (SyntaxError", "fix it"]),
    ("run-unknown-sampler", ["run", "alpha", "--sampler", "annealing", *RUN], ["unknown sampler 'annealing'", "use --sampler tpe"]),
    ("run-wrong-type", ["run", "alpha", "--trials", "many", *RUN], ["'many' is not a valid integer", "(see main run --help)"]),
    ("run-zero-trials", ["run", "alpha", "--trials", "0", *RUN], ["--trials must be at least 1, got 0", "pass --trials 1 or more"]),
    ("run-out-of-range-set", ["run", "alpha", "--set", "optim.lr=-1", *RUN], ["optim.lr=-1 is invalid", "set optim.lr to a value"]),
    ("run-unreachable-ray", ["run", "alpha", "--address", "127.0.0.1:1", *RUN], ["cannot reach the Ray cluster at --address 127.0.0.1:1", "drop --address"]),
    ("run-unreachable-tracking-server", ["run", "alpha", "--storage", "{store}/studies", "--tracking-uri", "http://127.0.0.1:1"], ["cannot reach the MLflow tracking store", "--tracking-uri"]),
    ("run-unwritable-storage", ["run", "alpha", "--storage", "{work}/blocker/studies", *MLRUNS], ["blocker is a file", "pass a writable --storage folder"]),
    # report, export
    ("report-unknown-study", ["report", "nope", *MLRUNS], ["no study named 'nope'", f"known studies: {STUDY}"]),
    ("report-unwritable-out", ["report", STUDY, "--out", "{work}/blocker/report", *MLRUNS], ["blocker is a file", "pass a writable --out folder"]),
    ("export-unknown-study", ["export", "nope", *MLRUNS], ["no study named 'nope'", f"known studies: {STUDY}"]),
    ("export-zero-top-k", ["export", STUDY, "--top-k", "0", "--out", "{work}/exports", *MLRUNS], ["--top-k must be at least 1, got 0", "pass e.g. --top-k 3"]),
    ("export-out-is-a-file", ["export", STUDY, "--out", "{work}/blocker", *MLRUNS], ["Invalid value for '--out'", "blocker' is a file", "(see main export --help)"]),
    ("export-seeds-without-final", ["export", STUDY, "--seeds", "2", *MLRUNS], ["--seeds only applies to final runs", "add --final"]),
    # ui
    ("ui-busy-port", ["ui", "--store", "{store}/mlruns", "--port", "{busy}"], ["port {busy} on 127.0.0.1 is busy", "pass a free --port"]),
    ("ui-server-uri", ["ui", "--tracking-uri", "http://127.0.0.1:1"], ["is already a tracking server", "open it in a browser"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    world: dict[str, str],
    args: list[str],
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    popen = subprocess.Popen

    def started(*args: Any, **kwargs: Any) -> Any:
        if args and "server" not in args[0]:  # e.g. ctypes.util.find_library while importing
            return popen(*args, **kwargs)
        raise AssertionError("bad input must fail before anything starts")

    monkeypatch.setattr(ray, "init", started)  # no Ray
    monkeypatch.setattr(subprocess, "Popen", started)  # no MLflow server
    monkeypatch.chdir(world["work"])  # defaults (./runs) land outside the store
    store = Path(world["store"])
    before = snapshot(store)

    result = CliRunner().invoke(main, [a.format(**world) for a in args])

    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for words in expected:
        assert words.format(**world) in lines[0]
    assert snapshot(store) == before
