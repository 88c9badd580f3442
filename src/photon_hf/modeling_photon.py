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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_photon import PhotonCache, _Rows
from .configuration_photon import PhotonConfig

try:  # optional Triton kernels (package `photon_kernels`); the PyTorch paths below are the reference
    import photon_kernels
except ImportError:  # pragma: no cover - depends on the environment
    photon_kernels = None

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
        return F.rms_norm(hidden_states, self.weight.shape, self.weight.to(hidden_states.dtype), self.variance_epsilon)


class PhotonRotaryEmbedding(nn.Module):
    """RoPE over integer positions: unit indices in the encoders, window slots in the decoders."""

    def __init__(self, config: PhotonConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)
        self._tables: dict = {}  # (length, device, dtype) -> cos, sin of positions 0..length-1 (decoder windows)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer positions of any shape [...] -> cos, sin: [..., hd]."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def table(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions 0..length-1 ([length, hd]), computed once per device and dtype."""
        key = (length, torch.device(device), dtype)
        if key not in self._tables:
            with torch.inference_mode(False), torch.no_grad():  # usable later by autograd, whatever mode made it
                self._tables[key] = self(torch.arange(length, device=device), dtype)
        return self._tables[key]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal self-attention, optionally over a sliding window of `window` keys (the query's own included).

    q: [N, H, S, hd]; k, v: [N, Hkv, S, hd] -> [N, H, S, hd].
    """
    gqa = q.shape[1] != k.shape[1]
    seq = q.shape[2]
    if window is None or window >= seq:
        return F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=gqa)
    pos = torch.arange(seq, device=q.device)
    distance = pos[:, None] - pos[None, :]
    mask = (distance >= 0) & (distance < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of new queries over cached keys. q: [n, H, s, hd]; k, v: [n, Hkv, K, hd]; mask: [n, 1, s, K]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


# ------------------------------------------------------------------------------------ kernel selection (Triton)
def use_kernel(config: PhotonConfig, tensor: torch.Tensor, op: str) -> bool:
    """Whether `config.kernel_backend` runs `op` (one of `photon_kernels.OPS`) through its Triton kernel for
    `tensor`'s device; "triton" where the kernels cannot run raises a RuntimeError saying why."""
    if config.kernel_backend == "torch":
        return False
    if photon_kernels is None:
        if config.kernel_backend == "triton":
            raise RuntimeError(
                "kernel_backend='triton' needs the `photon_kernels` package and Triton (pip install "
                "'photon-hf[triton]'); use kernel_backend='auto' or 'torch'."
            )
        return False
    return photon_kernels.use_triton(config.kernel_backend, tensor.device, op)


def _common_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast the inputs of a Triton kernel to one dtype: autocast's when it is on (what SDPA would compute in),
    else their promoted dtype. Under autocast, RoPE in float32 and a bfloat16 projection give mixed q, k, v."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def window_attention(config: PhotonConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention inside each local-decoder window. q: [N, H, W, hd]; k, v: [N, Hkv, W, hd]."""
    if use_kernel(config, q, "chunk_local_attention"):
        return photon_kernels.chunk_local_attention(*_common_dtype(q, k, v))
    return causal_attention(q, k, v)


def stream_attention(config: PhotonConfig, q, k, v, window: int | None) -> torch.Tensor:
    """Causal attention over a context encoder's units, optionally windowed. Shapes as `causal_attention`."""
    windowed = window is not None and window < q.shape[2]
    if use_kernel(config, q, "latent_attention" if windowed else "latent_attention_full"):
        return photon_kernels.latent_attention(*_common_dtype(q, k, v), window)
    return causal_attention(q, k, v, window)


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


class PhotonLevel(nn.Module):
    """One level of the hierarchy: chunker, context encoder, converter and local decoder."""

    def __init__(self, config: PhotonConfig, level: int):
        super().__init__()
        chunk = config.chunk_sizes[level]
        width = config.encoder_embed_size if level == 0 else config.hidden_size
        self.config = config
        self.chunk_size = chunk
        self.converter_width = config.converter_width[level]
        self.hidden_size = config.hidden_size
        # Level 0 concatenates token embeddings (a projection only when C_0 * E != D); above, RMSNorm + Linear.
        self.chunker_norm = PhotonRMSNorm(chunk * width, eps=config.rms_norm_eps) if level > 0 else None
        needs_projection = level > 0 or chunk * width != config.hidden_size
        self.chunker = nn.Linear(chunk * width, config.hidden_size, bias=True) if needs_projection else None
        self.encoder = PhotonStack(config, config.num_encoder_layers[level])
        self.converter = nn.Linear(config.hidden_size, self.converter_width * config.hidden_size, bias=True)
        self.decoder = PhotonStack(config, config.num_decoder_layers[level])

    def chunk(self, units: torch.Tensor) -> torch.Tensor:
        """[..., C, width] units of the level below -> [..., D] one unit of this level."""
        x = units.flatten(-2)
        if self._norm_kernel(x):
            norm, linear = self.chunker_norm, self.chunker
            if _plain(linear, nn.Linear) and linear.weight.dtype == x.dtype:  # norm and projection in one kernel
                return photon_kernels.chunk_compress(x, norm.weight, linear.weight, linear.bias, norm.variance_epsilon)
            return linear(photon_kernels.rms_norm(x, norm.weight, norm.variance_epsilon))  # e.g. LoRA: runs itself
        if self.chunker_norm is not None:
            x = self.chunker_norm(x)
        return self.chunker(x) if self.chunker is not None else x

    def _norm_kernel(self, x: torch.Tensor) -> bool:
        """Whether this chunker's RMSNorm runs in a Triton kernel (`kernel_backend`; a plain norm of x's dtype)."""
        norm = self.chunker_norm
        if norm is None or not use_kernel(self.config, x, "chunk_compress"):
            return False
        fits = x.shape[-1] <= photon_kernels.MAX_NORM_WIDTH
        return _plain(norm, PhotonRMSNorm) and norm.weight.dtype == x.dtype and fits

    def prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """[..., D] conditioning latents -> [..., R, D] converter prefixes."""
        return self.converter(cond).unflatten(-1, (self.converter_width, self.hidden_size))


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


def _take(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return x if index is None else x.index_select(0, index)


def _merge(parts: list[tuple[_Rows, torch.Tensor]], count: int) -> torch.Tensor:
    """Put per-subset results back in the order of their parent set."""
    if len(parts) == 1 and parts[0][0].index is None:
        return parts[0][1]
    first = parts[0][1]
    out = first.new_empty(count, *first.shape[1:])
    for rows, values in parts:
        out[rows.index if rows.index is not None else slice(None)] = values
    return out


# ------------------------------------------------------------------------------------------------------ the model
class PhotonModel(PhotonPreTrainedModel):
    """The PHOTON hierarchy: encoder token embedding, levels, start latent(s) and decoder token embedding.

    `forward` returns the token decoder's final states, aligned like a causal LM's hidden states: position t
    holds the state that predicts token t + 1.
    """

    prefill_group_tokens = 1 << 16  # a cache prefill encodes rows in groups of about this many (padded) tokens

    def __init__(self, config: PhotonConfig):
        super().__init__(config)
        self.num_levels = config.num_levels
        self.chunk_sizes = list(config.chunk_sizes)
        self.tokens_per_unit = config.tokens_per_unit
        self.self_decoding = config.decoder_input == "self" and config.num_levels > 1
        self.embed_enc = nn.Embedding(config.vocab_size, config.encoder_embed_size)
        self.levels = nn.ModuleList([PhotonLevel(config, i) for i in range(config.num_levels)])
        # One start latent for the shifted top stream; with "self" decoding every level is shifted and has one.
        self.start_latents = nn.Parameter(
            torch.zeros(config.num_levels if self.self_decoding else 1, config.hidden_size)
        )
        self.embed_dec = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = PhotonRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_dec

    def set_input_embeddings(self, value):
        self.embed_dec = value

    # ------------------------------------------------------------------------------------------- small helpers
    def _window_rope(self, length: int, device, dtype):
        cos, sin = self.rotary_emb.table(length, device, dtype)
        return cos[None, None], sin[None, None]  # [1, 1, S, hd]

    def _start(self, level: int) -> torch.Tensor:
        """The start latent that precedes the shifted stream of a level: [D]."""
        return self.start_latents[level if self.self_decoding else -1]

    # --------------------------------------------------------------------------------------------- full passes
    def encode(self, tokens: torch.Tensor, capture: list | None = None) -> list[torch.Tensor]:
        """Bottom-up pass. tokens: [B, T] with T a multiple of P_{L-1} -> streams X_i: [B, M_i, D] per level.

        With `capture` (a list), each level appends its per-layer (key, value) pairs: [B, Hkv, M_i, hd].
        """
        x = self.embed_enc(tokens)
        streams = []
        for i, level in enumerate(self.levels):
            units = level.chunk(x.unflatten(1, (-1, self.chunk_sizes[i])))
            cos, sin = self.rotary_emb(torch.arange(units.shape[1], device=units.device), units.dtype)
            cos, sin = cos[None, None], sin[None, None]
            window = self.config.window(i)
            kv = []

            def attend(q, k, v, layer_idx, window=window, kv=kv):
                if capture is not None:
                    kv.append((k, v))
                return stream_attention(self.config, q, k, v, window)

            x = level.encoder(units, cos, sin, attend)
            if capture is not None:
                capture.append(kv)
            streams.append(x)
        return streams

    def decode_windows(self, level: int, cond: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced local decoding of every unit of a level.

        cond: [B, M, D] conditioning latents; inputs: [B, M * C, D] decoder inputs of the sub-units.
        Returns the C predictions per unit: [B, M * C, D].
        """
        lvl = self.levels[level]
        b, m, d = cond.shape
        chunk, width = lvl.chunk_size, lvl.converter_width
        windows = torch.cat([lvl.prefix(cond), inputs.view(b, m, chunk, d)[:, :, : chunk - 1]], dim=2)
        cos, sin = self._window_rope(width + chunk - 1, cond.device, cond.dtype)
        out = lvl.decoder(windows.flatten(0, 1), cos, sin, lambda q, k, v, _: window_attention(self.config, q, k, v))
        return out[:, width - 1 :].reshape(b, m * chunk, d)

    def unroll(self, level: int, cond: torch.Tensor) -> torch.Tensor:
        """Self-recursive decoding ("self" mode): cond [..., D] -> the C predictions [..., C, D], each fed back."""
        lvl = self.levels[level]
        lead = cond.shape[:-1]
        window = lvl.prefix(cond.reshape(-1, cond.shape[-1]))
        outputs = []
        for _ in range(lvl.chunk_size):  # the recursion is sequential by definition (C steps)
            cos, sin = self._window_rope(window.shape[1], cond.device, cond.dtype)
            h = lvl.decoder(window, cos, sin, lambda q, k, v, _: window_attention(self.config, q, k, v))[:, -1]
            outputs.append(h)
            window = torch.cat([window, h[:, None]], dim=1)
        return torch.stack(outputs, dim=1).reshape(*lead, lvl.chunk_size, cond.shape[-1])

    def _shift(self, stream: torch.Tensor, level: int, keep: int) -> torch.Tensor:
        """[start ; stream] truncated to `keep` units: each unit is conditioned on the one before it."""
        start = self._start(level).to(stream.dtype).expand(stream.shape[0], 1, -1)
        return torch.cat([start, stream], dim=1)[:, :keep]

    def self_chain(self, top: torch.Tensor, units: int) -> list[torch.Tensor | None]:
        """"self" decoding of the latent levels for the first `units` top units (top: [B, >= units - 1, D]).

        Returns predictions[i] (i >= 1): [B, units * C_{L-1} * ... * C_i, D], decoder i's own outputs.
        """
        predictions: list[torch.Tensor | None] = [None] * self.num_levels
        cond = self._shift(top, self.num_levels - 1, units)
        for i in reversed(range(1, self.num_levels)):
            predictions[i] = self.unroll(i, cond).flatten(1, 2)
            cond = self._shift(predictions[i], i - 1, predictions[i].shape[1])
        return predictions

    def decode(self, streams: list[torch.Tensor], tokens: torch.Tensor):
        """Top-down teacher-forced pass over whole streams (T tokens, M_i units per level).

        Returns the token states [B, T, D] and predictions[i] (i >= 1) = Xhat_{i-1}: [B, M_{i-1}, D], what
        decoder i predicts for the level below.
        """
        top = streams[-1]
        if self.self_decoding:
            predictions = self.self_chain(top, top.shape[1])
            cond = self._shift(predictions[1], 0, predictions[1].shape[1])
        else:
            predictions = [None] * self.num_levels
            cond = self._shift(top, self.num_levels - 1, top.shape[1])
            for i in reversed(range(1, self.num_levels)):
                predictions[i] = cond = self.decode_windows(i, cond, streams[i - 1])
        return self.decode_windows(0, cond, self.embed_dec(tokens)), predictions

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
        **kwargs,
    ) -> PhotonModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids; any length.
            attention_mask (`torch.Tensor` of shape `(batch_size, columns)`, *optional*): 1 for real tokens. Left
                padding is honoured with a per-row chunk grid that starts at the row's first real token.
            position_ids: accepted for API compatibility and ignored (positions come from the chunk grid).
            past_key_values / cache (`PhotonCache`, *optional*): the hierarchical cache (the argument is named
                `cache` from transformers 5.24 on). An empty cache is filled by a prefill; a filled one is extended.
            logits_to_keep (`int` or `torch.Tensor`): compute the states of the last `k` positions only (0: all),
                or of the given positions.
        """
        if inputs_embeds is not None:
            raise ValueError(
                "PHOTON does not accept `inputs_embeds`: its encoder and its token decoder embed token ids with two "
                "different tables (widths E and D). Pass `input_ids`. (PEFT prompt tuning and p-tuning feed "
                "`inputs_embeds`; PHOTON supports LoRA-style adapters only.)"
            )
        if input_ids is None:
            raise ValueError("PhotonModel needs `input_ids`.")
        if input_ids.dim() != 2:
            raise ValueError(
                f"`input_ids` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}."
            )
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
        cache = cache if cache is not None else past_key_values
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
            self._check_ids(input_ids)

        extras = {}
        if cache is None:
            hidden, extras = self._full_forward(input_ids, attention_mask, logits_to_keep)
        elif not cache.is_initialized:
            hidden = self._prefill(cache, input_ids, attention_mask, logits_to_keep)
        else:
            if cache.rebuild_pending:
                self._rebuild_from_history(cache)
            if batch != cache.batch_size:
                raise ValueError(f"The cache holds {cache.batch_size} rows but `input_ids` has {batch}.")
            # Extending a filled cache by several columns (continuing a generation, verifying assisted
            # candidates) takes one exact decode step per column.
            hidden = torch.stack([self._step(cache, input_ids[:, t]) for t in range(length)], dim=1)
            hidden = _keep(hidden, logits_to_keep)
        return PhotonModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=(hidden,) if output_hidden_states else None,
            **extras,
            **{CACHE_NAME: cache},
        )

    def _check_ids(self, input_ids: torch.Tensor):
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"`input_ids` must lie in [0, vocab_size={self.config.vocab_size}); got values from {low} to {high}."
            )

    def _row_pads(self, attention_mask: torch.Tensor | None, input_ids: torch.Tensor, for_cache: bool) -> list[int]:
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

    def _aligned(self, input_ids: torch.Tensor, pads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift each row left by its padding, so that its chunk grid starts at its first real token, and pad
        on the right to a multiple of P_{L-1} with room for one more token (whose prediction the last column
        needs). Returns (tokens [B, T'], pads [B])."""
        length = input_ids.shape[1]
        meta = self.tokens_per_unit[-1]
        padded = -(-(length + 1) // meta) * meta
        pos = torch.arange(padded, device=input_ids.device)
        pad_t = torch.tensor(pads, device=input_ids.device)
        source = (pos[None, :] + pad_t[:, None]).clamp(max=length - 1)
        return input_ids.gather(1, source), pad_t

    def _full_forward(self, input_ids, attention_mask, logits_to_keep):
        pads = self._row_pads(attention_mask, input_ids, for_cache=False)
        tokens, pad_t = self._aligned(input_ids, pads)
        streams = self.encode(tokens)
        hidden, predictions = self.decode(streams, tokens)
        extras = dict(encoder_streams=streams, decoder_predictions=predictions, real_lengths=input_ids.shape[1] - pad_t)
        return self._to_columns(hidden, pad_t, input_ids.shape[1], logits_to_keep), extras

    def _to_columns(self, hidden, pad_t, length, logits_to_keep) -> torch.Tensor:
        """Aligned token states -> the HF layout: column c holds the state that predicts column c + 1."""
        columns = torch.arange(length, device=hidden.device)
        if isinstance(logits_to_keep, int):
            columns = columns[-logits_to_keep:] if logits_to_keep > 0 else columns
        else:
            columns = columns[logits_to_keep]
        aligned = (columns[None, :] - pad_t[:, None] + 1).clamp(min=0)
        return _gather_rows(hidden, aligned)

    # ------------------------------------------------------------------------------------ cache: prefill/rebuild
    def _prefill(self, cache: PhotonCache, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        """Fill an empty cache from a prompt. Rows are processed in groups of about `prefill_group_tokens` tokens,
        so the prefill's activations stay bounded and do not grow with the batch."""
        length = input_ids.shape[1]
        pads = self._row_pads(attention_mask, input_ids, for_cache=True)
        tokens, pad_t = self._aligned(input_ids, pads)
        cache.allocate(pads, input_ids.device, self.embed_enc.weight.dtype)
        cache.seen = length
        counts = cache.real_tokens()
        for i, per_unit in enumerate(self.tokens_per_unit):
            cache.ensure_capacity(i, max(counts) // per_unit)
        if cache.recording:
            cache.history_tokens = input_ids.clone()
        group_rows = max(1, self.prefill_group_tokens // tokens.shape[1])
        outputs, history = [], []
        for start in range(0, tokens.shape[0], group_rows):
            group = slice(start, start + group_rows)
            capture: list = []
            streams = self.encode(tokens[group], capture)
            for i, kv in enumerate(capture):
                self._store_encoder(cache, i, kv, [c // self.tokens_per_unit[i] for c in counts[group]], group)
            if cache.recording:
                history.append([s[:, : max(counts) // p] for s, p in zip(streams, self.tokens_per_unit, strict=True)])
            last = self._rebuild(cache, streams, tokens[group], counts[group], group)
            if isinstance(logits_to_keep, int) and logits_to_keep == 1:
                outputs.append(last[:, None])
            else:
                hidden, _ = self.decode(streams, tokens[group])
                outputs.append(self._to_columns(hidden, pad_t[group], length, logits_to_keep))
        if cache.recording:
            cache.history_streams = [torch.cat(level, dim=0) for level in zip(*history, strict=True)]
        cache.prepare_plans()
        return torch.cat(outputs, dim=0)

    def _store_encoder(self, cache: PhotonCache, level: int, kv: list, units: list[int], group: slice):
        """Copy a level's prefill keys/values ([G, Hkv, M, hd] per layer) into the cache rows `group`."""
        keys, values = cache.enc_keys[level], cache.enc_values[level]
        if not cache.is_ring(level):
            n = min(keys.shape[3], kv[0][0].shape[2])
            for layer, (k, v) in enumerate(kv):
                keys[layer, group, :, :n] = k[:, :, :n]
                values[layer, group, :, :n] = v[:, :, :n]
            return
        # Ring of W slots: slot s holds the latest unit p < units with p = s (mod W).
        window = cache.config.window(level)
        device = kv[0][0].device
        count = torch.tensor(units, device=device)[:, None]
        slots = torch.arange(window, device=device)[None, :]
        latest = count - 1 - ((count - 1 - slots) % window)
        index = latest.clamp(min=0)[:, None, :, None].expand(-1, keys.shape[2], -1, keys.shape[4])
        for layer, (k, v) in enumerate(kv):
            keys[layer, group] = k.gather(2, index.clamp(max=k.shape[2] - 1))
            values[layer, group] = v.gather(2, index.clamp(max=v.shape[2] - 1))

    def _rebuild(
        self,
        cache: PhotonCache,
        streams: list[torch.Tensor],
        tokens: torch.Tensor,
        counts: list[int],
        group: slice = slice(None),
    ) -> torch.Tensor:
        """Rebuild the unfinished-unit state (pending sub-units, local decoder KV, "self" predictions) of the cache
        rows `group`, top-down from their encoder streams, and return the token state that predicts each row's
        next token: [G, D].

        streams[i]: [G, >= units, D] aligned encoder states; tokens: [G, >= count] aligned token ids.
        """
        device = tokens.device
        count = torch.tensor(counts, device=device)
        batch = count.shape[0]
        rows = torch.arange(batch, device=device)
        top = self.num_levels - 1
        if self.self_decoding:
            predictions = self.self_chain(streams[-1], max(counts) // self.tokens_per_unit[-1] + 1)
        cond = None
        for i in reversed(range(self.num_levels)):
            lvl = self.levels[i]
            chunk, width = lvl.chunk_size, lvl.converter_width
            below = 1 if i == 0 else self.tokens_per_unit[i - 1]
            unit = count // self.tokens_per_unit[i]  # the unfinished unit of each row
            done = (count // below) % chunk  # its finished sub-units
            if i == top:
                previous = _gather_units(streams[i], (unit - 1)[:, None])[:, 0]
                start = self._start(i).to(previous.dtype).expand(batch, -1)
                cond = torch.where((unit > 0)[:, None], previous, start)
            subunits = unit[:, None] * chunk + torch.arange(chunk, device=device)[None, :]
            if i == 0:
                pending = tokens.gather(1, subunits.clamp(max=tokens.shape[1] - 1))
                inputs = self.embed_dec(pending)
            else:
                pending = inputs = _gather_units(streams[i - 1], subunits)
            cache.pending[i][group] = pending
            if i > 0 and self.self_decoding:
                pred = predictions[i]  # [B, >= M_{i-1}, D] predictions of the level below
                slots = unit[:, None] * chunk - 1 + torch.arange(chunk + 1, device=device)[None, :]
                window_pred = _gather_rows(pred, slots.clamp(min=0, max=pred.shape[1] - 1))
                start = self._start(i - 1).to(pred.dtype)
                first = torch.where((slots[:, :1, None] < 0), start.expand(batch, 1, -1), window_pred[:, :1])
                window_pred = torch.cat([first, window_pred[:, 1:]], dim=1)
                cache.predictions[i][group] = window_pred
                cond = window_pred[rows, done]
                continue
            window = torch.cat([lvl.prefix(cond), inputs[:, : chunk - 1]], dim=1)
            cos, sin = self._window_rope(width + chunk - 1, device, window.dtype)
            keys, values = cache.dec_keys[i], cache.dec_values[i]

            def attend(q, k, v, layer_idx, keys=keys, values=values):
                keys[layer_idx, group] = k
                values[layer_idx, group] = v
                return window_attention(self.config, q, k, v)

            out = lvl.decoder(window, cos, sin, attend)
            cond = out[rows, width - 1 + done]
        return cond

    def _rebuild_from_history(self, cache: PhotonCache):
        """After `crop`: rebuild the unfinished-unit state from the recorded token ids and encoder states."""
        counts = cache.real_tokens()
        tokens, _ = self._aligned(cache.history_tokens, cache.pads)
        with torch.no_grad():
            self._rebuild(cache, cache.history_streams, tokens, counts)
        cache.rebuild_pending = False
        cache.prepare_plans()

    # -------------------------------------------------------------------------------------------- decode step
    def _step(self, cache: PhotonCache, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one column of token ids [B] and return the states that predict the next column: [B, D]."""
        cache.seen += 1
        plan = cache.plan(cache.seen)
        if cache.recording:
            cache.history_tokens = torch.cat([cache.history_tokens, tokens[:, None]], dim=1)
        return self._consume(cache, plan, 0, tokens)

    def _consume(self, cache: PhotonCache, plan, level: int, items: torch.Tensor) -> torch.Tensor:
        """Rows of plan[level].arriving finished a sub-unit: token ids [n] at level 0, encoder states [n, D]
        above. Returns what conditions each row's next sub-unit: [n, D] (the token state at level 0)."""
        arriving, continuing, closing = plan[level]
        lvl = self.levels[level]
        _write(cache.pending[level], arriving.absolute, arriving.phase, items)
        parts = []
        if continuing.count:
            x = _take(items, continuing.index)
            if level > 0 and self.self_decoding:
                preds = _take(cache.predictions[level], continuing.absolute)
                out = _pick(preds, continuing.phase + 1)
            else:
                out = self._decoder_step(cache, level, continuing, self.embed_dec(x) if level == 0 else x)
            parts.append((continuing, out))
        if closing.count:
            pending = _take(cache.pending[level], closing.absolute)
            units = lvl.chunk(self.embed_enc(pending) if level == 0 else pending)
            state = self._encoder_step(cache, level, closing, units)
            if level == self.num_levels - 1:
                cond = state  # the top stream is shifted: the unit just finished conditions the next one
            else:
                cond = self._consume(cache, plan, level + 1, state)
            if level > 0 and self.self_decoding:
                out = self._predict_unit(cache, level, closing, cond)
            else:
                out = self._decoder_prefix(cache, level, closing, cond)
            parts.append((closing, out))
        return _merge(parts, arriving.count)

    def _unit_positions(self, cache: PhotonCache, level: int, rows: _Rows):
        """Index of the unit each row of `rows` just finished at `level`: an int if all rows agree, else [n]."""
        per_unit = self.tokens_per_unit[level]
        if cache.uniform_pads:
            return (cache.seen - cache.min_pad) // per_unit - 1
        pads = _take(cache.pads_device, rows.absolute)
        return (cache.seen - pads) // per_unit - 1

    def _encoder_step(self, cache: PhotonCache, level: int, rows: _Rows, units: torch.Tensor) -> torch.Tensor:
        """One context-encoder step for `rows`: units [n, D] -> states [n, D]; appends to the encoder cache."""
        lvl = self.levels[level]
        position = self._unit_positions(cache, level, rows)
        newest = (cache.seen - cache.min_pad) // self.tokens_per_unit[level]  # units of the longest row
        cache.ensure_capacity(level, newest)
        keys_all, values_all = cache.enc_keys[level], cache.enc_values[level]
        window = cache.config.window(level)
        ring = cache.is_ring(level)
        capacity = keys_all.shape[3]
        if isinstance(position, int):
            cos, sin = self.rotary_emb(torch.arange(position, position + 1, device=units.device), units.dtype)
            cos, sin = cos[None, None], sin[None, None]
            slot = position % capacity if ring else position
            if ring:
                span = slice(0, capacity if position >= window - 1 else position + 1)
            else:
                span = slice(0 if window is None else max(0, position - window + 1), position + 1)
            mask, bounds = None, (span.start, span.stop)
        else:
            cos, sin = self.rotary_emb(position, units.dtype)
            cos, sin = cos[:, None, None], sin[:, None, None]
            slot = position % capacity if ring else position
            span = slice(0, capacity if ring else newest)
            key_pos = torch.arange(span.stop, device=units.device)[None, :]
            if ring:
                valid = (key_pos <= position[:, None]) | (position[:, None] >= window - 1)
            else:
                valid = key_pos <= position[:, None]
                if window is not None:
                    valid &= key_pos > position[:, None] - window
            mask = valid[:, None, None, :]
            if ring:  # the same key ranges as `mask`, for the kernel
                bounds = (0, torch.where(position >= window - 1, capacity, position + 1))
            else:
                bounds = (0 if window is None else (position - window + 1).clamp(min=0), position + 1)
        in_place = not torch.is_grad_enabled() and use_kernel(self.config, units, "decode_attention")

        def attend(q, k, v, layer_idx):
            keys, values = keys_all[layer_idx], values_all[layer_idx]
            _write_kv(keys, rows.absolute, slot, k)
            _write_kv(values, rows.absolute, slot, v)
            if in_place:  # Triton reads the cache rows in place (no gathered copy, no mask)
                query = q[:, :, 0].to(keys.dtype)
                out = photon_kernels.decode_attention(query, keys, values, *bounds, rows=rows.absolute)
                return out[:, :, None]
            k_all = _take(keys, rows.absolute)[:, :, span]
            v_all = _take(values, rows.absolute)[:, :, span]
            return cached_attention(q, k_all, v_all, mask)

        state = lvl.encoder(units[:, None], cos, sin, attend)[:, 0]
        if cache.recording:
            self._record_stream(cache, level, rows, position, state)
        return state

    def _record_stream(self, cache: PhotonCache, level: int, rows: _Rows, position, state: torch.Tensor):
        history = cache.history_streams[level]
        needed = (cache.seen - cache.min_pad) // self.tokens_per_unit[level]
        if history.shape[1] < needed:
            history = torch.cat([history, history.new_zeros(history.shape[0], needed - history.shape[1],
                                                            history.shape[2])], dim=1)
        row_index = torch.arange(history.shape[0], device=state.device) if rows.absolute is None else rows.absolute
        pos = position if not isinstance(position, int) else torch.full_like(row_index, position)
        history[row_index, pos] = state
        cache.history_streams[level] = history

    def _decoder_prefix(self, cache: PhotonCache, level: int, rows: _Rows, cond: torch.Tensor) -> torch.Tensor:
        """Start a new unit for `rows`: run the converter prefix (slots 0..R-1) through the local decoder, reset its
        cache, and return the output at slot R-1 (what conditions sub-unit 0): [n, D]."""
        lvl = self.levels[level]
        width = lvl.converter_width
        prefix = lvl.prefix(cond)
        cos, sin = self._window_rope(width, cond.device, cond.dtype)
        keys_all, values_all = cache.dec_keys[level], cache.dec_values[level]

        def attend(q, k, v, layer_idx):
            _write_kv(keys_all[layer_idx], rows.absolute, slice(0, width), k)
            _write_kv(values_all[layer_idx], rows.absolute, slice(0, width), v)
            return window_attention(self.config, q, k, v)

        return lvl.decoder(prefix, cos, sin, attend)[:, -1]

    def _decoder_step(self, cache: PhotonCache, level: int, rows: _Rows, x: torch.Tensor) -> torch.Tensor:
        """Feed the input of finished sub-unit j (rows.phase) at slot R + j of the local decoder: x [n, D] ->
        the output there, which conditions sub-unit j + 1: [n, D]."""
        lvl = self.levels[level]
        slot = lvl.converter_width + rows.phase
        keys_all, values_all = cache.dec_keys[level], cache.dec_values[level]
        window = lvl.converter_width + lvl.chunk_size - 1
        cos_table, sin_table = self.rotary_emb.table(window, x.device, x.dtype)
        if isinstance(slot, int):
            cos, sin = cos_table[slot][None, None, None], sin_table[slot][None, None, None]
            span, mask = slice(0, slot + 1), None
        else:
            cos, sin = cos_table[slot][:, None, None], sin_table[slot][:, None, None]
            span = slice(0, window)
            mask = (torch.arange(window, device=x.device)[None, :] <= slot[:, None])[:, None, None, :]
        in_place = not torch.is_grad_enabled() and use_kernel(self.config, x, "decode_attention")

        def attend(q, k, v, layer_idx):
            keys, values = keys_all[layer_idx], values_all[layer_idx]
            _write_kv(keys, rows.absolute, slot, k)
            _write_kv(values, rows.absolute, slot, v)
            if in_place:  # keys 0 .. slot of each row, read in place
                query = q[:, :, 0].to(keys.dtype)
                out = photon_kernels.decode_attention(query, keys, values, 0, slot + 1, rows=rows.absolute)
                return out[:, :, None]
            k_rows, v_rows = _take(keys, rows.absolute)[:, :, span], _take(values, rows.absolute)[:, :, span]
            return cached_attention(q, k_rows, v_rows, mask)

        return lvl.decoder(x[:, None], cos, sin, attend)[:, 0]

    def _predict_unit(self, cache: PhotonCache, level: int, rows: _Rows, cond: torch.Tensor) -> torch.Tensor:
        """"self" decoding: predict all C sub-units of the new unit at once, keep them, and return the carry (the
        last prediction of the unit before), which conditions sub-unit 0."""
        preds = cache.predictions[level]
        carry = _take(preds, rows.absolute)[:, -1:]
        new = torch.cat([carry, self.unroll(level, cond)], dim=1)  # copies the carry before preds is overwritten
        if rows.absolute is None:
            preds.copy_(new)
        else:
            preds[rows.absolute] = new
        return new[:, 0]


def _keep(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
    return hidden[:, logits_to_keep]


def _pick(x: torch.Tensor, index) -> torch.Tensor:
    """x: [n, S, D]; index: int or [n] -> [n, D]."""
    if isinstance(index, int):
        return x[:, index]
    return x[torch.arange(x.shape[0], device=x.device), index]


def _write(buffer: torch.Tensor, rows, index, values: torch.Tensor):
    """buffer[rows, index] = values, with rows None (all) and index an int or a per-row tensor."""
    if rows is None and isinstance(index, int):
        buffer[:, index] = values
        return
    if rows is None:
        rows = torch.arange(buffer.shape[0], device=buffer.device)
    buffer[rows, index] = values


def _write_kv(buffer: torch.Tensor, rows, slot, kv: torch.Tensor):
    """buffer [B, Hkv, S, hd]; kv [n, Hkv, s, hd]; slot an int, a slice, or a per-row tensor (s == 1)."""
    if isinstance(slot, int):
        slot = slice(slot, slot + 1)
    if isinstance(slot, slice):
        if rows is None:
            buffer[:, :, slot] = kv
        else:
            buffer[rows, :, slot] = kv
        return
    if rows is None:
        rows = torch.arange(buffer.shape[0], device=buffer.device)
    buffer[rows, :, slot] = kv[:, :, 0]


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
            past_key_values=past_key_values,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
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
        per_unit = self.config.tokens_per_unit[level]
        valid = torch.arange(units, device=labels.device)[None, :] < (outputs.real_lengths // per_unit)[:, None]
        total = (distance * valid).sum() * per_unit
        if num_items_in_batch is None:
            num_items_in_batch = (labels[:, 1:] != -100).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    # ------------------------------------------------------------------------------------------- generation
    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ):
        """Give generate() a PhotonCache (its DynamicCache cannot hold a hierarchy)."""
        user_cache = model_kwargs.get(CACHE_NAME)
        if user_cache is not None:
            if not isinstance(user_cache, PhotonCache):
                raise TypeError(f"PHOTON generates with a PhotonCache, got {type(user_cache).__name__}.")
            user_cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by PHOTON: its "
                "hierarchical PhotonCache is built automatically. Leave cache_implementation unset."
            )
        model_kwargs[CACHE_NAME] = PhotonCache(self.config, max_cache_len=max_cache_length)
        if getattr(generation_config, "is_assistant", False):
            model_kwargs[CACHE_NAME].activate_past_recording()
