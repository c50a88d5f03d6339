"""Memory: peak RSS of a DML run with 3 peers vs single (scratch) runs of one peer's network.

Every run is a fresh subprocess, so that each peak is its own. Peers are ResNet-18s on
MNIST-5k (cnn_small on digits with --quick), whose weights and optimizer state are large enough
to show. The peak is that of ``fit`` alone: the kernel's high-water mark is reset once torch is
imported and the data loaded (``/proc/self/clear_refs``, Linux), so that data loading's
temporaries do not hide it; ``before fit`` is the resident memory at that point, and
``peak - before fit`` is what training adds.

python -m benchmarks.memory [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import common

PEERS = 3


def _status_mb(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from ``/proc/self/status``, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status: this benchmark needs Linux")


def child(overrides: dict[str, Any]) -> None:
    """In the subprocess: one ``fit`` and its peak RSS, as one JSON line on stdout."""
    from distill_core import fit, load_data, make_config

    cfg = make_config({}, overrides)
    data = load_data(cfg.data)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = _status_mb("VmRSS")
    status = fit(cfg, data=data).status
    print(json.dumps({"status": status, "before_fit_mb": before, "peak_mb": _status_mb("VmHWM")}))


def run(overrides: dict[str, Any], threads: int) -> dict[str, Any]:
    """``child`` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(overrides)]
    out = subprocess.run(
        [*cmd, "--threads", str(threads)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, in a subprocess
    args = p.parse_args(argv)
    start = common.start(args.threads)
    threads = start.threads
    if args.child:
        child(json.loads(args.child))
        return
    base = {
        "data.name": "digits" if args.quick else "mnist5k",
        "data.subset": 256,
        "data.val_fraction": 0.05,
        "model.name": "cnn_small" if args.quick else "resnet18",
        "optim.name": "adamw",
        "optim.lr": 0.005,
        "run.epochs": 1,
        "run.eval_batch_size": 128,  # the training batch: evaluation must not set the peak
        "run.device": "cpu",
        "run.threads": threads,
    }
    peers = run({**base, "method.name": "dml", "method.peers": PEERS}, threads)
    singles = [
        run({**base, "method.name": "scratch", "run.seed": seed}, threads)
        for seed in range(1 if args.quick else PEERS)
    ]
    single = max(singles, key=lambda s: s["peak_mb"])
    rows = [
        common.compare(
            f"DML, {PEERS} peers vs one single run",
            "MiB",
            peers["peak_mb"],
            single["peak_mb"],
            value_label="dml",
            baseline_label="single",
            dml=peers,
            singles=singles,
        ),
        common.compare(
            f"DML, {PEERS} peers vs {PEERS} single runs at once",
            "MiB",
            peers["peak_mb"],
            PEERS * single["peak_mb"],
            value_label="dml",
            baseline_label=f"{PEERS} processes",
        ),
        common.compare(
            "what training adds: peak - before fit",
            "MiB",
            peers["peak_mb"] - peers["before_fit_mb"],
            single["peak_mb"] - single["before_fit_mb"],
            value_label="dml",
            baseline_label="single",
        ),
    ]
    settings = {"threads": threads, "config": base, "single_runs": len(singles)}
    common.write(args, "memory", __doc__, rows, settings, start)


if __name__ == "__main__":
    main()
