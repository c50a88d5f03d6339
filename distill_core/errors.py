"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input; the CLI prints it as one line and exits with code 2."""


class ConfigError(UserError, ValueError):
    """An invalid config value, key or combination."""


class DataError(UserError):
    """A data set that cannot be found or read."""


class TeacherError(UserError):
    """A teacher checkpoint that was never saved or is corrupted."""


def require_writable(folder: str | Path, fix: str) -> None:
    """Raise ``UserError`` (with ``fix``) unless ``folder`` is, or could be created as, a writable folder.

    Creates nothing, so that a check before a run leaves every store as it was.
    """
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create folder {path}: {existing} is a file; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to folder {path}: {existing} is read-only; {fix}")
