#!/usr/bin/env bash
# PHOTON in vLLM on CUDA, in one device call (at most 9 minutes), from the repository root:
#
#   bash bench/gpu/vllm.sh OUT_DIR
#
# The 600M shapes in bf16 (../shared/BENCH.md, "Serving in vLLM"; the one-character tokenizer of bench/serving, so
# the vocabulary is 259): PHOTON (photon_hf.vllm) and the same-size Llama in the same vLLM build, the same KV budget
# (--gpu-memory-utilization) and max_model_len 2048: vLLM's maximum concurrency, then 32, 128 and 512 concurrent
# streaming clients through vLLM's OpenAI server (output tokens/s, time to first token, per-token latency), the
# 2K-prompt chunked prefill (256-token chunks against one unsplit prefill) and the profile. Output: OUT_DIR/vllm.log
# and OUT_DIR/vllm_gpu.json (+ .md, .png). Target: served tokens/s per GiB of cache a request holds, PHOTON / Llama,
# at least the static-batch TPM ratio of docs/benchmarks.md.
#
# Needs vLLM (0.32) importable by the machine's python3 with its CUDA torch: the lent device machines have no vLLM
# in their image, cannot download, and vLLM's wheel (about 340 MB) is larger than what a device call may carry
# (64 MiB); so this runs on a GPU machine where `pip install vllm==0.32.*` works (docs/vllm.md, "GPU").
set -u
out=${1:-${OUT:-bench/vllm/results/gpu}}
mkdir -p "$out"
log="$out/vllm.log"
source "$(dirname "$0")/env.sh"
if ! python -c "import vllm" >>"$log" 2>&1; then
    stamp "vLLM is not importable here: pip install 'vllm==0.32.*' (docs/vllm.md, GPU); nothing measured"
    exit 2
fi
python -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tee -a "$log"

stamp "vllm: concurrency, 32/128/512 clients, chunked prefill, profile (600M, bf16, max_model_len 2048)"
timeout 540 python -m bench.vllm.run_vllm --device cuda --size photon-600m --dtype bfloat16 --max-model-len 2048 \
    --gpu-memory-utilization 0.6 --clients 32 128 512 --requests-per-client 1 --prompt-tokens 128 512 \
    --new-tokens 128 --skip photon-serve --output "$out/vllm_gpu.json" >>"$log" 2>&1
stamp "run_vllm exit $?"
tail -n 20 "$log"
