"""The ops the model can route to a kernel, and where the model's `kernel_backend="auto"` keeps PyTorch instead.

Which function an op runs for a given config, device and mode is decided by the model (`photon_hf`'s
`attention_photon.photon_ops`); this module holds what is known about the kernels themselves.
"""

from __future__ import annotations

# The ops the model can route to a kernel (see docs/kernels.md).
OPS = (
    "chunk_compress",  # the level >= 1 chunker: RMSNorm + Linear (or the norm alone behind a LoRA projection)
    "chunk_local_attention",  # every local decoder's windows, training and prefill
    "latent_attention",  # the context encoders with a sliding window (`encoder_windows`)
    "latent_attention_full",  # the context encoders without a window (full causal)
    "decode_attention",  # one query per row over a cache, in generation steps
)

# Where "auto" keeps the PyTorch path although Triton could run, by measurement (bench/kernels/bench_kernels.py on an
# H200, docs/kernels.md): full causal attention over the encoders stays on SDPA's FlashAttention (the Triton kernel is
# 0.64-0.74x in forward+backward), and the chunker stays RMSNorm + cuBLAS (the fused kernel is 0.39x).
AUTO_PREFERS_TORCH = frozenset({"latent_attention_full", "chunk_compress"})
