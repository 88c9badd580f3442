"""Which function each PHOTON op runs: the PyTorch reference or a Triton kernel, decided once per forward.

`modeling_llama.py` picks its attention from `ALL_ATTENTION_FUNCTIONS` once per layer call; PHOTON has five ops
with different shapes, so `photon_ops(config, device, dtype)` resolves all of them at the start of a forward and the
model's math only calls what it got (a `PhotonOps`, one field per op of `photon_kernels.OPS`):

- `latent_attention` / `latent_attention_full`: causal attention over a context encoder's units, with or without a
  sliding window (training, prefill);
- `chunk_local_attention`: causal attention inside each local-decoder window (training, prefill, a unit's prefix);
- `decode_attention`: one query per row over that row's slice of a KV cache, keys [start, end), the cache's rows
  picked by index when it holds more rows than the batch (decode steps; a view over vLLM's state blocks);
- `chunk_compress`: whether a chunker's RMSNorm (+ projection) runs the fused kernel.

The PyTorch references are the `*_ref` functions of `photon_kernels`, each beside its kernel. The functions below
are the same computations for exported Hub code, which runs without `photon_kernels` (a test checks that they equal
the references). A kernel runs only where it is eligible: `kernel_backend` allows it on the device (measured per op
for "auto"), the dtype is one the kernels take, the decode kernel is inference only, the chunker's modules are plain
(not wrapped by LoRA or hooks; checked by the caller), and never under `torch.compile`, which traces the references.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .configuration_photon import PhotonConfig

try:  # optional Triton kernels and their references (package `photon_kernels`)
    import photon_kernels
except ImportError:  # pragma: no cover - exported Hub code, or an environment without the kernels
    photon_kernels = None

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------ PyTorch references
def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal attention, restricted to the last `window` keys (the query's own included) when given.
    q: [N, H, S, hd]; k, v: [N, Hkv, S, hd] -> [N, H, S, hd]. (`photon_kernels.latent_attention_ref`.)"""
    gqa = q.shape[1] != k.shape[1]
    seq = q.shape[2]
    if window is None or window >= seq:
        return F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=gqa)
    pos = torch.arange(seq, device=q.device)
    distance = pos[:, None] - pos[None, :]
    mask = (distance >= 0) & (distance < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention inside each of N windows. q: [N, H, W, hd]; k, v: [N, Hkv, W, hd] -> [N, H, W, hd].
    (`photon_kernels.chunk_local_attention_ref`.)"""
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=q.shape[1] != k.shape[1])


def _cached_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start, end,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
    """One query per row over keys [start, end) of that row's cache. q: [B, H, hd]; keys, values: [N, Hkv, K, hd];
    rows: [B] the cache row of each query (None: row b, N == B); start, end: ints or [B] tensors -> [B, H, hd].
    (`photon_kernels.decode_attention_ref`.)"""
    if rows is not None:
        keys, values = keys.index_select(0, rows), values.index_select(0, rows)
    pos = torch.arange(keys.shape[2], device=q.device)
    start = torch.as_tensor(start, device=q.device).reshape(-1, 1)
    end = torch.as_tensor(end, device=q.device).reshape(-1, 1)
    mask = ((pos[None, :] >= start) & (pos[None, :] < end))[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask,
                                         enable_gqa=q.shape[1] != keys.shape[1])
    return out[:, :, 0]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention under an explicit boolean mask (True: attend). q: [N, H, S, hd]; k, v: [N, Hkv, K, hd]; mask
    broadcastable to [N, 1, S, K] -> [N, H, S, hd]. The token look-back's windows (`decoder_lookback`) run here, on
    PyTorch's SDPA, whatever `kernel_backend` says: no Triton kernel takes their mask (its decode steps do use
    `decode_attention`)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in one fused op (float32 statistics for half inputs), scaled in x's dtype. x: [..., K].
    (`photon_kernels.rms_norm_ref`.)"""
    return F.rms_norm(x, weight.shape, weight.to(x.dtype), eps)


if photon_kernels is not None:  # the references beside the kernels are what the model runs
    causal_attention = photon_kernels.latent_attention_ref
    window_attention = photon_kernels.chunk_local_attention_ref
    cached_attention = photon_kernels.decode_attention_ref
    rms_norm = photon_kernels.rms_norm_ref
else:  # pragma: no cover - exported Hub code
    causal_attention, window_attention, cached_attention = _causal_attention, _window_attention, _cached_attention
    rms_norm = _rms_norm


# ------------------------------------------------------------------------------------------------ dispatch
class PhotonOps(NamedTuple):
    """The functions one forward runs, one per op of `photon_kernels.OPS` (shapes as the references above)."""

    chunk_compress: bool  # whether a chunker's RMSNorm (+ projection) runs the fused kernel
    chunk_local_attention: Callable[..., torch.Tensor]  # (q, k, v): local-decoder windows
    latent_attention: Callable[..., torch.Tensor]  # (q, k, v, window): a context encoder with a sliding window
    latent_attention_full: Callable[..., torch.Tensor]  # (q, k, v): a context encoder, full causal
    decode_attention: Callable[..., torch.Tensor]  # (q, keys, values, start, end, rows): one query a row, over a cache


REFERENCE_OPS = PhotonOps(
    chunk_compress=False,
    chunk_local_attention=window_attention,
    latent_attention=causal_attention,
    latent_attention_full=causal_attention,
    decode_attention=cached_attention,
)


def photon_ops(config: PhotonConfig, device: torch.device, dtype: torch.dtype) -> PhotonOps:
    """The ops for a forward over `dtype` activations on `device`, in the current grad and autocast mode.

    `kernel_backend="triton"` where the kernels cannot run raises a RuntimeError that says why."""
    if torch.compiler.is_compiling():  # dynamo traces the references (the kernels' Python wrappers are opaque to it)
        return REFERENCE_OPS
    if not _triton_runs(config.kernel_backend, device.type):
        return REFERENCE_OPS
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    if (autocast or dtype) not in KERNEL_DTYPES:
        return REFERENCE_OPS
    return _kernel_ops(config.kernel_backend, torch.is_grad_enabled(), autocast)


@functools.cache
def _kernel_ops(backend: str, grad: bool, autocast: torch.dtype | None) -> PhotonOps:
    def kernel(op: str) -> bool:  # "auto" keeps the PyTorch path where it measured faster
        return backend == "triton" or op not in photon_kernels.AUTO_PREFERS_TORCH

    def through(name: str) -> Callable:  # the kernel is looked up at call time, so tests can count the calls
        return lambda q, k, v, *args: _in_common_dtype(getattr(photon_kernels, name), autocast, q, k, v, *args)

    return PhotonOps(
        chunk_compress=kernel("chunk_compress"),
        chunk_local_attention=through("chunk_local_attention") if kernel("chunk_local_attention") else window_attention,
        latent_attention=through("latent_attention") if kernel("latent_attention") else causal_attention,
        latent_attention_full=through("latent_attention") if kernel("latent_attention_full") else causal_attention,
        decode_attention=_decode_kernel if kernel("decode_attention") and not grad else cached_attention,
    )


def _triton_runs(backend: str, device_type: str) -> bool:
    """Whether `kernel_backend` sends ops to Triton on this device; "triton" where it cannot run raises why."""
    if backend == "torch":
        return False
    if photon_kernels is None:
        if backend == "triton":
            raise RuntimeError(
                "kernel_backend='triton' needs the `photon_kernels` package and Triton (pip install "
                "'photon-hf[triton]'); use kernel_backend='auto' or 'torch'."
            )
        return False
    reason = photon_kernels.triton_unavailable_reason(torch.device(device_type))
    if backend == "auto":
        return device_type == "cuda" and reason is None
    if reason is not None:
        raise RuntimeError(f"kernel_backend='triton' cannot run here: {reason}. Use kernel_backend='auto' or 'torch'.")
    return True


def _in_common_dtype(fn, autocast: torch.dtype | None, q, k, v, *args):
    """Call a kernel on q, k, v cast to one dtype: autocast's when it is on, else their promoted dtype. (Under
    autocast, RoPE in float32 and a bfloat16 projection give mixed q, k, v.)"""
    dtype = autocast or torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return fn(q.to(dtype), k.to(dtype), v.to(dtype), *args)


def _decode_kernel(q, keys, values, start, end, rows=None):
    """`cached_attention` through the Triton decode kernel, which reads the cache in place (its rows by index)."""
    return photon_kernels.decode_attention(q.to(keys.dtype), keys, values, start, end, rows)
