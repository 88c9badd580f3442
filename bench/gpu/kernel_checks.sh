#!/usr/bin/env bash
# The kernels' GPU checks in one short run: the gpu-marked kernel tests, then the kernel benchmark (600M shapes, bf16).
#
#   bash bench/gpu/kernel_checks.sh [OUT_DIR] [BENCH_BUDGET_S]      # from the repository root
#
# Writes OUT_DIR/gpu_tests.txt, OUT_DIR/bench_kernels.json and OUT_DIR/kernel_checks.log; the benchmark's markdown
# table is printed last.
set -u
out=${1:-${OUT:-bench/kernels/results/gpu}}
budget=${2:-150}
mkdir -p "$out"
log="$out/kernel_checks.log"
source "$(dirname "$0")/env.sh"

start=$(date +%s)
stamp "gpu kernel tests"
timeout 300 python -m pytest -m gpu tests/test_kernels_gpu.py -q -rA --durations=8 -p no:cacheprovider \
    2>&1 | tee "$out/gpu_tests.txt" | tail -n 40
stamp "gpu tests: $(( $(date +%s) - start )) s"

timeout $(( ${budget%.*} + 90 )) python -m bench.kernels.bench_kernels --budget-s "$budget" --out "$out/bench_kernels.json"
stamp "total: $(( $(date +%s) - start )) s"
