"""PHOTON in vLLM: an out-of-tree model plugin that vLLM finds by itself.

`pip install` puts `photon_hf.vllm:register` in the `vllm.general_plugins` entry-point group; vLLM calls it once in
each process it starts (the API server, the engine core, every worker). It registers

- the model class for the architecture `PhotonForCausalLM` (by name: imported only when vLLM builds the model),
- PHOTON's state backend (`PHOTON_STATE`, `backend.PhotonStateBackend`),
- the configuration hook that sizes a request's state block and refuses what PHOTON cannot do (`config.py`),

and imports `photon_hf`, which registers `model_type="photon"` with transformers' `AutoConfig`, so folders from
`save_pretrained`, `photon-hf train` and `photon-hf export` load without `trust_remote_code`. This package is the only
place in photon_hf that imports vLLM; `import photon_hf` never loads it.
"""

ARCHITECTURE = "PhotonForCausalLM"
STATE_BACKEND = "PHOTON_STATE"


def register() -> None:
    """Register PHOTON with vLLM (idempotent: every registration is skipped when already there)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    import photon_hf  # noqa: F401  (AutoConfig learns model_type "photon")

    from .config import PhotonVllmConfig

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "photon_hf.vllm.model:PhotonVllmForCausalLM")
    if STATE_BACKEND not in MambaAttentionBackendEnum.__members__:
        MambaAttentionBackendEnum.register(STATE_BACKEND, "photon_hf.vllm.backend.PhotonStateBackend")
    # vLLM's per-architecture configuration hooks live in this dict (as Mamba's do); there is no public API for it.
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, PhotonVllmConfig)
