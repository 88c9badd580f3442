#!/usr/bin/env bash
# The quality protocol (bench/quality/study.py, docs/quality.md) on a GPU, in parts that each fit one device call
# (10 minutes), from the repository root:
#
#   bash bench/gpu/quality.sh OUT_DIR 512     # about 8 minutes on an H200
#   bash bench/gpu/quality.sh OUT_DIR 1024    # about 9 minutes
#
# Each part trains PHOTON (default [4,4], and with a token look-back) and the FLOP-matched Llama of one width on the
# same bytes, batch 32 x 512, bf16 autocast, every model at each learning rate of its sweep (picked on the selection
# split), then writes the report (table, JSON, frontier plot). Width 512 is the trend run: 1000 steps (16.4M tokens)
# with a held-out point every 61 steps (1M tokens), look-back 8 and 32 included, and `trend` writes the curves and
# the ratio-against-tokens plot (OUT_DIR/trend.*), to set beside bench/quality/results/cpu-trend.png. Runs already
# in OUT_DIR/runs.jsonl are skipped, so a part cut short by the time limit resumes where it stopped.
set -u
out=${1:-${OUT:-bench/quality/results/gpu}}
width=${2:-512}
mkdir -p "$out"
log="$out/quality.log"
source "$(dirname "$0")/env.sh"

study() { timeout "$1" python -m bench.quality.study sweep --widths "$width" --batch 32 --results "$out/runs.jsonl" \
    "${@:2}" >>"$log" 2>&1; stamp "exit $?"; }
if [ "$width" = 512 ]; then
    stamp "width 512: PHOTON and Llama to 16M tokens, a point every 1M"
    study 120 --steps 1000 --eval-every 61 --models llama --lrs 1e-3 2e-3
    study 150 --steps 1000 --eval-every 61 --models photon --lrs 2.5e-4 5e-4
    study 150 --steps 1000 --eval-every 61 --models photon --lrs 5e-4 1e-3 --photon decoder_lookback=8
    study 90 --steps 1000 --eval-every 61 --models photon --lrs 5e-4 --photon decoder_lookback=32
    python -m bench.quality.study trend --results "$out/runs.jsonl" --out "$out/trend" >>"$log" 2>&1
    stamp "trend exit $?"
else
    stamp "width $width: PHOTON and Llama, learning-rate sweeps"
    study 240 --steps 1000 --models photon --lrs 1.25e-4 2.5e-4 5e-4
    study 150 --steps 1000 --models llama --lrs 5e-4 1e-3 2e-3
    study 120 --steps 1000 --models photon --lrs 2.5e-4 --photon decoder_lookback=16
fi
python -m bench.quality.study report --results "$out/runs.jsonl" >>"$log" 2>&1
stamp "report exit $?"
tail -n 30 "$log"
