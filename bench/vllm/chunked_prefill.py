"""Chunked prefill at the model level: what `PhotonModel.extend` costs for a prompt continued chunk by chunk, against
one unsplit prefill and against the floor of fresh prefills of the same chunk size (no vLLM needed).

    python -m bench.vllm.chunked_prefill --size base --dtype bfloat16
    python -m bench.vllm.chunked_prefill --size photon-600m --dtype bfloat16 --repeats 3

Each figure is the median of `--repeats` timed runs after one warm-up, on one request's row of a `PhotonCache` view
over per-request state sized for `--max-model-len` (as vLLM holds it, `photon_hf.vllm`):

- unsplit: the whole prompt in one `extend` call (a fresh request);
- chunked: the prompt in `--chunk`-token calls, each continuing the row (what vLLM's chunked prefill does);
- fresh chunk: one `--chunk`-token prompt from an empty row; the floor of any chunked scheme is the number of chunks
  times this;
- continued chunk: the last chunk of the prompt, continuing a row that holds all before it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from photon_hf import PhotonForCausalLM, photon_preset
from photon_hf.attention_photon import photon_ops
from photon_hf.cache_photon import PhotonCache


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: str, dtype: torch.dtype, prompt_tokens: int, chunk: int, max_model_len: int, repeats: int,
            seed: int = 0) -> dict:
    config = photon_preset(size)
    torch.manual_seed(seed)
    model = PhotonForCausalLM(config).eval().to(dtype)
    states = {name: torch.zeros((2, *shape), dtype=item)
              for name, shape, item in PhotonCache.state_layout(config, max_model_len, dtype)}
    cache = PhotonCache.over_states(config, max_model_len, states)
    ops = photon_ops(config, torch.device("cpu"), dtype)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_tokens))
    row = torch.tensor([1])
    starts = list(range(0, prompt_tokens, chunk))

    def run(first: int, length: int):
        return model.model.extend(cache, row, [first], prompt[:, first:first + length], [length], ops)

    def chunked():
        for first in starts:
            hidden = run(first, min(chunk, prompt_tokens - first))
        return hidden

    with torch.inference_mode():
        difference = (run(0, prompt_tokens).float() - chunked().float()).abs().max().item()
        unsplit = _median_seconds(lambda: run(0, prompt_tokens), repeats)
        split = _median_seconds(chunked, repeats)
        fresh = _median_seconds(lambda: run(0, chunk), repeats)
        chunked()  # the row holds the whole prompt again: its last chunk can be continued
        last = starts[-1]
        continued = _median_seconds(lambda: run(last, prompt_tokens - last), repeats)
    return dict(size=size, dtype=str(dtype).removeprefix("torch."), prompt_tokens=prompt_tokens, chunk=chunk,
                chunks=len(starts), unsplit_s=unsplit, chunked_s=split, ratio=split / unsplit, fresh_chunk_s=fresh,
                floor_ratio=len(starts) * fresh / unsplit, continued_chunk_s=continued,
                continued_tokens=prompt_tokens - last, max_state_difference=difference)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", help="PHOTON preset (default: base)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt-tokens", type=int, default=2040)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.size, getattr(torch, args.dtype), args.prompt_tokens, args.chunk, args.max_model_len,
                     args.repeats)
    result.update(machine=platform.processor() or platform.machine(), threads=args.threads,
                  date=time.strftime("%Y-%m-%d %H:%M"))
    print(f"{args.size} ({args.dtype}, {args.threads} threads), a {args.prompt_tokens}-token prompt:")
    print(f"  unsplit prefill           {result['unsplit_s'] * 1e3:8.1f} ms")
    print(f"  in {args.chunk}-token chunks       {result['chunked_s'] * 1e3:8.1f} ms  ({result['ratio']:.2f}x)")
    print(f"  fresh {args.chunk}-token prefill   {result['fresh_chunk_s'] * 1e3:8.1f} ms  "
          f"(x {result['chunks']} = {result['floor_ratio']:.2f}x the unsplit: the floor)")
    print(f"  continued last chunk      {result['continued_chunk_s'] * 1e3:8.1f} ms  "
          f"({result['continued_tokens']} tokens)")
    print(f"  largest difference of the last state, chunked vs unsplit: {result['max_state_difference']:.3g}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
