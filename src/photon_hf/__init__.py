"""photon_hf: PHOTON hierarchical language models (arXiv 2512.20687) for Hugging Face transformers.

Importing the package registers `PhotonConfig` (model_type "photon"), `PhotonModel` and `PhotonForCausalLM` with
`AutoConfig`, `AutoModel` and `AutoModelForCausalLM`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_photon import PhotonCache, kv_cache_bytes, llama_kv_cache_bytes
from .configuration_photon import PHOTON_PRESETS, PhotonConfig, photon_preset
from .modeling_photon import PhotonForCausalLM, PhotonModel, PhotonPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(PhotonConfig.model_type, PhotonConfig, exist_ok=True)
AutoModel.register(PhotonConfig, PhotonModel, exist_ok=True)
AutoModelForCausalLM.register(PhotonConfig, PhotonForCausalLM, exist_ok=True)

__all__ = [
    "PHOTON_PRESETS",
    "PhotonCache",
    "PhotonConfig",
    "PhotonForCausalLM",
    "PhotonModel",
    "PhotonPreTrainedModel",
    "kv_cache_bytes",
    "llama_kv_cache_bytes",
    "photon_preset",
]
