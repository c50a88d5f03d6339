#!/usr/bin/env bash
# The GPU check (issue 16), one prepared script for a machine with a CUDA GPU:
#   1. benchmarks/gpu.py: ResNet-18 images/s of the trainer's fast path (bf16 autocast,
#      channels_last, device-resident batches) vs the fp32 DataLoader loop, torch.compile,
#      four fractional trials on one GPU, peak GPU memory;
#   2. benchmarks/gpu_study.py: the quickstart study with --gpus-per-trial 0.25 vs 1: trials per
#      GPU-hour and how many trials ran at once.
# Both write JSON into benchmarks/results/ (or $OUT/results when $OUT is set) and regenerate
# the table there. Usage, from the repository root:  bash benchmarks/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RESULTS=${OUT:+$OUT/results}
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
[ -f "$RESULTS/README.md" ] || cp benchmarks/results/*.json "$RESULTS"/ 2>/dev/null || true
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
export PYTHONPATH=$PWD
QUICK=()
[ "${1:-}" = "--quick" ] && QUICK=(--quick --trials 8)
status=0
timeout 420 "$PY" -m benchmarks.gpu --out "$RESULTS" ${1:+--steps 30} || status=$?
# needs the project installed (ray, mlflow, optuna); gpu.py needs only torch and numpy
timeout 300 "$PY" -m benchmarks.gpu_study --out "$RESULTS" "${QUICK[@]}" || status=$?
"$PY" -m benchmarks.report --out "$RESULTS"
exit "$status"
