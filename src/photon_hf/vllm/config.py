"""What vLLM may ask of PHOTON: the configuration hook it runs for `PhotonForCausalLM` (`MODELS_CONFIG_MAP`), as
`MambaModelConfig` does for Mamba (one state block per request, sized for `max_model_len`; a clear refusal at start-up
of what PHOTON cannot do), and a per-request check that refuses what a request cannot get (`PhotonRequestCheck`)."""

from __future__ import annotations

import torch
from vllm.exceptions import VLLMValidationError
from vllm.logger import init_logger
from vllm.model_executor.models.config import VerifyAndUpdateConfig
from vllm.v1.sample.logits_processor import LogitsProcessor

from .state import state_page_bytes

logger = init_logger(__name__)


class PhotonVllmConfig(VerifyAndUpdateConfig):
    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        cache, parallel, model = vllm_config.cache_config, vllm_config.parallel_config, vllm_config.model_config
        tp, config = parallel.tensor_parallel_size, model.hf_config
        shares = {"attention heads": config.num_attention_heads, "key/value heads": config.num_key_value_heads,
                  "MLP width (intermediate_size)": config.intermediate_size}
        refusals = {
            "speculative decoding": vllm_config.speculative_config is not None,
            **{f"--tensor-parallel-size {tp}: its {what} ({size}) do not split evenly over {tp} ranks": size % tp != 0
               for what, size in shares.items()},
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
        check = f"{PhotonRequestCheck.__module__}:{PhotonRequestCheck.__qualname__}"
        if check not in (model.logits_processors or []):
            model.logits_processors = [*(model.logits_processors or []), check]
        cache.mamba_cache_mode = "none"
        cache.mamba_block_size = model.max_model_len
        content, page = state_page_bytes(config, model.max_model_len, model.dtype, tp)
        if page != content:
            cache.mamba_page_size_padded = page


class PhotonRequestCheck(LogitsProcessor):
    """Refuses, with an HTTP 400 through vLLM's server, the sampling parameters PHOTON cannot honour: prompt
    log-probabilities (also what `echo` with `logprobs` asks for) need a state at every prompt token, and PHOTON
    computes one at each request's last token only. vLLM calls `validate_params` for every request; the processor
    itself changes no logits."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        if sampling_params.prompt_logprobs is not None:
            raise VLLMValidationError(
                "PHOTON on vLLM does not return prompt log-probabilities (prompt_logprobs, or echo with logprobs): "
                "it computes a state at each request's last prompt token only.",
                parameter="prompt_logprobs",
                value=sampling_params.prompt_logprobs,
            )

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update) -> None:
        pass
