"""Exact hierarchical generation through the stock `generate()`, and the PhotonCache API."""

import pytest
import torch
from helpers import VOCAB, cache_of, random_ids, tiny_model
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from photon_hf import PhotonCache, kv_cache_bytes
from photon_hf.modeling_photon import CACHE_NAME

GENERATION_CONFIGS = [dict(chunk_sizes=[4, 4]), dict(chunk_sizes=[2, 2, 2]), dict(chunk_sizes=[8]),
                      dict(chunk_sizes=[4, 4], decoder_lookback=6)]


def _config_id(config):
    return str(config["chunk_sizes"]) + ("-lookback" if config.get("decoder_lookback") else "")


def _full_logits(model, sequences, prompt_len, attention_mask=None):
    """What the uncached forward says about every generated position."""
    with torch.no_grad():
        logits = model(sequences, attention_mask=attention_mask, use_cache=False).logits
    return logits[:, prompt_len - 1 : -1]


@pytest.mark.parametrize("overrides", GENERATION_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("prompt_len", [1, 5, 16, 23])
def test_greedy_generation_equals_the_full_forward(overrides, prompt_len):
    model = tiny_model(**overrides)
    prompt = random_ids(2, prompt_len, seed=prompt_len)
    out = model.generate(prompt, max_new_tokens=41, min_new_tokens=41, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    assert out.sequences.shape == (2, prompt_len + 41)
    generated = torch.stack(out.logits, dim=1)
    assert torch.allclose(generated, _full_logits(model, out.sequences, prompt_len), atol=1e-4)
    assert torch.equal(out.sequences[:, prompt_len:], generated.argmax(-1))


@pytest.mark.parametrize("overrides", GENERATION_CONFIGS, ids=_config_id)
def test_seeded_sampling_equals_the_full_forward(overrides):
    model = tiny_model(**overrides)
    prompt = random_ids(3, 7)
    torch.manual_seed(123)
    out = model.generate(prompt, max_new_tokens=44, min_new_tokens=44, do_sample=True, top_k=0, temperature=1.3,
                         output_logits=True, return_dict_in_generate=True)
    assert torch.allclose(torch.stack(out.logits, 1), _full_logits(model, out.sequences, 7), atol=1e-4)
    torch.manual_seed(123)
    again = model.generate(prompt, max_new_tokens=44, min_new_tokens=44, do_sample=True, top_k=0, temperature=1.3)
    assert torch.equal(again, out.sequences)
    torch.manual_seed(123)
    uncached = model.generate(prompt, max_new_tokens=44, min_new_tokens=44, do_sample=True, top_k=0,
                              temperature=1.3, use_cache=False)
    assert torch.equal(uncached, out.sequences)


@pytest.mark.parametrize("overrides", [dict(decoder_input="self"), dict(encoder_windows=[3, None])],
                         ids=["self", "window"])
def test_generation_variants(overrides):
    model = tiny_model(**overrides)
    prompt = random_ids(2, 9)
    out = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, output_logits=True,
                         return_dict_in_generate=True)
    assert torch.allclose(torch.stack(out.logits, 1), _full_logits(model, out.sequences, 9), atol=1e-4)


def test_use_cache_false_gives_the_same_sequences():
    model = tiny_model()
    prompt = random_ids(2, 11)
    cached = model.generate(prompt, max_new_tokens=30, min_new_tokens=30)
    uncached = model.generate(prompt, max_new_tokens=30, min_new_tokens=30, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("overrides", GENERATION_CONFIGS, ids=_config_id)
def test_left_padded_batch_equals_per_prompt_runs(overrides):
    model = tiny_model(**overrides)
    source = random_ids(3, 21, seed=3)
    prompts = [source[0, :21], source[1, :6], source[2, :13]]
    width = 21
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=35, min_new_tokens=35, output_logits=True,
                             return_dict_in_generate=True)
    batched_logits = torch.stack(batched.logits, 1)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=35, min_new_tokens=35, output_logits=True,
                               return_dict_in_generate=True)
        assert torch.equal(batched.sequences[i, width:], alone.sequences[0, len(p) :])
        assert torch.allclose(batched_logits[i], torch.stack(alone.logits, 1)[0], atol=1e-4)


@pytest.mark.parametrize("overrides", GENERATION_CONFIGS, ids=_config_id)
def test_beam_search_with_and_without_cache(overrides):
    model = tiny_model(**overrides)
    prompt = random_ids(2, 6)
    cached = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, num_beams=3, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, num_beams=3, do_sample=False,
                              use_cache=False)
    assert torch.equal(cached, uncached)
    returned = model.generate(prompt, max_new_tokens=24, num_beams=3, num_return_sequences=2)
    assert returned.shape == (4, 30)


def test_beam_search_on_a_left_padded_batch():
    model = tiny_model()
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=20, num_beams=2)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=20, num_beams=2, use_cache=False)
    assert torch.equal(cached, uncached)


def test_continuing_from_a_returned_cache():
    model = tiny_model()
    prompt = random_ids(2, 7)
    first = model.generate(prompt, max_new_tokens=13, min_new_tokens=13, return_dict_in_generate=True)
    cache = cache_of(first)
    assert isinstance(cache, PhotonCache) and cache.get_seq_length() == 19  # the last token is not consumed yet
    continued = model.generate(first.sequences, max_new_tokens=17, min_new_tokens=17, **{CACHE_NAME: cache})
    straight = model.generate(prompt, max_new_tokens=30, min_new_tokens=30)
    assert torch.equal(continued, straight)


@pytest.mark.parametrize("overrides", [dict(chunk_sizes=[4, 4]), dict(chunk_sizes=[2, 2, 2], decoder_input="self"),
                                       dict(chunk_sizes=[4, 4], decoder_lookback=6)],
                         ids=["encoder", "self", "lookback"])
def test_assisted_decoding_equals_greedy(overrides):
    model = tiny_model(**overrides)
    prompt = random_ids(1, 9)
    greedy = model.generate(prompt, max_new_tokens=40, min_new_tokens=40)
    lookup = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, prompt_lookup_num_tokens=3)
    assert torch.equal(lookup, greedy)
    assistant = tiny_model(seed=7, **overrides)
    assisted = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, assistant_model=assistant)
    assert torch.equal(assisted, greedy)


def test_streamer_and_stopping_criteria():
    model = tiny_model()
    prompt = random_ids(1, 5)

    class Collect:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.chunks.append(None)

    streamer = Collect()
    out = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, streamer=streamer)
    assert streamer.chunks[-1] is None
    streamed = torch.cat([c.reshape(1, -1) for c in streamer.chunks[:-1]], dim=1)
    assert torch.equal(streamed, out)

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 11, dtype=torch.bool)

    stopped = model.generate(prompt, max_new_tokens=30, stopping_criteria=StoppingCriteriaList([StopAfter()]))
    assert stopped.shape[1] == 11 and torch.equal(stopped, out[:, :11])


def test_text_streamer_prints_the_generation(capsys):
    class Tokenizer:  # the minimum TextStreamer needs
        def decode(self, ids, **kwargs):
            return "".join(chr(65 + int(i) % 26) for i in ids)

    model = tiny_model()
    prompt = random_ids(1, 4)
    out = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, streamer=TextStreamer(Tokenizer()))
    assert capsys.readouterr().out.strip() == Tokenizer().decode(out[0])


def test_unsupported_cache_implementation_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(random_ids(1, 5), max_new_tokens=3, cache_implementation="offloaded")


def test_static_cache_implementation_is_photons_own_compileable_cache():
    """`transformers serve --compile` asks for cache_implementation="static": PHOTON's cache already is one."""
    model = tiny_model()
    ids = random_ids(2, 7)
    kwargs = dict(max_new_tokens=9, min_new_tokens=9, do_sample=False, return_dict_in_generate=True)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    assert isinstance(cache_of(static), PhotonCache) and cache_of(static).is_compileable
    assert torch.equal(static.sequences, model.generate(ids, **kwargs).sequences)


def test_measured_cache_size_equals_the_analytic_size():
    for overrides in (dict(), dict(chunk_sizes=[2, 2, 2], decoder_input="self"), dict(encoder_windows=[3, None]),
                      dict(decoder_lookback=5)):
        model = tiny_model(**overrides)
        out = model.generate(random_ids(3, 9), max_new_tokens=40, min_new_tokens=40, return_dict_in_generate=True)
        cache = cache_of(out)
        columns = cache.get_seq_length()
        assert cache.nbytes() == kv_cache_bytes(model.config, columns, batch_size=3, dtype=torch.float32)
        # A static cache holds its final size from the prefill on: sized for max_cache_len columns.
        static = PhotonCache(model.config, max_cache_len=45)
        model(random_ids(3, 9), cache=static)
        expected = kv_cache_bytes(model.config, 45, batch_size=3, dtype=torch.float32)
        assert static.nbytes() == expected and static.is_compileable
        for _ in range(45 - 9):
            model(random_ids(3, 1), cache=static)
        assert static.nbytes() == expected


class TestCacheApi:
    def _prefilled(self, **overrides):
        model = tiny_model(**overrides)
        ids = random_ids(3, 30)
        cache = PhotonCache(model.config)
        model(ids[:, :13], cache=cache, use_cache=True)
        return model, ids, cache

    def _continue(self, model, cache, ids, start):
        return torch.stack([model(ids[:, t : t + 1], cache=cache).logits[:, 0] for t in range(start, ids.shape[1])], 1)

    def test_reorder_select_and_repeat_move_every_row(self):
        model, ids, cache = self._prefilled()
        order = torch.tensor([2, 0, 1])
        cache.reorder_cache(order)
        reordered = self._continue(model, cache, ids[order], 13)
        full = model(ids[order], use_cache=False).logits[:, 13:]
        assert torch.allclose(reordered, full, atol=1e-4)

        model, ids, cache = self._prefilled()
        cache.batch_select_indices(torch.tensor([1]))
        assert cache.batch_size == 1
        assert torch.allclose(self._continue(model, cache, ids[1:2], 13),
                              model(ids[1:2], use_cache=False).logits[:, 13:], atol=1e-4)

        model, ids, cache = self._prefilled()
        cache.batch_repeat_interleave(2)
        assert cache.batch_size == 6
        repeated = ids.repeat_interleave(2, dim=0)
        assert torch.allclose(self._continue(model, cache, repeated, 13),
                              model(repeated, use_cache=False).logits[:, 13:], atol=1e-4)

    @pytest.mark.parametrize("overrides", [dict(), dict(chunk_sizes=[2, 2, 2], encoder_windows=[2, 3, None]),
                                           dict(decoder_input="self"), dict(decoder_lookback=7)],
                             ids=["full", "windows", "self", "lookback"])
    def test_crop_across_chunk_boundaries(self, overrides):
        model = tiny_model(**overrides)
        ids = random_ids(2, 40)
        full = model(ids, use_cache=False).logits
        cache = PhotonCache(model.config)
        cache.activate_past_recording()
        model(ids[:, :9], cache=cache)
        self._continue(model, cache, ids[:, :34], 9)  # consume up to column 34
        for remove, (start, stop) in ((11, (23, 40)), (0, (40, 40))):
            cache.crop(-remove)
            assert cache.get_seq_length() == start
            if start < stop:
                steps = self._continue(model, cache, ids[:, :stop], start)
                assert torch.allclose(steps, full[:, start:stop], atol=1e-4)

    def test_crop_needs_recording(self):
        model, ids, cache = self._prefilled()
        cache.crop(0)  # always fine
        with pytest.raises(RuntimeError, match="activate_past_recording"):
            cache.crop(-2)
        with pytest.raises(ValueError, match="negative"):
            cache.crop(5)
        with pytest.raises(RuntimeError, match="empty"):
            cache.activate_past_recording()

    def test_reset_and_reuse(self):
        model, ids, cache = self._prefilled()
        cache.reset()
        assert cache.get_seq_length() == 0 and not cache.is_initialized
        out = model(ids[:, :5], cache=cache)
        assert torch.allclose(out.logits, model(ids[:, :5], use_cache=False).logits, atol=1e-5)

    def test_batch_mismatch(self):
        model, ids, cache = self._prefilled()
        with pytest.raises(ValueError, match="rows"):
            model(ids[:2, 13:14], cache=cache)

    def test_out_of_range_id_in_a_cpu_decode_step(self):
        model, ids, cache = self._prefilled()
        with pytest.raises(ValueError, match="vocab_size"):
            model(torch.full((3, 1), VOCAB), cache=cache)


def test_prefill_in_row_groups_is_exact(monkeypatch):
    """A large batch is prefilled a few rows at a time; the result must not depend on the grouping."""
    model = tiny_model()
    ids = random_ids(5, 30)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[3, :9] = 0
    whole = model.generate(ids, attention_mask=mask, max_new_tokens=20, output_logits=True,
                           return_dict_in_generate=True)
    monkeypatch.setattr(model.model, "prefill_group_tokens", 2 * 32)  # 2 rows of 32 aligned tokens per group
    grouped = model.generate(ids, attention_mask=mask, max_new_tokens=20, output_logits=True,
                             return_dict_in_generate=True)
    assert torch.equal(grouped.sequences, whole.sequences)
    assert torch.allclose(torch.stack(grouped.logits), torch.stack(whole.logits), atol=1e-5)
    cache = PhotonCache(model.config)
    logits = model(ids, attention_mask=mask, cache=cache, use_cache=True).logits
    assert torch.allclose(logits, model(ids, attention_mask=mask, use_cache=False).logits, atol=1e-5)
