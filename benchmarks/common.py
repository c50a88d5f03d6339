"""What every benchmark shares: options, thread control, machine info, result rows, the JSON file.

Needs only the standard library and torch, so that ``benchmarks/gpu.py`` runs where the project's
other dependencies are missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import operator
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from benchmarks.report import RESULTS, render

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --threads, --out."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="a tiny version: a sanity check, not a measurement"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: $OMP_NUM_THREADS, else every CPU core)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    return p


class Start(NamedTuple):
    """A benchmark's thread count, start time and machine, fixed before it measures anything."""

    threads: int
    time: float
    machine: dict[str, Any]


def start(threads: int | None) -> Start:
    """Set the threads (``set_threads``) and note the time and the machine."""
    n = set_threads(threads)
    return Start(n, time.perf_counter(), machine())


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op threads (explicitly, so that every number says what it ran on)."""
    n = threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def compare(
    case: str,
    unit: str,
    value: float,
    baseline: float,
    *,
    value_label: str,
    baseline_label: str,
    target: tuple[str, str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row: ``value`` against ``baseline`` measured in the same run, their ratio, the target.

    ``target`` is ``(field, op, limit)``, e.g. ``("ratio", ">=", 1.5)``; ``field`` names ``ratio``,
    ``value`` or a key of ``extra``. Rows without a target report and do not judge.
    """
    row: dict[str, Any] = {
        "case": case,
        "unit": unit,
        "value": value,
        "value_label": value_label,
        "baseline": baseline,
        "baseline_label": baseline_label,
        "ratio": value / baseline,
        **extra,
        "target": None,
        "pass": None,
    }
    if target is not None:
        field, op, limit = target
        row["target"] = f"{field} {op} {limit:.3g}"
        row["pass"] = bool(OPS[op](row[field], limit))
    return row


def write(
    args: argparse.Namespace,
    name: str,
    doc: str | None,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    start: Start,
) -> Path:
    """Write ``args.out/<name>.json`` (title: the first line of ``doc``; machine, settings, rows,
    peak RSS, wall time) and regenerate the table."""
    out, quick, title = args.out, args.quick, (doc or name).splitlines()[0]

    bad = [r["case"] for r in rows for k in ("value", "baseline") if not math.isfinite(r[k])]
    if bad:
        raise RuntimeError(f"{name}: non-finite measurements in {bad}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    record = {
        "benchmark": name,
        "title": title,
        "quick": quick,
        "machine": start.machine,
        "settings": settings,
        "rows": rows,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": time.perf_counter() - start.time,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        print(
            f"{name}: {r['case']}: {r['value']:.4g} vs {r['baseline']:.4g} {r['unit']}, "
            f"ratio {r['ratio']:.3f} {r['target'] or ''} {verdict}",
            flush=True,
        )
    render(out)
    return path
