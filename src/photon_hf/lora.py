"""PEFT / LoRA for PHOTON.

`import photon_hf` (and loading an exported model with `trust_remote_code`: the registration lives in
`configuration_photon.py`) registers default LoRA target modules for `model_type="photon"` in PEFT (when PEFT is
installed), so `LoraConfig(task_type="CAUSAL_LM")` without `target_modules` adapts the attention and MLP
projections of every stack: each level's context encoder and local decoder. `lora_target_modules` gives the same
list, optionally with each level's chunker and converter, for an explicit `LoraConfig(target_modules=...)`.

PHOTON's modules are plain `nn.Linear`s with stable names, and no kernel reads their weights behind LoRA's back,
so `get_peft_model`, training, `save_pretrained`, `PeftModel.from_pretrained`, `generate` and `merge_and_unload`
all work unchanged. Prompt-learning methods (prefix tuning, prompt tuning, p-tuning) do not: they inject a standard
per-layer KV cache or `inputs_embeds`, which the hierarchical model rejects with an error that says so.
"""

from __future__ import annotations

from .configuration_photon import LORA_TARGET_MODULES, register_peft_defaults

__all__ = ["LORA_TARGET_MODULES", "lora_target_modules", "register_peft_defaults"]


def lora_target_modules(include_chunker: bool = False, include_converter: bool = False) -> list[str]:
    """Module-name suffixes for `peft.LoraConfig(target_modules=...)`.

    The attention (`q_proj`, `k_proj`, `v_proj`, `o_proj`) and SwiGLU (`gate_proj`, `up_proj`, `down_proj`)
    projections of every encoder and decoder stack of every level (`LORA_TARGET_MODULES`, PEFT's default for PHOTON);
    with `include_chunker` also each level's chunker (the Linear that merges C units into one; level 0 has none when
    C_1 * E equals the hidden size), with `include_converter` each level's converter (the Linear that expands a latent
    into the decoder's prefix).
    """
    targets = list(LORA_TARGET_MODULES)
    if include_chunker:
        targets.append("chunker")
    if include_converter:
        targets.append("converter")
    return targets
