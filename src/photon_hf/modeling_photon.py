"""PyTorch PHOTON: hierarchical autoregressive language model (arXiv 2512.20687) for transformers.

Levels are numbered bottom-up from 0 in the code (the paper's l = level + 1). With chunk sizes C_0..C_{L-1} a
level-i unit covers P_i = C_0 * ... * C_i tokens. Shapes below use B (batch), T (tokens), M_i (level-i units),
D (hidden size), R_i (converter width) and W_i = R_i + C_i - 1 (a local decoder's window).

Bottom-up, level i concatenates C_i units of the level below (token embeddings of width E at level 0), chunks
them into one vector (RMSNorm + Linear above level 0) and runs its causal context encoder F_i over the units.
Top-down, the top stream is shifted by one unit (a learned start latent first); a converter U_i expands each
level-i conditioning latent into R_i prefix vectors and a small causal decoder G_i runs inside the unit's window
[prefix ; inputs of sub-units 0..C_i-2], whose outputs at slots R_i-1.. predict the C_i sub-units. With
`decoder_input="encoder"` the inputs are the encoder's states (teacher forced) and each prediction conditions its
own unit below with zero lag; with "self" the decoders read their own outputs and every level is shifted.

The file reads top to bottom: the building blocks (norm, RoPE, attention, MLP, block, stack); the local decoders,
one class per way of reading (`PhotonLocalDecoder`: the encoder's states; `PhotonSelfDecoder`: its own predictions;
`PhotonLookbackDecoder`: the token decoder with a look-back), each making the same moves against the cache layer
it needs; `PhotonLevel`, which picks its decoder once; `PhotonModel` (full passes, prefill and rebuild, the decode
step); `PhotonForCausalLM`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CompileConfig, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .attention_photon import REFERENCE_OPS, PhotonOps, masked_attention, photon_kernels, photon_ops, rms_norm
from .cache_photon import PhotonCache, PhotonLevelCache, PhotonRows, PhotonStep
from .configuration_photon import PhotonConfig

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache argument and output field from `past_key_values` to `cache`.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------------------------- building blocks
class PhotonRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # One fused op (statistics in float32 for half inputs): a third of a decode step's kernels are norms.
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class PhotonRotaryEmbedding(nn.Module):
    """RoPE over integer positions: unit indices in the encoders, window slots in the decoders. The angles are
    computed in float32 whatever the model's dtype (as Llama does), so a model cast with `.double()` and one loaded
    with `dtype=torch.float64` compute the same table."""

    def __init__(self, config: PhotonConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer positions of any shape [...] -> cos, sin: [..., hd]."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _plain(module: nn.Module, cls: type) -> bool:
    """`module` is exactly a `cls` without hooks, so its forward uses its own parameters as they are: not a PEFT
    (LoRA) wrapper, a quantised subclass or an offloaded (accelerate-hooked) module."""
    hooked = module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook")
    return type(module) is cls and not hooked


class PhotonAttention(nn.Module):
    """Multi-head attention with RoPE and GQA. The score/softmax part is delegated to an `attend` callable, so the
    same module serves full sequences (causal or chunk-local) and cached decode steps."""

    def __init__(self, config: PhotonConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend):
        """hidden_states: [N, S, D]; cos, sin: broadcastable to [N, 1, S, hd]."""
        n, s, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(n, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(n, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(n, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = attend(q, k, v, self.layer_idx)
        return self.o_proj(out.transpose(1, 2).reshape(n, s, self.num_heads * self.head_dim))


class PhotonMLP(nn.Module):
    def __init__(self, config: PhotonConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PhotonBlock(GradientCheckpointingLayer):
    """One pre-norm Llama block (attention + SwiGLU MLP); every PHOTON stack is made of these."""

    def __init__(self, config: PhotonConfig, layer_idx: int):
        super().__init__()
        self.self_attn = PhotonAttention(config, layer_idx)
        self.mlp = PhotonMLP(config)
        self.input_layernorm = PhotonRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = PhotonRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, attend)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class PhotonStack(nn.Module):
    """A causal Transformer stack with a final norm: a context encoder F_i or a local decoder G_i."""

    def __init__(self, config: PhotonConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([PhotonBlock(config, i) for i in range(num_layers)])
        self.norm = PhotonRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend):
        """hidden_states: [N, S, D] -> [N, S, D]."""
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos, sin, attend)
        return self.norm(hidden_states)


# ------------------------------------------------------------------------------------------------- local decoders
def _lookback_mask(before: torch.Tensor, lookback: int, slots: int) -> torch.Tensor:
    """Which keys the first `slots` slots of a token-decoder window may attend to with a look-back of W tokens:
    the look-back entries that exist (the last min(W, before) of the W; `before` [N] counts the tokens before each
    window), then the window's own slots, causally. Returns [N, 1, slots, W + slots] (True: attend)."""
    back = torch.arange(lookback, device=before.device)[None, :] >= lookback - before.clamp(max=lookback)[:, None]
    own = torch.ones(slots, slots, dtype=torch.bool, device=before.device).tril()
    mask = torch.cat([back[:, None, :].expand(-1, slots, -1), own.expand(before.shape[0], -1, -1)], dim=-1)
    return mask[:, None]


def _fit_units(stream: torch.Tensor, units: int) -> torch.Tensor:
    """stream [B, M, D] cut or zero-padded to [B, units, D]."""
    if stream.shape[1] >= units:
        return stream[:, :units]
    return torch.cat([stream, stream.new_zeros(stream.shape[0], units - stream.shape[1], stream.shape[2])], dim=1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: [B, N, *], index: [B, K] (values in [0, N)) -> [B, K, *]."""
    shape = index.shape + x.shape[2:]
    flat = index.reshape(index.shape[0], -1, *([1] * (x.dim() - 2))).expand(index.shape[0], -1, *x.shape[2:])
    return x.gather(1, flat).view(shape)


def _gather_units(stream: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stream: [B, M, D] (M may be 0), index: [B, K] -> [B, K, D]; out-of-range indices read a zero unit (the
    callers only use such entries where they are masked or replaced)."""
    padded = torch.cat([stream, stream.new_zeros(stream.shape[0], 1, stream.shape[2])], dim=1)
    return _gather_rows(padded, index.clamp(min=0, max=stream.shape[1]))


def _rope(rotary: PhotonRotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype):
    """cos, sin for one query per row at `positions` ([B]): [B, 1, 1, hd]."""
    cos, sin = rotary(positions, dtype)
    return cos[:, None, None], sin[:, None, None]


def _window_rope(rotary: PhotonRotaryEmbedding, length: int, device, dtype, first: torch.Tensor | None = None):
    """cos, sin of positions 0..length-1: [1, 1, length, hd]; from `first` ([B]) on: [B, 1, length, hd]."""
    positions = torch.arange(length, device=device)
    if first is not None:
        positions = first[:, None] + positions
    cos, sin = rotary(positions, dtype)
    return (cos[None, None], sin[None, None]) if first is None else (cos[:, None], sin[:, None])


def _shift(stream: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[start ; stream] cut to the length of stream ([B, M, D]): each unit is conditioned on the one before it."""
    start = start.to(stream.dtype).expand(stream.shape[0], 1, -1)
    return torch.cat([start, stream], dim=1)[:, : stream.shape[1]]


@dataclass
class PhotonTrace:
    """What a teacher-forced pass (`PhotonModel.decode`) records for a cache rebuild.

    `conditions[i]`: [B, M_i, D], the conditioning latent of every level-i unit; `token_kv`: the token decoder's
    per-layer (key, value) pairs when it records them (with a look-back: [B * M_0, Hkv, R + C, hd]); `hidden`:
    [B, T, D], the token states; `predictions[i]` (i >= 1): [B, M_{i-1}, D], decoder i's predictions; `offset`:
    where the pass starts in each row (a continuation's tokens come after the cached ones).
    """

    conditions: list
    token_kv: list
    hidden: torch.Tensor | None = None
    predictions: list | None = None
    offset: torch.Tensor | None = None  # [B] tokens before each row's first token (a continuation's; None: 0)


class PhotonLocalDecoder(PhotonStack):
    """A local decoder G_i that reads the encoder's states (`decoder_input="encoder"`, the default): teacher forced,
    each of its predictions conditions its own unit below with zero lag.

    Every local decoder makes the same moves, whatever it reads; a level picks its class once, at construction
    (`PhotonLevelGeometry.decoder_reading`), and the cache gives it the matching layer (`cache_photon`):

    - `teacher_forced(prefix, inputs)`: the full forward, every unit's window at once;
    - `conditioning(predictions, start)`: its predictions -> the conditioning latents of the level below;
    - `start_unit(cache, rows, prefix, tokens)`: a decode step's closing rows start a unit from its converter prefix;
    - `step(cache, rows, x, tokens)`: a decode step's feeding rows hand it a finished sub-unit;
    - `rebuild(cache, group, prefix, inputs, tokens, history)`: after a prefill or a crop, its cached state.

    The window of a unit is [prefix (R slots) ; inputs of sub-units 0..C-2]; outputs at slots R-1.. predict the C
    sub-units. Parameters are the stack's (`layers`, `norm`), so checkpoints do not depend on the class.
    """

    def __init__(self, config: PhotonConfig, geometry):
        super().__init__(config, geometry.num_decoder_layers)
        self.geometry = geometry

    def teacher_forced(self, prefix: torch.Tensor, inputs: torch.Tensor, rotary: PhotonRotaryEmbedding,
                       ops: PhotonOps, capture: list | None = None, offset: torch.Tensor | None = None) -> torch.Tensor:
        """prefix: [B, M, R, D] converter prefixes; inputs: [B, M * C, D] the sub-units' inputs. Returns the C
        predictions per unit: [B, M * C, D]. (`capture` and `offset`, the tokens before each row's first window,
        matter to the look-back decoder only: its keys sit at token positions.)"""
        b, m, width, d = prefix.shape
        chunk = self.geometry.chunk_size
        windows = torch.cat([prefix, inputs.view(b, m, chunk, d)[:, :, : chunk - 1]], dim=2)
        cos, sin = _window_rope(rotary, self.geometry.decoder_slots, prefix.device, prefix.dtype)
        out = self(windows.flatten(0, 1), cos, sin, lambda q, k, v, _: ops.chunk_local_attention(q, k, v))
        return out[:, width - 1 :].reshape(b, m * chunk, d)

    def conditioning(self, predictions: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """[B, M * C, D] predictions -> conditioning latents of the level below: the predictions themselves."""
        return predictions

    def start_unit(self, cache: PhotonLevelCache, rows: PhotonRows, prefix: torch.Tensor, tokens: torch.Tensor,
                   rotary: PhotonRotaryEmbedding, ops: PhotonOps) -> torch.Tensor:
        """Run the prefix [B, R, D] of the closing rows' new unit (slots 0..R-1, written to the cache) and return the
        output at slot R-1, which conditions sub-unit 0: [B, D]. `tokens` [B]: each row's real-token count."""
        cos, sin = _window_rope(rotary, self.geometry.converter_width, prefix.device, prefix.dtype)

        def attend(q, k, v, layer_idx):
            keys, values = cache.update_prefix(layer_idx, k, v, rows.closing)
            return ops.chunk_local_attention(q, keys, values)

        return self(prefix, cos, sin, attend)[:, -1]

    def step(self, cache: PhotonLevelCache, rows: PhotonRows, x: torch.Tensor, tokens: torch.Tensor,
             rotary: PhotonRotaryEmbedding, ops: PhotonOps) -> torch.Tensor:
        """Feed the input x [B, D] of finished sub-unit j (`rows.phase`) at window slot R + j (the feeding rows
        write); return the output there, which conditions sub-unit j + 1: [B, D]."""
        slot = self.geometry.decoder_slot(rows.phase)
        cos, sin = _rope(rotary, self._position(slot, tokens), x.dtype)
        start, end = cache.decoder_bounds(slot, tokens, rows.phase)

        def attend(q, k, v, layer_idx):
            keys, values = cache.update_decoder(layer_idx, k, v, slot, rows.feeding)
            return ops.decode_attention(q[:, :, 0], keys, values, start, end, cache.row_index)[:, :, None]

        return self(x[:, None], cos, sin, attend)[:, 0]

    def _position(self, slot: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The RoPE position of a decode step's query: its window slot."""
        return slot

    def rebuild(self, cache: PhotonLevelCache, group: slice, prefix: torch.Tensor, inputs: torch.Tensor,
                tokens: torch.Tensor, history: Callable[[], PhotonTrace], rotary: PhotonRotaryEmbedding,
                ops: PhotonOps) -> torch.Tensor:
        """Rebuild the cached state of the unfinished unit of the cache rows `group` (prefix [G, R, D] from its
        conditioning latent, inputs [G, C, D] of its sub-units, `tokens` [G] real tokens per row; `history()` a
        teacher-forced pass, computed on demand) and return what conditions each row's next sub-unit: [G, D]."""
        chunk, width = self.geometry.chunk_size, self.geometry.converter_width
        window = torch.cat([prefix, inputs[:, : chunk - 1]], dim=1)
        cos, sin = _window_rope(rotary, self.geometry.decoder_slots, window.device, window.dtype)

        def attend(q, k, v, layer_idx):
            cache.store_decoder(layer_idx, group, k, v)
            return ops.chunk_local_attention(q, k, v)

        out = self(window, cos, sin, attend)
        rows = torch.arange(out.shape[0], device=out.device)
        return out[rows, width - 1 + self.geometry.subunits_done(tokens)]


class PhotonSelfDecoder(PhotonLocalDecoder):
    """A latent decoder that reads its own predictions (`decoder_input="self"`, the paper-literal reading): it
    unrolls a unit's C predictions from the prefix alone, each fed back; the level below is shifted by one unit
    (a learned start latent first). In a decode step it predicts a whole unit when the unit starts, and the
    cache keeps the predictions (`PhotonSelfLevelCache`)."""

    def unroll(self, prefix: torch.Tensor, rotary: PhotonRotaryEmbedding, ops: PhotonOps) -> torch.Tensor:
        """prefix [N, R, D] -> the C predictions [N, C, D], each fed back (sequential by definition)."""
        window, outputs = prefix, []
        for _ in range(self.geometry.chunk_size):
            cos, sin = _window_rope(rotary, window.shape[1], prefix.device, prefix.dtype)
            h = self(window, cos, sin, lambda q, k, v, _: ops.chunk_local_attention(q, k, v))[:, -1]
            outputs.append(h)
            window = torch.cat([window, h[:, None]], dim=1)
        return torch.stack(outputs, dim=1)

    def teacher_forced(self, prefix, inputs, rotary, ops, capture=None, offset=None):
        """prefix: [B, M, R, D] -> [B, M * C, D], every unit unrolled (`inputs` are not read)."""
        b, m = prefix.shape[:2]
        return self.unroll(prefix.flatten(0, 1), rotary, ops).reshape(b, m * self.geometry.chunk_size, -1)

    def conditioning(self, predictions, start):
        """The level below is shifted: sub-unit k is conditioned on prediction k - 1 (`start` [D] first)."""
        return _shift(predictions, start)

    def start_unit(self, cache, rows, prefix, tokens, rotary, ops):
        """Predict the closing rows' new unit at once, keep it, and return the carry (the last prediction of the
        unit before), which conditions sub-unit 0: [B, D]."""
        return cache.update_predictions(self.unroll(prefix, rotary, ops), rows.closing)

    def step(self, cache, rows, x, tokens, rotary, ops):
        """Sub-unit j + 1 is conditioned on the kept prediction j: [B, D]."""
        return cache.prediction(rows.phase + 1)

    def rebuild(self, cache, group, prefix, inputs, tokens, history, rotary, ops):
        """The kept predictions [carry ; C] of each row's unfinished unit, read from the teacher-forced pass (the
        shifted predictions are the conditioning latents of the level below)."""
        chunk, index, trace = self.geometry.chunk_size, self.geometry.index, history()
        # [start ; every prediction] ([G, M_{i-1} + 1, D]): the level below's conditioning latents, and one more.
        below = torch.cat([trace.conditions[index - 1][:, :1], trace.predictions[index]], dim=1)
        unit = self.geometry.units_in(tokens)
        window = _gather_rows(below, unit[:, None] * chunk + torch.arange(chunk + 1, device=tokens.device))
        cache.store_predictions(group, window)
        return window[torch.arange(window.shape[0], device=tokens.device), self.geometry.subunits_done(tokens)]


class PhotonLookbackDecoder(PhotonLocalDecoder):
    """The token decoder with a look-back of W tokens (`decoder_lookback`): chunk k's window is [prefix (R) ; its C
    tokens] (the last token is fed too, so that later chunks can attend to it) and at every layer its slots also
    attend to the keys and values, at that layer, of tokens kC - W .. kC - 1, computed in their own windows. RoPE
    runs on token positions (prefix slot r at kC - R + r, token j at kC + j), so distances across windows are the
    true ones. No Triton kernel takes this mask: windows and prefixes attend through `masked_attention` (SDPA).
    The cache keeps the W tokens' keys and values before the window (`PhotonLookbackLevelCache`)."""

    def teacher_forced(self, prefix, inputs, rotary, ops, capture=None, offset=None):
        """prefix: [B, M, R, D]; inputs: [B, M * C, D] token embeddings -> the token states [B, M * C, D];
        `capture` (a list) receives each layer's (key, value): [B * M, Hkv, R + C, hd]; `offset` ([B]) moves each
        row's token positions (a continuation's windows; their look-back starts with the pass, which is exact from
        the W tokens of the pass on)."""
        geometry = self.geometry
        b, m, width, d = prefix.shape
        chunk, lookback, slots = geometry.chunk_size, geometry.decoder_lookback, geometry.decoder_slots
        device = prefix.device
        windows = torch.cat([prefix, inputs.view(b, m, chunk, d)], dim=2).flatten(0, 1)
        before = torch.arange(m, device=device) * chunk  # tokens before each chunk
        positions = (before[:, None] - width + torch.arange(slots, device=device)).expand(b, -1, -1)
        if offset is not None:
            positions = positions + offset.view(-1, 1, 1)
        cos, sin = rotary(positions.flatten(0, 1), prefix.dtype)
        cos, sin = cos[:, None], sin[:, None]  # [B * M, 1, S, hd], b-major
        mask = _lookback_mask(before, lookback, slots).repeat(b, 1, 1, 1)
        back = (before[:, None] - lookback + torch.arange(lookback, device=device)).clamp(min=0)  # [M, W] tokens

        def with_lookback(x: torch.Tensor) -> torch.Tensor:
            """[B * M, Hkv, S, hd] per-window keys (or values) -> [B * M, Hkv, W + S, hd], the look-back first."""
            heads, head_dim = x.shape[1], x.shape[3]
            tokens = x.view(b, m, heads, slots, head_dim)[:, :, :, width:].transpose(1, 2)
            tokens = tokens.reshape(b, heads, m * chunk, head_dim)[:, :, back]  # [B, Hkv, M, W, hd]
            return torch.cat([tokens.transpose(1, 2).reshape(b * m, heads, lookback, head_dim), x], dim=2)

        def attend(q, k, v, layer_idx):
            if capture is not None:
                capture.append((k, v))
            return masked_attention(q, with_lookback(k), with_lookback(v), mask)

        out = self(windows, cos, sin, attend)
        return out.view(b, m, slots, d)[:, :, width - 1 : width - 1 + chunk].reshape(b, m * chunk, d)

    def start_unit(self, cache, rows, prefix, tokens, rotary, ops):
        """The prefix also attends to the look-back (`tokens` [B] before the new chunk) and sits at token
        positions."""
        width = self.geometry.converter_width
        cos, sin = rotary(tokens[:, None] - width + torch.arange(width, device=tokens.device), prefix.dtype)
        mask = _lookback_mask(tokens, self.geometry.decoder_lookback, width)

        def attend(q, k, v, layer_idx):
            keys, values = cache.update_prefix(layer_idx, k, v, rows.closing)
            return masked_attention(q, keys, values, mask)

        return self(prefix, cos[:, None], sin[:, None], attend)[:, -1]

    def _position(self, slot, tokens):
        """A token's RoPE position is its index in the sequence."""
        return tokens - 1

    def rebuild(self, cache, group, prefix, inputs, tokens, history, rotary, ops):
        """The keys/values depend on the chunks before: each row keeps, from the teacher-forced pass, the W tokens
        before its current chunk and that chunk's window, and gets the token state that predicts its next token."""
        geometry = self.geometry
        chunk, width, lookback = geometry.chunk_size, geometry.converter_width, geometry.decoder_lookback
        trace = history()
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        unit = geometry.units_in(tokens)  # each row's current (unfinished) chunk
        back = (unit[:, None] * chunk - lookback + torch.arange(lookback, device=tokens.device)).clamp(min=0)
        for layer_idx, (keys, values) in enumerate(trace.token_kv):
            stored = []
            for x in (keys, values):
                heads, head_dim = x.shape[1], x.shape[3]
                x = x.view(tokens.shape[0], -1, heads, geometry.decoder_slots, head_dim)
                token_kv = x[:, :, :, width:].transpose(1, 2).flatten(2, 3)  # [G, Hkv, M * C, hd]
                back_kv = token_kv.gather(2, back[:, None, :, None].expand(-1, heads, -1, head_dim))
                stored.append(torch.cat([back_kv, x[rows, unit]], dim=2))
            cache.store_decoder(layer_idx, group, *stored)
        return trace.hidden[rows, tokens]


_DECODERS = {"encoder": PhotonLocalDecoder, "self": PhotonSelfDecoder, "lookback": PhotonLookbackDecoder}


class PhotonLevel(nn.Module):
    """One level of the hierarchy: chunker, context encoder, converter and local decoder (shape: `geometry`)."""

    def __init__(self, config: PhotonConfig, level: int):
        super().__init__()
        self.geometry = geometry = config.levels[level]
        self.hidden_size = config.hidden_size
        width = geometry.chunk_size * geometry.input_width
        # Level 0 concatenates token embeddings (a projection only when C_0 * E != D); above, RMSNorm + Linear.
        self.chunker_norm = PhotonRMSNorm(width, eps=config.rms_norm_eps) if level > 0 else None
        needs_projection = level > 0 or width != config.hidden_size
        self.chunker = nn.Linear(width, config.hidden_size, bias=True) if needs_projection else None
        self.encoder = PhotonStack(config, geometry.num_encoder_layers)
        self.converter = nn.Linear(config.hidden_size, geometry.converter_width * config.hidden_size, bias=True)
        self.decoder = _DECODERS[geometry.decoder_reading](config, geometry)  # chosen once: how it reads

    def chunk(self, units: torch.Tensor, ops: PhotonOps) -> torch.Tensor:
        """[..., C, width] units of the level below -> [..., D] one unit of this level."""
        x = units.flatten(-2)
        norm, linear = self.chunker_norm, self.chunker
        if ops.chunk_compress and norm is not None and self._kernel_fits(norm, x):
            if _plain(linear, nn.Linear) and linear.weight.dtype == x.dtype:  # norm and projection in one kernel
                return photon_kernels.chunk_compress(x, norm.weight, linear.weight, linear.bias, norm.variance_epsilon)
            return linear(photon_kernels.rms_norm(x, norm.weight, norm.variance_epsilon))  # e.g. LoRA: runs itself
        if norm is not None:
            x = norm(x)
        return linear(x) if linear is not None else x

    @staticmethod
    def _kernel_fits(norm: nn.Module, x: torch.Tensor) -> bool:
        """The fused norm reads the norm's weight (a plain `PhotonRMSNorm` of x's dtype) and holds a row."""
        fits = x.shape[-1] <= photon_kernels.MAX_NORM_WIDTH
        return _plain(norm, PhotonRMSNorm) and norm.weight.dtype == x.dtype and fits

    def prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """[..., D] conditioning latents -> [..., R, D] converter prefixes."""
        return self.converter(cond).unflatten(-1, (self.geometry.converter_width, self.hidden_size))


# ------------------------------------------------------------------------------------------------- base classes
class PhotonPreTrainedModel(PreTrainedModel):
    config: PhotonConfig
    config_class = PhotonConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # Only modules whose own forward() runs may be FSDP units: PhotonLevel's chunker and converter are reached
    # through its methods, so wrapping PhotonLevel would leave them sharded (FSDP2: "mixed torch.Tensor and DTensor").
    _no_split_modules = ["PhotonBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _can_compile_fullgraph = False
    _is_stateful = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PhotonModel):
            # Learned start latents: small non-zero values (an all-zero start destabilises the RMSNorms).
            init.normal_(module.start_latents, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, PhotonRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


@dataclass
class PhotonModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus, after a full (uncached) pass, the aligned encoder streams X_i
    ([B, M_i, D]), the decoders' predictions Xhat_{i-1} (index i >= 1) and each row's count of real tokens."""

    encoder_streams: list[torch.Tensor] | None = None
    decoder_predictions: list[torch.Tensor | None] | None = None
    real_lengths: torch.Tensor | None = None


@dataclass
class PhotonCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the recursive (bottleneck reconstruction) loss, before weighting."""

    recursive_loss: torch.FloatTensor | None = None


def _check_inputs(input_ids, inputs_embeds, cache, past_key_values) -> PhotonCache | None:
    """Refuse what PHOTON cannot take (embeddings, other caches, malformed ids); return the one cache given."""
    if inputs_embeds is not None:
        raise ValueError(
            "PHOTON does not accept `inputs_embeds`: its encoder and its token decoder embed token ids with two "
            "different tables (widths E and D). Pass `input_ids`. (PEFT prompt tuning and p-tuning feed "
            "`inputs_embeds`; PHOTON supports LoRA-style adapters only.)"
        )
    if input_ids is None:
        raise ValueError("PhotonModel needs `input_ids`.")
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` is empty (shape {tuple(input_ids.shape)}): PHOTON needs at least one token.")
    for given in (cache, past_key_values):
        if given is not None and not isinstance(given, PhotonCache):
            raise TypeError(
                f"PHOTON needs a PhotonCache, got {type(given).__name__}. Leave the cache out and generate() or "
                "the model will build one. (PEFT prefix tuning and the other prompt-learning methods inject a "
                "standard per-layer KV cache, which a hierarchical PHOTON model cannot use: fine-tune with LoRA.)"
            )
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Got two different caches, `cache` and `past_key_values`: pass one.")
    return cache if cache is not None else past_key_values


def _check_ids(input_ids: torch.Tensor, vocab_size: int):
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"`input_ids` must lie in [0, vocab_size={vocab_size}); got values from {low} to {high}.")


def _row_pads(attention_mask: torch.Tensor | None, input_ids: torch.Tensor, for_cache: bool) -> list[int]:
    """Left pad columns per row, from a mask whose ones form one run per row (holes are an error)."""
    batch, length = input_ids.shape
    if attention_mask is None:
        return [0] * batch
    mask = attention_mask.to(torch.bool)
    ones = mask.sum(1)
    first = mask.to(torch.int8).argmax(1)
    last = length - 1 - mask.flip(1).to(torch.int8).argmax(1)
    stats = torch.stack([ones, first, last], 1).tolist()
    for row, (count, lo, hi) in enumerate(stats):
        if count == 0:
            raise ValueError(f"Row {row} of `attention_mask` has no real token.")
        if hi - lo + 1 != count:
            raise ValueError(
                f"Row {row} of `attention_mask` has holes: PHOTON supports left padding (zeros, then ones) only."
            )
        if for_cache and hi != length - 1:
            raise ValueError(
                f"Row {row} of `attention_mask` is right-padded; with a cache (generation) pad on the left "
                "(tokenizer.padding_side = 'left')."
            )
    return [lo for _, lo, _ in stats]


def _to_columns(hidden: torch.Tensor, pad_t: torch.Tensor, length: int, logits_to_keep) -> torch.Tensor:
    """Aligned token states [B, T', D] -> the HF layout: column c holds the state that predicts column c + 1."""
    columns = torch.arange(length, device=hidden.device)
    if isinstance(logits_to_keep, int):
        columns = columns[-logits_to_keep:] if logits_to_keep > 0 else columns
    else:
        columns = columns[logits_to_keep]
    aligned = (columns[None, :] - pad_t[:, None] + 1).clamp(min=0)
    return _gather_rows(hidden, aligned)


def _warn_if_packed(position_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Warn once when `position_ids` restart inside a row (between two real tokens): packed documents, which PHOTON
    runs as one sequence. One host sync; called by every forward but a decode step."""
    restarts = position_ids[..., 1:] <= position_ids[..., :-1]
    if attention_mask is not None and attention_mask.dim() == 2:  # left padding's positions do not count
        real = attention_mask.bool()
        restarts = restarts & real[:, 1:] & real[:, :-1]
    if bool(restarts.any()):
        logger.warning_once(
            "PHOTON ignores `position_ids`, and these restart inside a row: several documents packed into one row "
            "(TRL's padding-free packing, `DataCollatorWithFlattening`). PHOTON runs each row as one sequence, so "
            "the packed documents share chunks and later ones attend to earlier ones. To keep documents apart, turn "
            "packing off (TRL: `SFTConfig(packing=False, padding_free=False)`) and pad each document to its own row."
        )

# ------------------------------------------------------------------------------------------------------ the model
class PhotonModel(PhotonPreTrainedModel):
    """The PHOTON hierarchy: encoder token embedding, levels, start latent(s) and decoder token embedding.

    `forward` returns the token decoder's final states, aligned like a causal LM's hidden states: position t
    holds the state that predicts token t + 1. It runs one of three paths: the full (uncached) pass, `encode`
    then `decode`; a prefill, which fills an empty `PhotonCache` (`_prefill`, `_rebuild`); or decode steps, one
    per column (`decode_column`), which the cache plans on the host (`PhotonStep`) and which `torch.compile`
    captures. How each level's local decoder reads is its decoder's class (`PhotonLocalDecoder` and subclasses).
    """

    prefill_group_tokens = 1 << 16  # a cache prefill encodes rows in groups of about this many (padded) tokens

    def __init__(self, config: PhotonConfig):
        super().__init__(config)
        self.embed_enc = nn.Embedding(config.vocab_size, config.encoder_embed_size)
        self.levels = nn.ModuleList([PhotonLevel(config, i) for i in range(config.num_levels)])
        self.self_decoding = any(level.self_decoding for level in config.levels)
        # One start latent for the shifted top stream; with "self" decoding every level is shifted and has one.
        self.start_latents = nn.Parameter(
            torch.zeros(config.num_levels if self.self_decoding else 1, config.hidden_size)
        )
        self.embed_dec = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = PhotonRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self._compiled_column: tuple[str, Callable] | None = None  # (compile options, compiled decode_column)
        if config.decoder_lookback and config.kernel_backend == "triton":
            logger.warning_once(
                "decoder_lookback: the token decoder's windows and prefixes attend through PyTorch's SDPA (no Triton "
                "kernel takes the look-back's mask); its decode steps use the Triton decode kernel."
            )
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_dec

    def set_input_embeddings(self, value):
        self.embed_dec = value

    def _start(self, level: int) -> torch.Tensor:
        """The start latent that precedes the shifted stream of a level: [D]."""
        return self.start_latents[level if self.self_decoding else -1]

    # --------------------------------------------------------------------------------------------- full passes
    def encode(self, tokens: torch.Tensor, ops: PhotonOps, capture: list | None = None,
               past: tuple[PhotonCache, list[int], list[int]] | None = None) -> list[torch.Tensor]:
        """Bottom-up pass. tokens: [B, T] with T a multiple of P_{L-1} -> streams X_i: [B, M_i, D] per level.

        With `capture` (a list), each level appends its per-layer (key, value) pairs: [B, Hkv, M_i, hd]. With
        `past` = (cache, before, after) the tokens continue the cache's (selected) rows, which hold `before`
        (multiples of P_{L-1}) tokens and will hold `after`: every encoder attends to its cached units too, and the
        cache takes the new units' keys and values (`PhotonLevelCache.encoder_past`, `store_units`).
        """
        x = self.embed_enc(tokens)
        streams = []
        for level in self.levels:
            geometry = level.geometry
            units = level.chunk(x.unflatten(1, (-1, geometry.chunk_size)), ops)
            kv = []

            def attend(q, k, v, layer_idx, window=geometry.encoder_window, kv=kv):
                if capture is not None:
                    kv.append((k, v))
                if window is not None and window < q.shape[2]:
                    return ops.latent_attention(q, k, v, window)
                return ops.latent_attention_full(q, k, v)

            if past is None:
                cos, sin = _window_rope(self.rotary_emb, units.shape[1], units.device, units.dtype)
            else:
                attend = self._continued_attention(past, geometry)
                first = geometry.units_in(torch.tensor(past[1], device=units.device))
                cos, sin = _window_rope(self.rotary_emb, units.shape[1], units.device, units.dtype, first)
            x = level.encoder(units, cos, sin, attend)
            if capture is not None:
                capture.append(kv)
            streams.append(x)
        return streams

    @staticmethod
    def _continued_attention(past: tuple[PhotonCache, list[int], list[int]], geometry) -> Attend:
        """A context encoder's attention over new units that continue cached rows (see `encode`): queries [G, H, M,
        hd] at units first.. (first = the units each row has), keys [the level's cached entries ; the new units],
        causal and windowed on the units' true indices; the new units' keys and values enter the cache."""
        cache, before, after = past
        layer, window = cache.layers[geometry.index], geometry.encoder_window
        device = cache.row_index.device
        first = geometry.units_in(torch.tensor(before, device=device))
        units = geometry.units_in(torch.tensor(after, device=device))
        longest = geometry.units_in(max(after))

        def attend(q, k, v, layer_idx):
            past_keys, past_values, past_units = layer.encoder_past(layer_idx, first)
            own = first[:, None] + torch.arange(q.shape[2], device=q.device)  # [G, M] unit of each query and key
            keys = torch.cat([past_keys.to(k.dtype), k], dim=2)
            values = torch.cat([past_values.to(v.dtype), v], dim=2)
            key_units = torch.cat([past_units, own], dim=1)[:, None, :]
            mask = (key_units >= 0) & (key_units <= own[:, :, None])
            if window is not None:
                mask = mask & (key_units > own[:, :, None] - window)
            layer.store_units(layer_idx, keys, values, past_keys.shape[2], first, units, longest)
            return masked_attention(q, keys, values, mask[:, None])

        return attend

    def decode(self, streams: list[torch.Tensor], tokens: torch.Tensor, ops: PhotonOps,
               trace: PhotonTrace | None = None):
        """Top-down pass over whole streams (T tokens, M_i units per level), each level's decoder teacher forced.

        Returns the token states [B, T, D] and predictions[i] (i >= 1) = Xhat_{i-1}: [B, M_{i-1}, D], what
        decoder i predicts for the level below. `trace` (a `PhotonTrace`) records what a cache rebuild reads.
        """
        top = len(self.levels) - 1
        cond = _shift(streams[-1], self._start(top))  # the top stream is shifted by one unit
        predictions: list[torch.Tensor | None] = [None] * len(self.levels)
        for i in reversed(range(len(self.levels))):
            level = self.levels[i]
            if trace is not None:
                trace.conditions[i] = cond
            inputs = streams[i - 1] if i > 0 else self.embed_dec(tokens)
            capture, offset = (trace.token_kv, trace.offset) if trace is not None and i == 0 else (None, None)
            out = level.decoder.teacher_forced(level.prefix(cond), inputs, self.rotary_emb, ops, capture, offset)
            if i == 0:
                return out, predictions
            predictions[i] = out
            cond = level.decoder.conditioning(out, self._start(i - 1))

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: PhotonCache | None = None,
        cache: PhotonCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        decode_step: Callable | None = None,
        **kwargs,
    ) -> PhotonModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids; any length.
            attention_mask (`torch.Tensor` of shape `(batch_size, columns)`, *optional*): 1 for real tokens. Left
                padding is honoured with a per-row chunk grid that starts at the row's first real token.
            position_ids: ignored: positions come from the chunk grid. Packed rows, whose `position_ids` restart at
                each document (TRL's padding-free packing, `DataCollatorWithFlattening`), are run as one sequence,
                with a one-time warning (checked in every forward but a decode step).
            past_key_values / cache (`PhotonCache`, *optional*): the hierarchical cache (the argument is named
                `cache` from transformers 5.24 on). An empty cache is filled by a prefill; a filled one is extended.
            logits_to_keep (`int` or `torch.Tensor`): compute the states of the last `k` positions only (0: all),
                or of the given positions.
            decode_step (`Callable`, *optional*): a compiled `decode_column` (from `compiled_decode_column`), which
                extends a compileable cache; what generate's auto-compile passes (`get_compiled_call`).
        """
        cache = _check_inputs(input_ids, inputs_embeds, cache, past_key_values)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if not use_cache:
            cache = None
        elif cache is None:
            cache = PhotonCache(self.config)
        batch, length = input_ids.shape
        past = cache.seen if cache is not None else 0
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has shape "
                f"{tuple(input_ids.shape)} after {past} cached columns: expected {(batch, past + length)}."
            )
        decoding = cache is not None and cache.is_initialized
        if not decoding or not input_ids.is_cuda:  # no host-device sync inside a GPU decode step
            _check_ids(input_ids, self.config.vocab_size)

        if position_ids is not None and not decoding:
            _warn_if_packed(position_ids, attention_mask)

        extras = {}
        ops = photon_ops(self.config, input_ids.device, self.embed_dec.weight.dtype)
        if cache is None:
            hidden, extras = self._full_forward(input_ids, attention_mask, logits_to_keep, ops)
        elif not decoding:
            hidden = self._prefill(cache, input_ids, attention_mask, logits_to_keep, ops)
        else:
            if batch != cache.batch_size:
                raise ValueError(f"The cache holds {cache.batch_size} rows but `input_ids` has {batch}.")
            if decode_step is not None and not cache.is_compileable:
                logger.warning_once(
                    "PHOTON decodes eagerly: this PhotonCache is not compileable (it records the past for assisted "
                    "decoding, or was built without max_cache_len and grows)."
                )
                decode_step = None
            ops = REFERENCE_OPS if decode_step is not None else ops
            stale = cache.pending_rebuild()
            if stale is not None:  # after crop(): the unfinished units' local state is rebuilt from the history
                with torch.no_grad():
                    self._rebuild(cache, *stale, ops)
            run = decode_step or self.decode_column
            # Extending a filled cache by several columns (continuing a generation, verifying assisted
            # candidates) takes one exact decode step per column.
            columns = []
            for t in range(length):
                step = cache.begin_column()
                cache.record_tokens(input_ids[:, t : t + 1])
                columns.append(run(cache, input_ids[:, t], step, ops))
            hidden = _keep(torch.stack(columns, dim=1), logits_to_keep)
        return PhotonModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=(hidden,) if output_hidden_states else None,
            **extras,
            **{CACHE_NAME: cache},
        )

    def _aligned(self, input_ids: torch.Tensor, pads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift each row left by its padding, so that its chunk grid starts at its first real token, and pad
        on the right to a multiple of P_{L-1} with room for one more token (whose prediction the last column
        needs). Returns (tokens [B, T'], pads [B])."""
        length = input_ids.shape[1]
        meta = self.levels[-1].geometry.tokens_per_unit
        padded = -(-(length + 1) // meta) * meta
        pos = torch.arange(padded, device=input_ids.device)
        pad_t = torch.tensor(pads, device=input_ids.device)
        source = (pos[None, :] + pad_t[:, None]).clamp(max=length - 1)
        return input_ids.gather(1, source), pad_t

    def _full_forward(self, input_ids, attention_mask, logits_to_keep, ops: PhotonOps):
        pads = _row_pads(attention_mask, input_ids, for_cache=False)
        tokens, pad_t = self._aligned(input_ids, pads)
        streams = self.encode(tokens, ops)
        hidden, predictions = self.decode(streams, tokens, ops)
        extras = dict(encoder_streams=streams, decoder_predictions=predictions, real_lengths=input_ids.shape[1] - pad_t)
        return _to_columns(hidden, pad_t, input_ids.shape[1], logits_to_keep), extras

    # ------------------------------------------------------------------------------------ cache: prefill/rebuild
    def _prefill(self, cache: PhotonCache, input_ids, attention_mask, logits_to_keep, ops: PhotonOps) -> torch.Tensor:
        """Fill an empty cache from a prompt. Rows are processed in groups of about `prefill_group_tokens` tokens,
        so the prefill's activations stay bounded and do not grow with the batch."""
        length = input_ids.shape[1]
        pads = _row_pads(attention_mask, input_ids, for_cache=True)
        tokens, pad_t = self._aligned(input_ids, pads)
        cache.begin_prefill(pads, length, input_ids.device, self.embed_enc.weight.dtype)
        counts = cache.real_tokens()
        cache.record_tokens(input_ids)
        group_rows = max(1, self.prefill_group_tokens // tokens.shape[1])
        outputs = []
        for start in range(0, tokens.shape[0], group_rows):
            group = slice(start, start + group_rows)
            capture: list = []
            streams = self.encode(tokens[group], ops, capture)
            count = torch.tensor(counts[group], device=input_ids.device)
            for layer, kv, stream in zip(cache.layers, capture, streams, strict=True):
                layer.store_prefill(kv, count, group)
                layer.store_history(group, stream)
            last = self._rebuild(cache, streams, tokens[group], counts[group], ops, group)
            if isinstance(logits_to_keep, int) and logits_to_keep == 1:
                outputs.append(last[:, None])
            else:
                hidden, _ = self.decode(streams, tokens[group], ops)
                outputs.append(_to_columns(hidden, pad_t[group], length, logits_to_keep))
        return torch.cat(outputs, dim=0)

    def _rebuild(self, cache: PhotonCache, streams: list[torch.Tensor], tokens: torch.Tensor, counts: list[int],
                 ops: PhotonOps, group: slice = slice(None), offset: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the unfinished-unit state (sub-units so far, each local decoder's cached state) of the cache rows
        `group`, top-down from their encoder streams, and return the token state that predicts each row's next
        token: [G, D].

        streams[i]: [G, >= units, D] aligned encoder states; tokens: [G, >= count] aligned token ids. A decoder
        whose state depends on earlier units reads a teacher-forced pass (`history`), run once and only if asked.
        With `offset` ([G], multiples of P_{L-1}) the streams and tokens continue rows that hold that many tokens
        before them, and `counts` count from there (`extend` makes sure the state depends on nothing before).
        """
        count = torch.tensor(counts, device=tokens.device)
        history = functools.cache(lambda: self._history(streams, tokens, max(counts), ops, offset))
        cond = None
        for i in reversed(range(len(self.levels))):
            level, layer = self.levels[i], cache.layers[i]
            geometry = level.geometry
            unit = geometry.units_in(count)  # the unfinished unit of each row
            if geometry.is_top:
                previous = _gather_units(streams[i], (unit - 1)[:, None])[:, 0]
                start = self._start(i).to(previous.dtype).expand(count.shape[0], -1)
                cond = torch.where((unit > 0)[:, None], previous, start)
            subunits = unit[:, None] * geometry.chunk_size + torch.arange(geometry.chunk_size, device=tokens.device)
            if i == 0:
                pending = tokens.gather(1, subunits.clamp(max=tokens.shape[1] - 1))
                inputs = self.embed_dec(pending)
            else:
                pending = inputs = _gather_units(streams[i - 1], subunits)
            layer.store_pending(group, pending)
            cond = level.decoder.rebuild(layer, group, level.prefix(cond), inputs, count, history, self.rotary_emb,
                                         ops)
        return cond

    def _history(self, streams: list[torch.Tensor], tokens: torch.Tensor, longest: int, ops: PhotonOps,
                 offset: torch.Tensor | None = None) -> PhotonTrace:
        """The teacher-forced pass over the meta-chunks up to the `longest` row's current one, traced (`offset`:
        the tokens each row holds before `tokens`)."""
        period = self.levels[-1].geometry.tokens_per_unit
        length = (longest // period + 1) * period
        index = torch.arange(length, device=tokens.device).clamp(max=tokens.shape[1] - 1)
        tokens = tokens.gather(1, index.expand(tokens.shape[0], -1))
        # Units past a row's count (unfinished, or not recorded after a crop) only reach later positions.
        streams = [_fit_units(s, length // level.geometry.tokens_per_unit) for s, level in
                   zip(streams, self.levels, strict=True)]
        trace = PhotonTrace(conditions=[None] * len(self.levels), token_kv=[], offset=offset)
        trace.hidden, trace.predictions = self.decode(streams, tokens, ops, trace)
        return trace

    # ---------------------------------------------------------------------------------- continuing rows (a view)
    def continuation_lead(self) -> int:
        """Tokens a continuation must bring past a meta-chunk boundary before its end state can be rebuilt from its
        own units (`extend`): the state at a token depends on the meta-chunk before its own (the top stream is
        shifted by one unit); with "self" decoding every level is shifted, each shift reaching at most one meta-chunk
        further back; with a look-back, on the L_0 x (W + C_0 - 1) tokens before its chunk (each decoder layer reads
        W tokens back from its chunk)."""
        period = self.levels[-1].geometry.tokens_per_unit
        lead = period * (len(self.levels) if self.self_decoding else 1)
        token = self.levels[0].geometry
        if token.decoder_lookback:
            reach = token.num_decoder_layers * (token.decoder_lookback + token.chunk_size - 1)
            lead += reach + token.chunk_size - 1
        return lead

    def extend(self, cache: PhotonCache, index: torch.Tensor, counts: list[int], tokens: torch.Tensor,
               lengths: list[int], ops: PhotonOps) -> torch.Tensor:
        """Continue rows of a cache view (`PhotonCache.over_states`) by several tokens each, at about the cost of a
        prefill of those tokens: one call for a batch that mixes new requests, prompts continued chunk by chunk and
        decode steps, as vLLM schedules them.

        Row g is the view's storage row index[g] ([G], on the cache's device), which holds counts[g] real tokens
        (0: a new request; its row is cleared first), and takes tokens[g, :lengths[g]] (tokens: [G, T]). A row first
        consumes decode columns up to a meta-chunk boundary; the rest runs through the encoders in whole units,
        attending to the cached ones, and the local decoders' state is rebuilt from the new units, as in a prefill.
        A continuation too short for that (`continuation_lead`) consumes decode columns to its end. The rows that
        consume a column share one `decode_column`, whatever their phases: a batch of decode steps is one call, and
        inside it each level runs only for the rows that reach it (`_consume_apart`). Returns [G, D], the states
        that predict each row's next token.
        """
        if not cache.viewing:
            raise RuntimeError("extend continues the rows of a view over per-request state (PhotonCache.over_states).")
        for count, length in zip(counts, lengths, strict=True):
            if length < 1 or count + length > cache.max_columns:
                raise ValueError(
                    f"A row of {count} tokens cannot take {length} more: a row holds 1 to {cache.max_columns} tokens."
                )
        period, lead = self.levels[-1].geometry.tokens_per_unit, self.continuation_lead()
        columns = []  # decode columns per row
        for count, length in zip(counts, lengths, strict=True):
            align = min(-count % period, length)
            columns.append(0 if count == 0 else align if length - align >= lead else length)
        dtype = self.embed_dec.weight.dtype
        hidden = torch.empty(len(counts), self.config.hidden_size, device=tokens.device, dtype=dtype)
        now = list(counts)
        for column in range(max(columns)):
            group = [g for g, n in enumerate(columns) if n > column]
            rows = torch.tensor(group, device=tokens.device)
            cache.select_rows(index[rows], [now[g] for g in group])
            step = cache.begin_column()
            hidden[rows] = self.decode_column(cache, tokens[rows, column], step, ops)
            for g in group:
                now[g] += 1
        group = [g for g, n in enumerate(columns) if n < lengths[g]]
        if group:
            rows = torch.tensor(group, device=tokens.device)
            hidden[rows] = self._continue_units(cache, index[rows], [now[g] for g in group], tokens[rows],
                                                [columns[g] for g in group], [lengths[g] - columns[g] for g in group],
                                                ops)
        return hidden

    def _continue_units(self, cache: PhotonCache, index: torch.Tensor, before: list[int], tokens: torch.Tensor,
                        start: list[int], lengths: list[int], ops: PhotonOps) -> torch.Tensor:
        """`extend`'s whole-unit part: rows index ([G]) of a view, at `before` real tokens (multiples of P_{L-1}),
        take tokens[g, start[g] : start[g] + lengths[g]]. Returns [G, D] (the states that predict the next token)."""
        device = tokens.device
        fresh = [g for g, count in enumerate(before) if count == 0]
        if fresh:
            cache.select_rows(index[torch.tensor(fresh, device=device)], [0] * len(fresh))
            cache.clear_rows()
        cache.select_rows(index, before)
        # Each row's tokens from `start` on, right-padded with its last one to whole meta-chunks (and one more token).
        period = self.levels[-1].geometry.tokens_per_unit
        first, length = torch.tensor(start, device=device), torch.tensor(lengths, device=device)
        width = -(-(max(lengths) + 1) // period) * period
        source = (first[:, None] + torch.arange(width, device=device)).clamp(max=(first + length - 1)[:, None])
        aligned = tokens.gather(1, source)
        offset = torch.tensor(before, device=device)
        if any(before):
            streams = self.encode(aligned, ops, past=(cache, before, [b + n for b, n in zip(before, lengths,
                                                                                             strict=True)]))
        else:  # new rows only: a plain prefill
            capture: list = []
            streams = self.encode(aligned, ops, capture)
            for layer, kv in zip(cache.layers, capture, strict=True):
                layer.store_prefill(kv, length, slice(None))
            offset = None
        hidden = self._rebuild(cache, streams, aligned, lengths, ops, offset=offset)
        cache.set_counts(torch.tensor(before, device=device) + length)
        return hidden

    # -------------------------------------------------------------------------------------------- decode step
    def decode_column(self, cache: PhotonCache, tokens: torch.Tensor, step: PhotonStep, ops: PhotonOps) -> torch.Tensor:
        """One decode step: consume a column of token ids [B] (`step` = `cache.begin_column()`), return the states
        that predict the next column: [B, D].

        Tensor code only, with static shapes over a static cache: every level that `step` runs is computed for all
        rows and its writes are masked to the rows that take part, so the function's structure depends on `step`
        alone and `torch.compile` captures one graph per distinct step.
        """
        counts = cache.advance()
        return self._consume(cache, step, 0, tokens, counts, ops)

    def _consume(self, cache: PhotonCache, step: PhotonStep, level: int, items: torch.Tensor, counts: torch.Tensor,
                 ops: PhotonOps) -> torch.Tensor:
        """The rows arriving at `level` hand over a finished sub-unit: token ids [B] at level 0, encoder states
        [B, D] above (other rows' entries are ignored). Returns what conditions each row's next sub-unit, [B, D]
        (the token state at level 0), valid for the arriving rows."""
        layer = cache.layers[level]
        rows = cache.rows(level, counts, step)
        subunits = layer.add_subunit(rows.phase, items, rows.arriving)
        if cache.viewing and not step.every_row[level]:
            return self._consume_apart(cache, level, items, subunits, counts, ops)
        continuing = closing = None
        if step.feeding[level]:
            continuing = self._feed(cache, level, rows, items, counts, ops)
        if step.closing[level]:
            closing = self._close(cache, step, level, rows, subunits, counts, ops)
        if not step.closing[level]:
            return continuing
        if not step.continuing[level]:
            return closing
        return torch.where(rows.closing[:, None], closing, continuing)

    def _feed(self, cache: PhotonCache, level: int, rows: PhotonRows, items: torch.Tensor, counts: torch.Tensor,
              ops: PhotonOps) -> torch.Tensor:
        """The feeding rows hand their finished sub-unit (items: [B] token ids or [B, D] states) to the level's local
        decoder; returns what conditions each one's next sub-unit: [B, D]."""
        x = self.embed_dec(items) if level == 0 else items
        return self.levels[level].decoder.step(cache.layers[level], rows, x, counts, self.rotary_emb, ops)

    def _close(self, cache: PhotonCache, step: PhotonStep, level: int, rows: PhotonRows, subunits: torch.Tensor,
               counts: torch.Tensor, ops: PhotonOps) -> torch.Tensor:
        """The closing rows complete a unit of their sub-units (subunits: [B, C] ids or [B, C, D] states): chunker,
        encoder step, the level above, then the new unit's prefix. Returns what conditions sub-unit 0: [B, D]."""
        lvl, layer = self.levels[level], cache.layers[level]
        units = lvl.chunk(self.embed_enc(subunits) if level == 0 else subunits, ops)
        state = self._encoder_step(level, layer, rows, units, ops)
        # The top stream is shifted: the unit just finished conditions the next one.
        cond = state if lvl.geometry.is_top else self._consume(cache, step, level + 1, state, counts, ops)
        return lvl.decoder.start_unit(layer, rows, lvl.prefix(cond), counts, self.rotary_emb, ops)

    def _consume_apart(self, cache: PhotonCache, level: int, items: torch.Tensor, subunits: torch.Tensor,
                       counts: torch.Tensor, ops: PhotonOps) -> torch.Tensor:
        """`_consume` for a view whose arriving rows take different paths at `level` (known on the host, from their
        counts): the rows that feed the local decoder and those that close a unit each run as a batch of their own
        (`PhotonCache.narrowed`), unmasked, so no row computes a path it does not take; the level above sees the
        closing rows only. Returns [B, D]."""
        geometry = self.levels[level].geometry
        tokens = cache.real_tokens()
        closing = [r for r, n in enumerate(tokens) if geometry.closes(n)]
        feeding = [r for r, n in enumerate(tokens) if geometry.feeds_last_subunit or not geometry.closes(n)]
        out = None
        for group, closes in ((feeding, False), (closing, True)):
            if not group:
                continue
            with cache.narrowed(group) as (sub, step):
                rows = cache.rows(level, counts[sub], step)
                if closes:
                    result = self._close(cache, step, level, rows, subunits[sub], counts[sub], ops)
                else:
                    result = self._feed(cache, level, rows, items[sub], counts[sub], ops)
            out = result.new_empty(len(tokens), result.shape[-1]) if out is None else out
            out[sub] = result
        return out

    def _encoder_step(self, level: int, layer: PhotonLevelCache, rows: PhotonRows, units: torch.Tensor,
                      ops: PhotonOps) -> torch.Tensor:
        """One context-encoder step at each row's current unit: units [B, D] -> states [B, D]; the closing rows'
        keys and values enter the encoder cache."""
        position = rows.unit.clamp(min=0)  # rows that do not close: any valid position (their writes are masked)
        cos, sin = _rope(self.rotary_emb, position, units.dtype)
        start, end = layer.encoder_bounds(position)

        def attend(q, k, v, layer_idx):
            keys, values = layer.update_encoder(layer_idx, k, v, position, rows.closing)
            return ops.decode_attention(q[:, :, 0], keys, values, start, end, layer.row_index)[:, :, None]

        state = self.levels[level].encoder(units[:, None], cos, sin, attend)[:, 0]
        layer.record(position, state, rows.closing)
        return state

    # ---------------------------------------------------------------------------------------- compiled steps
    def compiled_decode_column(self, compile_config: CompileConfig) -> Callable:
        """`decode_column` through `torch.compile` with `compile_config`'s options (made once per config).

        Its graphs specialise on the `PhotonStep` (at most P_L of them, L + 1 when all rows share their padding)
        and on the cache's shapes, never on the sequence length; dynamo's recompile limit is raised to fit them.
        """
        options = compile_config.to_dict()
        key = f"{id(self)}:{sorted(options.items())!r}"  # a deep copy of the model compiles its own
        if self._compiled_column is None or self._compiled_column[0] != key:
            variants = 2 * min(self.levels[-1].geometry.tokens_per_unit, 3 ** len(self.levels)) + 8
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, variants)  # 2x: static, then dynamic batch shapes
            self._compiled_column = (key, torch.compile(self.decode_column, **options))
        return self._compiled_column[1]


def _keep(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
    return hidden[:, logits_to_keep]


class PhotonForCausalLM(PhotonPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_dec.weight"}

    def __init__(self, config: PhotonConfig):
        super().__init__(config)
        self.model = PhotonModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_dec

    def set_input_embeddings(self, value):
        self.model.embed_dec = value

    def get_output_embeddings(self):
        return self.lm_head

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        """transformers resizes the decoder's embedding (the input embedding) and the head; PHOTON's encoder has
        its own token embedding of width E, resized here the same way."""
        resized = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        old = self.model.embed_enc
        new = self._get_resized_embeddings(old, resized.weight.shape[0], None, mean_resizing)
        new.requires_grad_(old.weight.requires_grad)
        self.model.embed_enc = new
        return resized

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: PhotonCache | None = None,
        cache: PhotonCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        decode_step: Callable | None = None,
        **kwargs,
    ) -> PhotonCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): next-token targets in
            the HF convention (the loss shifts them); -100 is ignored. `num_items_in_batch` (from `Trainer`)
            normalises both loss terms.
        """
        if labels is not None:
            logits_to_keep = 0
            use_cache = False if use_cache is None else use_cache
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
            decode_step=decode_step,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = recursive = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if self.config.recursive_loss_weight > 0:
                recursive = self._recursive_loss(outputs, labels, kwargs.get("num_items_in_batch"))
                loss = loss + self.config.recursive_loss_weight * recursive
        return PhotonCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            recursive_loss=recursive,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def _recursive_loss(self, outputs: PhotonModelOutputWithPast, labels: torch.Tensor, num_items_in_batch):
        """Cosine distance between the bottleneck predictions Xhat_{L-2} and the detached encoder X_{L-2}.

        Summed over the real (non-pad) units, weighted by the P_{L-2} tokens each unit covers and divided by the
        same token count as the cross-entropy (`num_items_in_batch` when given), so that gradient accumulation
        treats it exactly like the token loss.
        """
        if outputs.encoder_streams is None:
            raise ValueError("The recursive loss needs an uncached forward: pass use_cache=False with labels.")
        level = self.config.num_levels - 2
        pred = outputs.decoder_predictions[level + 1]
        target = outputs.encoder_streams[level].detach()
        units = min(pred.shape[1], target.shape[1])
        distance = 1 - F.cosine_similarity(pred[:, :units].float(), target[:, :units].float(), dim=-1)
        per_unit = self.config.levels[level].tokens_per_unit
        valid = torch.arange(units, device=labels.device)[None, :] < (outputs.real_lengths // per_unit)[:, None]
        total = (distance * valid).sum() * per_unit
        if num_items_in_batch is None:
            num_items_in_batch = (labels[:, 1:] != -100).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    # ------------------------------------------------------------------------------------------- generation
    def get_compiled_call(self, compile_config: CompileConfig | None) -> Callable:
        """generate()'s auto-compile hook, called when the cache `is_compileable` (a `PhotonCache` with
        `max_cache_len`, as generate builds it) on a GPU, or when `compile_config` forces compilation; skipped with
        `disable_compile=True`.

        PHOTON compiles its decode step (`PhotonModel.decode_column`, the tensor work of one column), not the whole
        forward: the forward's Python (input checks, the host-side step plan) stays eager, so the compiled graphs
        depend on which levels a column runs (at most P_L variants) and never on the growing sequence length.
        With `CompileConfig`'s default `mode="reduce-overhead"` each variant is a CUDA graph.
        """
        step = self.model.compiled_decode_column(compile_config or CompileConfig())
        return functools.partial(self.__call__, decode_step=step)

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        """transformers' criteria; where they refuse a PhotonCache that records the past (assisted decoding, prompt
        lookup: `crop` needs the history, so the cache grows) on a device that would compile, say so once."""
        valid = super()._valid_auto_compile_criteria(model_kwargs, generation_config)
        cache = model_kwargs.get(CACHE_NAME)
        if not valid and isinstance(cache, PhotonCache) and cache.recording and self.device.type == "cuda" and (
            not generation_config.disable_compile
        ):
            logger.warning_once(
                "PHOTON decodes eagerly in assisted decoding / prompt lookup: its cache records the past for crop() "
                "and grows, so it is not compileable."
            )
        return valid

    def init_continuous_batching(
        self,
        generation_config: GenerationConfig | None = None,
        continuous_batching_config=None,
        workload_hints=None,
        max_batch_size: int | None = None,
        max_cache_len: int | None = None,
        **kwargs,
    ):
        """Continuous batching, the way transformers starts it (`generate_batch`, `transformers serve
        --continuous-batching`), with PHOTON's own manager (`photon_hf.serving.PhotonBatchingManager`): the stock
        one needs a paged per-token KV cache, which a hierarchy does not have.

        `max_batch_size` rows of `max_cache_len` columns are allocated once. Unset, they come from
        `self.continuous_batching_defaults` (what `photon-hf serve` sets), then from `workload_hints` (the longest
        prompt plus the budget, the number of requests), then `generation_config.max_cache_len` and
        `config.max_position_embeddings`, and 32 rows. Other keyword arguments go to the manager (`align_phases`,
        `max_queue_size`, `compile`).
        """
        from .serving import PhotonBatchingManager

        defaults = dict(getattr(self, "continuous_batching_defaults", None) or {})
        defaults.update(kwargs)
        config = generation_config if generation_config is not None else self.generation_config
        max_batch_size = max_batch_size or defaults.pop("max_batch_size", None)
        max_cache_len = max_cache_len or defaults.pop("max_cache_len", None)
        hints_length = None
        if workload_hints is not None:
            longest = (getattr(workload_hints, "max_prompt_length", 0) or 0) + (
                getattr(workload_hints, "max_generated_length", 0) or 0
            )
            hints_length = longest or None
            if max_batch_size is None and getattr(workload_hints, "num_requests", None):
                max_batch_size = min(workload_hints.num_requests, 32)
        max_cache_len = max_cache_len or hints_length or getattr(config, "max_cache_len", None)
        return PhotonBatchingManager(
            self,
            generation_config=config,
            max_batch_size=max_batch_size or 32,
            max_cache_len=max_cache_len or self.config.max_position_embeddings,
            **defaults,
        )

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs):
        """generate() turns the 2D mask into a 4D causal one for a compileable cache; PHOTON reads the 2D left-pad
        mask itself (its chunk grid starts at each row's first real token), so it is handed through unchanged."""
        return attention_mask

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ):
        """Give generate() a PhotonCache (its DynamicCache cannot hold a hierarchy)."""
        user_cache = model_kwargs.get(CACHE_NAME)
        if user_cache is not None:
            if not isinstance(user_cache, PhotonCache):
                raise TypeError(f"PHOTON generates with a PhotonCache, got {type(user_cache).__name__}.")
            user_cache._is_user_defined = True  # what generate's own _prepare_cache_for_generation marks
            user_cache.reserve_columns(max_cache_length)  # a static cache continued further grows once, here
            return
        if generation_config.use_cache is False:
            return
        # "static" (what `transformers serve --compile` sets) is what PHOTON always builds: a compileable cache.
        if generation_config.cache_implementation not in (None, "dynamic", "static"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by PHOTON: its "
                "hierarchical PhotonCache is built automatically. Leave cache_implementation unset."
            )
        if getattr(generation_config, "max_cache_len", None) is not None:  # a fixed size: graphs shared across calls
            max_cache_length = max(max_cache_length, generation_config.max_cache_len)
        model_kwargs[CACHE_NAME] = PhotonCache(self.config, max_cache_len=max_cache_length)
        if getattr(generation_config, "is_assistant", False):
            model_kwargs[CACHE_NAME].activate_past_recording()
