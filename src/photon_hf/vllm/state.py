"""`PhotonState`: the layer that holds every PHOTON state of a request in one vLLM state block (`MambaSpec`), as a
Mamba mixer holds its conv and SSM states (`model_executor/layers/mamba/abstract.py`).

A block is one row of a static `PhotonCache` sized for `max_model_len` (`PhotonCache.state_layout`): the encoder KV
of every level (the top one's for `max_model_len // P_L` units, windowed ones as rings), the local decoders' KV, the
unfinished units' sub-units, the "self" decoders' predictions and the row's token count; its bytes are
`photon_hf.kv_cache_bytes(config, max_model_len)`. The model reads and writes the blocks in place through a
`PhotonCache` view over them (`PhotonCache.over_states`), keyed by the requests' state indices.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from ..cache_photon import PhotonCache
from ..configuration_photon import PhotonConfig
from . import STATE_BACKEND


def state_layout(config: PhotonConfig, max_model_len: int, dtype: torch.dtype,
                 tensor_parallel_size: int = 1) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """A request's states on one tensor-parallel rank (its share of the key/value heads) as (name, shape, dtype),
    larger elements first: in vLLM's byte page every state then starts at a multiple of its element size (the page
    size is kept a multiple of 8, `state_page_bytes`)."""
    kv_heads = config.num_key_value_heads // tensor_parallel_size
    layout = PhotonCache.state_layout(config, max_model_len, dtype, kv_heads)
    return sorted(layout, key=lambda entry: -entry[2].itemsize)  # stable: the cache's order within a size


def state_page_bytes(config: PhotonConfig, max_model_len: int, dtype: torch.dtype,
                     tensor_parallel_size: int = 1) -> tuple[int, int]:
    """(bytes of a request's states on one rank, the page that holds them: rounded up to a multiple of 8)."""
    layout = state_layout(config, max_model_len, dtype, tensor_parallel_size)
    content = sum(torch.Size(shape).numel() * item.itemsize for _, shape, item in layout)
    return content, content + (-content % 8)


class PhotonState(nn.Module, MambaBase):
    """Every PHOTON state of a request, in one vLLM state block (see the module docstring)."""

    def __init__(self, config: PhotonConfig, max_model_len: int, dtype: torch.dtype, compilation_config,
                 tensor_parallel_size: int = 1, prefix: str = "photon_state.0"):
        super().__init__()
        self.config, self.max_model_len, self.dtype = config, max_model_len, dtype
        self.tensor_parallel_size = tensor_parallel_size
        self.layout = state_layout(config, max_model_len, dtype, tensor_parallel_size)
        self.prefix = prefix
        forward_context = compilation_config.static_forward_context
        if prefix in forward_context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        forward_context[prefix] = self  # where vLLM collects the layers whose state it allocates
        self.kv_cache = tuple(torch.tensor([]) for _ in self.layout)  # bound by vLLM (`bind_kv_cache`)
        self._view: tuple[tuple[torch.Tensor, ...], PhotonCache] | None = None

    @property
    def kv_heads(self) -> int:
        """The key/value heads this rank's blocks keep."""
        return self.config.num_key_value_heads // self.tensor_parallel_size

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum[STATE_BACKEND]

    def get_state_shape(self) -> list[tuple[int, ...]]:
        return [shape for _, shape, _ in self.layout]

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return tuple(dtype for _, _, dtype in self.layout)

    def cache(self) -> PhotonCache:
        """The `PhotonCache` view over the blocks vLLM bound (made once per binding)."""
        if self._view is None or self._view[0] is not self.kv_cache:
            states = {name: tensor for (name, _, _), tensor in zip(self.layout, self.kv_cache, strict=True)}
            self._view = (self.kv_cache, PhotonCache.over_states(self.config, self.max_model_len, states,
                                                                     self.kv_heads))
        return self._view[1]

    def extra_repr(self) -> str:
        content, page = state_page_bytes(self.config, self.max_model_len, self.dtype, self.tensor_parallel_size)
        return (f"max_model_len={self.max_model_len}, kv_heads={self.kv_heads}, states={len(self.layout)}, "
                f"bytes={content}, page={page}")
