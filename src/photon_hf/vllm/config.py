"""The configuration hook vLLM runs for `PhotonForCausalLM` (`MODELS_CONFIG_MAP`), as `MambaModelConfig` does for
Mamba: one state block per request, sized for `max_model_len`, and a clear refusal of what PHOTON cannot do."""

from __future__ import annotations

from vllm.logger import init_logger
from vllm.model_executor.models.config import VerifyAndUpdateConfig

from .state import state_page_bytes

logger = init_logger(__name__)


class PhotonVllmConfig(VerifyAndUpdateConfig):
    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        cache, parallel = vllm_config.cache_config, vllm_config.parallel_config
        refusals = {
            "speculative decoding": vllm_config.speculative_config is not None,
            "tensor parallelism (--tensor-parallel-size > 1)": parallel.tensor_parallel_size > 1,
            "pipeline parallelism (--pipeline-parallel-size > 1)": parallel.pipeline_parallel_size > 1,
            "LoRA adapters (--enable-lora); merge the adapter into the model first": vllm_config.lora_config
            is not None,
            f"a KV-cache dtype of its own (--kv-cache-dtype {cache.cache_dtype}): its state takes the model's dtype":
            cache.cache_dtype not in ("auto", None),
        }
        refused = [what for what, asked in refusals.items() if asked]
        if refused:
            raise ValueError(f"PHOTON on vLLM does not support {'; '.join(refused)}. See docs/vllm.md.")
        if cache.enable_prefix_caching:
            logger.warning(
                "PHOTON on vLLM: prefix caching is turned off. A request's state is one block sized for "
                "max_model_len; vLLM's prefix caching for such state ('align' mode) would keep one such block per "
                "cached prefix chunk. See docs/vllm.md."
            )
            cache.enable_prefix_caching = False
        model = vllm_config.model_config
        cache.mamba_cache_mode = "none"
        cache.mamba_block_size = model.max_model_len
        content, page = state_page_bytes(model.hf_config, model.max_model_len, model.dtype)
        if page != content:
            cache.mamba_page_size_padded = page
