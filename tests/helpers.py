"""Small shared helpers for the tests: tiny configs and models, random ids, the cache field name, the console
script."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from photon_hf import PhotonConfig, PhotonForCausalLM, photon_preset
from photon_hf.modeling_photon import CACHE_NAME

VOCAB = 61


def tiny_config(**overrides) -> PhotonConfig:
    """The registry's "tiny" shape for CPU tests, with what the tests need on top: GQA (2 KV heads for 4 query
    heads), two-layer local decoders, an odd vocabulary (61) and pad id 0 without bos/eos."""
    fields = dict(
        vocab_size=VOCAB,
        num_key_value_heads=2,
        num_decoder_layers=2,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    fields.update(overrides)
    return photon_preset("tiny", **fields)


def tiny_model(seed: int = 0, **overrides) -> PhotonForCausalLM:
    torch.manual_seed(seed)
    return PhotonForCausalLM(tiny_config(**overrides)).eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=generator)


def cache_of(output):
    """The cache field of a model or generate output, whatever this transformers version calls it."""
    return getattr(output, CACHE_NAME)


def console_script() -> str:
    """The installed `photon-hf` console script: the venv's bin/ first, even when it is not on PATH."""
    beside_python = Path(sys.executable).with_name("photon-hf")
    executable = str(beside_python) if beside_python.exists() else shutil.which("photon-hf")
    if executable is None:
        pytest.fail("the photon-hf console script is not installed: pip install -e .")
    return executable
