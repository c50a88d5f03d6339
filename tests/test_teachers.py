"""The teacher store: content-hash keys, train once, saved epochs, checksums, concurrent requests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from distill_core import TeacherError, fit, load_data, make_config
from distill_core.config import Config, ConfigError
from distill_core.teachers import TeacherStore, store_key, teacher_spec

PYTHON = sys.executable


def tree(store: Path, **teacher: Any) -> dict[str, Any]:
    """A 1-epoch KD run on digits from a small mlp teacher."""
    return {
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "teacher": {
            "model": "mlp",
            "epochs": 2,
            "batch_size": 64,
            "schedule": {"name": "constant"},
            **teacher,
        },
        "method": {"name": "kd"},
        "run": {"epochs": 1, "batch_size": 64, "device": "cpu", "teacher_store": str(store)},
    }


def config(store: Path, overrides: list[str] | None = None, **teacher: Any) -> Config:
    return make_config(tree(store, **teacher), overrides)


def run(cfg: Config) -> tuple[dict[str, float], list[str]]:
    lines: list[str] = []
    result = fit(cfg, log=lines.append)
    return result.final, lines


def trained(lines: list[str]) -> int:
    return sum(line.startswith("training ") for line in lines)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, sha256(p)) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the default 2-epoch teacher, trained once for this module."""
    root = tmp_path_factory.mktemp("store")
    TeacherStore(root).ensure(teacher_spec(config(root)))
    return root


@pytest.fixture
def store(trained_store: Path, tmp_path: Path) -> Path:
    """A private copy of ``trained_store`` (the store path is not part of the key)."""
    shutil.copytree(trained_store, tmp_path / "store")
    return tmp_path / "store"


def test_teacher_is_trained_once_across_two_fits(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first, lines = run(cfg)
    assert trained(lines) == 1
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name == store_key(teacher_spec(cfg)) and folder.name.startswith("mlp-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch_0001.pt",
        "epoch_0002.pt",
        "meta.json",
    ]
    before = snapshot(folder)
    second, lines = run(cfg)
    assert trained(lines) == 0
    assert snapshot(folder) == before  # nothing rewritten
    assert {k: v for k, v in second.items() if k != "epoch_time"} == {
        k: v for k, v in first.items() if k != "epoch_time"
    }


def test_meta_records_checksums_and_epoch_metrics(store: Path) -> None:
    cfg = config(store)
    final, lines = run(cfg)
    assert trained(lines) == 0
    teachers = TeacherStore(store)
    folder = teachers.path(teacher_spec(cfg))
    meta = teachers.meta(teacher_spec(cfg))
    assert meta is not None and meta["status"] == "completed" and meta["method"] == "scratch"
    assert sorted(meta["epochs"]) == ["1", "2"]
    for epoch, entry in meta["epochs"].items():
        assert entry["file"] == f"epoch_{int(epoch):04d}.pt"
        assert entry["sha256"] == sha256(folder / entry["file"])
        assert 0.1 < entry["val_acc"] <= 1.0
    # the KD run saw the last teacher epoch: its teacher accuracy is the one stored for epoch 2
    assert final["teacher_val_acc"] == pytest.approx(meta["epochs"]["2"]["val_acc"], abs=1e-7)
    assert meta["final"]["val_acc"] == pytest.approx(meta["epochs"]["2"]["val_acc"])
    assert [e["key"] for e in teachers.entries()] == [folder.name]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_an_earlier_teacher_epoch_is_served(tmp_path: Path) -> None:
    last, _ = run(config(tmp_path, epochs=3))
    early, lines = run(config(tmp_path, epochs=3, epoch=1))
    assert trained(lines) == 0  # the same teacher, another checkpoint
    meta = TeacherStore(tmp_path).entries()[0]
    assert early["teacher_val_acc"] == pytest.approx(meta["epochs"]["1"]["val_acc"], abs=1e-7)
    assert last["teacher_val_acc"] == pytest.approx(meta["epochs"]["3"]["val_acc"], abs=1e-7)
    assert early["teacher_val_acc"] != last["teacher_val_acc"]


def test_save_epochs_keeps_those_plus_the_last(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=3, save_epochs=[1])
    run(cfg)
    folder = TeacherStore(tmp_path).path(teacher_spec(cfg))
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch_0001.pt", "epoch_0003.pt"]


def test_epoch_never_saved_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teacher.epoch=2 is never saved \(saved epochs: 1, 3\)"):
        config(tmp_path, epochs=3, save_epochs=[1], epoch=2)
    # stored with save_epochs [1]; a later config asks for epoch 2 of the same teacher
    run(config(tmp_path, epochs=3, save_epochs=[1]))
    with pytest.raises(TeacherError, match="teacher epoch 2 was never saved .*saved: 1, 3"):
        run(config(tmp_path, epochs=3, epoch=2))


def flip_bytes(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_checkpoint_is_detected(store: Path, damage: str) -> None:
    cfg = config(store)
    run(cfg)  # loads fine before the damage
    ckpt = TeacherStore(store).path(teacher_spec(cfg)) / "epoch_0002.pt"
    if damage == "flip":
        flip_bytes(ckpt, ckpt.stat().st_size // 2)
    elif damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:-10])
    else:
        ckpt.unlink()
    with pytest.raises(
        TeacherError, match="epoch_0002.pt is missing or corrupted .*delete .* to retrain"
    ):
        run(cfg)


def test_load_gives_a_frozen_network_in_eval_mode(store: Path) -> None:
    cfg = config(store)
    spec = teacher_spec(cfg)
    teachers = TeacherStore(store)
    net = teachers.load(spec, 2, load_data(cfg.data), torch.device("cpu"))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    saved = torch.load(teachers.path(spec) / "epoch_0002.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


def test_unknown_teacher_is_an_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(TeacherError, match="is not in the store"):
        TeacherStore(tmp_path).load(teacher_spec(cfg), 1, load_data(cfg.data), torch.device("cpu"))


def key(store: Path, overrides: list[str], **teacher: Any) -> str:
    return store_key(teacher_spec(config(store, overrides, **teacher)))


SAME_TEACHER = [
    ["run.device=cuda"],
    ["data.dir=/elsewhere"],
    ["run.teacher_store=/other/store"],
    ["run.eval_batch_size=7"],
    ["run.seed=5"],
    ["run.epochs=3"],
    ["run.batch_size=32"],
    ["model.name=cnn_small"],
    ["method.alpha=0.1"],
    ["method.temperature=2"],
    ["optim.lr=0.5"],
    ["teacher.epoch=1"],
    ["teacher.save_epochs=[1]"],
]
OTHER_TEACHER = [
    ["teacher.epochs=3"],
    ["teacher.seed=1"],
    ["teacher.model=cnn_small"],
    ["teacher.batch_size=32"],
    ["teacher.optim.lr=0.01"],
    ["teacher.schedule.name=cosine"],
    ["data.name=synthetic"],
    ["data.split_seed=3"],
    ["data.val_fraction=0.2"],
]


@pytest.mark.parametrize("overrides", SAME_TEACHER, ids=lambda o: o[0])
def test_key_ignores_what_does_not_change_the_teacher(tmp_path: Path, overrides: list[str]) -> None:
    assert key(tmp_path, overrides) == key(tmp_path, [])


@pytest.mark.parametrize("overrides", OTHER_TEACHER, ids=lambda o: o[0])
def test_key_changes_with_what_the_teacher_learns_from(
    tmp_path: Path, overrides: list[str]
) -> None:
    assert key(tmp_path, overrides) != key(tmp_path, [])


CONCURRENT = """
import json, sys, time
from pathlib import Path
from distill_core import fit, make_config

tree, markers, me = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(markers / f"ready{me}").touch()
deadline = time.time() + 60
while len(list(markers.glob("ready*"))) < 2 and time.time() < deadline:  # start fit() together
    time.sleep(0.005)
lines = []
result = fit(make_config(tree), log=lines.append)
print(json.dumps({"log": lines, "final": result.final}))
"""


def test_two_processes_train_the_teacher_once(tmp_path: Path) -> None:
    store, markers = tmp_path / "store", tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "ask.py"
    script.write_text(CONCURRENT)
    spec = json.dumps(tree(store, epochs=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [PYTHON, str(script), spec, str(markers), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(trained(r["log"]) for r in results) == 1
    assert results[0]["final"]["teacher_val_acc"] == results[1]["final"]["teacher_val_acc"]
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == [
        *(f"epoch_{e:04d}.pt" for e in range(1, 5)),
        "meta.json",
    ]


def test_a_diverged_teacher_is_reported_as_such(tmp_path: Path) -> None:
    diverging = {"optim": {"lr": 10.0, "momentum": 0.9, "weight_decay": 0.0}, "batch_size": 32}
    cfg = config(tmp_path, ["data.name=synthetic"], **diverging)
    message = r"diverged \(non-finite loss\) before epoch 2 \(saved: none\); lower teacher.optim.lr"
    with pytest.raises(TeacherError, match=message):
        run(cfg)
    assert TeacherStore(tmp_path).meta(teacher_spec(cfg))["status"] == "diverged"
    notes: list[str] = []
    with pytest.raises(TeacherError, match="diverged"):
        fit(cfg, log=notes.append)
    assert trained(notes) == 0  # stored as diverged: not retrained on every request
