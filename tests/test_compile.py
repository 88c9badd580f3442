"""The compiled decode step through generate()'s own auto-compile path, on CPU (compilation forced with
`CompileConfig._compile_all_devices`, as transformers' tests do): token-for-token equal to eager decoding, no graph
break, and one graph per distinct `PhotonStep` (at most P_L, L + 1 when every row has the same padding)."""

import pytest
import torch
from helpers import random_ids, tiny_model
from torch._dynamo.utils import counters
from transformers import CompileConfig

from photon_hf import PhotonCache


def forced(**options) -> CompileConfig:
    config = CompileConfig(**options)
    config._compile_all_devices = True  # transformers compiles on CUDA (and a few accelerators) only by default
    return config


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _left_padded(batch: int, width: int, pads, seed: int = 0):
    ids = random_ids(batch, width, seed=seed)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _breaks() -> int:
    return sum(counters["graph_break"].values())


def test_inductor_generate_equals_eager():
    """The stock path with inductor: a left-padded batch, greedy, compiled == eager token for token."""
    model = tiny_model(chunk_sizes=[2, 2], num_encoder_layers=1, num_decoder_layers=1)
    ids, mask = _left_padded(2, 6, (0, 2))  # two steps: level 0 alone, and both levels with mixed rows at level 1
    kwargs = dict(attention_mask=mask, max_new_tokens=13, min_new_tokens=13, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    eager = model.generate(ids, disable_compile=True, **kwargs)
    assert _graphs() == 0
    compiled = model.generate(ids, compile_config=forced(), **kwargs)
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=1e-5, atol=1e-5)
    assert _breaks() == 0
    assert 1 <= _graphs() <= model.config.tokens_per_unit[-1]


@pytest.mark.parametrize(
    "overrides, pads",
    [
        (dict(chunk_sizes=[4, 4]), (0, 0)),
        (dict(chunk_sizes=[2, 2, 2], encoder_windows=[2, 3, None]), (0, 2, 2)),
        (dict(chunk_sizes=[2, 3], decoder_input="self"), (0, 1)),
        (dict(chunk_sizes=[3], converter_width=3), (0, 2)),
        (dict(chunk_sizes=[2, 2], decoder_lookback=5), (0, 3)),
    ],
    ids=["uniform", "windows-ragged", "self-ragged", "one-level", "lookback-ragged"],
)
def test_graphs_are_bounded_by_the_period(overrides, pads):
    """Dynamo's own counters (backend "eager": tracing only): zero graph breaks, one graph per distinct step of the
    meta-chunk (L + 1 for uniform padding), none added by another generate of the same shapes, and sampling,
    compiled, draws the same tokens."""
    model = tiny_model(**overrides)
    period = model.config.tokens_per_unit[-1]
    ids, mask = _left_padded(len(pads), 9, pads)
    kwargs = dict(attention_mask=mask, max_new_tokens=period + 3, min_new_tokens=period + 3)  # every phase
    eager = model.generate(ids, do_sample=False, disable_compile=True, **kwargs)
    compiled = model.generate(ids, do_sample=False, compile_config=forced(backend="eager"), **kwargs)
    assert torch.equal(compiled, eager)
    assert _breaks() == 0
    graphs = _graphs()
    if len(set(pads)) == 1:
        assert graphs == model.config.num_levels + 1
    assert graphs <= period
    torch.manual_seed(3)
    sampled = model.generate(ids, do_sample=True, top_k=0, compile_config=forced(backend="eager"), **kwargs)
    assert _graphs() == graphs  # same shapes, same steps: nothing recompiles
    torch.manual_seed(3)
    assert torch.equal(sampled, model.generate(ids, do_sample=True, top_k=0, disable_compile=True, **kwargs))


def test_other_generate_modes_under_a_forced_compile_config():
    """Beam search (not compiled by generate), a streamer, a continued generation and assisted decoding (its cache
    records the past, so it is not compileable and decodes eagerly) give what they give eagerly."""
    model = tiny_model()
    prompt = random_ids(1, 7)
    config = forced(backend="eager")
    greedy = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, disable_compile=True)

    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(prompt, compile_config=config, **beams),
                       model.generate(prompt, disable_compile=True, **beams))

    class Collect:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(1, -1))

        def end(self):
            pass

    streamer = Collect()
    streamed = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, compile_config=config, streamer=streamer)
    assert torch.equal(streamed, greedy) and torch.equal(torch.cat(streamer.chunks, 1), greedy)

    first = model.generate(prompt, max_new_tokens=9, min_new_tokens=9, compile_config=config,
                           return_dict_in_generate=True)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    name = "cache" if hasattr(first, "cache") else "past_key_values"
    continued = model.generate(first.sequences, max_new_tokens=11, min_new_tokens=11, compile_config=config,
                               **{name: cache})
    assert torch.equal(continued, greedy)

    lookup = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, prompt_lookup_num_tokens=3,
                            compile_config=config)
    assert torch.equal(lookup, greedy)


def test_disable_compile_opts_out(monkeypatch):
    model = tiny_model()
    prompt = random_ids(1, 5)
    calls = []
    original = model.get_compiled_call
    monkeypatch.setattr(model, "get_compiled_call", lambda config: calls.append(config) or original(config))
    model.generate(prompt, max_new_tokens=6, compile_config=forced(backend="eager"))
    assert len(calls) == 1 and _graphs() > 0
    calls.clear()
    counters.clear()
    model.generate(prompt, max_new_tokens=6, compile_config=forced(backend="eager"), disable_compile=True)
    assert calls == [] and _graphs() == 0
    model.generate(prompt, max_new_tokens=6)  # on CPU generate does not compile unless forced
    assert calls == [] and _graphs() == 0


def test_a_cache_that_cannot_be_compiled_decodes_eagerly_and_says_so(caplog):
    model = tiny_model()
    step = model.model.compiled_decode_column(forced(backend="eager"))
    ids = random_ids(2, 12)
    cache = PhotonCache(model.config)  # no max_cache_len: it grows, so it is not compileable
    assert not cache.is_compileable and PhotonCache(model.config, max_cache_len=20).is_compileable
    model(ids[:, :5], cache=cache)
    with caplog.at_level("WARNING"):
        steps = [model(ids[:, t : t + 1], cache=cache, decode_step=step).logits[:, 0] for t in range(5, 12)]
    assert "decodes eagerly" in caplog.text and _graphs() == 0
    full = model(ids, use_cache=False).logits[:, 5:]
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-4)
