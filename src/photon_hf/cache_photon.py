"""The hierarchical PHOTON cache and its memory accounting.

A PHOTON model never keeps a per-token KV history. Per level l (0-based here, bottom-up) the cache holds

* the context encoder's KV, one entry per level-l unit (every P_l tokens). Only the top level must grow with the
  context; a level with an `encoder_windows` entry keeps a ring of W entries;
* the local decoder's KV for the unit being decoded (at most R_l + C_l - 1 entries, reset at every unit);
* the finished sub-units of the unfinished unit (token ids at level 0, encoder states above), which the chunker
  needs once the unit completes;
* with `decoder_input="self"`, the decoder's own predictions for the current unit (and the last one before it).

Rows of a left-padded batch keep their own chunk grid, which starts at their first real token, so all the
bookkeeping is per row: `pads` (left pad columns) and the number of input columns consumed, `seen`. Which rows
step which level at a given column is decided from a CPU copy of those counts, so a decode step never reads the
GPU. The model (`modeling_photon.py`) does the arithmetic; this file only stores, selects and accounts.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .configuration_photon import PhotonConfig


class _Rows:
    """Which rows of the batch take part in one operation of a decode step.

    `index` is None when every row of the parent set takes part (then nothing is gathered), else a LongTensor of
    positions within the parent set. `absolute` is the same set as positions in the whole batch (None = all rows).
    `phase` is the position of the finished sub-unit inside its unit: an int when all rows agree, else a tensor.
    """

    __slots__ = ("index", "absolute", "count", "phase")

    def __init__(self, index, absolute, count, phase):
        self.index, self.absolute, self.count, self.phase = index, absolute, count, phase


class PhotonCache(Cache):
    """Hierarchical cache for `PhotonForCausalLM` (see the module docstring).

    `generate()` builds one through `PhotonForCausalLM._prepare_cache_for_generation`; a direct
    `model(input_ids, use_cache=True)` builds one too. `max_cache_len` (columns, pads included) sizes the growing
    encoder caches once; without it they grow by doubling.
    """

    is_compileable = False

    def __init__(self, config: PhotonConfig, max_cache_len: int | None = None):
        super().__init__(layers=[])
        self.config = config
        self.max_columns = max_cache_len
        self.chunk_sizes = list(config.chunk_sizes)
        self.tokens_per_unit = config.tokens_per_unit
        self.num_levels = config.num_levels
        self.self_decoding = config.decoder_input == "self" and config.num_levels > 1
        self.recording = False
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self):
        """Forget everything: the next forward is a prefill."""
        self.seen = 0  # input columns consumed, left pads included (what generate slices input_ids with)
        self.pads: list[int] | None = None  # left pad columns per row (CPU)
        self.pads_device: torch.Tensor | None = None
        self.enc_keys: list[torch.Tensor] = []  # per level [layers, B, Hkv, capacity, hd]
        self.enc_values: list[torch.Tensor] = []
        self.dec_keys: list[torch.Tensor] = []  # per level [layers, B, Hkv, R + C - 1, hd]
        self.dec_values: list[torch.Tensor] = []
        self.pending: list[torch.Tensor] = []  # per level: finished sub-units of the unfinished unit
        self.predictions: list[torch.Tensor | None] = []  # per level ("self" decoding, level > 0): [B, C + 1, D]
        self.history_tokens: torch.Tensor | None = None  # recording only: [B, columns] input ids
        self.history_streams: list[torch.Tensor] = []  # recording only: per level [B, units, D] encoder states
        self.rebuild_pending = False  # set by crop(): the model rebuilds the local state on its next forward
        self._plans: dict[int, list[tuple[_Rows, _Rows, _Rows]]] = {}

    @property
    def is_initialized(self) -> bool:
        return self.pads is not None

    @property
    def batch_size(self) -> int:
        return -1 if self.pads is None else len(self.pads)

    @property
    def is_croppable(self) -> bool:
        return self.recording

    @property
    def is_sliding(self) -> list[bool]:
        return [False]

    @property
    def is_linear(self) -> list[bool]:
        return [False]

    @property
    def is_dummy(self) -> list[bool]:
        return [False]

    def __len__(self) -> int:
        return self.num_levels

    def __repr__(self) -> str:
        return (
            f"PhotonCache(levels={self.num_levels}, batch_size={self.batch_size}, seen={self.seen}, "
            f"bytes={self.nbytes()})"
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Input columns consumed so far, left pads included."""
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def real_tokens(self, seen: int | None = None) -> list[int]:
        """Real (non-pad) tokens consumed by each row."""
        seen = self.seen if seen is None else seen
        return [seen - p for p in self.pads]

    def nbytes(self) -> int:
        """Measured size: bytes of every tensor the cache holds."""
        tensors = [*self.enc_keys, *self.enc_values, *self.dec_keys, *self.dec_values, *self.pending]
        tensors += [p for p in self.predictions if p is not None]
        tensors += [*self.history_streams]
        if self.history_tokens is not None:
            tensors.append(self.history_tokens)
        if self.pads_device is not None:
            tensors.append(self.pads_device)
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------- allocation
    def allocate(self, pads: list[int], device: torch.device, dtype: torch.dtype):
        """Create the (empty) storage for a batch whose rows carry `pads` left pad columns."""
        cfg = self.config
        batch, kv_heads, head_dim, hidden = len(pads), cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self._set_pads(list(pads), device)
        for level, chunk in enumerate(self.chunk_sizes):
            capacity = self._capacity(level, 1)
            shape = (cfg.num_encoder_layers[level], batch, kv_heads, capacity, head_dim)
            self.enc_keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.enc_values.append(torch.zeros(shape, device=device, dtype=dtype))
            local = cfg.converter_width[level] + chunk - 1
            shape = (cfg.num_decoder_layers[level], batch, kv_heads, local, head_dim)
            self.dec_keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.dec_values.append(torch.zeros(shape, device=device, dtype=dtype))
            if level == 0:
                self.pending.append(torch.zeros(batch, chunk, dtype=torch.long, device=device))
            else:
                self.pending.append(torch.zeros(batch, chunk, hidden, device=device, dtype=dtype))
            self.predictions.append(
                torch.zeros(batch, chunk + 1, hidden, device=device, dtype=dtype)
                if level > 0 and self.self_decoding
                else None
            )
            if self.recording:
                self.history_streams.append(torch.zeros(batch, 0, hidden, device=device, dtype=dtype))
        if self.recording:
            self.history_tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self._plans = {}

    def _set_pads(self, pads: list[int], device: torch.device):
        """Per-row left padding, on the CPU and the device, with the two facts a decode step reads from it."""
        self.pads = pads
        self.pads_device = torch.tensor(pads, dtype=torch.long, device=device)
        self.min_pad = min(pads)  # the longest row (sizes the encoder caches)
        self.uniform_pads = len(set(pads)) == 1  # then every row is at the same unit index: ints, not tensors

    def is_ring(self, level: int) -> bool:
        """Whether a level's encoder cache is a ring of `window` entries (not while recording: crop needs all)."""
        return self.config.window(level) is not None and not self.recording

    def _capacity(self, level: int, units: int) -> int:
        if self.is_ring(level):
            return self.config.window(level)
        if self.max_columns is not None:
            return max(units, self.max_columns // self.tokens_per_unit[level], 1)
        return max(units, 1)

    def ensure_capacity(self, level: int, units: int):
        """Grow a (non-ring) encoder cache so that it holds `units` entries (doubling, to amortise)."""
        if self.is_ring(level):
            return
        capacity = self.enc_keys[level].shape[3]
        if units <= capacity:
            return
        new_capacity = max(units, 2 * capacity) if self.max_columns is None else max(units, capacity)
        for store in (self.enc_keys, self.enc_values):
            old = store[level]
            grown = old.new_zeros(*old.shape[:3], new_capacity, old.shape[4])
            grown[:, :, :, :capacity] = old
            store[level] = grown

    def encoder_slots(self, level: int, positions):
        """Where unit `positions` of a level lives in its encoder cache (ring slot or the position itself)."""
        return positions % self.config.window(level) if self.is_ring(level) else positions

    # ------------------------------------------------------------ step plans
    def plan(self, seen_after: int) -> list[tuple[_Rows, _Rows, _Rows]]:
        """Which rows do what at each level when the column that brings `seen` to `seen_after` is consumed.

        One triple per level, bottom-up, until no row reaches further: `arriving` (rows that finished a sub-unit
        of this level: every row at level 0, the rows that closed the level below otherwise), `continuing` and
        `closing` (indexed within `arriving`: rows whose unit goes on, rows whose unit is now complete). Plans
        repeat with period P_L; `prepare_plans` makes all of them (and their index tensors) after a prefill, so
        a decode step only looks one up.
        """
        if not self._plans:
            self.prepare_plans()
        return self._plans[seen_after % self.tokens_per_unit[-1]]

    def prepare_plans(self):
        period = self.tokens_per_unit[-1]
        self._plans = {(self.seen + k) % period: self._make_plan(self.seen + k) for k in range(1, period + 1)}

    def _make_plan(self, seen_after: int) -> list[tuple[_Rows, _Rows, _Rows]]:
        device = self.pads_device.device
        counts = self.real_tokens(seen_after)
        batch = len(counts)

        def tensor(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        def phase_of(phases):
            return phases[0] if len(set(phases)) == 1 else tensor(phases)

        def subset(selected, parent, phases):
            position = {row: i for i, row in enumerate(parent)}
            index = None if len(selected) == len(parent) else tensor([position[r] for r in selected])
            absolute = None if len(selected) == batch else tensor(selected)
            return _Rows(index, absolute, len(selected), phase_of(phases) if phases else 0)

        plan = []
        arriving = list(range(batch))
        for level, chunk in enumerate(self.chunk_sizes):
            below = 1 if level == 0 else self.tokens_per_unit[level - 1]
            phases = [(counts[r] // below - 1) % chunk for r in arriving]
            cont = [(r, p) for r, p in zip(arriving, phases, strict=True) if p != chunk - 1]
            close = [r for r, p in zip(arriving, phases, strict=True) if p == chunk - 1]
            plan.append(
                (
                    subset(arriving, arriving, phases),
                    subset([r for r, _ in cont], arriving, [p for _, p in cont]),
                    subset(close, arriving, [chunk - 1] * len(close)),
                )
            )
            if not close:
                break
            arriving = close
        return plan

    # ------------------------------------------------------- batch reshaping
    def _batch_tensors(self) -> list[tuple[list, int, int]]:
        """(list, index, batch dim) of every row-major tensor, for reorder/select/repeat."""
        entries = []
        for store in (self.enc_keys, self.enc_values, self.dec_keys, self.dec_values):
            entries += [(store, i, 1) for i in range(len(store))]
        for store in (self.pending, self.predictions, self.history_streams):
            entries += [(store, i, 0) for i in range(len(store)) if store[i] is not None]
        return entries

    def _apply_rows(self, fn_tensor, new_pads: list[int]):
        for store, i, dim in self._batch_tensors():
            store[i] = fn_tensor(store[i], dim)
        if self.history_tokens is not None:
            self.history_tokens = fn_tensor(self.history_tokens, 0)
        if new_pads != self.pads:  # beams of one prompt share their padding: plans usually survive a reorder
            self._set_pads(new_pads, self.pads_device.device)
            self._plans = {}

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: row i takes the state of row beam_idx[i]."""
        if self.pads is None:
            return
        index = beam_idx.to(self.pads_device.device)
        new_pads = self.pads if self.uniform_pads else [self.pads[i] for i in beam_idx.tolist()]
        self._apply_rows(lambda t, dim: t.index_select(dim, index), new_pads)

    def batch_select_indices(self, indices: torch.Tensor):
        """Keep only the rows `indices`."""
        if self.pads is None:
            return
        index = torch.as_tensor(indices, device=self.pads_device.device)
        new_pads = [self.pads[i] for i in index.tolist()]
        self._apply_rows(lambda t, dim: t.index_select(dim, index), new_pads)

    def batch_repeat_interleave(self, repeats: int):
        """Repeat every row `repeats` times (row order a, a, b, b, ...)."""
        if self.pads is None:
            return
        new_pads = [p for p in self.pads for _ in range(repeats)]
        self._apply_rows(lambda t, dim: t.repeat_interleave(repeats, dim=dim), new_pads)

    # ------------------------------------------------------ rolling back
    def activate_past_recording(self):
        """Keep what `crop` needs to roll back: the token ids and every level's encoder states.

        Call it before the prefill (generate does, for assisted decoding). Windowed encoders then keep their
        whole history instead of a ring.
        """
        if self.is_initialized and not self.recording:
            raise RuntimeError(
                "activate_past_recording() must be called on an empty PhotonCache (before the prefill): the "
                "states a later crop would need are already gone."
            )
        self.recording = True

    def is_recording_past(self, layer_idx: int = 0) -> bool:
        return self.recording

    def crop(self, tokens_to_remove: int):
        """Forget the last `-tokens_to_remove` columns (`crop(0)` does nothing).

        Encoder entries of units that become unfinished are dropped; the local decoder state of the new last
        units is rebuilt from the recorded token ids and encoder states by the model on its next forward.
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
        self.history_tokens = self.history_tokens[:, : self.seen]
        counts = self.real_tokens()
        for level in range(self.num_levels):
            units = max(counts) // self.tokens_per_unit[level]
            self.history_streams[level] = self.history_streams[level][:, :units]
        self.rebuild_pending = True
        self._plans = {}
