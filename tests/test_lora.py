"""PEFT on PHOTON: default LoRA targets cover every stack; train, save, reload, merge with equal logits; prompt
learning methods fail with a clear error."""

import pytest
import torch
from peft import (
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from train_helpers import tiny_model
from transformers import AutoModelForCausalLM

from photon_hf import lora_target_modules

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def _adapted(peft_model) -> set[str]:
    prefix = "base_model.model."
    return {name[len(prefix):] for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}


def test_default_targets_cover_every_stack():
    assert TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["photon"] == lora_target_modules()
    base = tiny_model(num_encoder_layers=[2, 1], num_decoder_layers=[1, 2])
    adapted = _adapted(get_peft_model(base, LoraConfig(task_type="CAUSAL_LM")))  # no target_modules given
    expected = set()
    for level, (encoder_layers, decoder_layers) in enumerate(zip([2, 1], [1, 2], strict=True)):
        for stack, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
            for layer in range(layers):
                expected |= {f"model.levels.{level}.{stack}.layers.{layer}.{p}" for p in PROJECTIONS}
    assert adapted == expected  # every projection of every stack, and nothing else (no chunker, converter, head)

    base = tiny_model()
    adapted = _adapted(get_peft_model(base, LoraConfig(target_modules=lora_target_modules(True, True))))
    extra = adapted - {name for name in adapted if name.endswith(PROJECTIONS)}
    # Level 0 concatenates C_1 embeddings of width D / C_1 and needs no chunker; level 1 has one.
    assert base.model.levels[0].chunker is None
    assert extra == {"model.levels.0.converter", "model.levels.1.chunker", "model.levels.1.converter"}


def test_train_save_reload_merge_keep_logits(tmp_path):
    base = tiny_model()
    ids = torch.randint(0, 259, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = base(ids).logits
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                            target_modules=lora_target_modules(include_converter=True)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(4):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    assert (trained - base_logits).abs().max() > 1e-3  # the adapter changed the model

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        reloaded_logits = reloaded(input_ids=ids).logits
        merged_logits = merged(ids).logits
    torch.testing.assert_close(reloaded_logits, trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged_logits, trained, rtol=0, atol=1e-5)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())

    # Generation through the adapter equals generation with the merged weights.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        through_adapter = reloaded.generate(input_ids=ids[:1, :10], max_new_tokens=20, do_sample=False)
        with_merged = merged.generate(ids[:1, :10], max_new_tokens=20, do_sample=False)
    assert torch.equal(through_adapter, with_merged)


def test_prompt_learning_gets_a_clear_error():
    ids = torch.randint(0, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    prefix = get_peft_model(
        tiny_model(),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_layers=2, token_dim=64,
                           num_attention_heads=4),
    )
    with pytest.raises(TypeError, match="prefix tuning"):
        prefix(input_ids=ids, labels=ids)
    with pytest.raises(TypeError, match="prefix tuning"):
        prefix.generate(input_ids=ids, max_new_tokens=3)
    # Prompt tuning prepends embeddings from the first vocabulary-sized table PEFT finds, PHOTON's encoder
    # embedding (width 16 here): the model then refuses the `inputs_embeds` and names the cause.
    prompt = get_peft_model(
        tiny_model(),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_layers=2, token_dim=16,
                           num_attention_heads=4),
    )
    with pytest.raises(ValueError, match="prompt tuning"):
        prompt(input_ids=ids, labels=ids)
    # PEFT's own defaults stop earlier: PHOTON's config has no single `num_hidden_layers` to build a prefix for.
    with pytest.raises(ValueError, match="num_layers"):
        get_peft_model(tiny_model(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
