"""photon_hf: PHOTON hierarchical language models (arXiv 2512.20687) for Hugging Face transformers.

Importing the package registers `PhotonConfig` (model_type "photon"), `PhotonModel` and `PhotonForCausalLM` with
`AutoConfig`, `AutoModel` and `AutoModelForCausalLM`, and (when PEFT is installed) PHOTON's default LoRA target
modules, which `configuration_photon.py` registers on import, in Hub exports too. Memory accounting lives in
`photon_hf.memory`; training helpers in `photon_hf.data` and `photon_hf.training`; Hub export in `photon_hf.hub`;
the `photon-hf` command line in `photon_hf.cli`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_photon import PhotonCache, PhotonLevelCache, PhotonRows, PhotonStep
from .configuration_photon import PhotonConfig, PhotonLevelGeometry
from .data import byte_tokenizer
from .hub import export_for_hub
from .lora import lora_target_modules
from .memory import kv_cache_bytes, llama_kv_cache_bytes
from .modeling_photon import PhotonForCausalLM, PhotonModel, PhotonPreTrainedModel
from .presets import PHOTON_PRESETS, photon_preset

__version__ = "0.1.0"

AutoConfig.register(PhotonConfig.model_type, PhotonConfig, exist_ok=True)
AutoModel.register(PhotonConfig, PhotonModel, exist_ok=True)
AutoModelForCausalLM.register(PhotonConfig, PhotonForCausalLM, exist_ok=True)

__all__ = [
    "PHOTON_PRESETS",
    "PhotonCache",
    "PhotonConfig",
    "PhotonForCausalLM",
    "PhotonLevelCache",
    "PhotonLevelGeometry",
    "PhotonModel",
    "PhotonPreTrainedModel",
    "PhotonRows",
    "PhotonStep",
    "byte_tokenizer",
    "export_for_hub",
    "kv_cache_bytes",
    "llama_kv_cache_bytes",
    "lora_target_modules",
    "photon_preset",
]
