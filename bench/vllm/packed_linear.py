"""What `PackedLinear` (photon_hf.vllm) saves: one linear layer's product through `F.linear` (oneDNN, the weight
packed again at every call) against vLLM's `onednn_mm` with the weight packed once, at the row counts a decode step
brings, for the `base` preset's shapes. Run it in the vLLM environment (docs/vllm.md):

    python -m bench.vllm.packed_linear --output bench/vllm/results/packed-linear-bf16.json

Each figure is the median of `--repeats` timed batches of `--calls` calls, after a warm-up; every pair is also
checked bit for bit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from photon_hf.vllm.model import PackedLinear

SHAPES = [(256, 256), (256, 768), (768, 256)]  # the base preset's q/k/v/o, gate/up, down
ROWS = [1, 4, 8, 32, 256]


def _microseconds(fn, calls: int, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows_out = []
    with torch.inference_mode():
        for features in SHAPES:
            linear = nn.Linear(*features, bias=False).to(dtype)
            packed = PackedLinear(linear, keep_weight=False)
            for rows in ROWS:
                x = torch.randn(rows, features[0], dtype=dtype)
                plain_us = _microseconds(lambda linear=linear, x=x: linear(x), args.calls, args.repeats)
                packed_us = _microseconds(lambda packed=packed, x=x: packed(x), args.calls, args.repeats)
                rows_out.append(dict(in_features=features[0], out_features=features[1], rows=rows, f_linear_us=plain_us,
                                     packed_us=packed_us, bit_equal=torch.equal(linear(x), packed(x))))
                print(f"{features[0]:5d} -> {features[1]:5d}, {rows:4d} rows: F.linear {plain_us:7.1f} us, "
                      f"packed {packed_us:7.1f} us, bit-equal {rows_out[-1]['bit_equal']}", flush=True)
    result = dict(dtype=args.dtype, threads=args.threads, machine=platform.processor() or platform.machine(),
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"), products=rows_out)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
