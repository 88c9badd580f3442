"""Memory accounting of PHOTON generation: analytic cache sizes and the cost of one decode step.

Everything here reads the one per-level geometry of a config, `config.levels` (`PhotonLevelGeometry`), the same
geometry the model and `PhotonCache` use, so the analytic figures cannot drift from what the cache allocates:

* `kv_cache_bytes`: the bytes a `PhotonCache` holds after `seq_len` tokens (equal to `PhotonCache.nbytes()` for a
  cache that `generate()` sized for `seq_len` columns);
* `llama_kv_cache_bytes` and `llama_config_for`: the same-size baseline, a Llama with PHOTON's width and heads and as
  many layers as all PHOTON stacks together;
* `cache_table`: both side by side for a few context lengths (`photon-hf info`, the model card);
* `decode_step_cost` and `roofline_step_ms`: the minimal traffic and FLOPs of one decode step of stock `generate`,
  and the step time they imply on a device (the benchmark's roofline column).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from .configuration_photon import PhotonConfig

DEFAULT_CONTEXT_LENGTHS = (1024, 4096, 32768)


def item_bytes(dtype: torch.dtype) -> int:
    """Bytes of one element of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _kv_entry_bytes(config: PhotonConfig, dtype_bytes: int) -> int:
    """One cache entry (key + value) of one attention layer."""
    return 2 * config.num_key_value_heads * config.head_dim * dtype_bytes


# ------------------------------------------------------------------------------------------------ cache sizes
def kv_cache_bytes(
    config: PhotonConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Analytic size in bytes of a `PhotonCache` that has consumed `seq_len` tokens per row.

    Counts exactly the tensors a `PhotonCache` sized for `seq_len` tokens allocates, level by level: encoder KV (one
    entry per complete unit, or the window), local decoder KV (R + C - 1 entries, plus W look-back entries and one
    more slot at level 0 with `decoder_lookback`), the unfinished-unit buffers
    (token ids as int64 at level 0, states above), the decoder predictions kept with `decoder_input="self"`, and the
    per-row pad count (int64).
    """
    item = item_bytes(dtype)
    entry = _kv_entry_bytes(config, item)
    total = 0
    for level in config.levels:
        units = seq_len // level.tokens_per_unit
        entries = level.encoder_window if level.encoder_window is not None else units
        total += entries * level.num_encoder_layers * entry
        total += level.decoder_cache_slots * level.num_decoder_layers * entry
        total += level.chunk_size * (8 if level.index == 0 else config.hidden_size * item)
        if level.self_decoding:
            total += (level.chunk_size + 1) * config.hidden_size * item
    total += 8  # the row's pad count
    return total * batch_size


def llama_layers(config: PhotonConfig) -> int:
    """Depth of the same-size Llama: as many layers as all of PHOTON's stacks together (16 at 600M)."""
    return sum(level.num_encoder_layers + level.num_decoder_layers for level in config.levels)


def llama_config_for(config: PhotonConfig) -> LlamaConfig:
    """The same-size baseline: a Llama with PHOTON's width, FFN, heads and vocabulary and `llama_layers(config)`
    layers, untied head (at 600M: BENCH.md's vanilla 600M, 610.9M parameters). `llama_kv_cache_bytes` and
    `decode_step_cost(config, "llama", ...)` assume this shape."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=llama_layers(config),
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=False,
    )


def llama_kv_cache_bytes(
    config: PhotonConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> int:
    """KV-cache bytes of the same-size Llama (`llama_config_for`) after `seq_len` tokens."""
    return seq_len * llama_layers(config) * _kv_entry_bytes(config, item_bytes(dtype)) * batch_size


def cache_table(
    config: PhotonConfig, context_lengths=DEFAULT_CONTEXT_LENGTHS, dtype: torch.dtype = torch.bfloat16
) -> list[tuple[int, int, int]]:
    """(context length, PHOTON cache bytes, same-size Llama KV-cache bytes) per context length, for one
    sequence."""
    return [
        (n, kv_cache_bytes(config, n, dtype=dtype), llama_kv_cache_bytes(config, n, dtype=dtype))
        for n in context_lengths
    ]


# ------------------------------------------------------------------------------------------ decode-step cost
def decode_step_cost(config: PhotonConfig, model: str, context: float, dtype_bytes: int = 2) -> dict[str, float]:
    """Analytic cost of one decode step of stock `generate` with `context` tokens already in the cache.

    Minimal traffic: every weight the step uses read once (shared by the batch), every cache entry it attends to
    read once and the new entries written once, plus `generate`'s logits path (LM head output, its float32 copy,
    the min-length mask, the argmax: 2 * dtype_bytes + 16 bytes per vocabulary entry and sample). PHOTON's figures
    are averages over the P_L steps of a meta-chunk (which stacks run depends on the step); "llama" is the same-size
    Llama of `llama_config_for`.

    Returns `weight_bytes` (per step), `sample_bytes` and `sample_flops` (per sample and step) and
    `cache_copy_bytes` (per sample and step: the Llama DynamicCache concatenates, so it reads and rewrites its whole
    cache every step on top of the attention's read; PHOTON writes into preallocated buffers).
    """
    if model not in ("photon", "llama"):
        raise ValueError(f"Unknown model {model!r}; expected 'photon' or 'llama'.")
    d, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    kv_width = config.num_key_value_heads * config.head_dim
    layer_params = 2 * d * d + 2 * d * kv_width + 3 * d * ffn + 2 * d  # q, o; k, v; SwiGLU; two norms
    entry = _kv_entry_bytes(config, dtype_bytes)
    weights = vocab * d  # the LM head, every step
    flops = 2.0 * vocab * d
    sample = vocab * (2 * dtype_bytes + 16) + d * dtype_bytes  # the logits path + the new token's embedding row
    if model == "llama":
        layers = llama_layers(config)
        weights += layers * layer_params + d
        flops += 2.0 * layers * layer_params + 4.0 * layers * d * context
        sample += layers * entry * (context + 1)
        return dict(
            weight_bytes=weights * dtype_bytes,
            sample_bytes=sample,
            sample_flops=flops,
            cache_copy_bytes=2.0 * layers * entry * context,
        )
    for level in config.levels:
        rate = 1.0 / level.tokens_per_unit  # units of this level completed per token
        chunk, width = level.chunk_size, level.converter_width
        enc, dec = level.num_encoder_layers, level.num_decoder_layers
        # Context encoder: one step per unit, attending over every unit so far (or its window).
        units = context * rate
        keys = units if level.encoder_window is None else min(level.encoder_window, units)
        weights += rate * enc * layer_params
        flops += rate * (2.0 * enc * layer_params + 4.0 * enc * d * keys)
        sample += rate * enc * entry * (keys + 1)
        # Chunker (norm + Linear above level 0) and converter: once per unit.
        if level.index > 0:
            weights += rate * (chunk * d * d + d + chunk * d)
            flops += rate * 2.0 * chunk * d * d
        weights += rate * (d * width * d + width * d)
        flops += rate * 2.0 * d * width * d
        # Local decoder, per unit: one prefix pass of `width` positions (writes `width` entries), then chunk - 1
        # single steps at slots width .. width + chunk - 2 (each reads the slots up to its own); weights loaded
        # `chunk` times (one pass per step of the level below).
        # With a look-back of W tokens (level 0), every position also reads the W look-back entries, all C tokens
        # are fed (C steps), and the W entries shift once per unit.
        lookback, steps = level.decoder_lookback, level.decoder_slots - width
        reads = sum(width + j + 1 for j in range(steps)) + width * width + lookback * level.decoder_slots
        weights += rate * (1 + steps) * dec * layer_params
        flops += rate * (2.0 * dec * layer_params * level.decoder_slots + 4.0 * dec * d * reads)
        sample += rate * dec * entry * (reads + level.decoder_slots + 2 * lookback)
    return dict(weight_bytes=weights * dtype_bytes, sample_bytes=sample, sample_flops=flops, cache_copy_bytes=0.0)


def roofline_step_ms(cost: dict[str, float], batch: int, bandwidth: float, flop_rate: float) -> float:
    """The floor of one decode step at `batch` (minimal bytes over `bandwidth` in bytes/s, or FLOPs over
    `flop_rate` in FLOP/s, whichever is larger), in milliseconds."""
    seconds = max(
        (cost["weight_bytes"] + batch * cost["sample_bytes"]) / bandwidth, batch * cost["sample_flops"] / flop_rate
    )
    return seconds * 1e3
