"""PHOTON's named shapes, `PHOTON_PRESETS`, and `photon_preset(name)`, which builds a `PhotonConfig` of one.

Plain data, importable without torch or transformers: the `photon-hf` command line lists the names in its help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .configuration_photon import PhotonConfig

_PAPER = dict(vocab_size=32000, chunk_sizes=[4, 4], converter_width=2)  # the paper's hierarchy: L=2, C=(4,4), R=2
_CPU = dict(vocab_size=259, chunk_sizes=[4, 4], converter_width=2)  # same hierarchy; 259 = the byte tokenizer's vocab

# The one registry of named shapes: `photon_preset(name)`, `photon_hf.training.model_config(name, tokenizer)`,
# `photon-hf train/info --size NAME`, the benchmarks and the tests all read it.
PHOTON_PRESETS: dict[str, dict] = {
    # The paper's shapes (Tables 10-12): four stacks of equal depth, untied head.
    "photon-600m": dict(_PAPER, hidden_size=1664, intermediate_size=4096, num_attention_heads=32,
                        num_encoder_layers=4, num_decoder_layers=4),
    "photon-900m": dict(_PAPER, hidden_size=1792, intermediate_size=4608, num_attention_heads=32,
                        num_encoder_layers=5, num_decoder_layers=5),
    "photon-1.2b": dict(_PAPER, hidden_size=1920, intermediate_size=5120, num_attention_heads=32,
                        num_encoder_layers=6, num_decoder_layers=6),
    # Small shapes for CPUs: "tiny" for tests and smoke runs, "small" for the quickstart, "base" for a longer run.
    "tiny": dict(_CPU, hidden_size=64, intermediate_size=192, num_attention_heads=4, num_encoder_layers=1,
                 num_decoder_layers=1),
    "small": dict(_CPU, hidden_size=128, intermediate_size=384, num_attention_heads=4, num_encoder_layers=2,
                  num_decoder_layers=2),
    "base": dict(_CPU, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_encoder_layers=3,
                 num_decoder_layers=3),
}


def photon_preset(name: str, **overrides) -> PhotonConfig:
    """A `PhotonConfig` of a named shape from `PHOTON_PRESETS` (the paper's `photon-600m`, `photon-900m`,
    `photon-1.2b`, or the small CPU shapes `tiny`, `small`, `base`), with any field overridden."""
    from .configuration_photon import PhotonConfig

    if name not in PHOTON_PRESETS:
        raise ValueError(f"Unknown PHOTON preset {name!r}; choose one of {sorted(PHOTON_PRESETS)}.")
    fields = {key: list(value) if isinstance(value, list) else value for key, value in PHOTON_PRESETS[name].items()}
    fields.update(overrides)
    return PhotonConfig(**fields)
