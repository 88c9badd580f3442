#!/usr/bin/env bash
# The kernels' GPU checks in one short run: the gpu-marked tests, then the kernel benchmark (600M shapes, bf16).
#
#   bash bench/run_gpu_checks.sh [OUT_DIR] [BENCH_BUDGET_S]      # from the repository root
#
# Writes OUT_DIR/gpu_tests.txt and OUT_DIR/bench_kernels.json; the benchmark's markdown table is printed last.
# Works without installing the package: if photon_kernels is not importable, a PYTHONPATH shim points at the tree.
set -u
out=${1:-${OUT:-.}}
budget=${2:-150}
mkdir -p "$out"
if ! python -c "import photon_kernels, photon_hf" 2>/dev/null; then
    shim=$(mktemp -d)
    ln -s "$PWD/kernels" "$shim/photon_kernels"
    ln -s "$PWD/src/photon_hf" "$shim/photon_hf"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
unset TRITON_INTERPRET
export TRITON_CACHE_AUTOTUNING=1  # Triton versions that know it reuse the tests' autotuning in the benchmark
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

start=$(date +%s)
timeout 300 python -m pytest -m gpu tests/test_kernels_gpu.py -q -rA --durations=8 -p no:cacheprovider \
    2>&1 | tee "$out/gpu_tests.txt" | tail -n 40
echo "gpu tests: $(( $(date +%s) - start )) s"

timeout $(( ${budget%.*} + 90 )) python bench/bench_kernels.py --budget-s "$budget" --out "$out/bench_kernels.json"
echo "total: $(( $(date +%s) - start )) s"
