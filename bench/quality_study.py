"""Quality at equal compute: PHOTON against a Llama with the same training FLOPs per token.

Both models see the same byte-level token stream (the Python standard library's source, split by file into train
and validation, `photon_hf.data.stdlib_files`, or any local text files) and train for the same wall-clock time
on the same device. Reported per model: parameters, training FLOPs per token (analytic), tokens seen, held-out
bits per byte, and the agreement rate of greedy generation with the teacher-forced argmax on the generated
sequence (1.0 for exact generation; below 1.0 shows drift or low-precision ties).

    python bench/quality_study.py --seconds 60 --out bench/results/quality.json          # on a GPU
    python bench/quality_study.py --seconds 600 --hidden 1024 --layers 4                 # a bigger study
    python bench/quality_study.py --device cpu --seconds 5 --hidden 64 --seq-len 64      # smoke test

Scale it with --hidden/--layers/--seq-len/--batch/--seconds; --train-files/--valid-files take local text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import photon_hf
from photon_hf.data import stdlib_files, stdlib_root

EOS = 258  # the byte tokenizer's <eos> (photon_hf.data.byte_tokenizer)
VOCAB = 259


# --------------------------------------------------------------------------------------------------- the data
def byte_stream(files: list) -> np.ndarray:
    """Concatenate files as bytes, an <eos> after each: one int32 token stream."""
    parts = []
    for path in files:
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8).astype(np.int32)
        parts.extend([data, np.array([EOS], dtype=np.int32)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


# ------------------------------------------------------------------------------------------------ the compute
def _layer_matmul_params(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    head_dim = hidden // heads
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate


def _attention_flops(context: float, heads: int, head_dim: int) -> float:
    return 4.0 * context * heads * head_dim  # QK^T and AV, forward, per query and layer


def photon_training_flops_per_token(config: photon_hf.PhotonConfig, seq_len: int) -> float:
    """Forward + backward matmul and attention FLOPs per token (6 x params touched + 3 x attention)."""
    d, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    layer = _layer_matmul_params(d, config.intermediate_size, heads, config.num_key_value_heads)
    matmul, attention = d * config.vocab_size, 0.0  # the LM head, once per token
    for level, (chunk, width) in enumerate(zip(config.chunk_sizes, config.converter_width, strict=True)):
        per_unit = config.tokens_per_unit[level]
        window = width + chunk - 1
        in_width = chunk * (config.encoder_embed_size if level == 0 else d)
        if level > 0 or in_width != d:
            matmul += in_width * d / per_unit  # chunker
        matmul += config.num_encoder_layers[level] * layer / per_unit
        matmul += d * width * d / per_unit  # converter
        matmul += config.num_decoder_layers[level] * layer * window / per_unit  # decoder windows
        units = seq_len / per_unit
        span = units / 2 if config.window(level) is None else min(units / 2, config.window(level))
        attention += config.num_encoder_layers[level] * _attention_flops(span, heads, head_dim) / per_unit
        attention += config.num_decoder_layers[level] * _attention_flops((window + 1) / 2, heads, head_dim) * (
            window / per_unit
        )
    return 6.0 * matmul + 3.0 * attention


def llama_training_flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    d, heads = config.hidden_size, config.num_attention_heads
    layer = _layer_matmul_params(d, config.intermediate_size, heads, config.num_key_value_heads)
    matmul = config.num_hidden_layers * layer + d * config.vocab_size
    attention = config.num_hidden_layers * _attention_flops(seq_len / 2, heads, d // heads)
    return 6.0 * matmul + 3.0 * attention


def matched_llama(photon: photon_hf.PhotonConfig, seq_len: int) -> LlamaConfig:
    """The Llama of the same width whose training FLOPs per token are closest to PHOTON's."""
    best = None
    for layers in range(1, 4 * sum(photon.num_encoder_layers) + 4 * sum(photon.num_decoder_layers) + 1):
        config = LlamaConfig(
            vocab_size=photon.vocab_size, hidden_size=photon.hidden_size, intermediate_size=photon.intermediate_size,
            num_hidden_layers=layers, num_attention_heads=photon.num_attention_heads,
            num_key_value_heads=photon.num_key_value_heads, max_position_embeddings=max(seq_len, 2048),
            tie_word_embeddings=False, pad_token_id=256, bos_token_id=257, eos_token_id=EOS,
        )
        ratio = llama_training_flops_per_token(config, seq_len) / photon_training_flops_per_token(photon, seq_len)
        gap = abs(ratio - 1)
        if best is None or gap < best[0]:
            best = (gap, config)
    return best[1]


# ----------------------------------------------------------------------------------------------- the training
def train_for(model, stream: np.ndarray, args, device, seed: int) -> dict:
    """AdamW for `args.seconds` of wall clock: warm-up then cosine decay on elapsed time; random windows."""
    generator = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    data = torch.from_numpy(stream)
    model.train()
    steps = tokens = 0
    losses = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds and steps > 0:
            break
        fraction = min(elapsed / args.seconds, 1.0)
        warm = 0.05
        scale = fraction / warm if fraction < warm else 0.5 * (1 + math.cos(math.pi * (fraction - warm) / (1 - warm)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * max(scale, 0.02)
        offsets = generator.integers(0, len(stream) - args.seq_len - 1, size=args.batch)
        batch = torch.stack([data[o : o + args.seq_len] for o in offsets]).long().to(device, non_blocking=True)
        with autocast:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        tokens += batch.numel()
        if steps % 50 == 0:
            losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"steps": steps, "tokens_seen": tokens, "train_seconds": time.perf_counter() - start,
            "train_loss_trace": losses}


@torch.no_grad()
def bits_per_byte(model, stream: np.ndarray, args, device) -> float:
    """Mean next-token cross-entropy over non-overlapping validation windows, in bits (1 token = 1 byte)."""
    model.eval()
    data = torch.from_numpy(stream[: args.eval_tokens + 1]).long()
    windows = (len(data) - 1) // args.seq_len
    total, count = 0.0, 0
    for first in range(0, windows, args.batch):
        rows = torch.stack([data[w * args.seq_len : (w + 1) * args.seq_len]
                            for w in range(first, min(first + args.batch, windows))]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=rows, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 rows[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += rows[:, 1:].numel()
    return total / count / math.log(2)


@torch.no_grad()
def greedy_agreement(model, stream: np.ndarray, args, device) -> float:
    """Greedy-generate from validation prompts, then check each generated token against the argmax of a
    teacher-forced forward over the generated sequence."""
    model.eval()
    generator = np.random.default_rng(1234)
    offsets = generator.integers(0, len(stream) - args.prompt_len - 1, size=args.prompts)
    prompts = torch.stack([torch.from_numpy(stream[o : o + args.prompt_len]) for o in offsets]).long().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        sequences = model.generate(prompts, max_new_tokens=args.gen_len, min_new_tokens=args.gen_len,
                                   do_sample=False, pad_token_id=256)
        logits = model(input_ids=sequences, use_cache=False).logits
    predicted = logits[:, args.prompt_len - 1 : -1].argmax(-1)
    return float((predicted == sequences[:, args.prompt_len :]).float().mean())


def photon_config(args) -> photon_hf.PhotonConfig:
    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    return photon_hf.PhotonConfig(
        vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate or int(2.6875 * args.hidden),
        num_attention_heads=args.heads, chunk_sizes=chunks, num_encoder_layers=args.layers,
        num_decoder_layers=args.layers, max_position_embeddings=max(args.seq_len, 2048), pad_token_id=256,
        bos_token_id=257, eos_token_id=EOS, kernel_backend=args.kernel_backend,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock training time per model")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=None, help="default: 2.6875 x hidden")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2, help="layers of every PHOTON stack")
    parser.add_argument("--chunk-sizes", default="4,4")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tokens", type=int, default=262144)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--kernel-backend", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--train-files", nargs="*", help="local text files (default: the stdlib corpus)")
    parser.add_argument("--valid-files", nargs="*")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    train = byte_stream(args.train_files or [stdlib_root() / p for p in stdlib_files("train")])
    valid = byte_stream(args.valid_files or [stdlib_root() / p for p in stdlib_files("validation")])
    photon_cfg = photon_config(args)
    llama_cfg = matched_llama(photon_cfg, args.seq_len)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "train_tokens_available": int(len(train)), "valid_tokens_available": int(len(valid)),
               "args": {k: v for k, v in vars(args).items() if k not in ("train_files", "valid_files")},
               "models": {}}
    for name, build, config, flops in (
        ("photon", photon_hf.PhotonForCausalLM, photon_cfg, photon_training_flops_per_token(photon_cfg, args.seq_len)),
        ("llama", LlamaForCausalLM, llama_cfg, llama_training_flops_per_token(llama_cfg, args.seq_len)),
    ):
        torch.manual_seed(args.seed)
        model = build(config).to(device)
        print(f"[{name}] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{flops / 1e6:.1f} MFLOP/token, training {args.seconds:.0f}s ...", flush=True)
        record = {"parameters": sum(p.numel() for p in model.parameters()), "train_flops_per_token": flops,
                  "config": config.to_diff_dict()}
        record.update(train_for(model, train, args, device, args.seed))
        record["train_flops"] = flops * record["tokens_seen"]
        record["valid_bits_per_byte"] = bits_per_byte(model, valid, args, device)
        record["greedy_agreement"] = greedy_agreement(model, valid, args, device)
        results["models"][name] = record
        print(f"[{name}] {record['tokens_seen'] / 1e6:.2f}M tokens in {record['steps']} steps, "
              f"valid {record['valid_bits_per_byte']:.3f} bits/byte, greedy agreement "
              f"{record['greedy_agreement']:.4f}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    p, q = results["models"]["photon"], results["models"]["llama"]
    results["perplexity_ratio_per_byte"] = 2 ** (p["valid_bits_per_byte"] - q["valid_bits_per_byte"])
    print("\n| model | params | MFLOP/token | tokens seen | bits/byte | greedy agreement |\n|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        print(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['train_flops_per_token'] / 1e6:.1f} | "
              f"{r['tokens_seen'] / 1e6:.2f}M | {r['valid_bits_per_byte']:.3f} | {r['greedy_agreement']:.4f} |")
    print(f"PHOTON / Llama perplexity per byte: {results['perplexity_ratio_per_byte']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
