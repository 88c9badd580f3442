#!/usr/bin/env bash
# Serving on a GPU, in one device call (about 9 minutes), from the repository root:
#
#   bash bench/gpu/serving.sh OUT_DIR
#
# The 600M shapes in bf16 (../shared/BENCH.md, "Serving"): 128 concurrent streaming clients (prompts of 128-512
# tokens, 128 new tokens each) against `photon-hf serve` (continuous batching, the decode step compiled by default
# on CUDA) and against the same-size Llama under `transformers serve --continuous-batching` (stock paged attention),
# in the same run; then the aligned against mixed-phase decode step of a 256-row pool. Output:
# OUT_DIR/serving.log and OUT_DIR/serving_gpu.json (+ .png). Target: the served TPM ratio (tokens/s per GiB a
# request holds, PHOTON / Llama) at least the static-batch one of docs/benchmarks.md.
set -u
out=${1:-${OUT:-bench/serving/results/gpu}}
mkdir -p "$out"
log="$out/serving.log"
source "$(dirname "$0")/env.sh"
python -c "import fastapi, uvicorn, openai" 2>/dev/null || pip install -q "transformers[serving]" >>"$log" 2>&1

stamp "serving: photon-cb and llama-cb, 128 clients, then aligned vs mixed phases at 256 rows"
timeout 540 python -m bench.serving.run_serving --device cuda --dtype bfloat16 --size photon-600m --clients 128 \
    --prompt-tokens 128 512 --new-tokens 128 --max-cache-len 1024 --arrival-window 2 --threads 8 \
    --servers photon-cb llama-cb --phases --phase-rows 256 --phase-steps 64 --output "$out/serving_gpu.json" \
    >>"$log" 2>&1
stamp "run_serving exit $?"
tail -n 12 "$log"
