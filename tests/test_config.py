"""PhotonConfig: fields, validation, registration, presets and the analytic cache size."""

import pytest
import torch
from helpers import tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import photon_hf
from photon_hf import PhotonConfig, PhotonForCausalLM, PhotonModel, kv_cache_bytes, llama_kv_cache_bytes


def test_per_level_fields_broadcast():
    config = tiny_config(chunk_sizes=[2, 3, 2], converter_width=[1, 2, 3], num_encoder_layers=2)
    assert config.num_levels == 3
    assert config.converter_width == [1, 2, 3]
    assert config.num_encoder_layers == [2, 2, 2]
    assert config.tokens_per_unit == [2, 6, 12]
    assert config.encoder_embed_size == config.hidden_size // 2  # hidden / C_1


def test_auto_classes_are_registered(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PhotonConfig)
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert isinstance(AutoModel.from_config(config), PhotonModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), PhotonForCausalLM)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("chunk_sizes", [], "chunk_sizes"),
        ("chunk_sizes", [4, 0], "chunk_sizes"),
        ("chunk_sizes", [4, -2], "chunk_sizes"),
        ("chunk_sizes", 4, "chunk_sizes"),
        ("hidden_size", 30, "num_attention_heads"),
        ("num_key_value_heads", 3, "num_key_value_heads"),
        ("decoder_input", "teacher", "decoder_input"),
        ("encoder_windows", [2], "encoder_windows"),
        ("encoder_windows", [0, None], "encoder_windows"),
        ("encoder_windows", [2.5, None], "encoder_windows"),
        ("converter_width", [2, 2, 2], "converter_width"),
        ("converter_width", 0, "converter_width"),
        ("num_encoder_layers", [1], "num_encoder_layers"),
        ("num_decoder_layers", 0, "num_decoder_layers"),
        ("vocab_size", 0, "vocab_size"),
        ("recursive_loss_weight", -0.1, "recursive_loss_weight"),
        ("kernel_backend", "cuda", "kernel_backend"),
        ("decoder_lookback", 0, "decoder_lookback"),
        ("decoder_lookback", 2.5, "decoder_lookback"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_recursive_loss_needs_a_bottleneck():
    with pytest.raises(ValueError, match="recursive_loss_weight"):
        tiny_config(chunk_sizes=[4], recursive_loss_weight=0.3)
    tiny_config(chunk_sizes=[4, 4], recursive_loss_weight=0.3)


def test_odd_head_dim_is_rejected_for_rope():
    with pytest.raises(ValueError, match="even"):
        tiny_config(hidden_size=36, num_attention_heads=4, num_key_value_heads=4)


def test_600m_preset_parameter_count():
    """The paper's table counts 646,399,104; we add one learned 1664-wide start latent."""
    config = photon_hf.photon_preset("photon-600m")
    with torch.device("meta"):
        model = PhotonForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 646_399_104 + 1664
    assert PhotonConfig().to_dict() == config.to_dict()  # the defaults are the 600M shape
    with pytest.raises(ValueError, match="preset"):
        photon_hf.photon_preset("photon-7b")


def test_600m_cache_is_10x_smaller_than_llama_at_2176_tokens():
    config = photon_hf.photon_preset("photon-600m")
    photon = kv_cache_bytes(config, 2176)
    llama = llama_kv_cache_bytes(config, 2176)
    # Llama: 2176 tokens x 16 layers x K,V x 1664 x bf16
    assert llama == 2176 * 16 * 2 * 1664 * 2
    assert llama / photon >= 10


def test_windowed_intermediate_encoder_bounds_the_cache():
    config = tiny_config(chunk_sizes=[4, 4], encoder_windows=[8, None])
    full = tiny_config(chunk_sizes=[4, 4])
    # Only the top stream grows: 1/16 of the token rate, against 1/4 + 1/16 for full encoders.
    grow = kv_cache_bytes(config, 4096) - kv_cache_bytes(config, 2048)
    grow_full = kv_cache_bytes(full, 4096) - kv_cache_bytes(full, 2048)
    per_entry = 2 * config.num_key_value_heads * config.head_dim * 2
    assert grow == 2048 // 16 * per_entry
    assert grow_full == (2048 // 4 + 2048 // 16) * per_entry


def test_level_geometry_is_derived_from_the_per_level_fields():
    config = tiny_config(chunk_sizes=[2, 3, 2], converter_width=[1, 2, 3], num_decoder_layers=[1, 2, 1],
                         encoder_windows=[None, 4, None], decoder_input="self")
    levels = config.levels
    assert [lv.index for lv in levels] == [0, 1, 2]
    assert [lv.tokens_per_unit for lv in levels] == [2, 6, 12]
    assert [lv.tokens_per_subunit for lv in levels] == [1, 2, 6]
    assert [lv.decoder_slots for lv in levels] == [1 + 2 - 1, 2 + 3 - 1, 3 + 2 - 1]
    d = config.hidden_size
    assert [lv.input_width for lv in levels] == [d // 2, d, d]  # E = D / C_1 at the bottom
    assert [lv.num_decoder_layers for lv in levels] == [1, 2, 1]
    assert [lv.encoder_window for lv in levels] == [None, 4, None]
    assert [lv.self_decoding for lv in levels] == [False, True, True]  # level 0 always reads tokens
    assert [lv.is_top for lv in levels] == [False, False, True]
    assert not any(lv.self_decoding for lv in tiny_config().levels)
    assert not tiny_config(chunk_sizes=[4], decoder_input="self").levels[0].self_decoding
    assert [lv.decoder_cache_slots for lv in levels] == [lv.decoder_slots for lv in levels]  # no look-back
    # A look-back of W tokens is the token decoder's alone: W more entries and one more slot (the chunk's last token).
    lookback = tiny_config(chunk_sizes=[2, 3], converter_width=[1, 2], decoder_lookback=5).levels
    assert [lv.decoder_lookback for lv in lookback] == [5, 0]
    assert [lv.decoder_slots for lv in lookback] == [1 + 2, 2 + 3 - 1]
    assert [lv.decoder_cache_slots for lv in lookback] == [5 + 1 + 2, 2 + 3 - 1]
