"""Where a study lives: ``--storage/NAME/`` (Ray Tune's state, trial checkpoints, the study file,
``best_config.yaml``) and the teacher store ``--storage/teachers/`` shared by its studies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core import UserError

STUDY_FILE = "distill_study.json"
TEACHERS = "teachers"


@dataclass(frozen=True)
class Layout:
    """The folders and files of study ``name`` under ``storage``."""

    storage: Path
    name: str

    @property
    def folder(self) -> Path:
        return self.storage / self.name

    @property
    def study_file(self) -> Path:
        return self.folder / STUDY_FILE

    @property
    def best_config(self) -> Path:
        return self.folder / "best_config.yaml"

    @property
    def teacher_store(self) -> Path:
        return self.storage / TEACHERS

    def exists(self) -> bool:
        return self.study_file.is_file()

    def write_record(self, record: dict[str, Any]) -> None:
        """The study file: its options and MLflow ids, what ``--resume`` reads back."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.study_file.write_text(json.dumps(record, indent=1))

    def read_record(self) -> dict[str, Any]:
        return json.loads(self.study_file.read_text())


def storage_root(storage: str) -> Path:
    return Path(storage).expanduser().resolve()


def free_name(space: str, storage: Path, taken: Any) -> str:
    """``space``, else ``space-2``, ``space-3``, ...: the first name neither a study folder nor
    ``taken(name)`` (an MLflow experiment) uses yet."""
    for n in range(1, 10_000):
        name = space if n == 1 else f"{space}-{n}"
        if not (storage / name).exists() and not taken(name):
            return name
    raise UserError(f"too many studies named {space}-N in {storage}; pass --name")


def latest_name(space: str, storage: Path) -> str | None:
    """The most recent study of ``space`` in ``storage`` (for ``--resume`` without ``--name``)."""
    found = [p for p in storage.glob(f"{space}*") if (p / STUDY_FILE).is_file()]
    found = [p for p in found if p.name == space or p.name.removeprefix(f"{space}-").isdigit()]
    return max(found, key=lambda p: (p / STUDY_FILE).stat().st_mtime).name if found else None
