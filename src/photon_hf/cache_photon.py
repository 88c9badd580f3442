"""The hierarchical PHOTON cache (its analytic size is `memory.kv_cache_bytes`).

A PHOTON model never keeps a per-token KV history. The cache is built the way transformers builds its own
(`Cache(layers=[...])`): one layer per level l (0-based here, bottom-up), of the class its local decoder needs
(`PhotonLevelCache`, `PhotonSelfLevelCache`, `PhotonLookbackLevelCache`: `PhotonLevelGeometry.decoder_reading`),
owns

* the context encoder's KV, one entry per level-l unit (every P_l tokens). Only the top level must grow with the
  context; a level with an `encoder_windows` entry keeps a ring of W entries;
* the local decoder's KV for the unit being decoded (R_l + C_l - 1 entries, rewritten at every unit);
* the finished sub-units of the unfinished unit (token ids at level 0, encoder states above), which the chunker
  needs once the unit completes;
* with `decoder_input="self"`, the decoder's own predictions for the current unit (and the last one before it).

`PhotonCache` holds the levels and the per-row bookkeeping. Rows of a left-padded batch keep their own chunk grid,
which starts at their first real token: `pads` (left pad columns, on the host) and the input columns consumed,
`seen` (host), give each row's real-token count, kept on the device as `counts`. A decode column asks
`begin_column()` which levels it runs (a `PhotonStep`, looked up on the host, so the step never reads the GPU);
inside the step, `rows(level, counts, step)` says on the device which rows take part, and where rows differ every
write is masked by it. A stack talks to its level through update-shaped verbs (`update_encoder`, `update_prefix`,
`update_decoder`, `add_subunit`, ...): it hands over its new keys and values and gets back what its attention reads.
With `max_cache_len` every tensor is allocated once, at the prefill, and never moves: the decode step is then a
static-shape function that `torch.compile` (and CUDA graphs) can capture.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .configuration_photon import PhotonConfig, PhotonLevelGeometry


class PhotonStep(NamedTuple):
    """Which levels a decode column runs, bottom-up up to the highest level that some row reaches.

    `continuing[l]`: some row finished a sub-unit of level l whose unit goes on (a local-decoder step);
    `closing[l]`: some row completed a level-l unit (chunker, encoder step, then the level above, then a new unit's
    prefix); `feeding[l]`: some row feeds a sub-unit to the level's local decoder (the continuing rows, and with a
    token look-back the closing rows too: `PhotonLevelGeometry.feeds_last_subunit`); `every_row[l]`: every row of
    the batch takes the same path at level l, so no write needs a mask. A column's step depends only on its phase in
    the meta-chunk (P_L columns) and the rows' padding, so a compiled decode step has at most P_L variants, and at
    most L + 1 when every row has the same padding.
    """

    continuing: tuple[bool, ...]
    closing: tuple[bool, ...]
    feeding: tuple[bool, ...]
    every_row: tuple[bool, ...]


class PhotonRows(NamedTuple):
    """Where every row stands at one level in the current decode column ([B] tensors, on the device).

    Masks, each None when every row of the batch takes the same path (`PhotonStep.every_row`): `arriving`, the row
    finished a sub-unit of this level (every row at level 0; above, the rows that closed the level below);
    `closing`, that sub-unit completes the row's unit; `continuing`, arriving but not closing; `feeding`, the rows
    whose sub-unit the local decoder reads (`continuing`, or `arriving` with a token look-back). Positions: `phase`,
    the sub-unit's index in its unit (0..C-1); `unit`, the index of the row's current unit (the one that closing
    rows just completed).
    """

    arriving: torch.Tensor | None
    closing: torch.Tensor | None
    continuing: torch.Tensor | None
    feeding: torch.Tensor | None
    phase: torch.Tensor
    unit: torch.Tensor


# Writes inside a decode step go through index_put_ / index_copy_ on whole tensors (never through views of a larger
# one): inductor keeps those in place, where a scatter_ or a write through a view copies the whole buffer per step.
# `rows` is the storage row of each batch row when the cache is a view over a larger storage (vLLM's state blocks,
# `PhotonCache.over_states`); None when batch row b is storage row b.
def _write_rows(buffer: torch.Tensor, dim: int, index: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                rows: torch.Tensor | None = None):
    """In place: buffer[rows[b], ..., index[b], ...] = values[b] (position `dim`) for the rows where mask[b] (all:
    None).

    buffer: [N, ...]; index, mask, rows: [B]; values: [B, ...], buffer's shape without dimension `dim`.
    """
    if rows is None:
        rows = torch.arange(buffer.shape[0], device=buffer.device)
    key = (rows,) + (slice(None),) * (dim - 1) + (index,)
    values = values.to(buffer.dtype)
    if mask is not None:
        values = torch.where(mask.view(-1, *[1] * (values.dim() - 1)), values, buffer[key])
    buffer[key] = values


def _write_slots(buffer: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, first: int = 0,
                 rows: torch.Tensor | None = None):
    """In place: the n slots (dim 2) from `first` on of buffer [N, Hkv, S, hd] take values [B, Hkv, n, hd] for the
    rows where mask[b] (all: None)."""
    slots = torch.arange(first, first + values.shape[2], device=buffer.device)
    values = values.to(buffer.dtype)
    if rows is None:
        if mask is not None:
            values = torch.where(mask.view(-1, 1, 1, 1), values, buffer.index_select(2, slots))
        buffer.index_copy_(2, slots, values)
        return
    if mask is not None:
        values = torch.where(mask.view(-1, 1, 1, 1), values, buffer.index_select(0, rows).index_select(2, slots))
    heads = torch.arange(buffer.shape[1], device=buffer.device)
    buffer.index_put_((rows.view(-1, 1, 1), heads.view(1, -1, 1), slots.view(1, 1, -1)), values)


def _ring_sources(units: torch.Tensor, window: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Which unit each slot of a ring of `window` entries holds once a row has `units` ([G]) complete units: slot s
    holds the latest unit p < units with p = s (mod W) (negative: none yet). With `first` ([G]), the index of that
    unit in [the ring before unit `first` (W entries, slot order) ; the units from `first` on] instead. -> [G, W]"""
    slots = torch.arange(window, device=units.device)[None, :]
    latest = units[:, None] - 1 - ((units[:, None] - 1 - slots) % window)
    if first is None:
        return latest
    return torch.where(latest >= first[:, None], window + latest - first[:, None], slots)


def _static(tensor: torch.Tensor) -> torch.Tensor:
    """Tell dynamo that `tensor` keeps its address, so a compiled step writes it in place and CUDA graphs can
    capture the writes (what transformers' `StaticLayer` does)."""
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(tensor)
    return tensor


class PhotonLevelCache(CacheLayerMixin):
    """The cached state of one PHOTON level, for every row of the batch, when its local decoder reads the encoder's
    states (`decoder_input="encoder"`); `PhotonSelfLevelCache` and `PhotonLookbackLevelCache` extend it for the
    other two ways of reading (`PhotonLevelGeometry.decoder_reading`).

    Storage (allocated at the prefill, `lazy_initialization`):

    - `encoder_keys`, `encoder_values`: per layer [B, Hkv, capacity, hd], the context encoder's KV, one entry per
      unit; a ring of `window` entries when the level's encoder has a sliding window (unless recording for `crop`);
    - `decoder_keys`, `decoder_values`: per layer [B, Hkv, W + slots, hd], the local decoder's KV: the window of the
      current unit (R + C - 1 slots; the look-back level puts W entries first);
    - `pending`: the finished sub-units of the current unit, [B, C] token ids at level 0, [B, C, D] states above;
    - `history` (recording only): [B, units, D], every encoder state, from which `crop` rebuilds.

    The model never reads these: it hands a stack's new keys/values to an `update_*` verb and gets back what its
    attention reads, the way a transformers stack calls `Cache.update`. With `max_units` (a static cache) the
    encoder KV holds that many units and nothing is ever reallocated; without it, it holds what the prompt needs
    and grows by doubling.
    """

    is_sliding = False  # a windowed encoder keeps a ring; its bounds come from `encoder_bounds`, not from masks
    _row_fields = ("pending",)  # batch-first tensors besides the KV lists, moved with the rows
    _kv_fields = ("encoder_keys", "encoder_values", "decoder_keys", "decoder_values")  # one tensor per layer each

    def __init__(self, level: PhotonLevelGeometry, config: PhotonConfig, max_units: int | None = None,
                 kv_heads: int | None = None):
        super().__init__()
        self.level = level
        self.kv_heads = config.num_key_value_heads if kv_heads is None else kv_heads
        self.head_dim, self.hidden_size = config.head_dim, config.hidden_size
        self.max_units = max_units
        self.recording = False
        self.units = 0  # units completed by the longest row (host)
        self.row_index: torch.Tensor | None = None  # [B] storage row of each batch row in a view (None: row b)
        self._drop_storage()

    def _drop_storage(self):
        self.encoder_keys = self.encoder_values = self.decoder_keys = self.decoder_values = None
        self.history = None
        for name in self._row_fields:
            setattr(self, name, None)
        self.is_initialized = False

    @property
    def is_compileable(self) -> bool:
        """Static storage (sized by `max_units`) that no decode step reallocates."""
        return self.max_units is not None and not self.recording

    @property
    def is_croppable(self) -> bool:
        return self.recording

    @property
    def ring(self) -> bool:
        """Whether the encoder KV is a ring of `window` entries."""
        return self.level.encoder_window is not None and not self.recording

    @property
    def capacity(self) -> int:
        return self.encoder_keys[0].shape[2]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level.index}, units={self.units})"

    # ------------------------------------------------------------------------------------------ allocation
    def row_layout(self, dtype: torch.dtype, units: int = 0) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """Every tensor this level keeps per row, in `_row_tensors` order: (name, shape without the batch dimension,
        dtype), for a cache whose longest row has completed `units` units. Names are `field.layer` or `field`."""
        level = self.level
        capacity = level.encoder_window if self.ring else max(units, self.max_units or 0, 1)
        layout = []
        for name in self._kv_fields:
            encoder = name.startswith("encoder")
            slots = capacity if encoder else level.decoder_cache_slots
            for layer in range(level.num_encoder_layers if encoder else level.num_decoder_layers):
                layout.append((f"{name}.{layer}", (self.kv_heads, slots, self.head_dim), dtype))
        if level.index == 0:
            layout.append(("pending", (level.chunk_size,), torch.long))
        else:
            layout.append(("pending", (level.chunk_size, self.hidden_size), dtype))
        return layout

    def lazy_initialization(self, batch_size: int, device: torch.device, dtype: torch.dtype, units: int = 0):
        """Allocate the storage for `batch_size` rows, the longest of which has completed `units` units."""
        self.bind({
            name: torch.zeros(batch_size, *shape, device=device, dtype=item)
            for name, shape, item in self.row_layout(dtype, units)
        })
        if self.recording:
            self.history = torch.zeros(batch_size, units, self.hidden_size, device=device, dtype=dtype)
        self.units = units

    def bind(self, storage: dict[str, torch.Tensor]):
        """Take `storage` ([N, *shape] per entry of `row_layout`) as this level's tensors, as they are: a view's
        storage holds more rows than a batch (`PhotonCache.over_states`), and no tensor is ever reallocated."""
        for name in self._kv_fields:
            setattr(self, name, [])
        for name, tensor in storage.items():
            field, _, layer = name.partition(".")
            if layer:
                getattr(self, field).append(self._placed(tensor))
            else:
                setattr(self, field, self._placed(tensor))
        self.is_initialized = True

    def _zeros(self, *shape, device, dtype) -> torch.Tensor:
        return self._placed(torch.zeros(*shape, device=device, dtype=dtype))

    def reserve_tokens(self, tokens: int):
        """The longest row holds `tokens` real tokens: make room for its units (see `reserve`)."""
        self.reserve(self.level.units_in(tokens))

    def reserve_columns(self, columns: int):
        """A static cache now holds `columns` columns (a returned cache that generate continues further)."""
        self.max_units = self.level.units_for(columns)
        self.reserve(self.units)

    def reserve(self, units: int):
        """Make room for `units` encoder entries: a ring or a large enough cache does not move; a growing cache
        doubles; a static one grows to `max_units` if that was raised, else (a step past its size) doubles too. A
        view's storage never moves: a row past its size is an error."""
        self.units = units
        if not self.is_initialized or self.ring or units <= self.capacity:
            return
        if self.row_index is not None:
            raise ValueError(
                f"A row outgrew its cache view: level {self.level.index} holds {self.capacity} units "
                f"({self.capacity * self.level.tokens_per_unit} tokens) per row, a row needs {units}."
            )
        grown = max(units, self.max_units or 0) if self.is_compileable else max(units, 2 * self.capacity)
        if self.max_units is not None:
            self.max_units = max(self.max_units, grown)
            grown = max(grown, self.max_units)
        for store in (self.encoder_keys, self.encoder_values):
            for layer, old in enumerate(store):
                new = old.new_zeros(*old.shape[:2], grown, old.shape[3])
                new[:, :, : old.shape[2]] = old
                store[layer] = self._placed(new)

    def nbytes(self) -> int:
        tensors = [*self._row_tensors(), self.history]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    # --------------------------------------------------------------------------------------- batch rows
    def _read(self, buffer: torch.Tensor) -> torch.Tensor:
        """The batch's rows of `buffer`: the buffer itself, or in a view its rows `row_index` (a gather)."""
        return buffer if self.row_index is None else buffer.index_select(0, self.row_index)

    def _store(self, buffer: torch.Tensor, rows: slice, values: torch.Tensor, entries: slice = slice(None)):
        """Prefill / rebuild: buffer[batch rows `rows`, entries (dim 1 or 2)] = values."""
        index = rows if self.row_index is None else self.row_index[rows]
        key = (index, entries) if buffer.dim() == 2 else (index, slice(None), entries)
        buffer[key] = values.to(buffer.dtype)

    # ------------------------------------------------------------------------------- the context encoder's KV
    def store_prefill(self, kv: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor, rows: slice):
        """Copy a prefill's encoder keys/values ([G, Hkv, M, hd] per layer) into the cache rows `rows`, whose rows
        hold `tokens` ([G]) real tokens each."""
        if not self.ring:
            n = min(self.capacity, kv[0][0].shape[2])
            for layer, (k, v) in enumerate(kv):
                self._store(self.encoder_keys[layer], rows, k[:, :, :n], slice(0, n))
                self._store(self.encoder_values[layer], rows, v[:, :, :n], slice(0, n))
            return
        # Ring of W slots: slot s holds the latest unit p < units with p = s (mod W).
        latest = _ring_sources(self.level.units_in(tokens), self.level.encoder_window).clamp(min=0)
        index = latest[:, None, :, None].expand(-1, self.kv_heads, -1, self.head_dim)
        for layer, (k, v) in enumerate(kv):
            self._store(self.encoder_keys[layer], rows, k.gather(2, index.clamp(max=k.shape[2] - 1)))
            self._store(self.encoder_values[layer], rows, v.gather(2, index.clamp(max=v.shape[2] - 1)))

    def encoder_past(self, layer: int, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What units `first` ([G], the units each batch row has completed) and later attend to before themselves:
        the layer's stored keys and values, [G, Hkv, K, hd] each, and the unit each entry holds, [G, K] (-1: none).
        K is a full encoder's capacity (entries from a row's `first` on are not its past) or a ring's window. (Every
        read is the whole capacity, whatever the rows hold: a request's arithmetic then never depends on what else
        is in the batch, which bfloat16 rounding would show.)"""
        keys, values = self._read(self.encoder_keys[layer]), self._read(self.encoder_values[layer])
        if self.ring:
            units = _ring_sources(first, self.level.encoder_window)
        else:
            units = torch.arange(keys.shape[2], device=first.device).expand(first.shape[0], -1)
            units = torch.where(units < first[:, None], units, -1)
        return keys, values, units

    def store_units(self, layer: int, keys: torch.Tensor, values: torch.Tensor, past: int, first: torch.Tensor,
                    units: torch.Tensor, longest: int):
        """Continue the layer's encoder KV of the batch's rows from unit `first` ([G]) on, now that they have
        `units` ([G]) complete units (`longest` the most, host): keys/values are [`encoder_past`'s `past` entries ;
        the units from `first` on] ([G, Hkv, past + M, hd]). Every slot is gathered from them, so no slot is
        written twice; a full encoder's slots from `longest` on, which no row holds yet, are left as they are."""
        if self.ring:
            index = _ring_sources(units, self.level.encoder_window, first)
        else:
            slot = torch.arange(min(max(longest, 1), self.capacity), device=first.device)[None, :]
            new = (slot >= first[:, None]) & (slot < units[:, None])
            # Slots a row does not hold are read by no step before one writes them: any entry will do.
            index = torch.where(new, past + slot - first[:, None], slot.clamp(max=past - 1))
        entries = slice(0, index.shape[1])
        index = index[:, None, :, None].expand(-1, self.kv_heads, -1, self.head_dim)
        self._store(self.encoder_keys[layer], slice(None), keys.gather(2, index), entries)
        self._store(self.encoder_values[layer], slice(None), values.gather(2, index), entries)

    def encoder_bounds(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder entries [start, end) that a query at `unit` ([B], its own entry written) attends to."""
        window = self.level.encoder_window
        if self.ring:  # the ring holds units unit - W + 1 .. unit once full
            return torch.zeros_like(unit), torch.where(unit >= window - 1, window, unit + 1)
        start = torch.zeros_like(unit) if window is None else (unit - window + 1).clamp(min=0)
        return start, unit + 1

    def update_encoder(self, layer: int, keys: torch.Tensor, values: torch.Tensor, unit: torch.Tensor,
                       mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys/values [B, Hkv, 1, hd] of unit `unit` ([B]) for the rows in `mask`; return the layer's
        whole encoder KV ([N, Hkv, capacity, hd] each: batch row b is row `row_index[b]` in a view, else row b), to
        be read within `encoder_bounds`."""
        slot = unit % self.level.encoder_window if self.ring else unit
        _write_rows(self.encoder_keys[layer], 2, slot, keys[:, :, 0], mask, self.row_index)
        _write_rows(self.encoder_values[layer], 2, slot, values[:, :, 0], mask, self.row_index)
        return self.encoder_keys[layer], self.encoder_values[layer]

    def store_history(self, rows: slice, states: torch.Tensor):
        """At the prefill: the encoder states [G, >= units, D] of the cache rows `rows` (kept when recording)."""
        if self.recording:
            self.history[rows, : self.units] = states[:, : self.units]

    def record(self, unit: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None):
        """After an encoder step: the state [B, D] of unit `unit` for the rows in `mask` (kept when recording)."""
        if not self.recording:
            return
        if self.history.shape[1] < self.units:
            grow = self.history.new_zeros(self.history.shape[0], self.units - self.history.shape[1], self.hidden_size)
            self.history = torch.cat([self.history, grow], dim=1)
        _write_rows(self.history, 1, unit.clamp(max=self.history.shape[1] - 1), state, mask)

    # ------------------------------------------------------------------------------ the unfinished unit
    def add_subunit(self, phase: torch.Tensor, items: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Keep the finished sub-unit `items` ([B] token ids or [B, D] states) at `phase` for the rows in `mask`;
        return the unit's sub-units so far ([B, C] or [B, C, D]), what the chunker reads when the unit closes."""
        _write_rows(self.pending, 1, phase, items, mask, self.row_index)
        return self._read(self.pending)

    def store_pending(self, rows: slice, pending: torch.Tensor):
        """Prefill / rebuild: set the finished sub-units of the cache rows `rows`."""
        self._store(self.pending, rows, pending)

    # ---------------------------------------------------------------------------- the local decoder's KV
    def update_prefix(self, layer: int, keys: torch.Tensor, values: torch.Tensor,
                      mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a new unit for the rows in `mask`: its prefix keys/values [B, Hkv, R, hd] fill window slots
        0..R-1. Returns what the prefix attends to: itself, [B, Hkv, R, hd] each."""
        _write_slots(self.decoder_keys[layer], keys, mask, rows=self.row_index)
        _write_slots(self.decoder_values[layer], values, mask, rows=self.row_index)
        return keys, values

    def update_decoder(self, layer: int, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor,
                       mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys/values [B, Hkv, 1, hd] at window slot `slot` ([B]) for the rows in `mask`; return the
        layer's local KV ([N, Hkv, entries, hd] each, rows as in `update_encoder`), to be read within
        `decoder_bounds`."""
        _write_rows(self.decoder_keys[layer], 2, slot, keys[:, :, 0], mask, self.row_index)
        _write_rows(self.decoder_values[layer], 2, slot, values[:, :, 0], mask, self.row_index)
        return self.decoder_keys[layer], self.decoder_values[layer]

    def decoder_bounds(self, slot: torch.Tensor, tokens: torch.Tensor, phase: torch.Tensor):
        """The local entries [start, end) that a query at window slot `slot` ([B]) attends to: the window so far."""
        return torch.zeros_like(slot), slot + 1

    def store_decoder(self, layer: int, rows: slice, keys: torch.Tensor, values: torch.Tensor):
        """Prefill / rebuild: set the local KV ([G, Hkv, entries, hd]) of the cache rows `rows`."""
        self._store(self.decoder_keys[layer], rows, keys)
        self._store(self.decoder_values[layer], rows, values)

    # ------------------------------------------------------------------------------------------ batch reshaping
    def _map_rows(self, fn):
        """Replace every row-major tensor (batch first) t by fn(t)."""
        for store in (self.encoder_keys, self.encoder_values, self.decoder_keys, self.decoder_values):
            store[:] = [fn(t) for t in store]
        for name in (*self._row_fields, "history"):
            tensor = getattr(self, name)
            setattr(self, name, None if tensor is None else fn(tensor))

    def reorder(self, index: torch.Tensor):
        """Row i takes the state of row index[i], in place (the storage keeps its address)."""
        self._map_rows(lambda t: t.copy_(t.index_select(0, index.to(t.device))))

    def select(self, index: torch.Tensor):
        """Keep only the rows `index`."""
        self._map_rows(lambda t: self._placed(t.index_select(0, index.to(t.device))))

    def repeat(self, repeats: int):
        """Repeat every row `repeats` times (row order a, a, b, b, ...)."""
        self._map_rows(lambda t: self._placed(t.repeat_interleave(repeats, dim=0)))

    def write_row(self, index: torch.Tensor, source: PhotonLevelCache):
        """Row index[0] takes the whole state of the one-row level `source` (same geometry and size), in place."""
        for mine, theirs in zip(self._row_tensors(), source._row_tensors(), strict=True):
            if mine is not None:
                mine.index_copy_(0, index, theirs.to(mine.dtype))

    def _row_tensors(self) -> list[torch.Tensor | None]:
        """Every per-row tensor of the decode state (the recorded history aside)."""
        return [*(self.encoder_keys or []), *(self.encoder_values or []), *(self.decoder_keys or []),
                *(self.decoder_values or []), *(getattr(self, name) for name in self._row_fields)]

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        return _static(tensor) if self.is_compileable else tensor

    def crop(self, units: int):
        """Keep the recorded encoder states of the first `units` units (the local state is rebuilt from them)."""
        self.units = units
        if self.history is not None:
            self.history = self.history[:, :units]

    def reset(self):
        self._drop_storage()
        self.units = 0

    # ----------------------------------------------------------------------- CacheLayerMixin's generic API
    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError(
            "A PHOTON level is written through update_encoder / update_prefix / update_decoder."
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return (self.capacity if self.is_initialized else 0), 0

    def get_seq_length(self) -> int:
        """Units completed by the longest row."""
        return self.units

    def get_max_length(self) -> int:
        return -1


class PhotonSelfLevelCache(PhotonLevelCache):
    """A level whose local decoder reads its own predictions (`decoder_input="self"`, levels above 0): also keeps
    `predictions`, [B, C + 1, D], the previous unit's last prediction and the current unit's C. (Its local KV is
    allocated, as `memory.kv_cache_bytes` counts it, but a "self" decoder predicts a whole unit at once.)"""

    _row_fields = ("pending", "predictions")

    def row_layout(self, dtype: torch.dtype, units: int = 0) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        predictions = ("predictions", (self.level.chunk_size + 1, self.hidden_size), dtype)
        return [*super().row_layout(dtype, units), predictions]

    def prediction(self, index: torch.Tensor) -> torch.Tensor:
        """Each row's kept prediction at `index` ([B], 0 = the previous unit's last) -> [B, D]."""
        gather = index.view(-1, 1, 1).expand(-1, 1, self.hidden_size)
        return self._read(self.predictions).gather(1, gather)[:, 0]

    def update_predictions(self, predictions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The rows in `mask` start a unit whose C predictions are `predictions` ([B, C, D]); the last kept one
        becomes the carry. Returns each row's carry, [B, D] (what conditions sub-unit 0 of the new unit)."""
        old = self._read(self.predictions)
        new = torch.cat([old[:, -1:], predictions.to(old.dtype)], dim=1)
        kept = new if mask is None else torch.where(mask.view(-1, 1, 1), new, old)
        if self.row_index is None:
            self.predictions.copy_(kept)
        else:
            self.predictions.index_copy_(0, self.row_index, kept)
        return new[:, 0]

    def store_predictions(self, rows: slice, predictions: torch.Tensor):
        """Prefill / rebuild: the kept predictions ([G, C + 1, D]) of the cache rows `rows`."""
        self._store(self.predictions, rows, predictions)


class PhotonLookbackLevelCache(PhotonLevelCache):
    """The token level with a look-back (`decoder_lookback` = W): the local KV's first W entries hold the W tokens
    before the current unit, in order, and the window (R + C slots) follows; a closing unit shifts its tokens into
    the look-back before the next unit's prefix is written."""

    def update_prefix(self, layer: int, keys: torch.Tensor, values: torch.Tensor,
                      mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Close the unit of the rows in `mask` (the look-back becomes the last W of [look-back ; its C tokens])
        and write the new prefix keys/values [B, Hkv, R, hd] at window slots 0..R-1. Returns what the prefix
        attends to: [look-back ; prefix], [B, Hkv, W + R, hd] each (read under the look-back mask)."""
        lookback = self.level.decoder_lookback
        out = []
        for buffer, new in ((self.decoder_keys[layer], keys), (self.decoder_values[layer], values)):
            past = self._close_unit(buffer, mask)
            _write_slots(buffer, new, mask, lookback, self.row_index)
            out.append(torch.cat([past.to(new.dtype), new], dim=2))
        return out[0], out[1]

    def _close_unit(self, buffer: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """In place, for the rows in `mask`: entry e of the new look-back is entry e + C of [look-back ; window
        slots R..R+C-1]. Returns every batch row's look-back after it, [B, Hkv, W, hd]."""
        lookback, width, chunk = self.level.decoder_lookback, self.level.converter_width, self.level.chunk_size
        source = torch.arange(chunk, lookback + chunk, device=buffer.device)
        source = torch.where(source < lookback, source, source + width)
        keep = torch.arange(lookback, device=buffer.device)
        rows = self._read(buffer)
        shifted = rows.index_select(2, source)
        if mask is not None:
            shifted = torch.where(mask.view(-1, 1, 1, 1), shifted, rows.index_select(2, keep))
        _write_slots(buffer, shifted, None, 0, self.row_index)
        return shifted

    def update_decoder(self, layer: int, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor,
                       mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """As the base class, window slot s being entry W + s."""
        return super().update_decoder(layer, keys, values, slot + self.level.decoder_lookback, mask)

    def decoder_bounds(self, slot: torch.Tensor, tokens: torch.Tensor, phase: torch.Tensor):
        """The look-back entries that exist (the row has `tokens` [B] tokens, the last one at `phase` in its unit),
        then the window up to `slot`."""
        lookback = self.level.decoder_lookback
        return lookback - (tokens - 1 - phase).clamp(max=lookback), lookback + slot + 1


_LEVEL_CACHES = {"encoder": PhotonLevelCache, "self": PhotonSelfLevelCache, "lookback": PhotonLookbackLevelCache}


def level_cache(level: PhotonLevelGeometry, config: PhotonConfig, max_columns: int | None = None,
                kv_heads: int | None = None) -> PhotonLevelCache:
    """The cache layer of a level, for the way its local decoder reads, sized for `max_columns` columns (None:
    it grows), keeping `kv_heads` key/value heads (None: the config's)."""
    cls = _LEVEL_CACHES[level.decoder_reading]
    return cls(level, config, None if max_columns is None else level.units_for(max_columns), kv_heads)


class PhotonCache(Cache):
    """Hierarchical cache for `PhotonForCausalLM` (see the module docstring): one `PhotonLevelCache` per level in
    `layers`, plus the rows' bookkeeping.

    `generate()` builds one through `PhotonForCausalLM._prepare_cache_for_generation`; a direct
    `model(input_ids, use_cache=True)` builds one too. With `max_cache_len` (columns, pads included) all storage is
    allocated once at the prefill and the cache `is_compileable`; without it, the encoder caches grow by doubling.
    `kv_heads`: the key/value heads each attention layer keeps, all of the config's unless a tensor-parallel rank
    keeps its share (vLLM, `photon_hf.vllm`).
    """

    def __init__(self, config: PhotonConfig, max_cache_len: int | None = None, kv_heads: int | None = None):
        super().__init__(layers=[level_cache(level, config, max_cache_len, kv_heads) for level in config.levels])
        self.config = config
        self.max_columns = max_cache_len  # columns (pads included) the static storage holds; None: it grows
        self.period = config.levels[-1].tokens_per_unit  # P_L: steps repeat with the meta-chunk
        self._plans: dict[frozenset[int], PhotonStep] = {}  # step plans by the rows' counts mod P_L (`_step_at`)
        self.recording = False
        self._reset_rows()

    def _reset_rows(self):
        self.seen = 0  # input columns consumed, left pads included (what generate slices input_ids with)
        self.pads: list[int] | None = None  # left pad columns per row (host)
        self.counts: torch.Tensor | None = None  # [B] real tokens consumed per row (device)
        self.history_tokens: torch.Tensor | None = None  # recording only: [B, columns] input ids
        self._stale = False  # after crop(), until the model has rebuilt the local state (`pending_rebuild`)
        self.viewing = False  # storage shared with per-request state (`over_states`): rows are picked per step
        self.row_index: torch.Tensor | None = None  # a view's selected rows ([B])

    def reset(self):
        """Forget everything: the next forward is a prefill."""
        super().reset()
        self._reset_rows()

    # -------------------------------------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        return -1 if self.pads is None else len(self.pads)

    @property
    def is_initialized(self) -> bool:
        return self.pads is not None

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    def __repr__(self) -> str:
        return (
            f"PhotonCache(levels={len(self.layers)}, batch_size={self.batch_size}, seen={self.seen}, "
            f"max_columns={self.max_columns}, bytes={self.nbytes()})"
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Input columns consumed so far, left pads included."""
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def real_tokens(self) -> list[int]:
        """Real (non-pad) tokens consumed by each row (host)."""
        return [self.seen - p for p in self.pads]

    def nbytes(self) -> int:
        """Measured size: bytes of every tensor the cache holds. A static cache is sized for `max_columns` columns
        from the prefill on, so it equals `kv_cache_bytes(config, max_columns)` per row (the top level's entries
        come in units of P_L tokens, so after generate, whose `max_columns` is the last column consumed, this is
        also `kv_cache_bytes(config, get_seq_length())` for unpadded rows)."""
        total = sum(layer.nbytes() for layer in self.layers)
        for tensor in (self.counts, self.history_tokens):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
        return total

    def reserve_columns(self, max_cache_len: int):
        """Size a static cache for `max_cache_len` columns (a returned cache that generate continues further)."""
        if self.max_columns is None or max_cache_len <= self.max_columns:
            return
        self.max_columns = max_cache_len
        for layer in self.layers:
            layer.reserve_columns(max_cache_len)

    # -------------------------------------------------------------------------------------------- the prefill
    def begin_prefill(self, pads: list[int], columns: int, device: torch.device, dtype: torch.dtype):
        """Allocate the storage for a batch whose rows carry `pads` left pad columns, `columns` columns in all."""
        self.pads = list(pads)
        self.seen = columns
        counts = self.real_tokens()
        self.counts = torch.tensor(counts, dtype=torch.long, device=device)
        if self.is_compileable:
            _static(self.counts)
        for layer in self.layers:
            layer.lazy_initialization(len(pads), device, dtype, layer.level.units_in(max(counts)))
        if self.recording:
            self.history_tokens = torch.zeros(len(pads), 0, dtype=torch.long, device=device)

    # ---------------------------------------------------------------------------------------- decode columns
    def begin_column(self) -> PhotonStep:
        """The host side of consuming one more column: count it and say which levels the step runs."""
        self.seen += 1
        longest = self.seen - min(self.pads)
        for layer in self.layers:
            layer.reserve_tokens(longest)
        return self._step_at(self.seen % self.period)

    def _step_at(self, phase: int) -> PhotonStep:
        """The step of every column that brings `seen` to `phase` (mod P_L), from the rows' distinct paddings."""
        # Real-token counts mod P_L, as 1..P_L (a multiple of P_L completes a unit at every level).
        counts = frozenset((phase - pad) % self.period or self.period for pad in set(self.pads))
        if counts not in self._plans:
            self._plans[counts] = self._plan(counts)
        return self._plans[counts]

    def _plan(self, counts: frozenset[int]) -> PhotonStep:
        """Which levels a column runs, and how, for rows at these real-token counts (mod P_L, as 1..P_L)."""
        continuing, closing, feeding, every_row = [], [], [], []
        arriving = counts
        for level in (layer.level for layer in self.layers):
            arrived = {c for c in arriving if level.arrives(c)}
            closed = {c for c in arrived if level.closes(c)}
            continuing.append(bool(arrived - closed))
            closing.append(bool(closed))
            feeding.append(bool(arrived if level.feeds_last_subunit else arrived - closed))
            every_row.append(arrived == counts and closed in (arrived, set()))
            if not closed:
                break
            arriving = closed
        return PhotonStep(tuple(continuing), tuple(closing), tuple(feeding), tuple(every_row))

    def advance(self) -> torch.Tensor:
        """The device side of consuming one column (inside the step): count it; returns the counts [B]."""
        if self.row_index is None:
            self.counts.add_(1)
            return self.counts
        counts = self.counts.index_select(0, self.row_index) + 1
        self.counts.index_copy_(0, self.row_index, counts)
        return counts

    def rows(self, level: int, counts: torch.Tensor, step: PhotonStep) -> PhotonRows:
        """Where each row stands at `level` once it has consumed `counts` ([B]) real tokens, in column `step`."""
        geometry = self.layers[level].level
        phase, unit = geometry.arrival(counts)
        if step.every_row[level]:
            return PhotonRows(None, None, None, None, phase, unit)
        arriving = geometry.arrives(counts)
        closing = geometry.closes(counts)
        continuing = arriving & ~closing
        return PhotonRows(arriving, closing, continuing, arriving if geometry.feeds_last_subunit else continuing,
                          phase, unit)

    def record_tokens(self, tokens: torch.Tensor):
        """Append input columns [B, n] to the token history (when recording)."""
        if self.recording:
            self.history_tokens = torch.cat([self.history_tokens, tokens], dim=1)

    # ------------------------------------------------------------------------------------------ batch reshaping
    def _new_pads(self, pads: list[int], counts: torch.Tensor):
        self.counts = _static(counts) if self.is_compileable else counts
        self.pads = pads

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: row i takes the state of row beam_idx[i] (in place)."""
        if self.pads is None:
            return
        index = beam_idx.to(self.counts.device)
        for layer in self.layers:
            layer.reorder(index)
        if self.history_tokens is not None:
            self.history_tokens = self.history_tokens.index_select(0, index)
        if len(set(self.pads)) > 1:
            self.pads = [self.pads[i] for i in beam_idx.tolist()]
        self.counts.copy_(self.counts.index_select(0, index))

    def batch_select_indices(self, indices: torch.Tensor):
        """Keep only the rows `indices`."""
        if self.pads is None:
            return
        index = torch.as_tensor(indices, device=self.counts.device)
        for layer in self.layers:
            layer.select(index)
        if self.history_tokens is not None:
            self.history_tokens = self.history_tokens.index_select(0, index)
        self._new_pads([self.pads[i] for i in index.tolist()], self.counts.index_select(0, index))

    def batch_repeat_interleave(self, repeats: int):
        """Repeat every row `repeats` times (row order a, a, b, b, ...)."""
        if self.pads is None:
            return
        for layer in self.layers:
            layer.repeat(repeats)
        if self.history_tokens is not None:
            self.history_tokens = self.history_tokens.repeat_interleave(repeats, dim=0)
        self._new_pads([p for p in self.pads for _ in range(repeats)], self.counts.repeat_interleave(repeats))

    # ------------------------------------------------------------------------------- a pool of rows (serving)
    def begin_pool(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        """Allocate a serving pool of `batch_size` rows (`photon_hf.serving`): rows that no request holds yet, into
        which `write_row` puts requests prefilled alone. Needs `max_cache_len`; nothing is reallocated afterwards."""
        if self.max_columns is None:
            raise ValueError("A pool of rows needs a static PhotonCache: build it with max_cache_len.")
        self.begin_prefill([0] * batch_size, 0, device, dtype)

    def write_row(self, row: int, source: PhotonCache):
        """Row `row` takes the whole state of the one-row cache `source` (prefilled alone, with this cache's
        `max_cache_len`), in place: every tensor keeps its address, so a captured decode step stays valid."""
        if source.batch_size != 1 or source.max_columns != self.max_columns:
            raise ValueError(
                f"write_row takes a one-row PhotonCache with max_cache_len={self.max_columns}, got "
                f"{source.batch_size} rows and max_cache_len={source.max_columns}."
            )
        index = torch.tensor([row], device=self.counts.device)
        for layer, other in zip(self.layers, source.layers, strict=True):
            layer.write_row(index, other)
        self.counts.index_copy_(0, index, source.counts)
        self._set_count(row, source.real_tokens()[0])

    def park_rows(self, rows: list[int], counts: list[int]):
        """Rows no request holds: set their real-token counts (host values; free rows keep stepping with the
        batch, so the pool moves them back by whole meta-chunks before they would outgrow the storage)."""
        if not rows:
            return
        self.counts.index_copy_(
            0, torch.tensor(rows, device=self.counts.device), torch.tensor(counts, device=self.counts.device)
        )
        for row, count in zip(rows, counts, strict=True):
            self._set_count(row, count)

    def _set_count(self, row: int, count: int):
        """Host side of a row's new real-token count: its padding relative to the columns seen (negative when it
        holds more tokens than the pool has stepped)."""
        self.pads[row] = self.seen - count

    # ------------------------------------------------------------------- a view over per-request state (vLLM)
    @classmethod
    def state_layout(cls, config: PhotonConfig, max_cache_len: int, dtype: torch.dtype,
                     kv_heads: int | None = None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """Every tensor one row of a static cache of `max_cache_len` columns keeps: (name, shape without the batch
        dimension, dtype), level by level, then the row's token count. Their bytes add up to
        `memory.kv_cache_bytes(config, max_cache_len, dtype=dtype)` (with all the config's `kv_heads`)."""
        layers = cls(config, max_cache_len, kv_heads).layers
        layout = [(f"levels.{i}.{name}", shape, item) for i, layer in enumerate(layers)
                  for name, shape, item in layer.row_layout(dtype)]
        return [*layout, ("counts", (), torch.long)]

    @classmethod
    def over_states(cls, config: PhotonConfig, max_cache_len: int, states: dict[str, torch.Tensor],
                    kv_heads: int | None = None) -> PhotonCache:
        """A cache whose storage is `states` ([N, *shape] per entry of `state_layout`, with the same `kv_heads`): N
        rows that requests hold, such as vLLM's per-request state blocks. Nothing is copied or reallocated; each step
        names the rows it works on (`select_rows`), and the cache verbs read and write those rows in place."""
        cache = cls(config, max_cache_len, kv_heads)
        for i, layer in enumerate(cache.layers):
            prefix = f"levels.{i}."
            layer.bind({name[len(prefix):]: tensor for name, tensor in states.items() if name.startswith(prefix)})
        cache.counts = states["counts"]
        cache.viewing = True
        return cache

    def select_rows(self, index: torch.Tensor, counts: list[int]):
        """A view's next batch: storage rows `index` ([B], on the cache's device), which hold `counts` real tokens
        each (host ints, the caller's bookkeeping: the step plan is made on the host from them)."""
        if not self.viewing:
            raise RuntimeError("select_rows works on a view over per-request state (PhotonCache.over_states).")
        self._select(index)
        self.seen, self.pads = 0, [-count for count in counts]

    def _select(self, index: torch.Tensor):
        self.row_index = index
        for layer in self.layers:
            layer.row_index = index

    @contextlib.contextmanager
    def narrowed(self, rows: list[int]):
        """Inside a view's step: work on some of the selected rows only (their batch positions `rows`, host ints).
        Yields (those positions as a tensor, their step plan); the verbs address only their storage until the
        block ends."""
        saved = self.row_index, self.pads
        positions = torch.tensor(rows, device=self.row_index.device)
        self._select(self.row_index.index_select(0, positions))
        self.pads = [self.pads[r] for r in rows]
        try:
            yield positions, self._step_at(self.seen % self.period)
        finally:
            self._select(saved[0])
            self.pads = saved[1]

    def set_counts(self, counts: torch.Tensor):
        """The selected rows of a view now hold `counts` ([B]) real tokens (a prefill or continuation wrote them)."""
        self.counts.index_copy_(0, self.row_index, counts)

    def clear_rows(self):
        """Zero every tensor of the selected rows (a view's rows are reused by new requests without being cleared;
        a prefill then writes only what it needs)."""
        for tensor in (*(t for layer in self.layers for t in layer._row_tensors()), self.counts):
            tensor.index_fill_(0, self.row_index, 0)

    # ------------------------------------------------------------------------------------------- rolling back
    def activate_past_recording(self, recurrent_states_to_keep: int | None = None):
        """Keep what `crop` needs to roll back: the token ids and every level's encoder states.

        Call it before the prefill (generate does, for assisted decoding). Windowed encoders then keep their
        whole history instead of a ring, and the cache is no longer compileable (it grows).
        `recurrent_states_to_keep` (transformers >= 5.25 passes it) sizes a linear-attention layer's record of
        recurrent states; PHOTON has none, so it is accepted and unused.
        """
        if self.is_initialized and not self.recording:
            raise RuntimeError(
                "activate_past_recording() must be called on an empty PhotonCache (before the prefill): the "
                "states a later crop would need are already gone."
            )
        self.recording = True
        for layer in self.layers:
            layer.recording = True

    def is_recording_past(self, layer_idx: int = 0) -> bool:
        return self.recording

    def crop(self, tokens_to_remove: int):
        """Forget the last `-tokens_to_remove` columns (`crop(0)` does nothing).

        Encoder entries of units that become unfinished are dropped; the local decoder state of the new last
        units is stale until the model rebuilds it from the recorded token ids and encoder states, which it asks
        for (`pending_rebuild`) first thing in its next forward.
        """
        tokens_to_remove = int(tokens_to_remove)  # generate may hand over a 0-d tensor
        if tokens_to_remove > 0:
            raise ValueError(
                f"PhotonCache.crop takes a negative number of columns to remove, got {tokens_to_remove} (the "
                "legacy 'absolute length' form is not supported)."
            )
        if tokens_to_remove == 0 or self.pads is None:
            return
        if not self.recording:
            raise RuntimeError(
                "PhotonCache.crop needs the past: call cache.activate_past_recording() before the prefill "
                "(generate does this for assisted decoding)."
            )
        remove = -tokens_to_remove
        if remove > self.seen - max(self.pads) - 1:
            raise ValueError(
                f"Cannot crop {remove} columns: every row must keep at least one real token "
                f"(seen={self.seen}, largest left padding={max(self.pads)})."
            )
        self.seen -= remove
        self.counts.sub_(remove)
        self.history_tokens = self.history_tokens[:, : self.seen]
        longest = self.seen - min(self.pads)
        for layer in self.layers:
            layer.crop(layer.level.units_in(longest))
        self._stale = True

    def pending_rebuild(self) -> tuple[list[torch.Tensor], torch.Tensor, list[int]] | None:
        """After `crop`, once: what the unfinished units' local state must be rebuilt from, as (encoder states
        [B, units, D] per level, token ids [B, columns] shifted so that each row starts at its first real token,
        real-token counts per row). None when nothing is stale."""
        if not self._stale:
            return None
        self._stale = False
        length = self.history_tokens.shape[1]
        pads = torch.tensor(self.pads, device=self.history_tokens.device)
        source = (torch.arange(length, device=pads.device)[None, :] + pads[:, None]).clamp(max=length - 1)
        tokens = self.history_tokens.gather(1, source)
        return [layer.history for layer in self.layers], tokens, self.real_tokens()
