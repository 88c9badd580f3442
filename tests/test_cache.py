"""The PHOTON cache layers without a model, the way transformers tests its own cache layers: what each verb writes,
what it hands back, rings, resets, batch reshaping (reorder / select / repeat / crop), sizes and the serving pool."""

import pytest
import torch
from helpers import tiny_config

from photon_hf.cache_photon import (
    PhotonCache,
    PhotonLevelCache,
    PhotonLookbackLevelCache,
    PhotonSelfLevelCache,
    level_cache,
)
from photon_hf.memory import kv_cache_bytes

BATCH = 3


def _kv(config, batch=BATCH, entries=1, value=None, seed=0):
    """Keys/values [B, Hkv, entries, hd] (random, or filled with `value`)."""
    shape = (batch, config.num_key_value_heads, entries, config.head_dim)
    if value is not None:
        return torch.full(shape, float(value)), torch.full(shape, -float(value))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _layer(config, level=0, batch=BATCH, units=0, max_columns=None, recording=False) -> PhotonLevelCache:
    layer = level_cache(config.levels[level], config, max_columns)
    layer.recording = recording
    layer.lazy_initialization(batch, torch.device("cpu"), torch.float32, units)
    return layer


# ------------------------------------------------------------------------------------------------ geometry
def test_the_geometry_is_the_one_home_of_unit_and_phase_arithmetic():
    level = tiny_config(chunk_sizes=[4, 2]).levels[1]  # P = 8 tokens per unit, 4 per sub-unit
    tokens = torch.tensor([4, 8, 12, 16, 3])
    assert level.units_in(tokens).tolist() == [0, 1, 1, 2, 0]
    assert level.subunits_done(tokens).tolist() == [1, 0, 1, 0, 0]
    phase, unit = level.arrival(tokens)
    assert phase[:4].tolist() == [0, 1, 0, 1] and unit[:4].tolist() == [-1, 0, 0, 1]
    assert level.arrives(tokens).tolist() == [True, True, True, True, False]
    assert level.closes(tokens).tolist() == [False, True, False, True, False]
    assert level.units_for(5) == 1 and level.units_for(40) == 5
    assert level.decoder_slot(torch.tensor([0, 1])).tolist() == [2, 2]  # R = 2; the last sub-unit has no slot


def test_each_way_of_reading_gets_its_cache_layer():
    kinds = {
        (): (PhotonLevelCache, PhotonLevelCache),
        (("decoder_input", "self"),): (PhotonLevelCache, PhotonSelfLevelCache),
        (("decoder_lookback", 5),): (PhotonLookbackLevelCache, PhotonLevelCache),
    }
    for overrides, classes in kinds.items():
        cache = PhotonCache(tiny_config(**dict(overrides)))
        assert tuple(type(layer) for layer in cache.layers) == classes


# ------------------------------------------------------------------------------------------- encoder KV
def test_encoder_update_writes_the_masked_rows_and_returns_the_whole_cache():
    config = tiny_config()
    layer = _layer(config, units=4, max_columns=64)
    keys, values = _kv(config)
    unit = torch.tensor([0, 2, 3])
    mask = torch.tensor([True, False, True])
    k_all, v_all = layer.update_encoder(0, keys, values, unit, mask)
    assert k_all.shape == (BATCH, config.num_key_value_heads, 16, config.head_dim)  # 64 columns / 4 tokens
    assert torch.equal(k_all[0, :, 0], keys[0, :, 0]) and torch.equal(v_all[2, :, 3], values[2, :, 0])
    assert k_all[1].abs().sum() == 0  # row 1 is masked out
    start, end = layer.encoder_bounds(unit)
    assert start.tolist() == [0, 0, 0] and end.tolist() == [1, 3, 4]


def test_a_windowed_encoder_keeps_a_ring_and_its_bounds():
    config = tiny_config(encoder_windows=[3, None])
    layer = _layer(config, batch=1)
    assert layer.ring and layer.capacity == 3
    for unit in range(5):
        keys, values = _kv(config, batch=1, value=unit + 1)
        layer.update_encoder(0, keys, values, torch.tensor([unit]), None)
        start, end = layer.encoder_bounds(torch.tensor([unit]))
        assert (start.item(), end.item()) == (0, min(unit + 1, 3))
    # Slot s holds the latest unit p with p = s (mod 3): units 3, 4, 2.
    assert layer.encoder_keys[0][0, 0, :, 0].tolist() == [4.0, 5.0, 3.0]
    # The same ring from a prefill of 5 units.
    prefill = _layer(config, batch=1)
    history = torch.arange(1.0, 6.0).view(1, 1, 5, 1).expand(1, config.num_key_value_heads, 5, config.head_dim)
    prefill.store_prefill([(history, -history)], torch.tensor([5 * 4]), slice(None))
    assert prefill.encoder_keys[0][0, 0, :, 0].tolist() == [4.0, 5.0, 3.0]
    # Recording keeps the whole history instead: bounds then cover the window in a growing cache.
    recorded = _layer(config, batch=1, units=5, recording=True)
    assert not recorded.ring
    start, end = recorded.encoder_bounds(torch.tensor([4]))
    assert (start.item(), end.item()) == (2, 5)


def test_a_growing_cache_doubles_and_a_static_one_never_moves():
    config = tiny_config()
    growing = _layer(config, level=1, units=1)
    growing.reserve(3)
    assert growing.capacity == 3
    growing.reserve(4)
    assert growing.capacity == 6  # doubled
    static = _layer(config, level=1, max_columns=64)
    address = static.encoder_keys[0].data_ptr()
    static.reserve(4)
    assert static.capacity == 4 and static.encoder_keys[0].data_ptr() == address
    static.reserve_columns(128)  # a returned cache continued further grows once, to its new size
    assert static.max_units == 8 and static.capacity == 4
    static.reserve(5)
    assert static.capacity == 8


# --------------------------------------------------------------------------------------- local decoders
def test_the_local_window_prefix_then_steps():
    config = tiny_config()  # R = 2, C = 4: 5 window slots
    layer = _layer(config)
    prefix_k, prefix_v = _kv(config, entries=2, seed=1)
    mask = torch.tensor([True, True, False])
    keys, values = layer.update_prefix(0, prefix_k, prefix_v, mask)
    assert torch.equal(keys, prefix_k) and torch.equal(values, prefix_v)  # a prefix attends to itself
    assert torch.equal(layer.decoder_keys[0][:2, :, :2], prefix_k[:2]) and layer.decoder_keys[0][2].abs().sum() == 0
    slot = config.levels[0].decoder_slot(torch.tensor([0, 1, 3]))
    assert slot.tolist() == [2, 3, 4]  # phase 3 (the last) is clamped: it never writes without a look-back
    step_k, step_v = _kv(config, seed=2)
    keys, values = layer.update_decoder(0, step_k, step_v, slot, torch.tensor([True, True, False]))
    assert torch.equal(keys[1, :, 3], step_k[1, :, 0]) and keys[2].abs().sum() == 0
    start, end = layer.decoder_bounds(slot, torch.tensor([1, 2, 4]), torch.tensor([0, 1, 3]))
    assert start.tolist() == [0, 0, 0] and end.tolist() == [3, 4, 5]


def test_the_look_back_shifts_a_closing_unit_into_the_last_w_tokens():
    config = tiny_config(decoder_lookback=6)  # W = 6, R = 2, C = 4: entries [look-back (6) ; prefix (2) ; 4 tokens]
    layer = _layer(config, batch=2)
    assert layer.decoder_keys[0].shape[2] == 6 + 2 + 4
    entries = torch.arange(12.0).view(1, 1, 12, 1).expand(2, config.num_key_value_heads, 12, config.head_dim)
    layer.store_decoder(0, slice(None), entries.clone(), -entries)
    prefix_k, prefix_v = _kv(config, batch=2, entries=2, value=100)
    keys, values = layer.update_prefix(0, prefix_k, prefix_v, torch.tensor([True, False]))
    # Row 0 closed its unit: look-back = last 6 of [0..5 ; tokens 8..11] = 4, 5, 8, 9, 10, 11; row 1 is unchanged.
    assert layer.decoder_keys[0][0, 0, :6, 0].tolist() == [4.0, 5.0, 8.0, 9.0, 10.0, 11.0]
    assert layer.decoder_keys[0][1, 0, :, 0].tolist() == list(range(12))
    assert layer.decoder_keys[0][0, 0, 6:8, 0].tolist() == [100.0, 100.0]
    # The prefix attends to [look-back ; itself].
    assert keys.shape[2] == 6 + 2 and keys[0, 0, :, 0].tolist() == [4.0, 5.0, 8.0, 9.0, 10.0, 11.0, 100.0, 100.0]
    assert torch.equal(values[0, :, :6], -layer.decoder_keys[0][0, :, :6])
    # A step writes window slot s at entry W + s and reads only the look-back entries that exist.
    slot = torch.tensor([2, 5])
    step_k, step_v = _kv(config, batch=2, value=7)
    keys, _ = layer.update_decoder(0, step_k, step_v, slot, None)
    assert keys[0, 0, 8, 0] == 7 and keys[1, 0, 11, 0] == 7
    start, end = layer.decoder_bounds(slot, torch.tensor([1, 12]), torch.tensor([0, 3]))
    assert start.tolist() == [6, 0] and end.tolist() == [9, 12]


def test_self_decoding_keeps_the_predictions_and_hands_back_the_carry():
    config = tiny_config(decoder_input="self")
    layer = _layer(config, level=1)
    chunk, hidden = config.levels[1].chunk_size, config.hidden_size
    old = torch.randn(BATCH, chunk + 1, hidden)
    layer.store_predictions(slice(None), old)
    new = torch.randn(BATCH, chunk, hidden)
    carry = layer.update_predictions(new, torch.tensor([True, False, True]))
    assert torch.equal(carry, old[:, -1])
    assert torch.equal(layer.predictions[0], torch.cat([old[0, -1:], new[0]])) and torch.equal(layer.predictions[1],
                                                                                                 old[1])
    assert torch.equal(layer.prediction(torch.tensor([1, 0, 4])), torch.stack([new[0, 0], old[1, 0], new[2, 3]]))


def test_sub_units_accumulate_for_the_chunker():
    config = tiny_config()
    tokens = _layer(config)
    for phase in range(3):
        pending = tokens.add_subunit(torch.full((BATCH,), phase), torch.tensor([10, 20, 30]) + phase,
                                     torch.tensor([True, True, phase != 1]))
    assert pending.tolist()[0][:3] == [10, 11, 12] and pending.tolist()[2][:3] == [30, 0, 32]
    states = _layer(config, level=1)
    item = torch.randn(BATCH, config.hidden_size)
    pending = states.add_subunit(torch.tensor([0, 1, 2]), item, None)
    assert torch.equal(pending[1, 1], item[1]) and pending.shape == (BATCH, 4, config.hidden_size)


def test_reset_drops_the_storage():
    layer = _layer(tiny_config(), units=2)
    assert layer.is_initialized and layer.nbytes() > 0
    layer.reset()
    assert not layer.is_initialized and layer.nbytes() == 0 and layer.get_seq_length() == 0


# ------------------------------------------------------------------------------------------ the whole cache
def _filled(config, pads=(0, 1, 2), columns=20, max_cache_len=64, recording=False) -> PhotonCache:
    """A cache whose every tensor holds distinct random values (as if prefilled), rows at different counts."""
    cache = PhotonCache(config, max_cache_len=max_cache_len)
    if recording:
        cache.activate_past_recording(recurrent_states_to_keep=2)  # the keyword transformers >= 5.25 passes
    cache.begin_prefill(list(pads), columns, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    for layer in cache.layers:
        for tensor in layer._row_tensors() + [layer.history]:
            if tensor is not None:
                fill = torch.randint(0, 50, tensor.shape, generator=generator)
                tensor.copy_(fill if tensor.dtype == torch.long else fill.float())
    if recording:
        cache.record_tokens(torch.randint(0, 50, (len(pads), columns), generator=generator))
    return cache


def _rows(cache: PhotonCache, row: int) -> list[torch.Tensor]:
    return [t[row].clone() for layer in cache.layers for t in layer._row_tensors() if t is not None]


@pytest.mark.parametrize("overrides", [dict(), dict(decoder_input="self"), dict(decoder_lookback=5),
                                       dict(encoder_windows=[2, None])])
def test_reorder_select_and_repeat_move_every_row_tensor(overrides):
    config = tiny_config(**overrides)
    cache = _filled(config)
    before = [_rows(cache, row) for row in range(3)]
    addresses = [t.data_ptr() for layer in cache.layers for t in layer._row_tensors() if t is not None]
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert [t.data_ptr() for layer in cache.layers for t in layer._row_tensors() if t is not None] == addresses
    for row, source in enumerate([2, 2, 0]):
        assert all(torch.equal(a, b) for a, b in zip(_rows(cache, row), before[source], strict=True))
    assert cache.pads == [2, 2, 0] and cache.counts.tolist() == [18, 18, 20]
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert cache.batch_size == 2 and cache.pads == [0, 2]
    assert all(torch.equal(a, b) for a, b in zip(_rows(cache, 0), before[0], strict=True))
    cache.batch_repeat_interleave(2)
    assert cache.pads == [0, 0, 2, 2] and cache.counts.tolist() == [20, 20, 18, 18]
    assert all(torch.equal(a, b) for a, b in zip(_rows(cache, 3), before[2], strict=True))


def test_crop_rolls_back_and_asks_for_a_rebuild():
    config = tiny_config()
    cache = _filled(config, pads=(0, 4), columns=40, max_cache_len=None, recording=True)
    assert not cache.is_compileable and cache.layers[1].get_seq_length() == 2  # 40 tokens = 2 meta-chunks
    with pytest.raises(ValueError, match="negative"):
        cache.crop(3)
    cache.crop(-10)
    assert cache.get_seq_length() == 30 and cache.counts.tolist() == [30, 26]
    assert [layer.get_seq_length() for layer in cache.layers] == [7, 1]
    streams, tokens, counts = cache.pending_rebuild()
    assert [s.shape[1] for s in streams] == [7, 1] and tokens.shape == (2, 30) and counts == [30, 26]
    assert cache.pending_rebuild() is None  # once
    with pytest.raises(RuntimeError, match="activate_past_recording"):
        _filled(config).crop(-1)


@pytest.mark.parametrize("overrides", [dict(), dict(chunk_sizes=[2, 2, 2], decoder_input="self"),
                                       dict(encoder_windows=[3, None]), dict(decoder_lookback=5)])
def test_measured_size_equals_the_cost_model(overrides):
    config = tiny_config(**overrides)
    cache = PhotonCache(config, max_cache_len=64)
    cache.begin_prefill([0] * BATCH, 5, torch.device("cpu"), torch.float32)
    assert cache.nbytes() == kv_cache_bytes(config, 64, batch_size=BATCH, dtype=torch.float32)


@pytest.mark.parametrize("overrides", [dict(), dict(chunk_sizes=[2, 2, 2], decoder_input="self"),
                                       dict(encoder_windows=[3, None]), dict(decoder_lookback=5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_state_layout_is_the_static_cache_row(overrides, dtype):
    """`state_layout` (what vLLM allocates per request) lists exactly the tensors of one row of a static cache, in
    bytes the cost model's, and a view over such storage binds them without copying."""
    config = tiny_config(**overrides)
    layout = PhotonCache.state_layout(config, 64, dtype)
    nbytes = sum(torch.Size(shape).numel() * torch.empty((), dtype=item).element_size() for _, shape, item in layout)
    assert nbytes == kv_cache_bytes(config, 64, dtype=dtype)
    dense = PhotonCache(config, max_cache_len=64)
    dense.begin_prefill([0] * BATCH, 5, torch.device("cpu"), dtype)
    assert [(tuple(t.shape[1:]), t.dtype) for layer in dense.layers for t in layer._row_tensors()] == [
        (shape, item) for name, shape, item in layout if name != "counts"]
    states = {name: torch.zeros(7, *shape, dtype=item) for name, shape, item in layout}
    view = PhotonCache.over_states(config, 64, states)
    bound = [t.data_ptr() for layer in view.layers for t in layer._row_tensors()] + [view.counts.data_ptr()]
    assert bound == [t.data_ptr() for t in states.values()]


def test_a_tensor_parallel_ranks_row_keeps_its_share_of_the_key_value_heads():
    """With `kv_heads` (a tensor-parallel rank's share, `photon_hf.vllm`) every key/value entry keeps that many
    heads and nothing else changes: the KV bytes split over the ranks, the sub-units and counts do not."""
    config = tiny_config(decoder_lookback=5)  # 2 key/value heads
    whole, share = PhotonCache.state_layout(config, 64, torch.float32), PhotonCache.state_layout(config, 64,
                                                                                                 torch.float32, 1)
    assert [name for name, _, _ in share] == [name for name, _, _ in whole]
    for (name, shape, item), (_, whole_shape, whole_item) in zip(share, whole, strict=True):
        kv = "_keys." in name or "_values." in name  # levels.<i>.<field>.<layer>
        assert item == whole_item and shape == ((1, *whole_shape[1:]) if kv else whole_shape), name
    states = {name: torch.zeros(3, *shape, dtype=item) for name, shape, item in share}
    view = PhotonCache.over_states(config, 64, states, kv_heads=1)
    assert {layer.kv_heads for layer in view.layers} == {1}


def test_the_step_plan_says_which_levels_run_and_who_feeds_the_decoder():
    plain = PhotonCache(tiny_config(), max_cache_len=64)  # C = [4, 4]: P = 4, 16
    plain.begin_prefill([0], 0, torch.device("cpu"), torch.float32)
    steps = [plain.begin_column() for _ in range(16)]
    assert steps[0].continuing == (True,) and steps[0].closing == (False,)
    assert steps[3].closing == (True, False) and steps[3].continuing == (False, True)
    assert steps[3].feeding == (False, True)  # the token decoder does not read a chunk's last token
    assert steps[15].closing == (True, True) and steps[15].feeding == (False, False)
    lookback = PhotonCache(tiny_config(decoder_lookback=5), max_cache_len=64)
    lookback.begin_prefill([0], 0, torch.device("cpu"), torch.float32)
    steps = [lookback.begin_column() for _ in range(16)]
    assert steps[3].feeding == (True, True) and steps[15].feeding == (True, False)  # the last token is fed too
    counts = lookback.advance()
    rows = lookback.rows(0, counts, steps[15])
    assert rows.feeding is None and rows.phase.tolist() == [0]  # one row: every row takes the same path
    mixed = PhotonCache(tiny_config(decoder_lookback=5), max_cache_len=64)
    mixed.begin_prefill([0, 1], 4, torch.device("cpu"), torch.float32)  # counts 4 and 3
    step = mixed.begin_column()
    rows = mixed.rows(0, mixed.advance(), step)
    assert rows.closing.tolist() == [False, True] and rows.feeding.tolist() == [True, True]
    assert rows.continuing.tolist() == [True, False]


# ------------------------------------------------------------------------------------------ the serving pool
def test_the_serving_pool_writes_rows_in_place_and_parks_free_ones():
    config = tiny_config()
    pool = PhotonCache(config, max_cache_len=64)
    pool.begin_pool(4, torch.device("cpu"), torch.float32)
    addresses = [t.data_ptr() for layer in pool.layers for t in layer._row_tensors()] + [pool.counts.data_ptr()]
    single = _filled(config, pads=(0,), columns=21)
    pool.write_row(2, single)
    assert [t.data_ptr() for layer in pool.layers for t in layer._row_tensors()] + [pool.counts.data_ptr()] == addresses
    assert all(torch.equal(a, b) for a, b in zip(_rows(pool, 2), _rows(single, 0), strict=True))
    assert pool.counts.tolist() == [0, 0, 21, 0] and pool.real_tokens() == [0, 0, 21, 0]
    assert all(t.abs().sum() == 0 for t in _rows(pool, 1))
    pool.park_rows([0, 3], [5, 21])
    assert pool.counts.tolist() == [5, 0, 21, 21] and pool.real_tokens() == [5, 0, 21, 21]
    step = pool.begin_column()  # rows at 6, 1, 22, 22 tokens: only the first closes nothing above level 0
    assert step.closing[0] is False and step.continuing == (True,)
    with pytest.raises(ValueError, match="one-row"):
        pool.write_row(0, _filled(config, pads=(0, 0)))
    with pytest.raises(ValueError, match="static"):
        PhotonCache(config).begin_pool(2, torch.device("cpu"), torch.float32)


def test_the_model_talks_to_the_cache_through_its_verbs_only():
    """No read of a level's storage or bookkeeping from the model file, and no variant branch in the decode step:
    how a level's decoder reads is its class."""
    import inspect
    import re

    from photon_hf import modeling_photon
    from photon_hf.modeling_photon import PhotonModel

    source = inspect.getsource(modeling_photon)
    storage = r"\.(pending|predictions|history|encoder_keys|encoder_values|decoder_keys|decoder_values|units|level)\b"
    assert not re.findall(r"(?:layer|cache)" + storage, source)
    step = "".join(inspect.getsource(f) for f in (PhotonModel.decode_column, PhotonModel._consume,
                                                   PhotonModel._encoder_step))
    assert not re.findall(r"lookback|self_decoding|decoder_input|decoder_reading", step)


def test_a_view_refuses_what_it_cannot_hold():
    """A view's rows are picked per step and never grow: `select_rows` needs a view, `extend` a view, and a row
    taken past the view's length is an error that says so, before anything is written."""
    from helpers import tiny_model

    from photon_hf.attention_photon import REFERENCE_OPS

    model = tiny_model()
    config = model.config
    states = {name: torch.zeros(3, *shape, dtype=dtype) for name, shape, dtype in PhotonCache.state_layout(
        config, 32, torch.float32)}
    view = PhotonCache.over_states(config, 32, states)
    dense = PhotonCache(config, max_cache_len=32)
    with pytest.raises(RuntimeError, match="over_states"):
        dense.select_rows(torch.tensor([0]), [0])
    with pytest.raises(RuntimeError, match="over_states"):
        model.model.extend(dense, torch.tensor([0]), [0], torch.ones(1, 4, dtype=torch.long), [4], REFERENCE_OPS)
    with pytest.raises(ValueError, match="a row holds 1 to 32 tokens"):
        model.model.extend(view, torch.tensor([1]), [30], torch.ones(1, 4, dtype=torch.long), [4], REFERENCE_OPS)
    assert states["counts"].tolist() == [0, 0, 0]
