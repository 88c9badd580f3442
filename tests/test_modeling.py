"""The PHOTON forward pass: HF logits convention, causality, padding, losses, checkpointing, save/load, errors."""


import pytest
import torch
from helpers import VOCAB, cache_of, random_ids, tiny_model
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening
from transformers.utils.logging import warning_once

from photon_hf import PhotonCache, PhotonForCausalLM
from photon_hf.attention_photon import REFERENCE_OPS

CHUNKINGS = [
    dict(chunk_sizes=[4, 4]),
    dict(chunk_sizes=[2, 2, 2]),
    dict(chunk_sizes=[8]),
    dict(chunk_sizes=[4, 4], decoder_input="self"),
    dict(chunk_sizes=[2, 3, 2], converter_width=[1, 2, 3], decoder_input="self"),
    dict(chunk_sizes=[2, 2, 2], encoder_windows=[2, 3, None]),
    dict(chunk_sizes=[4, 2], encoder_embed_size=12),  # C_1 * E != D: level 0 gets a projection
    dict(chunk_sizes=[4, 4], decoder_lookback=6),  # the token decoder also attends to the 6 tokens before its chunk
]


def _ids(config):
    lookback = f"-lookback{config['decoder_lookback']}" if config.get("decoder_lookback") else ""
    return f"{config['chunk_sizes']}-{config.get('decoder_input', 'encoder')}-{config.get('encoder_windows')}{lookback}"


@pytest.mark.parametrize("overrides", CHUNKINGS, ids=_ids)
def test_causality(overrides):
    """Changing token j never changes logits[:, :j] (and does change later ones)."""
    model = tiny_model(**overrides)
    ids = random_ids(2, 37)
    base = model(ids, use_cache=False).logits
    for j in (0, 5, 15, 16, 36):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] % (VOCAB - 1)) + 1
        logits = model(changed, use_cache=False).logits
        assert torch.equal(logits[:, :j], base[:, :j]), f"token {j} leaked into earlier logits"
        assert not torch.allclose(logits[:, j:], base[:, j:]), f"token {j} has no effect at all"


@pytest.mark.parametrize("overrides", CHUNKINGS, ids=_ids)
def test_any_length_matches_the_aligned_forward(overrides):
    """Logits of a prefix equal the same positions of a longer sequence (internal right-padding is exact)."""
    model = tiny_model(**overrides)
    ids = random_ids(2, 48)
    full = model(ids, use_cache=False).logits
    for length in (1, 3, 16, 17, 31):
        assert torch.allclose(model(ids[:, :length], use_cache=False).logits, full[:, :length], atol=1e-5)


@pytest.mark.parametrize("overrides", CHUNKINGS, ids=_ids)
def test_token_by_token_cache_equals_full_forward(overrides):
    model = tiny_model(**overrides)
    ids = random_ids(3, 45)
    full = model(ids, use_cache=False).logits
    for prompt in (1, 5, 16, 23):
        cache = PhotonCache(model.config)
        out = model(ids[:, :prompt], cache=cache, use_cache=True)
        assert torch.allclose(out.logits, full[:, :prompt], atol=1e-5)
        for t in range(prompt, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            assert torch.allclose(out.logits[:, 0], full[:, t], atol=1e-4), (prompt, t)
        assert cache.get_seq_length() == ids.shape[1]


def _left_pad(rows: list[torch.Tensor]):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize("overrides", CHUNKINGS[:4], ids=_ids)
def test_left_padded_batch_equals_rows_run_alone(overrides):
    """Each row keeps its own chunk grid, starting at its first real token."""
    model = tiny_model(**overrides)
    source = random_ids(4, 40)
    rows = [source[0, :40], source[1, :33], source[2, :21], source[3, :24]]  # pads 0, 7, 19, 16
    ids, mask = _left_pad(rows)
    batched = model(ids, attention_mask=mask, use_cache=False).logits
    for i, row in enumerate(rows):
        alone = model(row[None], use_cache=False).logits[0]
        assert torch.allclose(batched[i, ids.shape[1] - len(row) :], alone, atol=1e-5)
    # The same through the cache: prefill on a padded prompt, then one column at a time.
    cache = PhotonCache(model.config)
    prompt = 22
    out = model(ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache, use_cache=True)
    steps = [out.logits[:, -1]]
    for t in range(prompt, ids.shape[1]):
        steps.append(model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[:, 0])
    assert torch.allclose(torch.stack(steps, 1), batched[:, prompt - 1 :], atol=1e-4)


def test_labels_loss_follows_the_hf_convention():
    model = tiny_model()
    ids = random_ids(2, 29)
    out = model(ids, labels=ids)
    logits = model(ids, use_cache=False).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert cache_of(out) is None  # computing a loss does not build a cache


def test_loss_honours_num_items_in_batch():
    model = tiny_model()
    ids = random_ids(2, 20)
    labels = ids.clone()
    labels[0, :7] = -100
    out = model(ids, labels=labels, num_items_in_batch=torch.tensor(100))
    logits = model(ids, use_cache=False).logits
    summed = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert torch.allclose(out.loss, summed / 100, atol=1e-6)


def test_recursive_loss():
    model = tiny_model(recursive_loss_weight=0.5)
    ids = random_ids(2, 40)
    out = model(ids, labels=ids)
    plain = tiny_model(recursive_loss_weight=0.0)
    plain.load_state_dict(model.state_dict())
    token_loss = plain(ids, labels=ids).loss
    assert out.recursive_loss is not None and 0 < out.recursive_loss < 2
    assert torch.allclose(out.loss, token_loss + 0.5 * out.recursive_loss, atol=1e-6)
    model.zero_grad()
    out.recursive_loss.backward()
    assert model.model.levels[1].decoder.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert model.model.levels[0].decoder.layers[0].mlp.up_proj.weight.grad is None  # the token decoder is not in it
    # Summed over units, weighted by the P tokens a unit covers and divided by the label-token count (by default
    # 2 x 39 here), so num_items_in_batch rescales it exactly like the cross-entropy.
    half = model(ids, labels=ids, num_items_in_batch=torch.tensor(4 * (ids.shape[1] - 1))).recursive_loss
    assert torch.allclose(half, out.recursive_loss / 2, atol=1e-6)
    streams = model.model(ids, use_cache=False)
    pred, target = streams.decoder_predictions[1][:, :10], streams.encoder_streams[0][:, :10]
    mean_distance = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
    assert torch.allclose(out.recursive_loss, mean_distance * 40 / 39, atol=1e-5)  # 10 full units of 4 tokens


def test_every_parameter_gets_a_gradient_and_checkpointing_matches():
    model = tiny_model(chunk_sizes=[2, 2, 2], recursive_loss_weight=0.1).train()
    ids = random_ids(2, 31)
    model(ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    model.zero_grad()
    model.gradient_checkpointing_enable()  # 5.24 calls it activation_checkpointing_enable; 5.17 knows only this
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-6), name


@pytest.mark.parametrize("overrides", [dict(chunk_sizes=[2, 2, 2], decoder_input="self"), dict(decoder_lookback=5)],
                         ids=["self", "lookback"])
def test_save_load_round_trip(tmp_path, overrides):
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PhotonForCausalLM)
    ids = random_ids(2, 19)
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert torch.equal(model.model.start_latents, loaded.model.start_latents)


def test_float64_cast_and_float64_load_agree_exactly(tmp_path):
    """RoPE angles are computed in float32 whatever the dtype, so `.double()` (which casts the inv_freq buffer) and
    `from_pretrained(dtype=torch.float64)` (which rebuilds it in float32) give the same logits, bit for bit."""
    model = tiny_model(chunk_sizes=[2, 3])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    cast = model.double()
    assert cast.model.rotary_emb.inv_freq.dtype != loaded.model.rotary_emb.inv_freq.dtype  # the case that drifted
    ids = random_ids(2, 37)
    assert torch.equal(cast(ids).logits, loaded(ids).logits)


def test_start_latents_are_initialised_small_and_nonzero():
    model = tiny_model(chunk_sizes=[2, 2, 2], decoder_input="self")
    latents = model.model.start_latents
    assert latents.shape == (3, model.config.hidden_size)  # one per shifted level in "self" mode
    assert latents.abs().min() > 0 and latents.std() < 0.1
    assert tiny_model().model.start_latents.shape == (1, model.config.hidden_size)  # only the top stream is shifted


def test_tied_head_option():
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_dec.weight.data_ptr()
    assert tiny_model().lm_head.weight.data_ptr() != tiny_model().model.embed_dec.weight.data_ptr()


class TestBadInput:
    model = tiny_model()

    def test_out_of_vocabulary_ids(self):
        with pytest.raises(ValueError, match="vocab_size"):
            self.model(torch.tensor([[1, 2, VOCAB]]))
        with pytest.raises(ValueError, match="vocab_size"):
            self.model(torch.tensor([[1, -3, 2]]))

    def test_empty_input(self):
        with pytest.raises(ValueError, match="empty"):
            self.model(torch.zeros(1, 0, dtype=torch.long))
        with pytest.raises(ValueError, match="empty"):
            self.model(torch.zeros(0, 5, dtype=torch.long))

    def test_mismatched_attention_mask(self):
        with pytest.raises(ValueError, match="attention_mask"):
            self.model(random_ids(2, 9), attention_mask=torch.ones(2, 8, dtype=torch.long))

    def test_mask_with_holes(self):
        mask = torch.ones(1, 9, dtype=torch.long)
        mask[0, 4] = 0
        with pytest.raises(ValueError, match="holes"):
            self.model(random_ids(1, 9), attention_mask=mask)

    def test_row_without_tokens(self):
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1] = 0
        with pytest.raises(ValueError, match="no real token"):
            self.model(random_ids(2, 9), attention_mask=mask)

    def test_right_padding_with_a_cache(self):
        mask = torch.ones(1, 9, dtype=torch.long)
        mask[0, -2:] = 0
        self.model(random_ids(1, 9), attention_mask=mask, use_cache=False)  # harmless without a cache
        with pytest.raises(ValueError, match="left"):
            self.model(random_ids(1, 9), attention_mask=mask, use_cache=True)

    def test_inputs_embeds_is_refused(self):
        with pytest.raises(ValueError, match="inputs_embeds"):
            self.model(inputs_embeds=torch.zeros(1, 4, 32))

    def test_foreign_cache(self):
        from transformers import DynamicCache

        with pytest.raises(TypeError, match="PhotonCache"):
            self.model(random_ids(1, 4), cache=DynamicCache(), use_cache=True)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="shape"):
            self.model(torch.tensor([1, 2, 3]))


def test_resize_token_embeddings_resizes_both_tables():
    model = tiny_model()
    ids = random_ids(1, 12)
    before = model(ids).logits
    model.resize_token_embeddings(VOCAB + 5)
    assert model.config.vocab_size == VOCAB + 5
    assert model.model.embed_enc.weight.shape[0] == VOCAB + 5
    assert model.model.embed_dec.weight.shape[0] == VOCAB + 5
    assert model.lm_head.weight.shape[0] == VOCAB + 5
    assert torch.allclose(model(ids).logits[..., :VOCAB], before, atol=1e-6)  # old tokens are untouched
    new_token = torch.tensor([[VOCAB + 4, 3, VOCAB + 1]])
    assert model(new_token).logits.shape == (1, 3, VOCAB + 5)


def test_lookback_equals_a_block_sparse_reference():
    """The token decoder with a look-back against one pass over all its windows laid end to end under an explicit
    block-sparse mask: an independent formulation (no gathered look-back keys, positions from the layout)."""
    model = tiny_model(chunk_sizes=[4, 2], converter_width=[3, 2], decoder_lookback=6).double()
    inner, level = model.model, model.model.levels[0]
    chunk, width, lookback = 4, 3, 6
    slots, units, batch, hidden = width + chunk, 5, 2, model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(batch, units, hidden, generator=generator, dtype=torch.float64)
    inputs = torch.randn(batch, units * chunk, hidden, generator=generator, dtype=torch.float64)
    out = level.decoder.teacher_forced(level.prefix(cond), inputs, inner.rotary_emb, REFERENCE_OPS)

    layout = torch.cat([level.prefix(cond), inputs.view(batch, units, chunk, hidden)], dim=2).flatten(1, 2)
    position = torch.arange(units * slots)
    unit, slot = position // slots, position % slots
    token = unit * chunk + slot - width  # the token index of a token slot (its RoPE position in every slot)
    same_window = (unit[:, None] == unit[None, :]) & (slot[None, :] <= slot[:, None])
    looked_back = (slot[None, :] >= width) & (token[None, :] < unit[:, None] * chunk) & (
        token[None, :] >= unit[:, None] * chunk - lookback)
    allowed = same_window | looked_back
    cos, sin = inner.rotary_emb(token, torch.float64)

    def attend(q, k, v, layer_idx):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)

    reference = level.decoder(layout, cos[None, None], sin[None, None], attend)
    reference = reference.view(batch, units, slots, hidden)[:, :, width - 1 : width - 1 + chunk].flatten(1, 2)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)


def test_lookback_reaches_exactly_w_tokens_before_the_chunk():
    """With one decoder layer and the conditioning held fixed, a chunk's outputs depend on its own earlier tokens
    and on the W tokens before it, on nothing further back; without the look-back, on its own tokens only."""
    chunk, lookback = 4, 6
    for w in (lookback, None):
        model = tiny_model(chunk_sizes=[chunk], num_decoder_layers=1, decoder_lookback=w).double()
        inner = model.model
        cond = torch.randn(1, 6, model.config.hidden_size, dtype=torch.float64)
        inputs = torch.randn(1, 6 * chunk, model.config.hidden_size, dtype=torch.float64)
        level = inner.levels[0]

        def decode(cond, inputs, level=level, inner=inner):
            return level.decoder.teacher_forced(level.prefix(cond), inputs, inner.rotary_emb, REFERENCE_OPS)

        base = decode(cond, inputs)
        k = 4  # chunk 4 covers tokens 16..19; its outputs predict them
        for t in range(k * chunk):
            changed = inputs.clone()
            changed[0, t] += 1.0
            moved = (decode(cond, changed) - base)[0, k * chunk : (k + 1) * chunk].abs().amax(-1) > 1e-12
            reaches = w is not None and t >= k * chunk - w
            assert moved.any().item() == reaches, (w, t)



def test_packed_position_ids_are_run_as_one_sequence_with_a_warning(caplog):
    """PHOTON does not honour packed rows (`position_ids` restarting at each document, as TRL's padding-free
    packing and `DataCollatorWithFlattening` make them): it runs the row as one sequence and says so once, in a
    training forward and in an evaluation forward that builds a cache alike. Ordinary and left-padded `position_ids`
    (generate's prefill and decode steps) give no warning."""
    model = tiny_model().eval()
    first, second = random_ids(1, 9)[0].tolist(), random_ids(1, 7)[0].tolist()
    packed = DataCollatorWithFlattening()([{"input_ids": first}, {"input_ids": second}])
    assert packed["position_ids"].tolist() == [[*range(9), *range(7)]]
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: generate's position_ids are 1 at the pads, then 0, 1, 2, ...
    padded_positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    warning_once.cache_clear()
    with caplog.at_level("WARNING"), torch.no_grad():
        model(ids, position_ids=torch.arange(12).expand(2, 12), labels=ids)
        model(ids, attention_mask=mask, position_ids=padded_positions, use_cache=False)
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        assert "restart inside a row" not in caplog.text
        # An evaluation forward (no labels, so `use_cache` at its default builds a cache: a prefill) warns too.
        assert model.config.use_cache
        model(packed["input_ids"], position_ids=packed["position_ids"])
        assert caplog.text.count("restart inside a row") == 1
        warning_once.cache_clear()
        logits = model(packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"]).logits
        model(packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"])
        alone = model(torch.tensor([second])).logits
    assert caplog.text.count("restart inside a row") == 2 and "packing=False" in caplog.text
    # What the warning says: the second document sees the first, so its logits are not those of running it alone.
    assert not torch.allclose(logits[0, 9:], alone[0], atol=1e-3)
