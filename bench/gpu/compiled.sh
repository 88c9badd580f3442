#!/usr/bin/env bash
# The compiled decode step on a GPU, in time-boxed parts that each fit one device call (10 minutes), from the
# repository root:
#
#   bash bench/gpu/compiled.sh OUT_DIR latency      # about 9 minutes on an H200
#   bash bench/gpu/compiled.sh OUT_DIR throughput auto    # about 9 minutes
#   bash bench/gpu/compiled.sh OUT_DIR throughput eager   # about 9 minutes
#
# latency:    1. tests/test_gpu_model.py (gpu marker): exactness on the device, no host sync per decode step, and
#                generate's auto-compile (CUDA graphs) equal to eager decoding token for token with no sync inside a
#                captured step;
#             2. bench/generation/decode_latency.py on the 600M shapes, PHOTON and the same-size Llama in one process: batch-1
#                decode latency per token at 1K, 4K, 16K and 32K context, eager against compiled (PHOTON: its own
#                auto-compile; Llama: static cache + compile), then the compiled decode step profiled at batch 256
#                (GPU busy share).
# throughput: bench/generation/run_generation.py --preset gpu-compiled, --decode auto (PHOTON compiled by generate) or --decode
#             eager (the same code with disable_compile=True), one per call: DE 128/2048 with PHOTON's largest batch
#             searched, PF 2048/128, the batch-256 profile; TPM ratios against the Llama of each run.
# Output: OUT_DIR/compiled.log, OUT_DIR/gpu_model_tests.txt, OUT_DIR/decode_latency.json and the benchmark JSON and
# plots; the last lines of the log are printed. docs/benchmarks.md says where the numbers go.
set -u
out=${1:-${OUT:-bench/gpu/results/compiled}}
part=${2:-latency}
decode=${3:-auto}
mkdir -p "$out"
log="$out/compiled.log"
source "$(dirname "$0")/env.sh"

if [ "$part" = latency ]; then
    gpu_model_tests 150

    stamp "2. decode latency, eager vs compiled, PHOTON vs Llama (600M), then the batch-256 profile"
    timeout 390 python -m bench.generation.decode_latency --contexts 1024 4096 16384 32768 --new-tokens 128 --repeats 5 \
        --shared-cache --profile-batch 256 --profile-context 128 --budget-s 330 --out "$out/decode_latency.json" >>"$log" 2>&1
    stamp "decode latency exit $?"
elif [ "$part" = throughput ]; then
    stamp "DE 128/2048 and PF 2048/128, --decode $decode"
    timeout 580 python -m bench.generation.run_generation --preset gpu-compiled --decode "$decode" --out-dir "$out" \
        >>"$log" 2>&1
    stamp "run_generation --decode $decode exit $?"
else
    echo "unknown part '$part': latency or throughput" | tee -a "$log"
fi

# The tool returns only the tail of the output; the whole log comes back as a file.
tail -n 30 "$log"
