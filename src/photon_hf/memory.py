"""The cost model of PHOTON and its Llama baselines: analytic cache sizes, the cost of one decode step and the FLOPs of
a training step.

Everything here reads the one per-level geometry of a config, `config.levels` (`PhotonLevelGeometry`), the same
geometry the model and `PhotonCache` use, so the analytic figures cannot drift from what the cache allocates:

* `kv_cache_bytes`: the bytes a `PhotonCache` holds after `seq_len` tokens (equal to `PhotonCache.nbytes()` for a
  cache that `generate()` sized for `seq_len` columns);
* `llama_config_for`: the one Llama builder, PHOTON's width, FFN, heads and vocabulary at a given depth; by default
  the same-shape baseline, as many layers as all PHOTON stacks together; `flop_matched_llama` and
  `parameter_matched_llama` pick its depth by training FLOPs per token or by parameter count;
* `llama_kv_cache_bytes`: that Llama's KV cache; `cache_table`: both side by side for a few context lengths
  (`photon-hf info`, the model card);
* `decode_step_cost` and `roofline_step_ms`: the minimal traffic and FLOPs of one decode step of stock `generate`,
  and the step time they imply on a device (the benchmark's roofline column);
* `training_state_bytes`: the weights, gradients and AdamW state one training process holds under DDP, DeepSpeed
  ZeRO-2/3 or FSDP2 (docs/training.md);
* `forward_flops` and `training_flops_per_token`: the matmul FLOPs of a training step, PHOTON's counted on the
  sequence it really runs (padded to whole meta-chunks, with the token look-back's extra keys), checked against
  `torch.utils.flop_counter` in tests/test_memory.py (the quality study's compute axis).

The Llama functions take a `LlamaConfig`, or a `PhotonConfig` for its same-shape Llama (`llama_config_for`).
"""

from __future__ import annotations

import math

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


def _kv_entry_bytes(config: PhotonConfig | LlamaConfig, dtype_bytes: int) -> int:
    """One cache entry (key + value) of one attention layer."""
    return 2 * config.num_key_value_heads * config.head_dim * dtype_bytes


def layer_matmul_params(config: PhotonConfig | LlamaConfig) -> int:
    """Weights of one block's matmuls (every PHOTON stack and every Llama layer): q, k, v, o and the SwiGLU."""
    d, heads, kv_heads, head_dim = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                    config.head_dim)
    return 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * config.intermediate_size


def _as_llama(config: PhotonConfig | LlamaConfig) -> LlamaConfig:
    """A Llama config as given, or the same-shape Llama of a PHOTON config."""
    return llama_config_for(config) if isinstance(config, PhotonConfig) else config


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
    """Depth of the same-shape Llama: as many layers as all of PHOTON's stacks together (16 at 600M)."""
    return sum(level.num_encoder_layers + level.num_decoder_layers for level in config.levels)


def llama_config_for(config: PhotonConfig, num_hidden_layers: int | None = None, **overrides) -> LlamaConfig:
    """The one Llama builder: PHOTON's width, FFN, heads, vocabulary, RoPE, norm and init, its special tokens where
    set, an untied head, and `num_hidden_layers` layers (default `llama_layers(config)`: the same-shape baseline, at
    600M BENCH.md's vanilla 600M, 610.9M parameters). `overrides` are further `LlamaConfig` fields (e.g.
    `max_position_embeddings`)."""
    tokens = {name: getattr(config, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=llama_layers(config) if num_hidden_layers is None else num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.initializer_range,
        tie_word_embeddings=False,
        **{name: value for name, value in tokens.items() if value is not None},
    )
    return LlamaConfig(**(fields | overrides))


def flop_matched_llama(config: PhotonConfig, seq_len: int, max_layers: int = 64, **overrides) -> LlamaConfig:
    """The Llama of `llama_config_for` whose training FLOPs per token at `seq_len` (`training_flops_per_token`)
    are closest to PHOTON's (in ratio), 1 to `max_layers` layers."""
    target = training_flops_per_token(config, seq_len)
    candidates = [llama_config_for(config, n, **overrides) for n in range(1, max_layers + 1)]
    return min(candidates, key=lambda c: abs(math.log(training_flops_per_token(c, seq_len) / target)))


def parameter_matched_llama(config: PhotonConfig, max_layers: int = 64, **overrides) -> LlamaConfig:
    """The Llama of `llama_config_for` whose parameter count is closest to PHOTON's (in ratio), 1 to `max_layers`
    layers: the paper's baseline."""
    target = count_parameters(config)
    candidates = [llama_config_for(config, n, **overrides) for n in range(1, max_layers + 1)]
    return min(candidates, key=lambda c: abs(math.log(count_parameters(c) / target)))


def count_parameters(config: PhotonConfig | LlamaConfig) -> int:
    """Parameters of the model a config builds (instantiated on the meta device: no memory, no init)."""
    from transformers import LlamaForCausalLM

    from .modeling_photon import PhotonForCausalLM

    with torch.device("meta"):
        model = (PhotonForCausalLM if isinstance(config, PhotonConfig) else LlamaForCausalLM)(config)
    return sum(p.numel() for p in model.parameters())


# Bytes per parameter of AdamW training, per strategy: (weights, gradients, optimizer state), each with the share of
# it a process keeps (1: whole, "N": 1/processes). Mixed precision (bf16 compute) as each strategy implements it:
# DDP and FSDP2 keep fp32 weights and gradients (autocast / `MixedPrecisionPolicy` cast to bf16 on the fly);
# DeepSpeed keeps bf16 weights and gradients and fp32 master weights with the Adam moments (12 bytes).
TRAINING_STATE = {
    "ddp": {True: ((4, 1), (4, 1), (8, 1)), False: ((4, 1), (4, 1), (8, 1))},
    "zero2": {True: ((2, 1), (2, "N"), (12, "N")), False: ((4, 1), (4, "N"), (8, "N"))},
    "zero3": {True: ((2, "N"), (2, "N"), (12, "N")), False: ((4, "N"), (4, "N"), (8, "N"))},
    "fsdp2": {True: ((4, "N"), (4, "N"), (8, "N")), False: ((4, "N"), (4, "N"), (8, "N"))},
}


def training_state_bytes(
    config: PhotonConfig | LlamaConfig, strategy: str = "ddp", processes: int = 1, mixed_precision: bool = True
) -> dict[str, float]:
    """Bytes one of `processes` training processes holds for the model's weights, gradients and AdamW state under
    `strategy` ("ddp", "zero2", "zero3" or "fsdp2"; see `TRAINING_STATE`), and their "total". Activations,
    communication buffers and the weights a sharded strategy gathers for the unit it is computing come on top."""
    if strategy not in TRAINING_STATE:
        raise ValueError(f"`strategy` must be one of {sorted(TRAINING_STATE)}, got {strategy!r}.")
    parameters = count_parameters(config)
    parts = {}
    for name, (per_parameter, share) in zip(
        ("weights", "gradients", "optimizer"), TRAINING_STATE[strategy][mixed_precision], strict=True
    ):
        parts[name] = parameters * per_parameter / (processes if share == "N" else 1)
    parts["total"] = sum(parts.values())
    return parts


def llama_kv_cache_bytes(
    config: PhotonConfig | LlamaConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> int:
    """KV-cache bytes of a Llama (a `LlamaConfig`, or the same-shape Llama of a `PhotonConfig`) after `seq_len`
    tokens."""
    llama = _as_llama(config)
    return seq_len * llama.num_hidden_layers * _kv_entry_bytes(llama, item_bytes(dtype)) * batch_size


def cache_table(
    config: PhotonConfig, context_lengths=DEFAULT_CONTEXT_LENGTHS, dtype: torch.dtype = torch.bfloat16
) -> list[tuple[int, int, int]]:
    """(context length, PHOTON cache bytes, same-shape Llama KV-cache bytes) per context length, for one
    sequence."""
    return [
        (n, kv_cache_bytes(config, n, dtype=dtype), llama_kv_cache_bytes(config, n, dtype=dtype))
        for n in context_lengths
    ]


# ------------------------------------------------------------------------------------------ decode-step cost
def decode_step_cost(
    config: PhotonConfig | LlamaConfig, model: str, context: float, dtype_bytes: int = 2
) -> dict[str, float]:
    """Analytic cost of one decode step of stock `generate` with `context` tokens already in the cache.

    Minimal traffic: every weight the step uses read once (shared by the batch), every cache entry it attends to
    read once and the new entries written once, plus `generate`'s logits path (LM head output, its float32 copy,
    the min-length mask, the argmax: 2 * dtype_bytes + 16 bytes per vocabulary entry and sample). PHOTON's figures
    are averages over the P_L steps of a meta-chunk (which stacks run depends on the step); "llama" is the Llama of a
    `LlamaConfig`, or the same-shape Llama of a `PhotonConfig` (`llama_config_for`). FLOPs are matmul FLOPs, as
    in `forward_flops`.

    Returns `weight_bytes` (per step), `sample_bytes` and `sample_flops` (per sample and step) and
    `cache_copy_bytes` (per sample and step: the Llama DynamicCache concatenates, so it reads and rewrites its whole
    cache every step on top of the attention's read; PHOTON writes into preallocated buffers).
    """
    if model not in ("photon", "llama"):
        raise ValueError(f"Unknown model {model!r}; expected 'photon' or 'llama'.")
    if model == "llama":
        config = _as_llama(config)
    d, vocab = config.hidden_size, config.vocab_size
    attention_width = config.num_attention_heads * config.head_dim  # one query's QK^T and AV: 4 x this per key
    matmul = layer_matmul_params(config)
    layer_params = matmul + 2 * d  # + two norms
    entry = _kv_entry_bytes(config, dtype_bytes)
    weights = vocab * d  # the LM head, every step
    flops = 2.0 * vocab * d
    sample = vocab * (2 * dtype_bytes + 16) + d * dtype_bytes  # the logits path + the new token's embedding row
    if model == "llama":
        layers = config.num_hidden_layers
        weights += layers * layer_params + d
        flops += 2.0 * layers * matmul + 4.0 * layers * attention_width * context
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
        flops += rate * (2.0 * enc * matmul + 4.0 * enc * attention_width * keys)
        sample += rate * enc * entry * (keys + 1)
        # Chunker (norm + Linear above level 0; at level 0 a Linear only when C * E != D) and converter: once per
        # unit.
        chunked = chunk * level.input_width
        if level.index > 0 or chunked != d:
            weights += rate * (chunked * d + d + (chunked if level.index > 0 else 0))
            flops += rate * 2.0 * chunked * d
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
        flops += rate * (2.0 * dec * matmul * level.decoder_slots + 4.0 * dec * attention_width * reads)
        sample += rate * dec * entry * (reads + level.decoder_slots + 2 * lookback)
    return dict(weight_bytes=weights * dtype_bytes, sample_bytes=sample, sample_flops=flops, cache_copy_bytes=0.0)


def roofline_step_ms(cost: dict[str, float], batch: int, bandwidth: float, flop_rate: float) -> float:
    """The floor of one decode step at `batch` (minimal bytes over `bandwidth` in bytes/s, or FLOPs over
    `flop_rate` in FLOP/s, whichever is larger), in milliseconds."""
    seconds = max(
        (cost["weight_bytes"] + batch * cost["sample_bytes"]) / bandwidth, batch * cost["sample_flops"] / flop_rate
    )
    return seconds * 1e3


# ------------------------------------------------------------------------------------------- training FLOPs
def padded_length(config: PhotonConfig, seq_len: int) -> int:
    """The tokens a full PHOTON forward over `seq_len` tokens runs: right-padded to whole meta-chunks (P_L tokens)
    with room for position `seq_len`, whose window predicts the token after the last (DESIGN.md section 2)."""
    meta = config.levels[-1].tokens_per_unit
    return -(-(seq_len + 1) // meta) * meta


def _causal_pairs(queries: int, window: int | None = None) -> int:
    """(query, key) pairs of causal attention over `queries` positions, each query seeing itself and, with a
    `window`, the window - 1 positions before it."""
    if window is None or window >= queries:
        return queries * (queries + 1) // 2
    return window * (window + 1) // 2 + (queries - window) * window


def forward_flops(config: PhotonConfig | LlamaConfig, seq_len: int, causal: bool = True) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one full forward over one sequence of `seq_len` tokens, as
    `{"linear": ..., "attention": ...}`.

    "linear": every `nn.Linear` the forward runs (q, k, v, o, the SwiGLU, chunkers, converters, the LM head). For
    PHOTON these run on the sequence the model really processes: `padded_length` tokens (whole meta-chunks with
    room for the next token's window), every level's M = padded / P units through its chunker and encoder, and
    M conditioning latents through its converter and decoder windows of `decoder_slots` positions (R + C - 1;
    R + C with a token look-back; with `decoder_input="self"` the latent levels re-run a growing window of
    R .. R + C - 1 positions C times). The LM head runs on the `seq_len` real positions.
    "attention": the QK^T and AV products, 4 x heads x head_dim FLOPs per (query, key) pair: with `causal`, only
    the pairs the mask lets through (causal order, sliding windows, the look-back's min(W, tokens before) keys:
    the work of a kernel that skips masked blocks, the convention the quality study matches Llamas by); without,
    the full rectangle every attention call computes (PyTorch's math SDPA, what `FlopCounterMode` counts).

    Excluded: norms, RoPE, softmax, activations, embedding lookups, the loss, the recursive loss and the optimizer
    (elementwise, no matmul). A `LlamaConfig` counts a stock Llama over `seq_len` tokens the same way.
    """
    d, vocab = config.hidden_size, config.vocab_size
    attention_pair = 4.0 * config.num_attention_heads * config.head_dim
    matmul = layer_matmul_params(config)
    if isinstance(config, LlamaConfig):
        pairs = _causal_pairs(seq_len) if causal else seq_len * seq_len
        return {"linear": 2.0 * seq_len * (config.num_hidden_layers * matmul + d * vocab),
                "attention": attention_pair * config.num_hidden_layers * pairs}
    padded = padded_length(config, seq_len)
    linear, attention = 2.0 * seq_len * d * vocab, 0.0  # the LM head on the real positions
    for level in config.levels:
        units = padded // level.tokens_per_unit
        chunk, width, slots, lookback = (level.chunk_size, level.converter_width, level.decoder_slots,
                                         level.decoder_lookback)
        chunked = chunk * level.input_width
        if level.index > 0 or chunked != d:
            linear += 2.0 * units * chunked * d  # chunker
        # Context encoder over the level's units (full causal or a sliding window).
        linear += 2.0 * units * level.num_encoder_layers * matmul
        enc_pairs = _causal_pairs(units, level.encoder_window) if causal else units * units
        attention += attention_pair * level.num_encoder_layers * enc_pairs
        linear += 2.0 * units * d * width * d  # converter
        # Local decoder: one window per unit, or C growing windows per unit when it reads its own predictions.
        windows = [width + j for j in range(chunk)] if level.self_decoding else [slots]
        positions = units * sum(windows)
        window_pairs = units * sum(_causal_pairs(s) if causal else s * s for s in windows)
        if lookback:  # window k's slots also see the look-back keys of the tokens before it (min(W, kC) of W)
            seen = sum(min(lookback, k * chunk) for k in range(units)) if causal else units * lookback
            window_pairs += slots * seen
        linear += 2.0 * positions * level.num_decoder_layers * matmul
        attention += attention_pair * level.num_decoder_layers * window_pairs
    return {"linear": linear, "attention": attention}


def training_flops_per_token(config: PhotonConfig | LlamaConfig, seq_len: int, causal: bool = True) -> float:
    """Matmul FLOPs of one training step per real token at `seq_len` (`forward_flops`, forward + backward): the
    backward's products are twice the forward's (gradients of the inputs and of the weights; for the attention,
    of q, k, v and the scores), so 3 x the forward, divided by `seq_len`."""
    flops = forward_flops(config, seq_len, causal)
    return 3.0 * (flops["linear"] + flops["attention"]) / seq_len
