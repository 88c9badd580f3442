"""Which path runs: the `kernel_backend` config field ("auto", "torch", "triton") resolved for a device and an op."""

from __future__ import annotations

import functools

import torch

from ._utils import triton_unavailable_reason

KERNEL_BACKENDS = ("auto", "torch", "triton")

# The ops the model can route to a kernel (see docs/kernels.md).
OPS = (
    "chunk_compress",  # the level >= 1 chunker: RMSNorm + Linear (or the norm alone behind a LoRA projection)
    "chunk_local_attention",  # every local decoder's windows, training and prefill
    "latent_attention",  # the context encoders with a sliding window (`encoder_windows`)
    "latent_attention_full",  # the context encoders without a window (full causal)
    "decode_attention",  # one query per row over a cache, in generation steps
)

# Where "auto" keeps the PyTorch path although Triton could run, by measurement (bench/bench_kernels.py on an H200,
# docs/kernels.md): full causal attention over the encoders stays on SDPA's FlashAttention (the Triton kernel is
# 0.64-0.74x in forward+backward), and the chunker stays RMSNorm + cuBLAS (the fused kernel is 0.39x).
AUTO_PREFERS_TORCH = frozenset({"latent_attention_full", "chunk_compress"})


@functools.cache
def _resolve(kernel_backend: str, device_type: str) -> str:
    if kernel_backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {kernel_backend!r}")
    if kernel_backend == "torch":
        return "torch"
    reason = triton_unavailable_reason(torch.device(device_type))
    if kernel_backend == "auto":
        return "triton" if device_type == "cuda" and reason is None else "torch"
    if reason is not None:
        raise RuntimeError(f"kernel_backend='triton' cannot run here: {reason}. Use kernel_backend='auto' or 'torch'.")
    return "triton"


def resolve_backend(kernel_backend: str, device: torch.device | str) -> str:
    """"torch" or "triton" for tensors on `device`.

    "torch" is the PyTorch reference path; "auto" is Triton on CUDA when Triton is installed, else PyTorch;
    "triton" is Triton wherever it can run (CUDA, or CPU under TRITON_INTERPRET=1) and a RuntimeError that says
    why elsewhere.
    """
    return _resolve(kernel_backend, torch.device(device).type)


def use_triton(kernel_backend: str, device: torch.device | str, op: str) -> bool:
    """Whether `op` runs its Triton kernel: always under "triton", by the measured choice under "auto"."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if resolve_backend(kernel_backend, device) == "torch":
        return False
    return kernel_backend == "triton" or op not in AUTO_PREFERS_TORCH
