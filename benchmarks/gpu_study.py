"""GPU study: the quickstart study with fractional GPUs (--gpus-per-trial 0.25) vs one trial per GPU.

Both studies run ``run_study`` on a local Ray over the quickstart space (30 trials, TPE + ASHA,
MLflow tracking), each from a fresh teacher store, timed whole. Rows: trials per GPU-hour of the
fractional study against the whole-GPU one, and how many trials ran at once (the most child runs
open together in MLflow) against the four that 0.25 GPU each allows. Without a CUDA device it says
so and exits 0 (``benchmarks/gpu_check.sh`` runs it with ``benchmarks/gpu.py`` on a GPU machine).

python -m benchmarks.gpu_study [--quick] [--threads N] [--trials N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from benchmarks import common
from studies.runner import StudyOptions, run_study

FRACTION = 0.25


def study(work: Path, gpus: float, trials: int | None, quick: bool) -> tuple[float, int, int]:
    """(wall seconds, trials, most trials running at once) of one quickstart study."""
    name = f"gpu-{gpus:g}".replace(".", "_")
    options = StudyOptions(
        space="quickstart",
        trials=trials,
        gpus_per_trial=gpus,
        storage=str(work / name),
        tracking_uri=str(work / name / "mlruns"),
        name=name,
        overrides=('data.name="digits"', "run.epochs=5") if quick else (),
    )
    t0 = time.perf_counter()
    result = run_study(options, say=lambda _: None)
    wall = time.perf_counter() - t0
    client = MlflowClient(result.tracking_uri)
    runs = [
        r
        for r in client.search_runs([result.experiment_id], max_results=1000)
        if r.info.run_id != result.parent_run_id
    ]
    events = sorted(
        [(r.info.start_time, 1) for r in runs] + [(r.info.end_time or 0, -1) for r in runs],
        key=lambda e: (e[0], e[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return wall, len(runs), most


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--trials", type=int, default=None, help="trials per study (default: 30)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_study: no CUDA device; nothing measured")
        return 0
    start = common.start(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        shared_s, n, most = study(Path(work), FRACTION, args.trials, args.quick)
        whole_s, n_whole, _ = study(Path(work), 1.0, args.trials, args.quick)
    rows.append(
        common.compare(
            f"quickstart, {n} trials: trials per GPU-hour",
            "trials/GPU-h",
            n / (shared_s / 3600),
            n_whole / (whole_s / 3600),
            value_label=f"--gpus-per-trial {FRACTION}",
            baseline_label="--gpus-per-trial 1",
            target=("ratio", ">=", 1.5),
            shared_wall_s=shared_s,
            whole_wall_s=whole_s,
        )
    )
    rows.append(
        common.compare(
            "trials running at once on one GPU",
            "trials",
            most,
            round(1 / FRACTION),
            value_label="most child runs open together",
            baseline_label=f"1 / {FRACTION}",
        )
    )
    settings = {"threads": start.threads, "gpus_per_trial": FRACTION, "space": "quickstart"}
    common.write(args, "gpu_study", __doc__, rows, settings, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
