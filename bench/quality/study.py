"""Quality at equal compute: PHOTON against Llamas on the same bytes, the same steps and the same recipe.

The protocol (docs/quality.md):

* data: byte-level tokens of the Python standard library's source, split by file into train and validation
  (`photon_hf.data.stdlib_files`), or any local text files; every run draws the same batches in the same order;
* models, per width D: PHOTON (chunk sizes, converter width and the other levers as options) and two Llamas of
  the same width: "llama" has the training FLOPs per token closest to PHOTON's (equal compute per token, equal
  tokens: the fair comparison), "llama-size" has about PHOTON's parameter count and is trained on PHOTON's total
  training FLOPs (fewer tokens: the paper's own protocol);
* recipe, the same for every model: AdamW (0.9, 0.95), weight decay on the Linear weights only, linear warm-up
  then cosine decay to a tenth, gradient clipping at 1.0, a number of steps (not seconds: wall clock measures
  kernels, not modelling); each model at its own best learning rate from a sweep;
* metric: held-out bits per byte over non-overlapping validation windows, split into "copyable" positions (the
  next 8 bytes already occur earlier in the window, so a model that can copy predicts them) and the others.

Every run appends one JSON line to a results file (runs already there are skipped), and checkpoints itself beside
it (RESULTS.checkpoints/: model, optimizer, RNG, steps done, the curve so far) every --checkpoint-every steps, so
running the same command again continues a run cut short bit-exactly where its last checkpoint left it (--pause-at
stops every run at a step on purpose); `report` picks each model's best learning rate and writes a table, a JSON
summary and a plot of held-out bits per byte against the analytic cache bytes per token and the decode FLOPs per
token (the quality/efficiency frontier). Every cost figure (training FLOPs, cache bytes, decode FLOPs) and the
Llamas' depths come from `photon_hf.memory`, and `report` recomputes them from each run's recorded config.

    python -m bench.quality.study sweep --widths 128 --models photon llama --lrs 1e-3 2e-3 4e-3 --steps 600
    python -m bench.quality.study sweep --widths 128 --models photon --lrs 2e-3 --photon chunk_sizes=2,2
    python -m bench.quality.study report --results bench/quality/results/cpu.jsonl
    python -m bench.quality.study sweep --widths 32 --models photon llama --lrs 1e-3 --steps 5 --seq-len 64 \\
        --batch 2 --eval-tokens 2048 --results /tmp/smoke.jsonl                                   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import photon_hf
from photon_hf import memory
from photon_hf.data import split_key, stdlib_files, stdlib_root

PAD, BOS, EOS = 256, 257, 258  # the byte tokenizer's specials (photon_hf.data.byte_tokenizer)
VOCAB = 259
COPY_SPAN = 8  # a position is "copyable" when the next COPY_SPAN bytes already occur earlier in its window
MODELS = ("photon", "llama", "llama-size")
# Bits per byte are also split by a target's position in its 4-byte chunk (PHOTON's level-0 chunk by default): the
# first byte of a chunk is predicted from the converter prefix alone, so it measures what the hierarchy carries.
CHUNK_PHASES = 4
UNIT_CHUNKS = 4  # ... and by its chunk's position in the unit above (the default's level-1 unit of 4 chunks)
# Copyable targets are also split by how many bytes back their source starts: within a look-back of 8 byte tokens
# (11 bytes), within 35, within 100, further.
COPY_DISTANCES = (11, 35, 100)
CACHE_CONTEXT = 2048  # context (tokens) at which cache bytes and decode FLOPs per token are reported
# Learning rates are picked on a selection split, never on the windows that are reported: the training files whose
# split key (`photon_hf.data.split_key`) lies in [VALIDATION_FRACTION, + SELECTION_FRACTION), held out of training.
VALIDATION_FRACTION = 0.05  # `photon_hf.data.stdlib_files`' default
SELECTION_FRACTION = 0.03


# --------------------------------------------------------------------------------------------------- the data
def byte_stream(files: list) -> np.ndarray:
    """Concatenate files as bytes, an <eos> after each: one int32 token stream."""
    parts = []
    for path in files:
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8).astype(np.int32)
        parts.extend([data, np.array([EOS], dtype=np.int32)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The tokens a study's models read: byte-level (the default) or a subword tokenizer (`tokenizer`, a
    `tokenizers.Tokenizer` over bytes read as Latin-1, `train_bpe`). `token_bytes[id]` is what a token stands for
    (bits per byte divide by it; special tokens count one byte, like the byte-level <eos>)."""

    name: str
    size: int
    pad: int
    bos: int
    eos: int
    tokenizer: object = None
    token_bytes: tuple[bytes, ...] | None = None
    sha256: str | None = None

    def stream(self, files: list) -> np.ndarray:
        """The files as one int32 token stream, an <eos> after each."""
        if self.tokenizer is None:
            return byte_stream(files)
        texts = [Path(path).read_bytes().decode("latin-1") for path in files]
        ids = [np.array(e.ids + [self.eos], dtype=np.int32) for e in self.tokenizer.encode_batch(texts)]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)


BYTES = Vocabulary("bytes", VOCAB, PAD, BOS, EOS)
BPE_SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 of every subword vocabulary the study trains
# GPT-2's pre-tokenizer split (words with their leading space, digits, punctuation runs, whitespace runs), applied to
# bytes read as Latin-1: one character a byte, so every merge is a byte string and any file round-trips exactly.
BPE_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_bpe(files: list, vocab_size: int):
    """A byte-level BPE tokenizer (`tokenizers`) of `vocab_size` tokens trained on `files`: the three specials, the
    256 bytes, then merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(BPE_SPLIT), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS), show_progress=True,
                                  initial_alphabet=[chr(b) for b in range(256)])
    tokenizer.train_from_iterator((Path(path).read_bytes().decode("latin-1") for path in files), trainer=trainer)
    return tokenizer


def load_vocabulary(path: str | None) -> Vocabulary:
    """The byte-level vocabulary (no path), or the subword tokenizer saved at `path` (`train_bpe`)."""
    if not path:
        return BYTES
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    size = tokenizer.get_vocab_size()
    pad, bos, eos = (tokenizer.token_to_id(t) for t in BPE_SPECIALS)
    token_bytes = tuple(b"\0" if i in (pad, bos, eos) else tokenizer.id_to_token(i).encode("latin-1")
                        for i in range(size))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return Vocabulary(Path(path).stem, size, pad, bos, eos, tokenizer, token_bytes, digest)


def study_files(split: str) -> list[str]:
    """The stdlib files (relative paths) of a split of the study: "validation" (the package's validation split, what
    the study reports), "selection" (about 3% of the package's training files, held out for picking learning rates)
    or "train" (the rest)."""
    if split == "validation":
        return stdlib_files("validation", VALIDATION_FRACTION)
    selection = split == "selection"
    return [p for p in stdlib_files("train", VALIDATION_FRACTION)
            if (split_key(p) < VALIDATION_FRACTION + SELECTION_FRACTION) == selection]


def batch_offsets(stream_length: int, seq_len: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """Start offsets of every training window, [steps, batch]: the same data order for every model."""
    return np.random.default_rng(seed).integers(0, stream_length - seq_len - 1, size=(steps, batch))


def copy_sources(data: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target offset s (increasing) into `data` (a window's bytes, read on COPY_SPAN bytes past its end):
    how many bytes back the nearest earlier occurrence of data[s : s + COPY_SPAN] starts, that occurrence lying
    entirely inside data[:s]; 0 where there is none (the target is not copyable). An int64 array like `targets`."""
    raw, item = data.tobytes(), data.dtype.itemsize
    latest: dict[bytes, int] = {}
    distances = np.zeros(len(targets), dtype=np.int64)
    added = 0  # the spans starting before `added` are in `latest`, the newest occurrence winning
    for i, s in enumerate(targets):
        while added + COPY_SPAN <= s:
            latest[raw[added * item : (added + COPY_SPAN) * item]] = added
            added += 1
        start = latest.get(raw[s * item : (s + COPY_SPAN) * item])
        distances[i] = 0 if start is None else s - start
    return distances


def copyable_positions(window: np.ndarray, stream_tail: np.ndarray) -> np.ndarray:
    """For each target position t >= 1 of a byte window, whether bytes t .. t+COPY_SPAN-1 (read on into
    `stream_tail`, the bytes after the window) already occur entirely inside window[:t]. Returns a bool array
    [len(window) - 1] aligned with the targets window[1:]."""
    return copy_sources(np.concatenate([window, stream_tail[:COPY_SPAN]]), np.arange(1, len(window))) > 0


@dataclasses.dataclass(frozen=True)
class EvalWindows:
    """Held-out windows and, for each target, its bytes and where it could be copied from. All but `ids` are
    [windows, seq_len - 1], aligned with the targets ids[:, 1:]."""

    ids: np.ndarray  # [windows, seq_len] int32
    copyable: np.ndarray  # bool: the target's next COPY_SPAN bytes already occur earlier in the window
    distance: np.ndarray  # int64: how many bytes back the nearest such occurrence starts (0: not copyable)
    aligned: np.ndarray  # bool: that occurrence starts a token a multiple of CHUNK_PHASES tokens back (same phase)
    target_bytes: np.ndarray  # int64: bytes each target token stands for (1 for byte-level tokens)

    def every(self, stride: int) -> EvalWindows:
        """Every `stride`-th window (still spread over the whole stream)."""
        return EvalWindows(*(getattr(self, f.name)[::stride] for f in dataclasses.fields(self)))


def window_set(stream: np.ndarray, starts: np.ndarray, seq_len: int, token_bytes: list[bytes] | None = None):
    """The windows stream[s : s + seq_len] for s in `starts`, with their targets' copy sources (`copy_sources`, on
    the windows' bytes: `token_bytes[id]` is what a token id stands for; None for byte-level tokens)."""
    ids = np.stack([stream[s : s + seq_len] for s in starts])
    fields = []
    for s in starts:
        window = stream[s : s + seq_len + COPY_SPAN]  # read on: a target's span may end after the window
        if token_bytes is None:
            data, offsets, lengths = window, np.arange(len(window)), np.ones(len(window), dtype=np.int64)
        else:
            pieces = [token_bytes[i] for i in window]
            lengths = np.array([len(b) for b in pieces], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        targets = offsets[1:seq_len]
        distance = copy_sources(data, targets)
        copyable = distance > 0
        source = np.searchsorted(offsets, targets - distance)  # the token the source starts in (when it starts one)
        back = np.arange(1, seq_len) - source
        aligned = copyable & (offsets[np.minimum(source, len(offsets) - 1)] == targets - distance) & (
            back % CHUNK_PHASES == 0)
        fields.append((copyable, distance, aligned, lengths[1:seq_len]))
    return EvalWindows(ids, *(np.stack(column) for column in zip(*fields, strict=True)))


def window_count(stream: np.ndarray, tokens: int, seq_len: int) -> int:
    """tokens // seq_len, or fewer when the stream holds fewer non-overlapping windows (and their copy tails)."""
    return max(1, min(tokens // seq_len, (len(stream) - COPY_SPAN) // seq_len))


def spread_windows(stream: np.ndarray, tokens: int, seq_len: int, token_bytes=None) -> EvalWindows:
    """`window_count` non-overlapping windows spread evenly over the whole stream, first byte to last."""
    count = window_count(stream, tokens, seq_len)
    starts = np.linspace(0, len(stream) - seq_len - COPY_SPAN, count).astype(np.int64)
    return window_set(stream, starts, seq_len, token_bytes)


def leading_windows(stream: np.ndarray, tokens: int, seq_len: int, token_bytes=None) -> EvalWindows:
    """The study's first evaluation set, kept to compare with earlier runs: consecutive windows from the start of
    the stream (with the stdlib validation split, its first 16 files in path order)."""
    return window_set(stream, np.arange(window_count(stream, tokens, seq_len)) * seq_len, seq_len, token_bytes)


def copy_distances(windows: EvalWindows) -> np.ndarray:
    """For every copyable target whose COPY_SPAN bytes lie inside its window: how many bytes back the nearest earlier
    occurrence of those bytes starts (what a model must reach to copy them)."""
    distances = []
    seq = windows.ids.shape[1]
    for ids, copyable in zip(windows.ids, windows.copyable, strict=True):
        spans = [ids[t : t + COPY_SPAN].tobytes() for t in range(seq - COPY_SPAN + 1)]
        latest: dict[bytes, int] = {}
        for t in range(1, seq - COPY_SPAN + 1):
            if t >= COPY_SPAN:
                latest[spans[t - COPY_SPAN]] = t - COPY_SPAN  # the newest start wins: the nearest occurrence
            if copyable[t - 1]:
                distances.append(t - latest[spans[t]])
    return np.array(distances, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ the compute
# Every figure comes from the one cost model, `photon_hf.memory` (training FLOPs, decode cost, cache bytes, the
# Llama builder and the FLOP- and parameter-matched depths).
def decode_flops_per_token(config, context: int = CACHE_CONTEXT) -> float:
    """FLOPs of generating one token at `context` (`photon_hf.memory.decode_step_cost`; PHOTON: averaged over the
    steps of a meta-chunk)."""
    model = "photon" if isinstance(config, photon_hf.PhotonConfig) else "llama"
    return memory.decode_step_cost(config, model, context)["sample_flops"]


def cache_bytes_per_token(config, context: int = CACHE_CONTEXT) -> float:
    """Analytic KV-cache bytes per token of context (bf16) after `context` tokens."""
    if isinstance(config, photon_hf.PhotonConfig):
        return photon_hf.kv_cache_bytes(config, context) / context
    return memory.llama_kv_cache_bytes(config, context) / context


def cost_figures(config, seq_len: int) -> dict:
    """The cost figures of a model of the study: training FLOPs per token at `seq_len` (matmuls, causal attention,
    `photon_hf.memory.training_flops_per_token`), cache bytes and decode FLOPs per token at CACHE_CONTEXT."""
    return {"train_flops_per_token": memory.training_flops_per_token(config, seq_len),
            "cache_bytes_per_token": cache_bytes_per_token(config),
            "decode_flops_per_token": decode_flops_per_token(config)}


def recorded_config(record: dict):
    """The model config a run recorded (`PhotonConfig` or `LlamaConfig`)."""
    fields = {k: v for k, v in record["config"].items() if k not in ("model_type", "transformers_version")}
    return (photon_hf.PhotonConfig if record["config"]["model_type"] == "photon" else LlamaConfig)(**fields)


def llama_overrides(seq_len: int) -> dict:
    """The study's Llamas: room for `seq_len` positions (PHOTON's width, heads and special tokens come from
    `photon_hf.memory.llama_config_for`)."""
    return {"max_position_embeddings": max(seq_len, 2048)}


def matched_llama(photon: photon_hf.PhotonConfig, seq_len: int) -> LlamaConfig:
    """The Llama of the same width whose training FLOPs per token are closest to PHOTON's."""
    return memory.flop_matched_llama(photon, seq_len, **llama_overrides(seq_len))


def same_size_llama(photon: photon_hf.PhotonConfig, seq_len: int) -> LlamaConfig:
    """The paper's baseline: the Llama of the same width whose parameter count is closest to PHOTON's."""
    return memory.parameter_matched_llama(photon, **llama_overrides(seq_len))


# ---------------------------------------------------------------------------------------------- the protocol
@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything about a run that is the same for every model."""

    steps: int = 600
    batch: int = 8
    seq_len: int = 512
    warmup: float = 0.05  # fraction of the steps
    final_lr: float = 0.1  # cosine decay to this fraction of the peak
    weight_decay: float = 0.1  # on Linear weights only
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    seed: int = 0  # data order and initialisation

    def lr_factor(self, step: int) -> float:
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.steps - warm)
        return self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def photon_config(width: int, overrides: dict | None = None, vocab: Vocabulary = BYTES) -> photon_hf.PhotonConfig:
    """The PHOTON of a width: head width 32 up to D = 128, then 64; SwiGLU 2.6875 x D; two layers per stack."""
    fields = dict(
        vocab_size=vocab.size, hidden_size=width, intermediate_size=int(2.6875 * width),
        num_attention_heads=max(4, width // 64), chunk_sizes=[4, 4], converter_width=2, num_encoder_layers=2,
        num_decoder_layers=2, max_position_embeddings=2048, pad_token_id=vocab.pad, bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
        kernel_backend="auto",  # the Triton kernels on a GPU, PyTorch on the CPU
    )
    fields.update(overrides or {})
    return photon_hf.PhotonConfig(**fields)


def _init_hf(model: nn.Module, std: float = 0.02):
    """transformers' default: every Linear and Embedding N(0, 0.02), biases zero (PHOTON's start latents too)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    if hasattr(model, "model") and hasattr(model.model, "start_latents"):
        nn.init.normal_(model.model.start_latents, std=std)


def _init_unit_embed(model: nn.Module):
    """HF init, then token embeddings N(0, 1): each stack's input starts at the scale of its blocks' outputs."""
    _init_hf(model)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)


def _init_unit(model: nn.Module):
    """Unit-scale interfaces: embeddings N(0, 1); chunkers and converters N(0, 1/fan_in) (unit-RMS outputs from
    unit-RMS inputs); start latents N(0, 1) like the encoder states they stand in for."""
    _init_unit_embed(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ("chunker", "converter"):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
    if hasattr(model, "model") and hasattr(model.model, "start_latents"):
        nn.init.normal_(model.model.start_latents, std=1.0)


def _init_unit_depth(model: nn.Module):
    """Unit-scale interfaces plus residual output projections (o_proj, down_proj) N(0, 0.02 / sqrt(2 n)) with n
    the layers of their stack (GPT-2's depth scaling)."""
    _init_unit(model)
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            for layer in layers:
                for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * len(layers)))


# Initialisations compared in the study (docs/quality.md); "default" keeps the model's own `_init_weights`.
INIT_SCHEMES = {"default": None, "hf": _init_hf, "unit-embed": _init_unit_embed, "unit": _init_unit,
                "unit-depth": _init_unit_depth}


def token_side(name: str) -> bool:
    """PHOTON's token-level parameters (token decoder, its converter, decoder embedding, LM head); the rest, the
    hierarchy (encoder embedding, chunkers, encoders, latent decoders and their converters, start latents), is what
    `hierarchy_lr` scales."""
    return name.startswith(("model.levels.0.decoder.", "model.levels.0.converter.", "model.embed_dec.", "lm_head."))


def parameter_groups(model: nn.Module, weight_decay: float, hierarchy_lr: float = 1.0) -> list[dict]:
    """Weight decay on the weights of Linear layers only (not embeddings, norms, biases or start latents); with
    `hierarchy_lr` != 1 (PHOTON only), the hierarchy's parameters train at that multiple of the learning rate."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    hierarchy = isinstance(model, photon_hf.PhotonForCausalLM) and hierarchy_lr != 1.0
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = hierarchy_lr if hierarchy and not token_side(name) else 1.0
            key = (id(p) in decay, scale)
            groups.setdefault(key, {"params": [], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": scale})
            groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]


class RunCheckpoint:
    """One run's state on disk, so that a run cut short (a sitting ends, the process is killed) continues
    bit-exactly where it stopped: the model's and the optimizer's state, the RNG, the steps done (the data position:
    every step's batch is a function of the step) and what the run has recorded so far (learning curve, loss trace,
    training seconds). One file per run, named by a hash of the run's key; after the run is recorded the file keeps
    the final weights only (for later diagnosis)."""

    def __init__(self, directory: Path, key: str):
        self.key = key
        self.path = Path(directory) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"

    def load(self) -> dict | None:
        """The saved state of this run, or None when there is none (or it is a finished run's weights)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state["key"] != self.key:
            raise SystemExit(f"{self.path} holds another run's checkpoint (key {state['key']}); remove it")
        return None if state["finished"] else state

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, progress: dict):
        """Write the state atomically (a temporary file, then a rename): a kill during the write keeps the last one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"key": self.key, "finished": optimizer is None, "model": model.state_dict(), **progress}
        if optimizer is not None:
            state |= {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
        scratch = self.path.with_suffix(".tmp")
        torch.save(state, scratch)
        os.replace(scratch, self.path)


def train(model, stream: np.ndarray, recipe: Recipe, lr: float, steps: int, device, bf16: bool,
          progress: str = "", hierarchy_lr: float = 1.0, eval_every: int = 0, curve_point=None,
          checkpoint: RunCheckpoint | None = None, checkpoint_every: int = 0, pause_at: int | None = None) -> dict:
    """Train `steps` steps of the recipe; with `eval_every`, call `curve_point(steps_done)` after every that many
    steps (not after the last: the caller evaluates the trained model). With `checkpoint`, continue from its saved
    state when there is one, save every `checkpoint_every` steps and, with `pause_at`, stop there (saved): the
    result then has "paused": True and no final figures."""
    offsets = batch_offsets(len(stream), recipe.seq_len, recipe.batch, recipe.steps, recipe.seed)
    groups = parameter_groups(model, recipe.weight_decay, hierarchy_lr)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=recipe.betas)
    schedule = Recipe(**{**dataclasses.asdict(recipe), "steps": steps})  # llama-size runs fewer steps
    data = torch.from_numpy(stream)
    span = torch.arange(recipe.seq_len)
    done, trace, seconds = 0, [], 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        done, trace, seconds = saved["steps_done"], saved["train_loss_trace"], saved["train_seconds"]
        if curve_point is not None:
            curve_point.restore(saved["curve"])
        print(f"{progress} continues from step {done} ({checkpoint.path})", flush=True)

    def save(step_count: int):
        checkpoint.save(model, optimizer, {"steps_done": step_count, "train_loss_trace": trace,
                                           "train_seconds": seconds + time.perf_counter() - start,
                                           "curve": curve_point.points if curve_point is not None else []})

    model.train()
    start = time.perf_counter()
    for step in range(done, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] * schedule.lr_factor(step)
        rows = torch.from_numpy(offsets[step % recipe.steps])[:, None] + span
        batch = data[rows].long().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            value = float(loss.detach())
            trace.append([step, value])
            if not math.isfinite(value):
                break
            rate = (step + 1 - done) * batch.numel() / (time.perf_counter() - start)
            print(f"\r{progress} step {step + 1}/{steps} loss {value:.3f} ({rate:.0f} tok/s)", end="", flush=True)
        if eval_every and curve_point is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
            paused = time.perf_counter()
            curve_point(step + 1)
            model.train()
            start += time.perf_counter() - paused  # train_seconds counts training only
        if checkpoint is not None and step + 1 < steps:
            if step + 1 == pause_at:
                save(step + 1)
                print(f"\n{progress} paused at step {step + 1}: {checkpoint.path}", flush=True)
                return {"paused": True}
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                save(step + 1)
    print(file=sys.stdout, flush=True)
    return {"steps": steps, "tokens_seen": steps * recipe.batch * recipe.seq_len, "train_loss_trace": trace,
            "train_seconds": seconds + time.perf_counter() - start}


def target_masks(windows: EvalWindows) -> torch.Tensor:
    """The kinds of targets the study scores, as masks [kinds, windows, seq_len - 1]: all, copyable, other; each
    position in a CHUNK_PHASES-token chunk; each position of that chunk in its UNIT_CHUNKS-chunk unit of the level
    above; copyable by how far back their source starts (the COPY_DISTANCES buckets); copyable from a source in the
    same chunk phase (aligned) and from one out of phase."""
    copyable = torch.from_numpy(windows.copyable)
    distance = torch.from_numpy(windows.distance)
    aligned = torch.from_numpy(windows.aligned)
    target = torch.arange(1, windows.ids.shape[1]).expand_as(copyable)
    edges = [0, *COPY_DISTANCES, distance.max().item() + 1]
    return torch.stack(
        [torch.ones_like(copyable), copyable, ~copyable]
        + [target % CHUNK_PHASES == p for p in range(CHUNK_PHASES)]
        + [target // CHUNK_PHASES % UNIT_CHUNKS == p for p in range(UNIT_CHUNKS)]
        + [copyable & (distance > low) & (distance <= high) for low, high in zip(edges, edges[1:], strict=False)]
        + [copyable & aligned, copyable & ~aligned]
    )


@torch.no_grad()
def window_losses(model, windows: EvalWindows, batch: int, device, bf16: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per window and kind of target (`target_masks`), the summed negative log-likelihood (nats) and the bytes those
    targets stand for. Two float64 arrays [windows, kinds]."""
    model.eval()
    masks = target_masks(windows)
    weights = (masks * torch.from_numpy(windows.target_bytes)).sum(-1).T.double()
    sums = []
    for first in range(0, len(windows.ids), batch):
        ids = torch.from_numpy(windows.ids[first : first + batch]).long().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        ).cpu().double()
        sums.append((nll * masks[:, first : first + batch]).sum(-1).T)
    return torch.cat(sums).numpy(), weights.numpy()


def bits_summary(sums: np.ndarray, counts: np.ndarray) -> dict:
    """Bits per byte overall, on copyable / other targets, by position in the chunk and in the unit above, and on
    copyable targets by distance to their source and by alignment, from `window_losses`."""
    bits = sums.sum(0) / np.maximum(counts.sum(0), 1) / math.log(2)
    share = counts.sum(0) / max(1.0, counts[:, 0].sum())
    chunk = 3 + CHUNK_PHASES
    distance = chunk + UNIT_CHUNKS
    aligned = distance + len(COPY_DISTANCES) + 1
    return {"bits_per_byte": float(bits[0]), "bits_copyable": float(bits[1]), "bits_other": float(bits[2]),
            "copyable_fraction": float(share[1]),
            "bits_by_chunk_position": [float(b) for b in bits[3:chunk]],
            "bits_by_unit_position": [float(b) for b in bits[chunk:distance]],
            "bits_copyable_by_distance": [float(b) for b in bits[distance:aligned]],
            "copyable_fraction_by_distance": [float(f) for f in share[distance:aligned]],
            "bits_copyable_aligned": float(bits[aligned]), "bits_copyable_unaligned": float(bits[aligned + 1]),
            "aligned_fraction": float(share[aligned])}


def evaluate(model, windows: EvalWindows, batch: int, device, bf16: bool) -> dict:
    """Held-out bits per byte of `windows` (`bits_summary`)."""
    return bits_summary(*window_losses(model, windows, batch, device, bf16))


def reported(summary: dict, prefix: str = "valid") -> dict:
    """`bits_summary` under a run record's names: valid_bits_per_byte, valid_bits_copyable, ..."""
    fields = ("bits_per_byte", "bits_copyable", "bits_other", "bits_by_chunk_position", "bits_by_unit_position",
              "bits_copyable_by_distance", "bits_copyable_aligned", "bits_copyable_unaligned")
    record = {f"{prefix}_{name}": summary[name] for name in fields}
    if prefix == "valid":
        record |= {name: summary[name] for name in ("copyable_fraction", "copyable_fraction_by_distance",
                                                    "aligned_fraction")}
    return record


@torch.no_grad()
def greedy_agreement(model, stream: np.ndarray, device, bf16: bool, prompts: int = 8, prompt_len: int = 37,
                     gen_len: int = 40) -> float:
    """Greedy-generate from validation prompts (cached, exact hierarchical generation), then check each generated
    token against the argmax of a teacher-forced forward over the generated sequence: 1.0 in fp32."""
    model.eval()
    offsets = np.random.default_rng(1234).integers(0, len(stream) - prompt_len - 1, size=prompts)
    ids = torch.from_numpy(np.stack([stream[o : o + prompt_len] for o in offsets])).long().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        sequences = model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False,
                                   pad_token_id=model.config.pad_token_id)
        logits = model(input_ids=sequences, use_cache=False).logits
    predicted = logits[:, prompt_len - 1 : -1].argmax(-1)
    return float((predicted == sequences[:, prompt_len:]).float().mean())


# --------------------------------------------------------------------------------------------------- the runs
@dataclasses.dataclass
class LearningCurve:
    """A run's learning curve: calling it with the steps done appends a held-out point, scored by `score()` (the
    `window_losses` of the curve windows) or from given sums and counts."""

    score: Callable[[], tuple[np.ndarray, np.ndarray]]
    tokens_per_step: int
    label: str
    points: list[dict] = dataclasses.field(default_factory=list)

    def __call__(self, steps_done: int, sums: np.ndarray | None = None, counts: np.ndarray | None = None):
        if sums is None:
            sums, counts = self.score()
        point = bits_summary(sums, counts)
        self.points.append({"step": steps_done, "tokens_seen": steps_done * self.tokens_per_step, **point})
        print(f"\n{self.label} step {steps_done}: {point['bits_per_byte']:.4f} bits/byte on the curve windows",
              flush=True)

    def restore(self, points: list[dict]):
        """The points of a checkpoint (a run that continues)."""
        self.points[:] = points


def build(model_name: str, width: int, recipe: Recipe, photon_overrides: dict,
          vocab: Vocabulary = BYTES) -> tuple[object, object, int]:
    """(model config, the PHOTON it is compared with, training steps) for one model of the study."""
    photon = photon_config(width, photon_overrides, vocab)
    if model_name == "photon":
        return photon, photon, recipe.steps
    if model_name == "llama":
        return matched_llama(photon, recipe.seq_len), photon, recipe.steps
    llama = same_size_llama(photon, recipe.seq_len)  # the paper's protocol: same total training FLOPs
    budget = memory.training_flops_per_token(photon, recipe.seq_len) * recipe.steps
    steps = max(1, round(budget / memory.training_flops_per_token(llama, recipe.seq_len)))
    return llama, photon, steps


def run_key(record: dict) -> str:
    keys = ("model", "width", "lr", "photon_overrides", "init", "hierarchy_lr", "recipe", "eval_tokens", "evaluation")
    defaults = {"init": "default", "hierarchy_lr": 1.0, "evaluation": None}
    return json.dumps({k: record.get(k, defaults.get(k)) for k in keys}, sort_keys=True)


def evaluation_protocol(args, vocab: Vocabulary = BYTES) -> dict:
    """How a run is evaluated (part of a run's key: runs scored differently are never compared), with the
    tokenizer when it is not the byte-level one."""
    protocol = {"windows": "spread", "eval_tokens": args.eval_tokens, "selection_tokens": args.selection_tokens,
                "legacy_tokens": args.legacy_tokens, "eval_every": args.eval_every, "curve_stride": args.curve_stride}
    if vocab.tokenizer is not None:
        protocol["tokenizer"] = {"name": vocab.name, "sha256": vocab.sha256}
    return protocol


def run_one(model_name: str, width: int, lr: float, recipe: Recipe, photon_overrides: dict, init: str,
            hierarchy_lr: float, data: dict, args, device) -> dict:
    """Train one model, evaluating on the curve windows every `args.eval_every` steps, then score it on the
    evaluation windows (`valid_*`, what is reported), the selection windows (`selection_*`, what picks learning
    rates) and the study's first evaluation set (`legacy_*`)."""
    config, photon, steps = build(model_name, width, recipe, photon_overrides, data["vocab"])
    torch.manual_seed(recipe.seed)
    model_class = photon_hf.PhotonForCausalLM if isinstance(config, photon_hf.PhotonConfig) else LlamaForCausalLM
    model = model_class(config)
    if INIT_SCHEMES[init] is not None:
        with torch.no_grad():
            INIT_SCHEMES[init](model)
    model.to(device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    record = {
        "model": model_name, "width": width, "lr": lr, "photon_overrides": photon_overrides, "init": init,
        "hierarchy_lr": hierarchy_lr if model_name == "photon" else 1.0, "recipe": dataclasses.asdict(recipe),
        "eval_tokens": args.eval_tokens, "evaluation": evaluation_protocol(args, data["vocab"]),
        "tokenizer": data["vocab"].name, "bf16": bf16,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": config.to_diff_dict(), "parameters": sum(p.numel() for p in model.parameters()),
        **cost_figures(config, recipe.seq_len),
        "photon_train_flops_per_token": memory.training_flops_per_token(photon, recipe.seq_len),
    }
    label = f"[{model_name} D={width} lr={lr:g}{' ' + json.dumps(photon_overrides) if photon_overrides else ''}" + (
        f" init={init}" if init != "default" else "") + (
        f" hierarchy_lr={hierarchy_lr:g}]" if record["hierarchy_lr"] != 1.0 else "]")
    windows = data["windows"]
    curve = LearningCurve(lambda: window_losses(model, windows["valid"].every(args.curve_stride), recipe.batch,
                                                device, bf16), recipe.batch * recipe.seq_len, label)
    checkpoint = RunCheckpoint(args.checkpoints, run_key(record)) if args.checkpoints else None
    trained = train(model, data["train"], recipe, lr, steps, device, bf16, progress=label,
                    hierarchy_lr=record["hierarchy_lr"], eval_every=args.eval_every, curve_point=curve,
                    checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, pause_at=args.pause_at)
    if trained.get("paused"):
        return None
    record.update(trained)
    record["train_flops"] = record["train_flops_per_token"] * record["tokens_seen"]
    sums, counts = window_losses(model, windows["valid"], recipe.batch, device, bf16)
    record.update(reported(bits_summary(sums, counts)))
    if args.eval_every:  # the last point of the curve, from the same windows as the others
        curve(steps, sums[:: args.curve_stride], counts[:: args.curve_stride])
        record["curve"] = curve.points
    for name in ("selection", "legacy"):
        if name in windows:
            record.update(reported(evaluate(model, windows[name], recipe.batch, device, bf16), name))
    if model_name == "photon" and args.agreement:
        record["greedy_agreement"] = greedy_agreement(model, data["valid"], device, bf16)
    print(f"{label} {record['valid_bits_per_byte']:.4f} bits/byte (copyable {record['valid_bits_copyable']:.3f}, "
          f"other {record['valid_bits_other']:.3f}) in {record['train_seconds']:.0f} s", flush=True)
    if checkpoint is not None:
        checkpoint.save(model, None, {})  # the final weights only
    return record


def parse_overrides(items: list[str]) -> dict:
    """["chunk_sizes=2,2", "converter_width=4", "encoder_windows=null"] -> PhotonConfig fields."""
    fields = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--photon takes field=value pairs, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [int(v) for v in value.split(",")] if "," in value else value
        fields[name] = [parsed] if name == "chunk_sizes" and isinstance(parsed, int) else parsed
    return fields


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_data(args) -> dict:
    """The vocabulary (`--tokenizer`), the token streams and the evaluation windows: "valid" (spread over the whole
    validation split, reported), "selection" (spread over the selection split, for picking learning rates; absent
    with local files and no --selection-files) and "legacy" (the study's first evaluation set: the validation
    stream's leading windows)."""
    vocab = load_vocabulary(getattr(args, "tokenizer", None))
    root = stdlib_root()
    train_files = args.train_files or [root / p for p in study_files("train")]
    valid_files = args.valid_files or [root / p for p in study_files("validation")]
    selection_files = args.selection_files or ([] if args.train_files else [root / p for p in study_files("selection")])
    streams = {"train": vocab.stream(train_files), "valid": vocab.stream(valid_files)}
    seq = args.seq_len
    windows = {"valid": spread_windows(streams["valid"], args.eval_tokens, seq, vocab.token_bytes)}
    if selection_files and args.selection_tokens:
        windows["selection"] = spread_windows(vocab.stream(selection_files), args.selection_tokens, seq,
                                              vocab.token_bytes)
    if args.legacy_tokens:
        windows["legacy"] = leading_windows(streams["valid"], args.legacy_tokens, seq, vocab.token_bytes)
    return {**streams, "windows": windows, "vocab": vocab}


def train_tokenizer(args) -> Path:
    """Train the study's subword tokenizer on the training split only (or --train-files) and save it."""
    files = args.train_files or [stdlib_root() / p for p in study_files("train")]
    tokenizer = train_bpe(files, args.vocab_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    vocab = load_vocabulary(out)
    sample = vocab.stream(files[:: max(1, len(files) // 200)])
    per_token = sum(len(vocab.token_bytes[i]) for i in sample) / len(sample)
    print(f"{out}: {vocab.size} tokens trained on {len(files)} files, {per_token:.2f} bytes a token on a sample")
    return out


def copy_report(args) -> dict:
    """The distance distribution of `copy_distances` on windows spread over the validation split."""
    stream = byte_stream([stdlib_root() / p for p in study_files("validation")])
    distances = copy_distances(spread_windows(stream, args.eval_tokens, args.seq_len))
    result = {"copies": len(distances), "median": float(np.median(distances)),
              "within": {d: float((distances <= d).mean()) for d in args.within}}
    print(f"{result['copies']} copyable targets, nearest earlier occurrence a median {result['median']:g} bytes back; "
          + ", ".join(f"{100 * f:.0f}% within {d}" for d, f in result["within"].items()))
    return result


def recipe_of(args) -> Recipe:
    return Recipe(steps=args.steps, batch=args.batch, seq_len=args.seq_len, warmup=args.warmup, seed=args.seed)


def planned_runs(args) -> list[dict]:
    """The runs a sweep makes, in order, each as the fields of its key (`run_key`)."""
    recipe, vocab = recipe_of(args), load_vocabulary(args.tokenizer)
    return [{"model": model_name, "width": width, "lr": lr, "recipe": dataclasses.asdict(recipe),
             "photon_overrides": parse_overrides(args.photon), "init": args.init,
             "hierarchy_lr": args.hierarchy_lr if model_name == "photon" else 1.0, "eval_tokens": args.eval_tokens,
             "evaluation": evaluation_protocol(args, vocab)}
            for width in args.widths for model_name in args.models for lr in args.lrs]


def sweep(args) -> list[dict]:
    """Train and score every planned run that is not in the results file yet (continuing any from its checkpoint);
    the data is loaded only when a run is to be made."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results_path = Path(args.results)
    if args.checkpoints is None:
        args.checkpoints = results_path.with_suffix(".checkpoints")
    done = {run_key(r) for r in load_results(results_path)}
    data, new = None, []
    for key in planned_runs(args):
        if run_key(key) in done:
            print(f"[{key['model']} D={key['width']} lr={key['lr']:g}] already in {results_path}, skipped")
            continue
        data = data or load_data(args)
        record = run_one(key["model"], key["width"], key["lr"], recipe_of(args), key["photon_overrides"], args.init,
                         key["hierarchy_lr"], data, args, device)
        if record is None:  # paused (--pause-at): the same command continues it
            continue
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        new.append(record)
    return new


# ------------------------------------------------------------------------------------------------- the report
def variant_name(record: dict) -> str:
    init = record.get("init", "default")
    suffix = f" init={init}" if init != "default" else ""
    if record.get("hierarchy_lr", 1.0) != 1.0:
        suffix += f" hierarchy_lr={record['hierarchy_lr']:g}"
    if record.get("tokenizer", "bytes") != "bytes":
        suffix += f" tokens={record['tokenizer']}"
    if record["model"] != "photon":  # the Llamas: one per depth (each PHOTON is compared with its FLOP match)
        return f"{record['model']} {record['config']['num_hidden_layers']} layers{suffix}"
    overrides = record["photon_overrides"]
    fields = "".join(f" {k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(overrides.items()))
    return "photon" + fields + suffix


def evaluation_key(record: dict) -> str:
    """How a run was scored: runs are compared only with runs scored on the same windows."""
    return json.dumps(record.get("evaluation") or {"eval_tokens": record["eval_tokens"]}, sort_keys=True)


def selection_bits(record: dict) -> float:
    """What picks a learning rate: bits per byte on the selection split, or (runs recorded before the study had
    one) on the reported windows."""
    return record.get("selection_bits_per_byte", record["valid_bits_per_byte"])


def reference_llama(record: dict, candidates: list[dict]) -> dict | None:
    """The Llama a run is compared with, of those run at its width, recipe, evaluation and tokenizer: the best (on
    the selection split) of the Llamas with at most its training FLOPs per token, so that no cheaper Llama beats the
    bar; where every Llama costs more, the one closest in FLOPs (its FLOP match,
    `photon_hf.memory.flop_matched_llama`)."""
    same = [b for b in candidates if b["model"] == "llama" and b["width"] == record["width"]
            and b["recipe"] == record["recipe"] and evaluation_key(b) == evaluation_key(record)
            and b.get("tokenizer", "bytes") == record.get("tokenizer", "bytes")]
    cheaper = [b for b in same if b["train_flops_per_token"] <= record["train_flops_per_token"]]
    if cheaper:
        return min(cheaper, key=selection_bits)
    return min(same, key=lambda b: abs(b["train_flops_per_token"] - record["train_flops_per_token"]), default=None)


def best_runs(records: list[dict]) -> dict[tuple, dict]:
    """The best learning rate of every (width, variant, recipe, evaluation), chosen on the selection split (the
    reported windows for older runs), with its sweep [[lr, selection bits], ...]."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["width"], variant_name(r), json.dumps(r["recipe"], sort_keys=True), evaluation_key(r))
        groups.setdefault(key, []).append(r)
    best = {}
    for key, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["lr"])
        finite = [r for r in runs if math.isfinite(selection_bits(r))]
        winner = min(finite or runs, key=selection_bits)
        edge = len(runs) > 1 and winner["lr"] in (runs[0]["lr"], runs[-1]["lr"])
        best[key] = {**winner, "sweep": [[r["lr"], selection_bits(r)] for r in runs], "lr_at_edge": edge,
                     "selected_on": "selection" if "selection_bits_per_byte" in winner else "reported windows"}
    return best


def report(args) -> dict:
    results = args.results if isinstance(args.results, list) else [args.results]
    records = [r for path in results for r in load_results(Path(path))]
    if not records:
        raise SystemExit(f"No runs in {', '.join(results)}.")
    # The cost figures come from the cost model as it is now, not as it was when a run was recorded.
    records = [r | cost_figures(recorded_config(r), r["recipe"]["seq_len"]) for r in records]
    best = best_runs(records)
    rows = sorted(best.values(), key=lambda r: (r["width"], json.dumps(r["recipe"], sort_keys=True),
                                                 r["model"] != "llama", variant_name(r)))
    lines = ["| D | steps | model | params | train MFLOP/tok | tokens | lr (sweep: selection bits/byte) | bits/byte | "
             "copyable | other | ppl/byte vs its reference llama | the same on the first windows | cache B/tok | "
             "decode MFLOP/tok |",
             "|" + "---|" * 14]
    summary = []
    for r in rows:
        ref = reference_llama(r, rows)
        ratio = 2 ** (r["valid_bits_per_byte"] - ref["valid_bits_per_byte"]) if ref else None
        legacy = (2 ** (r["legacy_bits_per_byte"] - ref["legacy_bits_per_byte"])
                  if ref and "legacy_bits_per_byte" in r and "legacy_bits_per_byte" in ref else None)
        ref_layers = ref["config"]["num_hidden_layers"] if ref else None
        sweep_text = ", ".join(f"{lr:g}: {bits:.3f}" for lr, bits in r["sweep"])
        sweep_text += " (edge)" if r["lr_at_edge"] else ""
        lines.append(
            f"| {r['width']} | {r['recipe']['steps']} | {variant_name(r)} | {r['parameters'] / 1e6:.2f}M | "
            f"{r['train_flops_per_token'] / 1e6:.1f} | {r['tokens_seen'] / 1e6:.2f}M | {r['lr']:g} ({sweep_text}) | "
            f"**{r['valid_bits_per_byte']:.3f}** | {r['valid_bits_copyable']:.3f} | {r['valid_bits_other']:.3f} | "
            f"{'–' if ratio is None else f'{ratio:.3f}x ({ref_layers} layers)'} | "
            f"{'–' if legacy is None else f'{legacy:.3f}x'} | "
            f"{r['cache_bytes_per_token']:.0f} | "
            f"{r['decode_flops_per_token'] / 1e6:.2f} |"
        )
        summary.append({k: r[k] for k in ("model", "width", "lr", "photon_overrides", "parameters", "tokens_seen",
                                          "train_flops_per_token", "valid_bits_per_byte", "valid_bits_copyable",
                                          "valid_bits_other", "copyable_fraction", "cache_bytes_per_token",
                                          "decode_flops_per_token", "sweep", "lr_at_edge", "recipe", "device")}
                       | {"variant": variant_name(r), "perplexity_ratio_vs_llama": ratio, "llama_layers": ref_layers,
                          "selected_on": r["selected_on"], "first_windows_ratio_vs_llama": legacy,
                          "training_ablation": r.get("init", "default") != "default" or r.get("hierarchy_lr", 1) != 1})
    table = "\n".join(lines)
    print(table)
    out = Path(args.out or Path(results[0]).with_suffix(""))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(table + "\n")
    Path(f"{out}.json").write_text(json.dumps(summary, indent=1))
    plot(summary, f"{out}.png")
    plot_sweeps(summary, f"{out}_lr.png")
    return {"rows": summary, "table": table}


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a hint) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'photon-hf[bench]')")
        return None
    return plt


def variant_label(variant: str) -> str:
    """A plot label for `variant_name`: "photon decoder_lookback=8" -> "look-back 8", "photon" -> "[4,4]"."""
    name = variant.replace("photon ", "").replace("photon", "[4,4]")
    name = name.replace("decoder_lookback=", "look-back ").replace("chunk_sizes=", "")
    return name.replace("converter_width=", "R=").replace("recursive_loss_weight=", "alpha=")


def save_figure(plt, fig, path: str, dpi: int = 120, rect: tuple | None = None):
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"plot: {path}")


def trend(args) -> dict:
    """Learning curves of runs recorded with --eval-every: for each width and PHOTON variant, the held-out bits per
    byte and the perplexity ratio to its reference Llama (`reference_llama`: of the Llamas run at the same width,
    recipe and windows, the best with at most its training FLOPs per token) at every point, as a table, a JSON file
    and a plot against training tokens."""
    records = [r for path in args.results for r in load_results(Path(path)) if r.get("curve")]
    if not records:
        raise SystemExit(f"No run with a learning curve in {', '.join(args.results)} (sweep with --eval-every).")
    best = best_runs(records)
    llamas = [r for r in best.values() if r["model"] == "llama"]
    lines, curves, header = [], [], None
    for r in sorted(best.values(), key=lambda r: (r["width"], json.dumps(r["recipe"], sort_keys=True),
                                                  r["model"] != "llama", variant_name(r))):
        ref = reference_llama(r, llamas)
        points = []
        for point in r["curve"]:
            match = next((q for q in ref["curve"] if q["step"] == point["step"]), None) if ref else None
            ratio = 2 ** (point["bits_per_byte"] - match["bits_per_byte"]) if match else None
            points.append({**point, "ratio_vs_llama": ratio,
                           "copyable_gap_bits": point["bits_copyable"] - match["bits_copyable"] if match else None,
                           "other_gap_bits": point["bits_other"] - match["bits_other"] if match else None})
        curves.append({"width": r["width"], "variant": variant_name(r), "model": r["model"], "lr": r["lr"],
                       "train_flops_per_token": r["train_flops_per_token"], "recipe": r["recipe"], "points": points,
                       "llama": variant_name(ref) if ref else None})
        columns = " | ".join(f"{p['tokens_seen'] / 1e6:.2f}M" for p in points)
        if columns != header:  # a table header for every width and recipe
            header = columns
            lines += ["", "| D | model | lr | compared with | " + columns + " |", "|" + "---|" * (4 + len(points))]
        cells = [f"{p['bits_per_byte']:.3f}" + ("" if r["model"] == "llama" or p["ratio_vs_llama"] is None
                                                 else f" ({p['ratio_vs_llama']:.3f}x)") for p in points]
        against = "–" if r["model"] == "llama" or ref is None else variant_name(ref)
        lines.append(f"| {r['width']} | {variant_name(r)} | {r['lr']:g} | {against} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(table + "\n")
    Path(f"{out}.json").write_text(json.dumps(curves, indent=1))
    plot_trend(curves, f"{out}.png")
    return {"curves": curves, "table": table}


def plot_trend(curves: list[dict], path: str):
    """Three panels against training tokens: held-out bits per byte; PHOTON's perplexity per byte over its
    reference Llama's (`reference_llama`, named in the legend where a width has several Llamas); PHOTON's gap to
    that Llama in bits on copyable (solid) and other (dotted) positions. One colour per PHOTON variant, one line style
    per width; one legend below the panels, each entry with the training FLOPs per token. A
    run shorter than the longest of its width is drawn faint and says how far it went."""
    plt = pyplot()
    if plt is None:
        return
    variants = sorted({c["variant"] for c in curves if c["model"] != "llama"})
    widths = sorted({c["width"] for c in curves})
    longest = {w: max(c["points"][-1]["tokens_seen"] for c in curves if c["width"] == w) for w in widths}
    llamas = sorted({c["variant"] for c in curves if c["model"] == "llama"})
    several = {w for w in widths
               if len({c["variant"] for c in curves if c["width"] == w and c["model"] == "llama"}) > 1}
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    for c in curves:
        tokens = [p["tokens_seen"] / 1e6 for p in c["points"]]
        width_style = styles[widths.index(c["width"]) % len(styles)]
        mflop = f"{c['train_flops_per_token'] / 1e6:.1f} MFLOP/token"
        short = c["points"][-1]["tokens_seen"] < longest[c["width"]]
        reach, alpha = (f", to {tokens[-1]:.1f}M", 0.35) if short else ("", 1.0)
        label = f"PHOTON {variant_label(c['variant'])}, D={c['width']}{reach}"
        if c["model"] == "llama":
            shade = ["black", "dimgray", "darkgray"][llamas.index(c["variant"]) % 3]
            name = c["variant"].replace("llama", "Llama")
            axes[0].plot(tokens, [p["bits_per_byte"] for p in c["points"]], color=shade, linestyle=width_style,
                         marker="s", markersize=3, alpha=alpha, label=f"{name}, D={c['width']}{reach} ({mflop})")
            continue
        if c["width"] in several and c["llama"]:
            label += f" (vs {c['llama'].replace('llama', 'Llama')})"
        color = f"C{variants.index(c['variant']) % 10}"
        axes[0].plot(tokens, [p["bits_per_byte"] for p in c["points"]], color=color, linestyle=width_style,
                     marker="o", markersize=3, alpha=alpha, label=f"{label} ({mflop})")
        kept = [(t, p) for t, p in zip(tokens, c["points"], strict=True) if p["ratio_vs_llama"] is not None]
        if kept:
            axes[1].plot([t for t, _ in kept], [p["ratio_vs_llama"] for _, p in kept], color=color,
                         linestyle=width_style, marker="o", markersize=3, alpha=alpha)
            axes[2].plot([t for t, _ in kept], [p["copyable_gap_bits"] for _, p in kept], color=color,
                         linestyle=width_style, marker="o", markersize=3, alpha=alpha)
            axes[2].plot([t for t, _ in kept], [p["other_gap_bits"] for _, p in kept], color=color,
                         linestyle=":", marker=".", markersize=3, alpha=0.7 * alpha)
    axes[0].set_ylabel("held-out bits per byte (lower is better)")
    axes[1].axhline(1.0, color="black", linewidth=0.8)
    axes[1].axhline(1.03, color="gray", linestyle="--", linewidth=0.8)
    axes[1].axhline(1.34, color="gray", linestyle=":", linewidth=0.8)
    axes[1].annotate("1.03x target", (0, 1.03), xycoords=("axes fraction", "data"), fontsize=7, color="gray")
    axes[1].annotate("paper's 1.34x", (0, 1.34), xycoords=("axes fraction", "data"), fontsize=7, color="gray")
    axes[1].set_ylabel("perplexity per byte / its reference Llama's")
    axes[2].axhline(0.0, color="black", linewidth=0.8)
    axes[2].set_ylabel("bits per byte above the Llama (solid: copyable, dotted: other)")
    for axis in axes:
        axis.set_xlabel("training tokens (millions)")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    rows = -(-len(labels) // 3)
    fig.set_size_inches(17, 5.2 + 0.16 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle("PHOTON against a Llama of its width as training grows (held-out windows, each model's own rate; "
                 "training compute per token in the legend)")
    save_figure(plt, fig, path, rect=(0, 0.16 * rows / (5.2 + 0.16 * rows) + 0.01, 1, 1))


def plot(summary: list[dict], path: str):
    """Held-out bits per byte against cache bytes per token (left) and decode FLOPs per token (right): one colour per
    width and recipe, PHOTON's levers as circles, its FLOP-matched Llama as a square and a dashed line (the bar to
    reach), the paper-protocol Llama as a triangle. Training ablations (init, per-module rates) change no cache
    figure and stay in the table."""
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in summary if not r.get("training_ablation")]
    groups = sorted({(r["width"], r["recipe"]["steps"], r["recipe"]["batch"], r["recipe"]["seq_len"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    for axis, field, label in ((axes[0], "cache_bytes_per_token", f"KV-cache bytes per token at {CACHE_CONTEXT} "
                                "tokens (bf16, analytic)"),
                               (axes[1], "decode_flops_per_token", f"decode FLOPs per token at {CACHE_CONTEXT}")):
        for g, (width, steps, batch, seq_len) in enumerate(groups):
            color = f"C{g % 10}"
            members = [r for r in rows if (r["width"], r["recipe"]["steps"], r["recipe"]["batch"],
                                           r["recipe"]["seq_len"]) == (width, steps, batch, seq_len)]
            for r in members:
                x, y = r[field], r["valid_bits_per_byte"]
                if r["model"] == "llama":
                    axis.axhline(y, color=color, linestyle="--", linewidth=0.8, alpha=0.7)
                    axis.scatter(x, y, marker="s", s=70, color=color, edgecolors="black", zorder=3)
                    name = r["variant"].replace("llama", "Llama")  # "Llama 4 layers"
                elif r["model"] == "llama-size":
                    axis.scatter(x, y, marker="^", s=70, color=color, edgecolors="black", zorder=3)
                    name = "Llama (paper protocol)"
                else:
                    axis.scatter(x, y, marker="o", s=45, color=color, zorder=3)
                    name = variant_label(r["variant"])
                axis.annotate(name, (x, y), fontsize=6.5, xytext=(4, 2), textcoords="offset points", color=color)
            axis.scatter([], [], marker="o", color=color, label=f"D={width}, {steps} steps x {batch} x {seq_len}")
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(plt.NullFormatter())  # decades only: the minor labels collide
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("held-out bits per byte (lower is better)")
    axes[0].scatter([], [], marker="s", color="white", edgecolors="black",
                    label="FLOP-matched Llama (dashed: its level)")
    axes[0].legend(fontsize=7.5)
    fig.suptitle("PHOTON quality/efficiency frontier (each model at its own best learning rate)")
    save_figure(plt, fig, path)


def plot_sweeps(summary: list[dict], path: str):
    """Held-out bits per byte against the learning rate: every variant's sweep, one panel per width and recipe."""
    plt = pyplot()
    if plt is None:
        return
    panels = sorted({(r["width"], r["recipe"]["steps"]) for r in summary})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for axis, (width, steps) in zip(axes[0], panels, strict=True):
        rows = [r for r in summary if r["width"] == width and r["recipe"]["steps"] == steps]
        for i, r in enumerate(sorted(rows, key=lambda r: r["variant"])):
            lrs, bits = zip(*r["sweep"], strict=True)
            style = {"llama": dict(color="black", linewidth=2.2),
                     "llama-size": dict(color="gray", linewidth=1.6, linestyle="--")}.get(r["model"],
                                                                                        dict(color=f"C{i % 10}"))
            axis.plot(lrs, bits, marker="o", label=r["variant"], **style)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.set_xlabel("peak learning rate")
        axis.set_title(f"D = {width}, {steps} steps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out bits per byte")
    fig.suptitle("Learning-rate sweeps (each model's best point is the one the study reports)")
    save_figure(plt, fig, path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("sweep", help="train and evaluate models; append the runs to --results")
    run.add_argument("--widths", type=int, nargs="+", default=[128])
    run.add_argument("--models", nargs="+", choices=MODELS, default=["photon", "llama"])
    run.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    run.add_argument("--photon", nargs="*", default=[], metavar="FIELD=VALUE",
                     help="PhotonConfig overrides, e.g. chunk_sizes=2,2 converter_width=4")
    run.add_argument("--init", choices=sorted(INIT_SCHEMES), default="default",
                     help="re-initialise the models (an ablation; 'default' keeps each model's own init)")
    run.add_argument("--hierarchy-lr", type=float, default=1.0,
                     help="PHOTON: learning-rate multiple for the hierarchy (everything but the token decoder side)")
    run.add_argument("--steps", type=int, default=600)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--seq-len", type=int, default=512)
    run.add_argument("--warmup", type=float, default=0.05)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--eval-tokens", type=int, default=524288,
                     help="reported evaluation: this many tokens of windows spread over the whole validation split")
    run.add_argument("--selection-tokens", type=int, default=262144,
                     help="windows of the selection split that pick each model's learning rate (0: none)")
    run.add_argument("--legacy-tokens", type=int, default=131072,
                     help="also score the first evaluation set, the validation stream's leading windows (0: no)")
    run.add_argument("--eval-every", type=int, default=0,
                     help="steps between the points of a learning curve (0: evaluate at the end only)")
    run.add_argument("--curve-stride", type=int, default=2,
                     help="the curve's points use every this-many-th evaluation window (the last point too)")
    run.add_argument("--no-agreement", dest="agreement", action="store_false",
                     help="skip the generation check (greedy generation vs teacher-forced argmax)")
    run.add_argument("--tokenizer", default=None,
                     help="a subword tokenizer saved by the `bpe` command (default: byte-level tokens)")
    run.add_argument("--train-files", nargs="*", help="local text files (default: the stdlib corpus)")
    run.add_argument("--valid-files", nargs="*")
    run.add_argument("--selection-files", nargs="*")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--results", default="bench/quality/results/runs.jsonl")
    run.add_argument("--checkpoints", default=None,
                     help="where runs keep their checkpoints (default: beside --results, RESULTS.checkpoints/): a run "
                          "cut short continues from its last one when the same command runs again")
    run.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: none)")
    run.add_argument("--pause-at", type=int, default=None,
                     help="stop every unfinished run at this step, checkpointed (the same command continues it)")
    rep = commands.add_parser("report", help="table, JSON and plot of the best run of every model")
    rep.add_argument("--results", nargs="+", default=["bench/quality/results/runs.jsonl"], help="JSONL run files")
    rep.add_argument("--out", default=None, help="output stem (default: the first results file without .jsonl)")
    curves = commands.add_parser("trend", help="learning curves (runs swept with --eval-every): table, JSON, plot")
    curves.add_argument("--results", nargs="+", required=True, help="JSONL run files")
    curves.add_argument("--out", required=True, help="output stem")
    copies = commands.add_parser("copies", help="how far back the copyable targets of the reported windows copy from")
    copies.add_argument("--eval-tokens", type=int, default=131072)
    copies.add_argument("--seq-len", type=int, default=512)
    copies.add_argument("--within", type=int, nargs="+", default=[11, 35, 100],
                        help="report the fraction of copies within these distances (bytes)")
    bpe = commands.add_parser("bpe", help="train the subword tokenizer on the training split only and save it")
    bpe.add_argument("--vocab-size", type=int, default=4096)
    bpe.add_argument("--train-files", nargs="*", help="local text files (default: the stdlib training split)")
    bpe.add_argument("--out", default="bench/quality/results/bpe-4096.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return {"sweep": sweep, "report": report, "trend": trend, "copies": copy_report,
            "bpe": train_tokenizer}[args.command](args)


if __name__ == "__main__":
    main()
