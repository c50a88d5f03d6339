"""Output folders that never overwrite someone else's files by accident."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distill_core import UserError


def prepare_out(out: Path, ours: Callable[[Path], bool], *, force: bool) -> Path:
    """Create ``out``; refuse a folder holding files ``ours`` does not recognise, unless ``force``.

    Files of an earlier report or export (``ours``) are simply overwritten, so re-running is safe.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    others = sorted(p.name for p in out.iterdir() if not ours(p)) if out.is_dir() else []
    if others and not force:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"--out {out} already holds other files ({shown}); pick an empty folder or add --force"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
