"""Triton kernels for PHOTON, each beside the PyTorch reference it must equal (installed as `photon_kernels`).

- `chunk_compress` / `rms_norm`: the level >= 1 chunker, RMSNorm + Linear fused (or the norm alone when the
  projection is wrapped, e.g. by LoRA); references `chunk_compress_ref` / `rms_norm_ref`.
- `chunk_local_attention`: causal attention inside many short windows (the local decoders); reference
  `chunk_local_attention_ref`.
- `latent_attention`: causal attention over a unit sequence, optionally windowed (the context encoders);
  reference `latent_attention_ref`.
- `decode_attention`: one query per row over a KV cache with per-row key ranges (generation); reference
  `decode_attention_ref`.
- `OPS` / `AUTO_PREFERS_TORCH`: the ops the model can route to a kernel, and those its `kernel_backend="auto"`
  keeps on PyTorch by measurement (the model resolves `kernel_backend` itself, in `photon_hf.attention_photon`).

Triton is optional: without it this package still imports, the references work, and the kernels raise a clear
RuntimeError. On CPU the kernels run in Triton's interpreter when TRITON_INTERPRET=1 is set before import.
"""

from ._utils import HAS_TRITON, interpreting, poison_outputs, triton_unavailable_reason
from .backend import AUTO_PREFERS_TORCH, OPS
from .chunk_compress import MAX_NORM_WIDTH, chunk_compress, chunk_compress_ref, rms_norm, rms_norm_ref
from .chunk_local_attention import chunk_local_attention, chunk_local_attention_ref
from .decode_attention import decode_attention, decode_attention_ref
from .latent_attention import latent_attention, latent_attention_ref

__all__ = [
    "AUTO_PREFERS_TORCH",
    "HAS_TRITON",
    "MAX_NORM_WIDTH",
    "OPS",
    "chunk_compress",
    "chunk_compress_ref",
    "chunk_local_attention",
    "chunk_local_attention_ref",
    "decode_attention",
    "decode_attention_ref",
    "interpreting",
    "latent_attention",
    "latent_attention_ref",
    "poison_outputs",
    "rms_norm",
    "rms_norm_ref",
    "triton_unavailable_reason",
]
