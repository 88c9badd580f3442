#!/usr/bin/env bash
# Everything that needs a GPU, in one time-boxed run (about 9 minutes on an H100/H200), from the repository root:
#
#   bash bench/gpu/session.sh OUT_DIR
#
# 1. the gpu-marked tests: the model on CUDA (exactness, no host sync per decode step) and every Triton kernel
#    against its reference at the 600M shapes;
# 2. the kernel benchmark (each kernel against the PyTorch path it replaces; training step and prefill of the
#    600M model with and without kernels);
# 3. the generation benchmark, PHOTON against the same-size Llama (gpu-short preset), with the kernels if step 1
#    passed, else on the PyTorch path;
# 4. the quality study (PHOTON against an equal-FLOP Llama, same data, same wall clock).
# Each step has its own time limit and the next one runs whatever happened. Output: OUT_DIR/session.log, the
# kernel JSON, the generation JSON / plots / profile and the quality JSON (at most 8 files).
# The compiled decode step (generate's auto-compile, CUDA graphs) has its own run: bench/gpu/compiled.sh.
set -u
out=${1:-${OUT:-bench/gpu/results/session}}
mkdir -p "$out"
log="$out/session.log"
source "$(dirname "$0")/env.sh"

stamp "1. gpu tests"
timeout 150 python -m pytest -m gpu tests/test_gpu_model.py tests/test_kernels_gpu.py -q -rA -p no:cacheprovider \
    -k "not compiled" --durations=5 >>"$log" 2>&1  # the compiled test runs in bench/gpu/compiled.sh
tests_rc=$?
tail -n 25 "$log"
backend=auto
[ "$tests_rc" = 0 ] || backend=torch
stamp "gpu tests exit $tests_rc: generation and quality use kernel_backend=$backend"

stamp "2. kernel benchmark"
timeout 140 python -m bench.kernels.bench_kernels --budget-s 80 --out "$out/bench_kernels.json" >>"$log" 2>&1
stamp "kernel benchmark exit $?"

stamp "3. generation benchmark"
timeout 200 python -m bench.generation.run_generation --preset gpu-short --budget-s 140 --kernel-backend "$backend" \
    --out-dir "$out" >>"$log" 2>&1
stamp "generation benchmark exit $?"

stamp "4. quality study (bench/gpu/quality.sh has the full protocol)"
timeout 100 python -m bench.quality.study sweep --widths 512 --batch 32 --steps 1000 --no-agreement --models photon llama --lrs 5e-4 1e-3 --results "$out/quality_runs.jsonl" \
    >>"$log" 2>&1
stamp "quality study exit $?"

# The tool returns only the tail of the output; the whole log comes back as a file.
tail -n 70 "$log"
