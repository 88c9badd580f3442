"""Small shared helpers for the tests: tiny configs and models, random ids, the cache field name."""

import torch

from photon_hf import PhotonConfig, PhotonForCausalLM
from photon_hf.modeling_photon import CACHE_NAME

VOCAB = 61


def tiny_config(**overrides) -> PhotonConfig:
    """A PHOTON small enough for CPU tests: two encoder/decoder widths of GQA heads, odd vocabulary."""
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        chunk_sizes=[4, 4],
        converter_width=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    fields.update(overrides)
    return PhotonConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> PhotonForCausalLM:
    torch.manual_seed(seed)
    return PhotonForCausalLM(tiny_config(**overrides)).eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=generator)


def cache_of(output):
    """The cache field of a model or generate output, whatever this transformers version calls it."""
    return getattr(output, CACHE_NAME)
