#!/usr/bin/env bash
# What one 15-minute device lease can hold, in two calls run back to back (the machine stays warm between them), from
# the repository root:
#
#   bash bench/gpu/lease.sh OUT_DIR 1    # about 9 minutes: compiled-decode tests, decode latency, quality at width 512
#   bash bench/gpu/lease.sh OUT_DIR 2    # about 5 minutes: DE 128/2048 (largest batch searched) and PF 2048/128,
#                                        # PHOTON compiled by generate's own auto-compile, against the Llama
#
# The full runs, when more device time is lent: bench/gpu/compiled.sh (latency, throughput; eager and compiled) and
# bench/gpu/quality.sh (512, 1024). Part 1 writes gpu_model_tests.txt, decode_latency.json, quality_runs.jsonl and
# lease.log; part 2 the generation JSON and lease.log. Every step has its own time limit and writes as it goes, so
# a step cut short keeps what it measured and the next step still runs.
set -u
out=${1:-${OUT:-bench/gpu/results/lease}}
part=${2:-1}
mkdir -p "$out"
log="$out/lease.log"
source "$(dirname "$0")/env.sh"

if [ "$part" = 1 ]; then
    gpu_model_tests 90

    stamp "2. batch-1 decode latency, eager vs compiled, PHOTON vs Llama (600M), then the batch-256 profile"
    timeout 150 python -m bench.generation.decode_latency --contexts 1024 4096 16384 32768 --new-tokens 64 --repeats 3 \
        --models photon --shared-cache --profile-batch 256 --profile-context 128 --budget-s 110 --out "$out/decode_latency.json" \
        >>"$log" 2>&1
    stamp "decode latency exit $?"

    stamp "3. quality at width 512: PHOTON, PHOTON with a look-back of 8, the FLOP-matched Llama (1000 steps each)"
    study() { timeout "$1" python -m bench.quality.study sweep --widths 512 --batch 32 --steps 1000 --no-agreement \
        --results "$out/quality_runs.jsonl" "${@:2}" >>"$log" 2>&1; stamp "exit $?"; }
    study 130 --models photon --lrs 2.5e-4 5e-4  # 1000 steps: PHOTON about 45 s of training, the Llama 25 s (H200)
    study 80 --models llama --lrs 1e-3 2e-3
    study 75 --models photon --lrs 5e-4 --photon decoder_lookback=8
elif [ "$part" = 2 ]; then
    stamp "DE 128/2048 and PF 2048/128, PHOTON compiled by generate (--decode auto)"
    timeout 300 python -m bench.generation.run_generation --preset gpu-compiled --decode auto --budget-s 260 --out-dir "$out" \
        >>"$log" 2>&1
    stamp "run_generation exit $?"
else
    echo "unknown part '$part': 1 or 2" | tee -a "$log"
fi
# The tool returns only the tail of the output; the whole log comes back as a file.
tail -n 40 "$log"
