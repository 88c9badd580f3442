#!/usr/bin/env python
"""Decode latency per token through stock `generate()`, eager against compiled, PHOTON against the same-size Llama.

For each context length (prompt tokens), model and mode, at batch 1 by default: one untimed warm-up generate (it
compiles), then generate with N and with 2N new tokens, `--repeats` times each; the per-token latency is the median
difference divided by N, so the prefill and generate's fixed costs cancel. Both runs use one `max_cache_len`
(context + 2N), so the compiled runs share their graphs; `--shared-cache` uses one for every context
(the largest + 2N), so each model compiles once.

- PHOTON eager: `disable_compile=True`; PHOTON compiled: generate's own auto-compile (its cache is compileable),
  with `CompileConfig(backend, mode)` (default inductor + "reduce-overhead" = CUDA graphs).
- Llama eager: generate's default dynamic cache; Llama compiled: `cache_implementation="static"` and the same
  `CompileConfig` (transformers' own compiled decoding).

`--profile-batch B` also profiles the compiled decode step at batch B (torch.profiler around generate with 1 and
1 + N tokens; the difference over N is one step): wall time per step, GPU busy time per step (the sum of kernel
times) and kernels per step.

    python -m bench.generation.decode_latency --out lat.json                       # 600M shapes, a GPU
    python -m bench.generation.decode_latency --preset tiny --contexts 16 40 --new-tokens 4 \
        --compile-backend eager                                                     # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, CompileConfig, LlamaConfig

from photon_hf import PhotonConfig, PhotonForCausalLM, photon_preset
from photon_hf.memory import llama_config_for

# The registry's tiny shape with GQA and an odd vocabulary (a CPU smoke test; figures mean nothing there).
TINY = dict(vocab_size=97, num_key_value_heads=2)


def llama_like(config: PhotonConfig, context: int) -> LlamaConfig:
    """The same-shape Llama (`photon_hf.memory.llama_config_for`), with room for `context` positions."""
    return llama_config_for(config, max_position_embeddings=max(context, config.max_position_embeddings),
                            pad_token_id=0, eos_token_id=None)


def compile_config(args) -> CompileConfig:
    config = CompileConfig(backend=args.compile_backend, mode=args.compile_mode)
    if args.device != "cuda":
        config._compile_all_devices = True  # transformers compiles on CUDA only unless told (as its tests do)
    return config


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def generate_kwargs(name: str, mode: str, args, max_cache_len: int) -> dict:
    if mode == "eager":
        return dict(disable_compile=True)
    if name == "photon":
        return dict(compile_config=compile_config(args), max_cache_len=max_cache_len)
    return dict(compile_config=compile_config(args), cache_implementation="static", max_cache_len=max_cache_len)


def timed_generate(model, ids, new_tokens: int, kwargs: dict, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs)
    sync(device)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - start


def latency(model, name: str, mode: str, context: int, args) -> dict:
    """Per-token decode latency (ms) at `args.batch`, from generate with N and 2N new tokens."""
    n = args.new_tokens
    ids = torch.randint(1, model.config.vocab_size, (args.batch, context), device=args.device)
    kwargs = generate_kwargs(name, mode, args, (max(args.contexts) if args.shared_cache else context) + 2 * n)
    start = time.perf_counter()
    timed_generate(model, ids, 2 * n, kwargs, args.device)  # warm-up: compiles, captures, autotunes
    warmup = time.perf_counter() - start
    short, long = [], []
    for _ in range(args.repeats):
        short.append(timed_generate(model, ids, n, kwargs, args.device))
        long.append(timed_generate(model, ids, 2 * n, kwargs, args.device))
    per_token = (statistics.median(long) - statistics.median(short)) / n * 1e3
    return dict(model=name, mode=mode, context=context, batch=args.batch, new_tokens=n, ms_per_token=per_token,
                warmup_s=warmup, short_s=short, long_s=long)


def profile_step(model, name: str, args) -> dict:
    """Compiled decode step at `args.profile_batch`: wall ms, GPU-busy ms and kernels per step."""
    from torch.profiler import ProfilerActivity, profile

    n, batch, context = args.new_tokens, args.profile_batch, args.profile_context
    ids = torch.randint(1, model.config.vocab_size, (batch, context), device=args.device)
    kwargs = generate_kwargs(name, "compiled", args, context + 1 + n)
    timed_generate(model, ids, 1 + n, kwargs, args.device)  # warm-up
    walls = [statistics.median([timed_generate(model, ids, k, kwargs, args.device) for _ in range(3)])
             for k in (1, 1 + n)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    busy, kernels = [], []
    for k in (1, 1 + n):
        with profile(activities=activities) as prof:
            timed_generate(model, ids, k, kwargs, args.device)
        device_events = [e for e in prof.events() if e.device_type != torch.autograd.DeviceType.CPU]
        busy.append(sum(e.device_time_total for e in device_events) / 1e3)
        kernels.append(len(device_events))
    wall = (walls[1] - walls[0]) / n * 1e3
    gpu = (busy[1] - busy[0]) / n if args.device == "cuda" else None
    return dict(model=name, mode="compiled", batch=batch, context=context, wall_ms_per_step=wall,
                gpu_busy_ms_per_step=gpu, gpu_busy_fraction=gpu / wall if gpu else None,
                kernels_per_step=(kernels[1] - kernels[0]) / n if args.device == "cuda" else None)


def build(name: str, config: PhotonConfig, context: int, args):
    torch.manual_seed(0)
    if name == "photon":
        model = PhotonForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_config(llama_like(config, context), attn_implementation="sdpa")
    return model.to(args.device, getattr(torch, args.dtype)).eval()


def table(rows: list[dict]) -> str:
    contexts = sorted({r["context"] for r in rows if "ms_per_token" in r})
    cell = {(r["model"], r["mode"], r["context"]): r["ms_per_token"] for r in rows if "ms_per_token" in r}
    lines = ["| model | mode | " + " | ".join(f"{c:,} ctx" for c in contexts) + " |",
             "|---|---|" + "---:|" * len(contexts)]
    for name in ("photon", "llama"):
        for mode in ("eager", "compiled"):
            values = [cell.get((name, mode, c)) for c in contexts]
            if any(v is not None for v in values):
                shown = [f"{v:.2f} ms" if v is not None else "-" for v in values]
                lines.append(f"| {'PHOTON' if name == 'photon' else 'Llama'} | {mode} | " + " | ".join(shown) + " |")
    for r in rows:
        if "wall_ms_per_step" in r:
            busy = "-" if r["gpu_busy_ms_per_step"] is None else f"{r['gpu_busy_ms_per_step']:.2f} ms"
            share = "-" if r["gpu_busy_fraction"] is None else f"{100 * r['gpu_busy_fraction']:.0f}%"
            kernels = "-" if r["kernels_per_step"] is None else f"{r['kernels_per_step']:.0f}"
            lines.append(f"\nprofile {r['model']} compiled, batch {r['batch']}, context {r['context']}: "
                         f"{r['wall_ms_per_step']:.2f} ms/step, GPU busy {busy} ({share}), {kernels} kernels/step")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="photon-600m", help="a photon_preset name, or 'tiny' (CPU smoke)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--models", nargs="+", default=["photon", "llama"], choices=["photon", "llama"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64, help="N: generate N and 2N tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kernel-backend", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--shared-cache", action="store_true",
                        help="one max_cache_len (largest context + 2N) for every context, so each model compiles its "
                             "step once; a static cache then spans the largest context at every context")
    parser.add_argument("--profile-batch", type=int, default=0, help="also profile the compiled step at this batch")
    parser.add_argument("--profile-context", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=math.inf, help="skip what would start after this")
    parser.add_argument("--out", default=None, help="JSON file for every measurement")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    config = photon_preset(args.preset, **(TINY if args.preset == "tiny" else {}))
    config.kernel_backend = args.kernel_backend
    deadline = time.monotonic() + args.budget_s
    rows, meta = [], dict(torch=torch.__version__, device=args.device, preset=args.preset, dtype=args.dtype,
                          compile=dict(backend=args.compile_backend, mode=args.compile_mode), errors=[])
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    models = {}

    def record(row=None):
        """Keep each measurement as it comes (the JSON is rewritten), so a run cut short keeps what it measured."""
        if row is not None:
            rows.append(row)
        if args.out:
            Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))

    def attempt(label: str, measure, *inputs):
        if time.monotonic() > deadline:
            meta["errors"].append(f"budget: skipped {label}")
            return None
        try:
            row = measure(*inputs)
        except Exception as error:  # noqa: BLE001 - one failure must not lose the other measurements
            meta["errors"].append(f"{label}: {type(error).__name__}: {error}")
            print(meta["errors"][-1], flush=True)
            record()
            return None
        record(row)
        return row

    def model_for(name: str):
        if name not in models:
            models[name] = build(name, config, max(args.contexts), args)
        return models[name]

    # Contexts outermost, so a run cut short by its budget still compares the models at the contexts it reached.
    for context in args.contexts:
        for name in args.models:
            for mode in args.modes:
                row = attempt(f"{name} {mode} {context}", lambda n, m, c: latency(model_for(n), n, m, c, args),
                              name, mode, context)
                if row:
                    print(f"{name:6s} {mode:8s} context {context:6d}: {row['ms_per_token']:.3f} ms/token "
                          f"(warm-up {row['warmup_s']:.1f} s)", flush=True)
    if args.profile_batch and "compiled" in args.modes:
        for name in args.models:
            attempt(f"profile {name}", lambda n: profile_step(model_for(n), n, args), name)
    record()
    print(table(rows))
    for error in meta["errors"]:
        print("error:", error)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
