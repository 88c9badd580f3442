"""PHOTON through `vllm.LLM.generate` equals `PhotonForCausalLM.generate` run on each prompt alone, greedy, token
for token: over the model's variants (one to three levels, windowed encoders, a token look-back, "self" decoding,
GQA, bfloat16), prompts from one token to several meta-chunks, requests joining, leaving and reusing state blocks
(three at a time), chunked prefill cutting prompts at any token (a small token budget), and requests preempted and
recomputed; and two tensor-parallel ranks."""

import os
import random
import time

import pytest
import torch
from photon_vllm import MAX_MODEL_LEN, engine, greedy, photon_checkpoint, rank_shares, reference

from photon_hf.modeling_photon import PhotonModel

VARIANTS = {
    "base": dict(),  # chunk sizes [4, 4], GQA (2 KV heads for 4 query heads)
    "three-levels-windows-lookback": dict(chunk_sizes=[2, 2, 2], encoder_windows=[4, 3, None], decoder_lookback=3),
    "self": dict(decoder_input="self"),
    "one-level": dict(chunk_sizes=[4], num_key_value_heads=4),
}


def workload(seed: int, count: int = 12):
    """Prompt lengths from 1 to 130 tokens (several meta-chunks), a different budget for each request."""
    rng = random.Random(seed)
    lengths = [1, 3, 4, 5, 7, 15, 16, 17, 29, 33, 63, 130][:count]
    prompts = [[rng.randint(0, 255) for _ in range(n)] for n in lengths]
    return prompts, [rng.randint(6, 18) for _ in prompts]


@pytest.fixture
def continuations(monkeypatch):
    """Counts the rows `PhotonModel.extend` continued in whole units after cached tokens (chunked prefill's fast
    path), so a test can show the path ran."""
    counts = {"continued": 0}
    original = PhotonModel._continue_units

    def counting(self, cache, index, before, *args, **kwargs):
        counts["continued"] += sum(1 for count in before if count)
        return original(self, cache, index, before, *args, **kwargs)

    monkeypatch.setattr(PhotonModel, "_continue_units", counting)
    return counts


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_equals_generate_alone(tmp_path, variant, continuations):
    folder = photon_checkpoint(tmp_path / variant, **VARIANTS[variant])
    prompts, budgets = workload(seed=len(variant))
    with engine(folder, max_num_seqs=3, max_num_batched_tokens=40) as llm:
        got = greedy(llm, prompts, budgets)
    expected = reference(folder, prompts, budgets)
    assert sum(g == e for g, e in zip(got, expected, strict=True)) == len(prompts), [
        (len(p), g, e) for p, g, e in zip(prompts, got, expected, strict=True) if g != e]
    assert continuations["continued"] > 0  # prompts continued chunk by chunk through whole units


def test_bfloat16_equals_generate_with_a_cache_of_the_same_size(tmp_path):
    folder = photon_checkpoint(tmp_path / "bf16")
    prompts, budgets = workload(seed=3)
    with engine(folder, dtype="bfloat16", max_num_seqs=4, max_num_batched_tokens=64) as llm:
        got = greedy(llm, prompts, budgets)
        [linears] = llm.apply_model(lambda model: {type(m).__name__ for m in model.modules() if "Linear" in
                                                   type(m).__name__})
    assert linears == {"PackedLinear"}  # every product through oneDNN with its weight packed once
    assert got == reference(folder, prompts, budgets, dtype=torch.bfloat16)


def test_preempted_requests_are_recomputed_exactly(tmp_path):
    """Every few steps the scheduler preempts a running request (as it does when memory runs out): vLLM frees its
    state block and later prefills it again from its prompt and the tokens it had generated."""
    folder = photon_checkpoint(tmp_path / "preempt")
    prompts, budgets = workload(seed=5)
    with engine(folder, max_num_seqs=4, max_num_batched_tokens=48) as llm:
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        schedule, preempted = scheduler.schedule, []

        def preempting(*args, **kwargs):
            running = [r for r in scheduler.running if r.num_output_tokens >= 2]
            if scheduler.current_step % 4 == 3 and running:
                request = running[0]
                scheduler.running.remove(request)
                scheduler._preempt_request(request, time.monotonic())
                preempted.append(request.request_id)
            return schedule(*args, **kwargs)

        scheduler.schedule = preempting
        got = greedy(llm, prompts, budgets)
    assert len(preempted) >= 3
    assert got == reference(folder, prompts, budgets)


def test_the_state_block_is_the_cost_models_row_and_sets_the_concurrency(tmp_path):
    """vLLM allocates one block of `kv_cache_bytes(config, max_model_len)` per request, and the number of blocks (its
    maximum concurrency) is the budget divided by that."""
    from photon_hf import kv_cache_bytes
    from photon_hf.configuration_photon import PhotonConfig

    folder = photon_checkpoint(tmp_path / "bytes")
    with engine(folder) as llm:
        config = llm.llm_engine.vllm_config
        kv_config = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
    spec = kv_config.kv_cache_groups[0].kv_cache_spec
    expected = kv_cache_bytes(PhotonConfig.from_pretrained(folder), MAX_MODEL_LEN, dtype=torch.float32)
    assert spec.page_size_bytes == expected and spec.block_size == MAX_MODEL_LEN
    assert config.cache_config.mamba_cache_mode == "none" and not config.cache_config.enable_prefix_caching
    budget = config.cache_config.kv_cache_memory_bytes  # VLLM_CPU_KVCACHE_SPACE, 1 GiB here
    assert budget == 1 << 30 and kv_config.num_blocks == budget // expected


@pytest.mark.parametrize("variant", ["base", "three-levels-windows-lookback", "self"])
def test_two_tensor_parallel_ranks_split_every_stack_and_generate_exactly(tmp_path, monkeypatch, variant):
    """`tensor_parallel_size=2` (two worker processes): every block of every stack keeps half the heads and half
    the MLP width, each rank's state blocks half the key/value heads, and the output equals `generate` alone."""
    cpus = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{cpus[0]}|{cpus[-1]}")  # one NUMA node: bind each rank
    folder = photon_checkpoint(tmp_path / variant, **VARIANTS[variant])  # 4 query heads, 2 key/value, MLP 192
    prompts, budgets = workload(seed=7)
    with engine(folder, tensor_parallel_size=2, max_num_seqs=3, max_num_batched_tokens=40) as llm:
        shares = llm.apply_model(rank_shares)
        got = greedy(llm, prompts, budgets)
    head_dim = 64 // 4
    assert len(shares) == 2 and all(len(rank) == len(shares[0]) > 0 for rank in shares)
    assert {entry for rank in shares for entry in rank} == {
        ("ColumnParallelLinear", 2, 1, head_dim, 192 // 2, 1)}
    assert got == reference(folder, prompts, budgets)
