"""PHOTON model configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PretrainedConfig

DECODER_INPUTS = ("encoder", "self")
KERNEL_BACKENDS = ("auto", "torch", "triton")


def _per_level(name: str, value, num_levels: int, minimum: int) -> list[int]:
    """Broadcast an int (or check a list) to one positive int per level."""
    values = [value] * num_levels if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or len(values) != num_levels:
        raise ValueError(
            f"`{name}` must be an int or a list with one int per level ({num_levels} levels, from "
            f"`chunk_sizes`), got {value!r}."
        )
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ValueError(f"`{name}` values must be ints >= {minimum}, got {value!r}.")
    return list(values)


@dataclass(frozen=True)
class PhotonLevelGeometry:
    """The shape of one level of the hierarchy (0-based, bottom-up), derived from a `PhotonConfig`.

    This is the one place that turns the config's per-level lists into what the model, the cache and the memory
    accounting need; read it through `config.levels`.
    """

    index: int
    chunk_size: int  # C: sub-units grouped into one unit of this level
    converter_width: int  # R: prefix vectors the converter makes from one conditioning latent
    tokens_per_unit: int  # P: tokens covered by one unit of this level
    input_width: int  # width of one sub-unit entering the chunker: E (token embeddings) at level 0, D above
    num_encoder_layers: int
    num_decoder_layers: int
    encoder_window: int | None  # units one encoder query attends to (itself included), None = full causal
    self_decoding: bool  # the decoder of this level reads its own predictions ("self" mode, levels above 0)
    is_top: bool  # the top level: its stream is shifted by one unit and its encoder cache grows with context
    decoder_lookback: int = 0  # W: tokens before its unit that the decoder also attends to (level 0 only; 0 = off)

    @property
    def tokens_per_subunit(self) -> int:
        """Tokens covered by one sub-unit (one unit of the level below; 1 at level 0)."""
        return self.tokens_per_unit // self.chunk_size

    @property
    def decoder_slots(self) -> int:
        """Positions of the local decoder's window: R prefix vectors and the first C - 1 sub-units (all C with a
        look-back, so that the units after it can attend to the last one)."""
        return self.converter_width + self.chunk_size - (0 if self.decoder_lookback else 1)

    @property
    def decoder_cache_slots(self) -> int:
        """Entries of the local decoder's cache per layer: the look-back (W tokens before the unit), then the
        window."""
        return self.decoder_lookback + self.decoder_slots

    @property
    def decoder_reading(self) -> str:
        """How this level's local decoder reads: "encoder" (the encoder's states, teacher forced), "self" (its own
        predictions) or "lookback" (the token decoder, also attending to the W tokens before its unit). The model
        picks its decoder class and the cache its level layer from it."""
        if self.decoder_lookback:
            return "lookback"
        return "self" if self.self_decoding else "encoder"

    @property
    def feeds_last_subunit(self) -> bool:
        """Whether a unit's last sub-unit is fed to the local decoder too (with a look-back: the units after it
        attend to its keys and values); without, the last sub-unit only completes the unit."""
        return self.decoder_lookback > 0

    # Unit and phase arithmetic: the one place that turns token counts (ints or tensors) into positions.
    def units_in(self, tokens):
        """Complete units of this level in `tokens` tokens (the index of the unfinished one)."""
        return tokens // self.tokens_per_unit

    def units_for(self, columns: int) -> int:
        """Encoder entries a static cache of `columns` columns holds at this level (at least one)."""
        return max(columns // self.tokens_per_unit, 1)

    def subunits_done(self, tokens):
        """Finished sub-units of the unfinished unit after `tokens` tokens (0..C-1)."""
        return (tokens // self.tokens_per_subunit) % self.chunk_size

    def arrival(self, tokens):
        """Where the sub-unit that `tokens` tokens just finished stands: (its index in its unit, 0..C-1; the index
        of its unit). Meaningful for the rows whose count is a multiple of `tokens_per_subunit`."""
        return (tokens // self.tokens_per_subunit - 1) % self.chunk_size, tokens // self.tokens_per_unit - 1

    def arrives(self, tokens):
        """Whether `tokens` tokens just finished a sub-unit of this level."""
        return tokens % self.tokens_per_subunit == 0

    def closes(self, tokens):
        """Whether `tokens` tokens just completed a unit of this level."""
        return tokens % self.tokens_per_unit == 0

    def decoder_slot(self, phase):
        """The local-decoder window slot (R + phase) where sub-unit `phase` is fed; clamped into the window (a
        unit's last sub-unit has no slot without a look-back: those rows do not write)."""
        return self.converter_width + phase.clamp(max=self.decoder_slots - self.converter_width - 1)


class PhotonConfig(PretrainedConfig):
    r"""
    Configuration of a PHOTON hierarchical language model (arXiv 2512.20687).

    The defaults give the paper's 600M shape (646,400,768 parameters: the paper's 646,399,104 plus the learned
    start latent). Levels are numbered bottom-up; every per-level list has one entry per level.

    Args:
        vocab_size (`int`): number of token ids.
        hidden_size (`int`): width D of every latent stream and every Transformer stack.
        intermediate_size (`int`): SwiGLU width of every stack.
        num_attention_heads (`int`): query heads of every stack.
        num_key_value_heads (`int`, *optional*): key/value heads (GQA); defaults to `num_attention_heads`.
        chunk_sizes (`list[int]`): C_1..C_L, units grouped into one unit of the next level; L = len(chunk_sizes).
        converter_width (`int` or `list[int]`): R_l, prefix vectors a converter makes from one latent.
        num_encoder_layers (`int` or `list[int]`): layers of each level's context encoder.
        num_decoder_layers (`int` or `list[int]`): layers of each level's local decoder.
        encoder_embed_size (`int`, *optional*): width E of the encoder's token embedding; defaults to
            `hidden_size // chunk_sizes[0]` so that concatenating C_1 embeddings gives D (no projection).
        encoder_windows (`list[int | None]`, *optional*): per level, None for a full causal encoder or W to
            let each unit attend to itself and the W - 1 units before it (bounded cache).
        decoder_input (`str`): "encoder" (default): latent decoders read the encoder's states (teacher forced,
            zero lag); "self": the paper-literal reading, decoders read their own outputs and every level is
            shifted by one unit.
        decoder_lookback (`int`, *optional*): W, an opt-in token look-back for the bottom (token) decoder: each
            level-0 chunk also attends to the W tokens before it, at every decoder layer, from a window of W entries
            per layer in the cache (a fixed size that does not grow with the context). None (default): off, the
            paper's architecture, where a chunk sees the rest of the context only through its conditioning latent.
        recursive_loss_weight (`float`): alpha, weight of the cosine distance between the bottleneck
            reconstruction and the (detached) encoder states. Needs at least two levels.
        max_position_embeddings (`int`): the longest context (in tokens) the model is meant for.
        rope_theta (`float`): RoPE base of every stack.
        rms_norm_eps (`float`): epsilon of every RMSNorm.
        initializer_range (`float`): std of the normal initialisation (also of the start latents).
        kernel_backend (`str`): "auto" (Triton kernels on CUDA when importable, else PyTorch), "torch" (the
            reference path) or "triton" (the kernels; on CPU only under `TRITON_INTERPRET=1`).
        tie_word_embeddings (`bool`): tie the LM head to the decoder's token embedding. Off by default: the token
            decoder is seeded with the previous token's embedding, so a tied head starts out as a copier.
    """

    model_type = "photon"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1664,
        intermediate_size: int = 4096,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        chunk_sizes: list[int] | tuple[int, ...] = (4, 4),
        converter_width: int | list[int] = 2,
        num_encoder_layers: int | list[int] = 4,
        num_decoder_layers: int | list[int] = 4,
        encoder_embed_size: int | None = None,
        encoder_windows: list[int | None] | None = None,
        decoder_input: str = "encoder",
        decoder_lookback: int | None = None,
        recursive_loss_weight: float = 0.0,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        kernel_backend: str = "auto",
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if not isinstance(chunk_sizes, (list, tuple)) or len(chunk_sizes) == 0:
            raise ValueError(f"`chunk_sizes` must be a non-empty list of positive ints, got {chunk_sizes!r}.")
        for c in chunk_sizes:
            if not isinstance(c, int) or isinstance(c, bool) or c < 1:
                raise ValueError(f"`chunk_sizes` must hold positive ints, got {chunk_sizes!r}.")
        num_levels = len(chunk_sizes)
        for name, value in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("intermediate_size", intermediate_size),
            ("num_attention_heads", num_attention_heads),
            ("max_position_embeddings", max_position_embeddings),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if not isinstance(num_key_value_heads, int) or num_key_value_heads < 1:
            raise ValueError(f"`num_key_value_heads` must be a positive int, got {num_key_value_heads!r}.")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({hidden_size}) must be divisible by `num_attention_heads` ({num_attention_heads})."
            )
        if (hidden_size // num_attention_heads) % 2 != 0:
            raise ValueError(
                f"`hidden_size // num_attention_heads` ({hidden_size // num_attention_heads}) must be even for RoPE."
            )
        if num_attention_heads % num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({num_key_value_heads})."
            )
        converter_width = _per_level("converter_width", converter_width, num_levels, 1)
        num_encoder_layers = _per_level("num_encoder_layers", num_encoder_layers, num_levels, 1)
        num_decoder_layers = _per_level("num_decoder_layers", num_decoder_layers, num_levels, 1)
        if encoder_embed_size is None:
            c1 = chunk_sizes[0]
            encoder_embed_size = hidden_size // c1 if hidden_size % c1 == 0 else hidden_size
        if not isinstance(encoder_embed_size, int) or encoder_embed_size < 1:
            raise ValueError(f"`encoder_embed_size` must be a positive int, got {encoder_embed_size!r}.")
        if encoder_windows is not None:
            if not isinstance(encoder_windows, (list, tuple)) or len(encoder_windows) != num_levels:
                raise ValueError(
                    f"`encoder_windows` must be None or a list with one entry (None or an int >= 1) per level "
                    f"({num_levels} levels), got {encoder_windows!r}."
                )
            for w in encoder_windows:
                if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                    raise ValueError(f"`encoder_windows` entries must be None or ints >= 1, got {encoder_windows!r}.")
            encoder_windows = list(encoder_windows)
        if decoder_lookback is not None and (
            not isinstance(decoder_lookback, int) or isinstance(decoder_lookback, bool) or decoder_lookback < 1
        ):
            raise ValueError(f"`decoder_lookback` must be None (off) or an int >= 1, got {decoder_lookback!r}.")
        if decoder_input not in DECODER_INPUTS:
            raise ValueError(f"`decoder_input` must be one of {DECODER_INPUTS}, got {decoder_input!r}.")
        if not isinstance(recursive_loss_weight, (int, float)) or recursive_loss_weight < 0:
            raise ValueError(f"`recursive_loss_weight` must be a float >= 0, got {recursive_loss_weight!r}.")
        if recursive_loss_weight > 0 and num_levels < 2:
            raise ValueError(
                "`recursive_loss_weight` > 0 needs at least two levels (`chunk_sizes` of length >= 2): with one "
                "level there is no bottleneck to reconstruct."
            )
        if kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"`kernel_backend` must be one of {KERNEL_BACKENDS}, got {kernel_backend!r}.")

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.chunk_sizes = list(chunk_sizes)
        self.converter_width = converter_width
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.encoder_embed_size = encoder_embed_size
        self.encoder_windows = encoder_windows
        self.decoder_input = decoder_input
        self.decoder_lookback = decoder_lookback
        self.recursive_loss_weight = float(recursive_loss_weight)
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.initializer_range = float(initializer_range)
        self.kernel_backend = kernel_backend
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)

    # Derived quantities (not serialised).
    @property
    def num_levels(self) -> int:
        return len(self.chunk_sizes)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tokens_per_unit(self) -> list[int]:
        """P_l: tokens covered by one unit of each level (P_L is the meta-chunk)."""
        return [math.prod(self.chunk_sizes[: i + 1]) for i in range(self.num_levels)]

    @property
    def levels(self) -> tuple[PhotonLevelGeometry, ...]:
        """Per-level geometry, bottom-up (see `PhotonLevelGeometry`)."""
        self_decoding = self.decoder_input == "self" and self.num_levels > 1
        return tuple(
            PhotonLevelGeometry(
                index=i,
                chunk_size=chunk,
                converter_width=self.converter_width[i],
                tokens_per_unit=per_unit,
                input_width=self.encoder_embed_size if i == 0 else self.hidden_size,
                num_encoder_layers=self.num_encoder_layers[i],
                num_decoder_layers=self.num_decoder_layers[i],
                encoder_window=self.window(i),
                self_decoding=self_decoding and i > 0,
                is_top=i == self.num_levels - 1,
                decoder_lookback=(self.decoder_lookback or 0) if i == 0 else 0,
            )
            for i, (chunk, per_unit) in enumerate(zip(self.chunk_sizes, self.tokens_per_unit, strict=True))
        )

    def window(self, level: int) -> int | None:
        """Encoder attention window of a level (0-based), or None for full causal attention."""
        return None if self.encoder_windows is None else self.encoder_windows[level]


# PEFT's default LoRA targets for model_type "photon", what `LoraConfig(task_type="CAUSAL_LM")` adapts when it names
# no `target_modules`: the attention and SwiGLU projections of every encoder and decoder stack. Registered on import
# of this file, which Hub exports carry, so a model loaded with `trust_remote_code` gets them without photon_hf.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def register_peft_defaults() -> bool:
    """Make `LORA_TARGET_MODULES` PEFT's default LoRA targets for `model_type="photon"`. Returns False (and does
    nothing) when PEFT is not installed."""
    try:
        from peft.utils import constants
    except ImportError:
        return False
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["photon"] = list(LORA_TARGET_MODULES)
    return True


register_peft_defaults()
