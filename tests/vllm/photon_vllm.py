"""Helpers of the vLLM tests: small PHOTON checkpoints (with the byte tokenizer, so a server can take text), the
reference generation they must equal, and a vLLM engine built and shut down in this process."""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

from helpers import tiny_config  # noqa: E402

from photon_hf import PhotonCache, PhotonForCausalLM  # noqa: E402
from photon_hf.data import byte_tokenizer  # noqa: E402
from photon_hf.modeling_photon import CACHE_NAME  # noqa: E402

MAX_MODEL_LEN = 256


def photon_checkpoint(folder: Path, seed: int = 1, **overrides) -> Path:
    """A tiny random PHOTON (the registry's "tiny" shape, GQA, the byte tokenizer's 259 ids) saved with its
    tokenizer. Its weights are scaled up (x3), so that greedy decoding does not settle into a repeated token. No
    end-of-sequence id, so that it generates the lengths asked for, as vLLM does with `ignore_eos`."""
    tokenizer = byte_tokenizer()
    fields = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = PhotonForCausalLM(tiny_config(**fields)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference(folder: Path, prompts: list[list[int]], max_tokens: list[int],
              dtype: torch.dtype = torch.float32) -> list[list[int]]:
    """`PhotonForCausalLM.generate`, greedy, each prompt alone, with a cache sized like vLLM's state
    (`max_cache_len=MAX_MODEL_LEN`: in bfloat16 a cache's length changes the attention's rounding), past any
    end-of-sequence token (vLLM's `ignore_eos`)."""
    model = PhotonForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    outputs = []
    for prompt, budget in zip(prompts, max_tokens, strict=True):
        cache = PhotonCache(model.config, max_cache_len=MAX_MODEL_LEN)
        out = model.generate(torch.tensor([prompt]), max_new_tokens=budget, do_sample=False, **{CACHE_NAME: cache})
        outputs.append(out[0, len(prompt):].tolist())
    return outputs


@contextlib.contextmanager
def engine(folder: Path, **kwargs):
    """A `vllm.LLM` on `folder` (token-id prompts, fp32, max_model_len 256 unless `kwargs` say otherwise), shut
    down on exit."""
    from vllm import LLM

    options = dict(model=str(folder), skip_tokenizer_init=True, dtype="float32", max_model_len=MAX_MODEL_LEN,
                   seed=0)
    options.update(kwargs)
    llm = LLM(**options)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def greedy(llm, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def rank_shares(model) -> list[tuple]:
    """What one tensor-parallel rank's model holds, block by block of every stack: (the query projection's class,
    query heads, key/value heads, the outputs `k_proj` keeps, the inputs `down_proj` keeps, key/value heads of the
    state blocks; vLLM's CPU layers pack their weights and drop the tensors, so the layers' own sizes). Run in
    each worker by `LLM.apply_model` (a module-level function: the workers unpickle it by name)."""
    return [
        (type(block.self_attn.q_proj).__name__, block.self_attn.num_heads, block.self_attn.num_kv_heads,
         block.self_attn.k_proj.output_size_per_partition, block.mlp.down_proj.input_size_per_partition,
         model.state.kv_heads)
        for level in model.model.levels for stack in (level.encoder, level.decoder) for block in stack.layers
    ]
