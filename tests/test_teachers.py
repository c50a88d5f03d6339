"""The teacher store: content-hash keys, train once, saved epochs, checksums, concurrent requests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from distill_core import TeacherError, UserError, fit, fit_epochs, load_data, make_config
from distill_core.config import Config, ConfigError
from distill_core.teachers import TeacherStore, required_teachers, store_key, teacher_spec

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


def files(folder: Path) -> list[str]:
    """The entry's files (not its folders, e.g. a logits cache), temp files included."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        name: ((folder / name).stat().st_mtime_ns, sha256(folder / name)) for name in files(folder)
    }


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the default 2-epoch teacher, trained once for this module."""
    root = tmp_path_factory.mktemp("store")
    TeacherStore(root).ensure(teacher_spec(config(root)), train=fit_epochs)
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
    assert files(folder) == [
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
def test_corrupted_checkpoint_is_reported_and_retrained(store: Path, damage: str) -> None:
    cfg = config(store)
    spec = teacher_spec(cfg)
    teachers = TeacherStore(store)
    ckpt = teachers.path(spec) / "epoch_0002.pt"
    good = sha256(ckpt)
    if damage == "flip":
        flip_bytes(ckpt, ckpt.stat().st_size // 2)
    elif damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:-10])
    else:
        ckpt.unlink()
    damaged = sha256(ckpt) if ckpt.exists() else None
    # Loading it directly is refused ...
    with pytest.raises(TeacherError, match="epoch_0002.pt is missing or corrupted"):
        teachers.load(spec, 2, load_data(cfg.data), torch.device("cpu"))
    # ... and a run reports it, retrains the entry and distils from the fresh checkpoint.
    final, lines = run(cfg)
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert str(ckpt) in warning and "corrupted (checksum mismatch); retraining" in warning
    assert trained(lines) == 1
    meta = teachers.meta(spec)
    assert meta is not None and sha256(ckpt) == meta["epochs"]["2"]["sha256"] != damaged
    assert sha256(ckpt) == good  # training is deterministic: the checkpoint is as first written
    assert final["teacher_val_acc"] == pytest.approx(meta["epochs"]["2"]["val_acc"], abs=1e-7)
    assert trained(run(cfg)[1]) == 0  # repaired: not retrained again


def test_unreadable_meta_is_retrained(store: Path) -> None:
    cfg = config(store)
    meta = TeacherStore(store).path(teacher_spec(cfg)) / "meta.json"
    meta.write_text(meta.read_text()[:20])
    _, lines = run(cfg)
    assert trained(lines) == 1 and json.loads(meta.read_text())["status"] == "completed"


def test_unwritable_store_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = config(blocker / "teachers")
    with pytest.raises(UserError, match=r"is a file; set run.teacher_store to a writable folder"):
        TeacherStore(cfg.run.teacher_store).check(cfg)
    with pytest.raises(
        TeacherError, match="cannot write the teacher store .*set run.teacher_store"
    ):
        run(cfg)
    assert blocker.read_text() == "not a folder"


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

tree, markers, me, n = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(markers / f"ready{me}").touch()
deadline = time.time() + 60
while len(list(markers.glob("ready*"))) < n and time.time() < deadline:  # start fit() together
    time.sleep(0.005)
lines = []
result = fit(make_config(tree), log=lines.append)
print(json.dumps({"log": lines, "final": result.final}))
"""


def spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [PYTHON, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_three_processes_train_the_teacher_once(tmp_path: Path) -> None:
    store, markers = tmp_path / "store", tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "ask.py"
    script.write_text(CONCURRENT)
    spec = json.dumps(tree(store, epochs=4))
    procs = [spawn(script, spec, str(markers), str(i), "3") for i in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [trained(r["log"]) for r in results].count(1) == 1
    assert sum(trained(r["log"]) for r in results) == 1
    assert len({r["final"]["teacher_val_acc"] for r in results}) == 1
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    assert files(folder) == [
        *(f"epoch_{e:04d}.pt" for e in range(1, 5)),
        "meta.json",
    ]


KILLED = """
import json, sys, time
from pathlib import Path
from distill_core import fit_epochs, make_config
from distill_core.teachers import TeacherStore, teacher_spec

cfg = make_config(json.loads(sys.argv[1]))

def log(line):
    print(line, flush=True)
    if line.startswith("  teacher epoch 2:"):  # epoch 1 is saved, epoch 2 is about to be
        time.sleep(600)

TeacherStore(cfg.run.teacher_store).ensure(teacher_spec(cfg), train=fit_epochs, log=log)
"""


def test_a_run_killed_mid_training_leaves_nothing_a_later_run_loads(tmp_path: Path) -> None:
    from filelock import FileLock

    store = tmp_path / "store"
    cfg = config(store, epochs=3)
    spec = teacher_spec(cfg)
    folder = TeacherStore(store).path(spec)
    script = tmp_path / "train.py"
    script.write_text(KILLED)
    proc = spawn(script, json.dumps(tree(store, epochs=3)))
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("  teacher epoch 2:"):
                break
        assert (folder / "epoch_0001.pt").is_file()
    finally:
        proc.kill()  # SIGKILL: no finally blocks, no cleanup
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # What a kill inside torch.save leaves: a half-written temp file beside the finished ones.
    (folder / ".epoch_0002.pt.k1ll3d").write_bytes(b"PK\x03\x04 half")
    assert not (folder / "meta.json").exists()  # so the entry is not stored
    assert TeacherStore(store).meta(spec) is None
    with pytest.raises(TeacherError, match="is not in the store"):
        TeacherStore(store).load(spec, 1, load_data(cfg.data), torch.device("cpu"))
    lock = FileLock(str(folder) + ".lock")
    lock.acquire(timeout=5)  # the OS released the dead process's lock
    lock.release()

    final, lines = run(cfg)
    assert trained(lines) == 1  # trained again from scratch, not resumed from a dead run's files
    meta = TeacherStore(store).meta(spec)
    assert meta is not None and meta["status"] == "completed"
    assert files(folder) == [
        "epoch_0001.pt",
        "epoch_0002.pt",
        "epoch_0003.pt",
        "meta.json",
    ]
    for entry in meta["epochs"].values():
        assert sha256(folder / entry["file"]) == entry["sha256"]
    assert final["teacher_val_acc"] == pytest.approx(meta["epochs"]["3"]["val_acc"], abs=1e-7)


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


def test_teacher_pretrained_and_freeze_train_the_teacher_and_key_it_by_content(
    tmp_path: Path,
) -> None:
    from distill_core.models import build_model

    torch.manual_seed(0)
    weights = build_model("mlp", 1, 10, 8).state_dict()
    torch.save(weights, tmp_path / "a.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "b.pt")
    store = tmp_path / "store"
    cfg = config(store, pretrained=str(tmp_path / "a.pt"), freeze=True)
    spec = teacher_spec(cfg)
    assert (spec.model.pretrained, spec.model.freeze) == (str(tmp_path / "a.pt"), True)
    same_file = store_key(
        teacher_spec(config(store, pretrained=str(tmp_path / "b.pt"), freeze=True))
    )
    assert store_key(spec) == same_file  # weights are named by content, not by path
    assert store_key(spec) != store_key(
        teacher_spec(config(store, pretrained=str(tmp_path / "a.pt")))
    )
    assert store_key(spec) != key(store, [])
    torch.save({k: v + 1 for k, v in weights.items()}, tmp_path / "b.pt")
    other = store_key(teacher_spec(config(store, pretrained=str(tmp_path / "b.pt"), freeze=True)))
    assert other != same_file

    _, lines = run(cfg)
    assert trained(lines) == 1
    folder = TeacherStore(store).path(spec)
    stored = torch.load(folder / "epoch_0002.pt", weights_only=True)
    assert all(torch.equal(stored[k], weights[k]) for k in ("1.weight", "3.bias"))  # frozen
    assert not torch.equal(stored["5.weight"], weights["5.weight"])  # the head learned


def test_a_missing_teacher_weights_file_names_teacher_pretrained(tmp_path: Path) -> None:
    cfg = config(tmp_path, pretrained=str(tmp_path / "none.pt"))
    with pytest.raises(
        ConfigError, match="teacher.pretrained: weights file .*none.pt does not exist"
    ):
        run(cfg)


def test_a_shortened_teacher_is_its_own_entry_trained_to_completion(tmp_path: Path) -> None:
    schedule = {"name": "step", "milestones": [2, 4], "warmup_epochs": 0}
    snapshot = config(tmp_path, epochs=6, epoch=3, schedule=schedule)
    shortened = config(tmp_path, epochs=6, epoch=3, schedule=schedule, early_stop="shortened")
    (short,) = required_teachers(shortened)
    (snap,) = required_teachers(snapshot)
    assert (short.epoch, short.save_epochs, short.spec.run.epochs) == (3, [3], 3)
    assert short.spec.schedule.milestones == [1, 2]  # 2 and 4 of 6 epochs, scaled to 3
    assert (snap.epoch, snap.spec.run.epochs, snap.spec.schedule.milestones) == (3, 6, [2, 4])
    assert store_key(short.spec) != store_key(snap.spec)
    # Not early (teacher.epoch is the last): both kinds are the same full run.
    full = config(tmp_path, epochs=6, schedule=schedule, early_stop="shortened")
    assert store_key(teacher_spec(full)) == store_key(snap.spec)

    final, lines = run(config(tmp_path, epochs=3, epoch=1, early_stop="shortened"))
    assert trained(lines) == 1
    meta = TeacherStore(tmp_path).entries()[0]
    assert meta["config"]["run"]["epochs"] == 1 and list(meta["epochs"]) == ["1"]
    assert final["teacher_val_acc"] == pytest.approx(meta["final"]["val_acc"], abs=1e-7)


@pytest.mark.parametrize(("tasks", "gpu", "cpus"), [(1, 0, 2), (2, 0, 1), (3, 0, 1), (1, 0.5, 1)])
def test_teacher_tasks_share_the_idle_cpus(
    ray_session: str, tasks: int, gpu: float, cpus: float
) -> None:
    """Before any trial runs, fewer teachers than CPUs get them all (the session Ray has 2)."""
    from studies.teachers import _cpus_each

    assert _cpus_each(tasks, {"cpu": 1, "gpu": gpu}) == cpus
