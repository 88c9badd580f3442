"""Fuzz test of cached decoding against the full forward, in the style of transformers' and fla's generation parity
tests: random small configs (1-3 levels, chunk sizes 1-5, sliding windows or not, "encoder"/"self" decoding, GQA, a
token look-back or not), random prompt lengths and left-pad patterns, greedy and sampled continuations, static,
growing and recording caches (the last cropped and decoded again). Everything runs in float64, where the cached
steps must equal the uncached forward to 1e-9 relative: any bookkeeping error is orders of magnitude larger than
that. (The compiled step runs this same code; tests/test_compile.py checks it against eager decoding.)
"""

import math
import random

import pytest
import torch

from photon_hf import PhotonCache, PhotonConfig, PhotonForCausalLM
from photon_hf.attention_photon import photon_ops

VOCAB = 37
CASES = 400
SEEDS_PER_TEST = 20  # cases per parametrized test, so a failure names a small range of seeds


def random_config(rng: random.Random) -> PhotonConfig:
    """A random tiny PHOTON whose meta-chunk P_L stays short enough to be crossed a few times in a test."""
    levels = rng.choice([1, 2, 2, 3])
    while True:
        chunks = [rng.randint(1, 5) for _ in range(levels)]
        if math.prod(chunks) <= 18 and (levels == 1 or math.prod(chunks) > 1):
            break
    heads = rng.choice([2, 4])
    kv_heads = rng.choice([h for h in (1, 2, 4) if heads % h == 0])
    head_dim = rng.choice([4, 8])
    windows = None
    if rng.random() < 0.4:
        windows = [rng.choice([None, 1, 2, 3, 5]) for _ in range(levels)]
    decoder_input = rng.choice(["encoder", "self"])
    lookback = rng.choice([1, 2, 3, 6, 11]) if rng.random() < 0.3 else None
    return PhotonConfig(
        vocab_size=VOCAB,
        hidden_size=heads * head_dim,
        intermediate_size=rng.choice([16, 24]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        chunk_sizes=chunks,
        converter_width=[rng.randint(1, 3) for _ in range(levels)],
        num_encoder_layers=[rng.randint(1, 2) for _ in range(levels)],
        num_decoder_layers=[rng.randint(1, 2) for _ in range(levels)],
        encoder_windows=windows,
        decoder_input=decoder_input,
        decoder_lookback=lookback,
        kernel_backend="torch",
        pad_token_id=0,
    )


def random_case(seed: int):
    """A model (float64) and a left-padded prompt batch with its attention mask."""
    rng = random.Random(seed)
    config = random_config(rng)
    torch.manual_seed(seed)
    model = PhotonForCausalLM(config).to(torch.float64).eval()
    period = config.tokens_per_unit[-1]
    batch = rng.randint(1, 3)
    width = rng.randint(1, 2 * period + 3)
    lengths = [width] + [rng.randint(1, width) for _ in range(batch - 1)]
    rng.shuffle(lengths)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, width), generator=generator)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
        ids[row, : width - length] = 0
    new_tokens = rng.randint(period + 1, 2 * period + 4)
    return model, ids, mask, new_tokens, rng.random() < 0.5, rng.random() < 0.25, generator


def assert_matches(cached: torch.Tensor, full: torch.Tensor, what: str):
    scale = full.abs().max().item()
    error = (cached - full).abs().max().item()
    assert error <= 1e-9 * scale, f"{what}: max error {error:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("first", range(0, CASES, SEEDS_PER_TEST), ids=lambda s: f"seeds{s}-{s + SEEDS_PER_TEST - 1}")
def test_cached_steps_equal_the_full_forward_fp64(first):
    """Prefill a random left-padded prompt, then decode greedily or by sampling one column at a time: every step's
    logits equal the full (uncached) forward over the whole sequence, for every row. A quarter of the caches record
    the past (no rings; what assisted decoding uses), are cropped back by a random number of columns at the end and
    decode those columns again."""
    for seed in range(first, first + SEEDS_PER_TEST):
        model, ids, mask, new_tokens, sample, recording, generator = random_case(seed)
        context = f"seed {seed}: {model.config.chunk_sizes} {model.config.decoder_input} " \
                  f"windows={model.config.encoder_windows} batch={ids.shape[0]} width={ids.shape[1]} rec={recording}"
        with torch.no_grad():
            static = not recording and seed % 2 == 0  # half the others grow their encoder caches by doubling
            cache = PhotonCache(model.config, max_cache_len=ids.shape[1] + new_tokens if static else None)
            if recording:
                cache.activate_past_recording()
            steps = [model(ids, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]]
            sequence, full_mask = ids, mask
            for _ in range(new_tokens):
                if sample:
                    token = torch.multinomial(torch.softmax(steps[-1], -1), 1, generator=generator)
                else:
                    token = steps[-1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, token], 1)
                full_mask = torch.cat([full_mask, torch.ones_like(token)], 1)
                steps.append(model(token, cache=cache, use_cache=True).logits[:, -1])
            assert cache.get_seq_length() == sequence.shape[1]
            full = model(sequence, attention_mask=full_mask, use_cache=False).logits
        cached = torch.stack(steps, 1)
        reference = full[:, ids.shape[1] - 1 :]
        assert_matches(cached, reference, context)
        if recording:
            pads = int((1 - mask).sum(1).max())
            remove = random.Random(seed).randint(1, min(new_tokens, sequence.shape[1] - pads - 1))
            with torch.no_grad():
                cache.crop(-remove)
                again = [model(sequence[:, t : t + 1], cache=cache).logits[:, 0]
                         for t in range(sequence.shape[1] - remove, sequence.shape[1])]
            assert_matches(torch.stack(again, 1), full[:, -remove:], context + f" cropped {remove}")


def view_storage(config: PhotonConfig, rows: int, max_cache_len: int) -> dict[str, torch.Tensor]:
    """Per-request state for `rows` requests, laid out as `PhotonCache.state_layout` says (what vLLM allocates),
    filled with NaN (floats) and -1 (ids): a read of anything a request did not write poisons its logits."""
    return {
        name: torch.full((rows, *shape), float("nan") if dtype.is_floating_point else -1, dtype=dtype)
        for name, shape, dtype in PhotonCache.state_layout(config, max_cache_len, torch.float64)
    }


@pytest.mark.parametrize("first", range(0, 200, SEEDS_PER_TEST), ids=lambda s: f"seeds{s}-{s + SEEDS_PER_TEST - 1}")
def test_a_view_continued_in_chunks_equals_the_full_forward_fp64(first):
    """A serving engine's schedule on a cache view over per-request state (`PhotonCache.over_states`, rows at
    scattered storage indices, reused after a request leaves): at every step a random subset of the requests takes
    its next chunk of tokens (one token, as a decode step, or many, as a prompt continued at any split) through one
    `PhotonModel.extend` call. After every chunk each request's state equals the full forward's at that position."""
    for seed in range(first, first + SEEDS_PER_TEST):
        rng = random.Random(seed)
        config = random_config(rng)
        torch.manual_seed(seed)
        model = PhotonForCausalLM(config).to(torch.float64).eval()
        lead = model.model.continuation_lead()
        longest = rng.randint(1, 3 * config.tokens_per_unit[-1] + 2 * lead)
        requests = [torch.randint(1, VOCAB, (rng.randint(1, longest),)) for _ in range(rng.randint(2, 5))]
        with torch.no_grad():
            full = [model(ids[None], use_cache=False).logits[0] for ids in requests]
            slots = rng.sample(range(2 * len(requests)), len(requests))  # storage row of each request
            rows = max(slots) + 1
            cache = PhotonCache.over_states(config, longest, view_storage(config, rows, longest))
            done = [0] * len(requests)
            while any(d < len(ids) for d, ids in zip(done, requests, strict=True)):
                active = [r for r, ids in enumerate(requests) if done[r] < len(ids)]
                batch = rng.sample(active, rng.randint(1, len(active)))
                lengths = [1 if rng.random() < 0.4 else rng.randint(1, len(requests[r]) - done[r]) for r in batch]
                width = max(lengths)
                tokens = torch.zeros(len(batch), width, dtype=torch.long)
                for g, (r, n) in enumerate(zip(batch, lengths, strict=True)):
                    tokens[g, :n] = requests[r][done[r] : done[r] + n]
                index = torch.tensor([slots[r] for r in batch])
                ops = photon_ops(config, tokens.device, torch.float64)
                hidden = model.model.extend(cache, index, [done[r] for r in batch], tokens, lengths, ops)
                logits = model.lm_head(hidden)
                for g, (r, n) in enumerate(zip(batch, lengths, strict=True)):
                    done[r] += n
                    assert_matches(logits[g], full[r][done[r] - 1], f"seed {seed}: {config.chunk_sizes} "
                                   f"{config.decoder_input} windows={config.encoder_windows} "
                                   f"lookback={config.decoder_lookback} request {r} at {done[r]} (+{n})")
            assert cache.counts[slots].tolist() == [len(ids) for ids in requests]
