"""Where a study lives: ``--storage/NAME/`` (Ray Tune's state, trial checkpoints, the study file,
``best_config.yaml``) and the teacher store ``--storage/teachers/`` shared by its studies.

``--storage`` is a local folder or an ``s3://bucket/prefix`` URI (``distill_core.storage``); Ray
Tune reaches the same place through a pyarrow filesystem over the same fsspec one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from upath import UPath

from distill_core import UserError
from distill_core.storage import STUDY_FILE, is_local, location, write_atomic

TEACHERS = "teachers"


@dataclass(frozen=True)
class Layout:
    """The folders and files of study ``name`` under ``storage``."""

    storage: UPath
    name: str

    @property
    def folder(self) -> UPath:
        return self.storage / self.name

    @property
    def study_file(self) -> UPath:
        return self.folder / STUDY_FILE

    @property
    def best_config(self) -> UPath:
        return self.folder / "best_config.yaml"

    @property
    def teacher_store(self) -> UPath:
        return self.storage / TEACHERS

    def exists(self) -> bool:
        return self.study_file.is_file()

    def write_record(self, record: dict[str, Any]) -> None:
        """The study file: its options and MLflow ids, what ``--resume`` reads back."""
        if is_local(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.study_file, json.dumps(record, indent=1).encode())

    def read_record(self) -> dict[str, Any]:
        return json.loads(self.study_file.read_text())

    def tune_storage(self) -> tuple[str, Any]:
        """Tune's ``storage_path`` and ``storage_filesystem`` for this storage (None: local)."""
        if is_local(self.storage):
            return str(self.storage), None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return self.storage.path, PyFileSystem(FSSpecHandler(self.storage.fs))


def storage_root(storage: str) -> UPath:
    return location(storage)


def free_name(space: str, storage: UPath, taken: Any) -> str:
    """``space``, else ``space-2``, ``space-3``, ...: the first name neither a study folder nor
    ``taken(name)`` (an MLflow experiment) uses yet."""
    for n in range(1, 10_000):
        name = space if n == 1 else f"{space}-{n}"
        if not (storage / name).exists() and not taken(name):
            return name
    raise UserError(f"too many studies named {space}-N in {storage}; pass --name")


def latest_name(space: str, storage: UPath) -> str | None:
    """The most recent study of ``space`` in ``storage`` (for ``--resume`` without ``--name``)."""
    found = [p for p in storage.glob(f"{space}*/{STUDY_FILE}")]
    found = [
        p
        for p in found
        if p.parent.name == space or p.parent.name.removeprefix(f"{space}-").isdigit()
    ]
    return max(found, key=lambda p: p.stat().st_mtime).parent.name if found else None
