"""The cost model (`photon_hf.memory`): the Llama builders, the decode-step cost, the cache table and the training
FLOPs, the last against a measured count of a real forward and backward. (`kv_cache_bytes` against live caches:
test_config.py and test_generation.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM

from photon_hf import PhotonForCausalLM, kv_cache_bytes, llama_kv_cache_bytes, photon_preset
from photon_hf.memory import (
    cache_table,
    count_parameters,
    decode_step_cost,
    flop_matched_llama,
    format_bytes,
    forward_flops,
    llama_config_for,
    llama_layers,
    padded_length,
    parameter_matched_llama,
    roofline_step_ms,
    training_flops_per_token,
    training_state_bytes,
)


def test_same_size_llama_at_600m():
    config = photon_preset("photon-600m")
    llama = llama_config_for(config)
    assert llama_layers(config) == llama.num_hidden_layers == 16
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(llama).parameters())
    assert parameters == 610_915_968  # BENCH.md's vanilla 600M
    assert llama_kv_cache_bytes(config, 2176) == 2176 * 16 * 2 * 1664 * 2


def test_decode_step_cost_at_600m():
    config = photon_preset("photon-600m")
    context = 2048
    llama = decode_step_cost(config, "llama", context)
    photon = decode_step_cost(config, "photon", context)
    # Llama: every weight but the input embedding, once per step (bf16).
    assert llama["weight_bytes"] == pytest.approx((610_915_968 - 32000 * 1664) * 2, rel=1e-3)
    # Llama's per-sample bytes are its whole KV cache (plus the new entry) and the logits path.
    logits = 32000 * (2 * 2 + 16) + 1664 * 2
    assert llama["sample_bytes"] - logits == llama_kv_cache_bytes(config, context + 1, 1, torch.bfloat16)
    # PHOTON reads far fewer bytes per sample and step, and fewer weights per step.
    assert photon["weight_bytes"] < 0.5 * llama["weight_bytes"]
    assert (llama["sample_bytes"] - logits) / (photon["sample_bytes"] - logits) > 50  # about 60 at 2K
    assert photon["sample_flops"] < 0.6 * llama["sample_flops"] and photon["cache_copy_bytes"] == 0
    with pytest.raises(ValueError, match="mamba"):
        decode_step_cost(config, "mamba", context)


def test_decode_step_cost_reads_the_level_geometry():
    """A windowed level's reads stop growing with the context; the top level's keep growing at 1/P_L."""
    windowed = photon_preset("tiny", encoder_windows=[8, None])
    full = photon_preset("tiny")
    grow = {
        name: decode_step_cost(config, "photon", 8192)["sample_bytes"]
        - decode_step_cost(config, "photon", 4096)["sample_bytes"]
        for name, config in (("windowed", windowed), ("full", full))
    }
    entry = 2 * full.num_key_value_heads * full.head_dim * 2  # one bf16 KV entry of one layer
    top = full.levels[-1]
    assert grow["windowed"] == pytest.approx(4096 / top.tokens_per_unit**2 * top.num_encoder_layers * entry)
    assert grow["full"] > grow["windowed"]
    cost = decode_step_cost(full, "photon", 4096)
    assert roofline_step_ms(cost, 1, bandwidth=1e12, flop_rate=1e30) == pytest.approx(
        (cost["weight_bytes"] + cost["sample_bytes"]) / 1e12 * 1e3
    )


def test_cache_table_and_format():
    config = photon_preset("small")
    rows = cache_table(config, [1024, 4096], torch.float32)
    assert rows == [
        (n, kv_cache_bytes(config, n, dtype=torch.float32), llama_kv_cache_bytes(config, n, dtype=torch.float32))
        for n in (1024, 4096)
    ]
    assert all(llama > 8 * photon for _, photon, llama in rows)
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


# ------------------------------------------------------------------------------------------- training FLOPs
def _measured_step(model, ids, monkeypatch) -> tuple[int, float]:
    """One forward + backward of `model` on `ids`: (matmul FLOPs as `FlopCounterMode` counts them with PyTorch's
    math SDPA, whose QK^T and AV are plain bmm's over the full rectangle; the attention FLOPs of the (query, key)
    pairs the masks let through, counted at every SDPA call, forward x 3 for forward + backward)."""
    visible = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        shape = (*q.shape[:-1], k.shape[-2])  # [N, H, S_q, S_k]
        if attn_mask is not None:
            allowed = attn_mask if attn_mask.dtype == torch.bool else torch.isfinite(attn_mask)
            pairs = int(allowed.expand(shape).sum())
        elif is_causal:
            pairs = int(torch.ones(shape[-2:], dtype=torch.bool).tril().sum()) * shape[0] * shape[1]
        else:
            pairs = math.prod(shape)
        visible.append(4.0 * pairs * q.shape[-1])
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    # The rotary angles (positions x inverse frequencies) are no model FLOPs; transformers 5.17's Llama forms them
    # with a matmul, which the counter sees (5.19 on: no matmul).
    angles = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith("rotary_emb"))
    return counter.get_total_flops() - angles, 3.0 * sum(visible)


PHOTON_SHAPES = {
    "default [4,4]": dict(),
    "look-back 6, GQA": dict(decoder_lookback=6, num_key_value_heads=2),
    "L=1": dict(chunk_sizes=[4], converter_width=[3], num_encoder_layers=[2], num_decoder_layers=[1]),
    "L=3, windows, E != D/C": dict(chunk_sizes=[2, 2, 2], converter_width=[1, 2, 2], encoder_embed_size=24,
                                   encoder_windows=[3, 2, None], num_decoder_layers=[2, 1, 1]),
    "self decoding": dict(decoder_input="self", chunk_sizes=[2, 4]),
}


@pytest.mark.parametrize("seq_len", [30, 48])
@pytest.mark.parametrize("shape", sorted(PHOTON_SHAPES))
def test_training_flops_equal_a_measured_count(shape, seq_len, monkeypatch):
    """The analytic matmul FLOPs of a training step equal `FlopCounterMode`'s count of a real forward + backward
    exactly (both are integers in float64): every Linear, on the padded sequence, and the attention's rectangle;
    and the causal count equals the pairs the real masks let through. 30 tokens are padded to 32 (L=1: 32;
    L=3: 32), 48 to 64: a multiple of P_L still gets one more meta-chunk, for the window of position T."""
    config = photon_preset("tiny", **PHOTON_SHAPES[shape])
    torch.manual_seed(0)
    model = PhotonForCausalLM(config)
    batch = 2
    ids = torch.randint(0, config.vocab_size, (batch, seq_len))
    measured, visible = _measured_step(model, ids, monkeypatch)
    dense = forward_flops(config, seq_len, causal=False)
    assert measured == 3 * batch * (dense["linear"] + dense["attention"])
    causal = forward_flops(config, seq_len)
    assert causal["linear"] == dense["linear"] and causal["attention"] < dense["attention"]
    assert visible == 3 * batch * causal["attention"]
    assert training_flops_per_token(config, seq_len) == 3 * (causal["linear"] + causal["attention"]) / seq_len
    assert padded_length(config, seq_len) % config.levels[-1].tokens_per_unit == 0
    assert padded_length(config, seq_len) > seq_len


def test_llama_training_flops_equal_a_measured_count(monkeypatch):
    config = llama_config_for(photon_preset("tiny", num_key_value_heads=2), 3)
    torch.manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (2, 30))
    measured, visible = _measured_step(LlamaForCausalLM(config), ids, monkeypatch)
    dense, causal = forward_flops(config, 30, causal=False), forward_flops(config, 30)
    assert measured == 3 * 2 * (dense["linear"] + dense["attention"])
    assert visible == 3 * 2 * causal["attention"] == 3 * 2 * 3 * 4 * 4 * 16 * (30 * 31 / 2)


def test_padding_and_lookback_count():
    """What the old quality-study formula left out: the padding to whole meta-chunks costs PHOTON linear work
    that grows with the pad, and a look-back of W adds W keys per decoder slot (and one slot per window)."""
    config = photon_preset("tiny")
    per_token = {n: forward_flops(config, n)["linear"] for n in (15, 16)}
    assert padded_length(config, 15) == 16 and padded_length(config, 16) == 32
    assert per_token[16] > per_token[15] * 16 / 15 * 1.3  # 16 tokens run two meta-chunks
    lookback = photon_preset("tiny", decoder_lookback=8)
    assert forward_flops(lookback, 512)["attention"] > forward_flops(config, 512)["attention"]
    assert training_flops_per_token(lookback, 512) > training_flops_per_token(config, 512)


def test_matched_llamas():
    photon = photon_preset("small")
    chosen = flop_matched_llama(photon, 512)
    target = training_flops_per_token(photon, 512)
    assert chosen.hidden_size == photon.hidden_size and not chosen.tie_word_embeddings
    for layers in (chosen.num_hidden_layers - 1, chosen.num_hidden_layers + 1):
        other = llama_config_for(photon, max(1, layers))
        assert abs(math.log(training_flops_per_token(other, 512) / target)) >= abs(
            math.log(training_flops_per_token(chosen, 512) / target))
    size = parameter_matched_llama(photon)
    for layers in (size.num_hidden_layers - 1, size.num_hidden_layers + 1):
        assert abs(math.log(count_parameters(llama_config_for(photon, layers)) / count_parameters(photon))) >= abs(
            math.log(count_parameters(size) / count_parameters(photon)))
    assert llama_config_for(photon, 5, max_position_embeddings=4096).max_position_embeddings == 4096


def test_training_flops_per_token_of_the_600m_shapes():
    """Sanity at scale: the vanilla 600M Llama does about 6 x 0.61 GFLOP per token in matmuls (plus attention), and
    PHOTON's four stacks of four layers do fewer per token (the encoders see 1/4 and 1/16 of the tokens)."""
    config = photon_preset("photon-600m")
    matmul = 6 * (16 * (4 * 1664**2 + 3 * 1664 * 4096) + 1664 * 32000)
    assert matmul < training_flops_per_token(llama_config_for(config), 2048) < 1.2 * matmul
    assert 0.3 * matmul < training_flops_per_token(config, 2048) < 0.7 * matmul


def test_training_state_bytes_per_strategy():
    """AdamW's 16 bytes a parameter (fp32 weights, gradients, two moments) kept whole by DDP and split by the
    sharding strategies; DeepSpeed's mixed precision keeps bf16 weights and gradients beside 12 bytes of fp32 state."""
    config = photon_preset("photon-600m")
    parameters = count_parameters(config)
    assert training_state_bytes(config, "ddp", 8)["total"] == 16 * parameters
    assert training_state_bytes(config, "fsdp2", 8)["total"] == 16 * parameters / 8
    assert training_state_bytes(config, "zero3", 8)["total"] == (2 + 2 + 12) * parameters / 8
    zero2 = training_state_bytes(config, "zero2", 8)
    assert zero2["weights"] == 2 * parameters and zero2["total"] == 2 * parameters + 14 * parameters / 8
    fp32 = training_state_bytes(config, "zero2", 8, mixed_precision=False)
    assert fp32["total"] == 4 * parameters + 12 * parameters / 8
    with pytest.raises(ValueError, match="strategy"):
        training_state_bytes(config, "zero4")
