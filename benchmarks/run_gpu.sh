#!/usr/bin/env bash
# The GPU check of issue 21 as one command, on a machine with CUDA, torch and the runtime
# and test dependencies installed (no network needed):
#     OUT=/tmp/gpu bash benchmarks/run_gpu.sh
# Stages: the CUDA tests, the whole default suite on that machine, the batch-1024
# benchmarks on the GPU and on the same machine's CPU (all its cores), a CUDA kernel
# profile of each benchmark case, `rgbench variance --dist kruskal --device cuda`, and
# 300 steps of `rgbench train listops --scale paper --device cuda`. Every stage runs even
# if an earlier one fails; each one's output is packed into $OUT/results.tgz as soon as it
# ends, and $OUT/log.txt holds the tail of each.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
work=$(mktemp -d)
log="$OUT/log.txt"
export PYTHONUNBUFFERED=1
stage() {  # stage NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name: $*" | tee -a "$log"
    start=$(date +%s)
    timeout "$limit" "$@" >"$work/$name.txt" 2>&1
    rc=$?
    tail -n 30 "$work/$name.txt" >>"$log"
    echo "=== $name: rc=$rc, $(($(date +%s) - start)) s" | tee -a "$log"
    tar czf "$OUT/results.tgz" -C "$work" .
}
stage environment 60 bash -c 'nvidia-smi; nproc; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
stage install 120 python -m pip install --no-deps --no-build-isolation -e .
stage cuda-tests 150 python -m pytest -q -p no:cacheprovider -m cuda -rfEs tests
stage suite 240 python -m pytest -q -p no:cacheprovider -rfE -x tests
threads=$(nproc)
stage bench 240 env RGBENCH_BENCH_THREADS="$threads" python -m pytest -q -p no:cacheprovider \
    benchmarks/test_bench_gpu.py --benchmark-only --benchmark-json="$work/bench-gpu.json" \
    --benchmark-columns=min,median,max,rounds
stage profile 120 python -m benchmarks.profile_gpu
stage variance 240 rgbench variance --dist kruskal --device cuda --no-figures --out "$work/variance-kruskal-cuda"
stage listops 300 rgbench train listops --estimator t-loo --scale paper --device cuda --steps 300 --quiet \
    --cache "$work/cache" --out "$work/listops-paper-cuda"
rm -rf "$work/cache"
tar czf "$OUT/results.tgz" -C "$work" .
