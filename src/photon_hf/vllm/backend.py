"""PHOTON's state backend: the metadata vLLM builds once a step for the PHOTON state layer, as its Mamba and linear
attention backends do (`v1/attention/backends/linear_attn.py`), in plain PyTorch (CPU and GPU alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.utils import mamba_get_block_table_tensor
from vllm.v1.kv_cache_interface import MambaSpec


class PhotonStateBackend(AttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "PHOTON_STATE"

    @staticmethod
    def get_builder_cls() -> type[PhotonStateMetadataBuilder]:
        return PhotonStateMetadataBuilder

    @classmethod
    def is_ssm(cls) -> bool:
        return True


@dataclass
class PhotonStateMetadata:
    """One step's requests, in the order of the flattened token batch.

    `state_indices`: [R] each request's state block (device); `computed`: tokens each request's state already holds
    (host ints: 0 for a new or recomputed request); `query_lengths`: tokens each request takes this step (host ints);
    `query_start_loc`: [R + 1] where each request's tokens start in the batch (device), and `last_tokens` [R] where
    they end (the positions vLLM samples from).
    """

    state_indices: torch.Tensor
    computed: list[int]
    query_lengths: list[int]
    query_start_loc: torch.Tensor
    last_tokens: torch.Tensor


class PhotonStateMetadataBuilder(AttentionMetadataBuilder[PhotonStateMetadata]):
    """Turns vLLM's common metadata into `PhotonStateMetadata`. PHOTON takes requests in any order and at any phase,
    so the batch is not reordered; the host-side counts come from the scheduler's own (no device sync on a GPU)."""

    kv_cache_spec: MambaSpec
    reorder_batch_threshold = None
    _cudagraph_support = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec: MambaSpec, layer_names: list[str], vllm_config, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> PhotonStateMetadata:
        metadata = common_attn_metadata
        requests = metadata.num_reqs
        starts = metadata.query_start_loc_cpu[: requests + 1].tolist()
        seq_lens = metadata.seq_lens_cpu_upper_bound  # exact without speculative decoding, which PHOTON refuses
        seq_lens = (metadata.seq_lens if seq_lens is None else seq_lens)[:requests].tolist()
        query_lengths = [end - start for start, end in zip(starts[:-1], starts[1:], strict=True)]
        state_indices = mamba_get_block_table_tensor(
            metadata.block_table_tensor, metadata.seq_lens, self.kv_cache_spec,
            self.vllm_config.cache_config.mamba_cache_mode,
        )[:requests, 0]
        query_start_loc = metadata.query_start_loc[: requests + 1]
        return PhotonStateMetadata(
            state_indices=state_indices.to(torch.long),
            computed=[seq - query for seq, query in zip(seq_lens, query_lengths, strict=True)],
            query_lengths=query_lengths,
            query_start_loc=query_start_loc,
            last_tokens=query_start_loc[1:] - 1,
        )
