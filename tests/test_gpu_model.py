"""Model checks that need a CUDA GPU (`pytest -m gpu`): exactness on the device, no host sync per step, and the
compiled decode step (generate's auto-compile, CUDA graphs) equal to eager decoding."""

import pytest
import torch
from helpers import random_ids, tiny_config
from torch._dynamo.utils import counters
from transformers import CompileConfig

from photon_hf import PhotonCache, PhotonForCausalLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _model(dtype, **overrides):
    torch.manual_seed(0)
    config = tiny_config(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                         kernel_backend="torch", **overrides)
    return PhotonForCausalLM(config).to("cuda", dtype).eval()


@pytest.mark.parametrize(
    "overrides",
    [dict(chunk_sizes=[4, 4]), dict(chunk_sizes=[2, 2, 2], encoder_windows=[2, 3, None]),
     dict(chunk_sizes=[4, 4], decoder_lookback=5)],
)
def test_generation_equals_full_forward_on_gpu(overrides):
    model = _model(torch.float32, **overrides)
    ids = random_ids(3, 11).cuda()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=40, min_new_tokens=40, output_logits=True,
                         return_dict_in_generate=True, disable_compile=True)
    full_mask = torch.cat([mask, torch.ones(3, 40, dtype=mask.dtype, device="cuda")], 1)
    full = model(out.sequences, attention_mask=full_mask, use_cache=False).logits[:, 10:-1]
    assert torch.allclose(torch.stack(out.logits, 1), full.float(), atol=1e-3)


def test_bf16_generation_tracks_the_full_forward():
    model = _model(torch.bfloat16)
    ids = random_ids(4, 16).cuda()
    out = model.generate(ids, max_new_tokens=32, min_new_tokens=32, output_logits=True, return_dict_in_generate=True,
                         disable_compile=True)
    full = model(out.sequences, use_cache=False).logits[:, 15:-1].float()
    step = torch.stack(out.logits, 1)
    assert (step - full).abs().max() < 0.1 * full.abs().max()
    assert (step.argmax(-1) == full.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (0, 3, 7, 16)], ids=["aligned", "ragged"])
def test_decode_steps_never_synchronize(pads):
    """A decode step must not wait for the GPU: which rows step which level comes from CPU-side counts."""
    model = _model(torch.bfloat16)
    ids = random_ids(4, 24).cuda()
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    cache = PhotonCache(model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        token = ids[:, -1:]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2 * model.config.tokens_per_unit[-1] + 3):  # every level steps, several times
                logits = model(token, cache=cache, use_cache=True).logits
                token = logits[:, -1:].argmax(-1)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_compiled_generate_equals_eager_and_never_synchronizes():
    """With a compileable cache (generate builds one) generate compiles the decode step on its own (CompileConfig's
    default: inductor, mode="reduce-overhead", i.e. CUDA graphs): tokens equal eager decoding, no graph break, at
    most P_L graphs; and once captured, decode steps run without a host-device sync."""
    model = _model(torch.float32, chunk_sizes=[2, 2, 2], encoder_windows=[2, 3, None])
    period = model.config.tokens_per_unit[-1]
    ids = random_ids(3, 11).cuda()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=3 * period, min_new_tokens=3 * period, do_sample=False)
    eager = model.generate(ids, disable_compile=True, **kwargs)
    torch._dynamo.reset()
    counters.clear()
    compiled = model.generate(ids, **kwargs)
    assert torch.equal(compiled, eager)
    assert sum(counters["graph_break"].values()) == 0
    assert 1 <= counters["stats"]["unique_graphs"] <= period

    step = model.model.compiled_decode_column(CompileConfig())  # the same compiled step generate used
    cache = PhotonCache(model.config, max_cache_len=ids.shape[1] + 4 * period)
    with torch.no_grad():
        token = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1:].argmax(-1)
        for _ in range(2 * period):  # every step variant is captured (or re-recorded for this cache's storage)
            token = model(token, cache=cache, decode_step=step).logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(period + 1):
                token = model(token, cache=cache, decode_step=step).logits[:, -1:].argmax(-1)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_view_continued_in_chunks_on_gpu(backend):
    """vLLM's path on the device: a view over per-request state at scattered rows, prompts continued in chunks and
    decoded (`PhotonModel.extend`); with the Triton decode kernel the cache is read in place by row index. Every
    state equals the full forward's."""
    from photon_hf.attention_photon import photon_ops

    model = _model(torch.float32, chunk_sizes=[4, 4], decoder_lookback=3)
    model.config.kernel_backend = backend
    config, length = model.config, 96
    states = {name: torch.zeros(9, *shape, dtype=dtype, device="cuda")
              for name, shape, dtype in PhotonCache.state_layout(config, length, torch.float32)}
    cache = PhotonCache.over_states(config, length, states)
    requests = [random_ids(1, n, seed=n)[0].cuda() for n in (90, 37, 5)]
    rows, done = torch.tensor([7, 2, 4], device="cuda"), [0, 0, 0]
    ops = photon_ops(config, torch.device("cuda"), torch.float32)
    with torch.no_grad():
        full = [model(ids[None], use_cache=False).logits[0] for ids in requests]
        for chunk in (33, 1, 40, 1, 1, 20):
            lengths = [min(chunk, len(ids) - d) for ids, d in zip(requests, done, strict=True)]
            live = [g for g, n in enumerate(lengths) if n > 0]
            tokens = torch.zeros(len(live), max(lengths), dtype=torch.long, device="cuda")
            for i, g in enumerate(live):
                tokens[i, : lengths[g]] = requests[g][done[g] : done[g] + lengths[g]]
            hidden = model.model.extend(cache, rows[live], [done[g] for g in live], tokens, [lengths[g] for g in live],
                                        ops)
            for i, g in enumerate(live):
                done[g] += lengths[g]
                assert torch.allclose(model.lm_head(hidden[i]), full[g][done[g] - 1], atol=1e-4)
