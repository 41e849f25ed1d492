#!/usr/bin/env bash
# The GPU check of issue 6 as one command, on a machine with CUDA and the runtime
# dependencies installed (no network needed):
#     OUT=/tmp/gpu bash benchmarks/run_gpu.sh
# Runs the CUDA tests, then the batch-1024 benchmarks on the GPU and on the CPU (for the
# speed-up ratio); everything is written under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
python -m pip install --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -m pytest -q -m cuda tests 2>&1 | tee "$OUT/cuda-tests.txt"
python -m pytest benchmarks/test_bench_gpu.py --benchmark-only -q \
    --benchmark-json="$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt"
