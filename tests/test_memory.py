"""Memory accounting (`photon_hf.memory`): the same-size Llama, the decode-step cost model and the cache table.
(`kv_cache_bytes` against live caches: test_config.py and test_generation.py.)"""

import pytest
import torch
from transformers import LlamaForCausalLM

from photon_hf import kv_cache_bytes, llama_kv_cache_bytes, photon_preset
from photon_hf.memory import (
    cache_table,
    decode_step_cost,
    format_bytes,
    llama_config_for,
    llama_layers,
    roofline_step_ms,
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
