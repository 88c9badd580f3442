"""PHOTON as a vLLM model (Stage A): photon_hf's own `PhotonModel` and LM head, each request's state in one vLLM
state block (`PhotonState`).

vLLM schedules one flat batch of tokens a step: new requests (or ones preempted and recomputed), prompts continued
chunk by chunk (chunked prefill), and one token per decoding request. `PhotonVllmForCausalLM.forward` hands the
whole batch to `PhotonModel.extend` over a `PhotonCache` view of the state blocks, keyed by the requests' state
indices: every decoding request (whatever its phase in the meta-chunk) shares one `decode_column`, and a prompt or
a continued chunk runs at the cost of a prefill. Only each request's last token gets a state: it is the one vLLM
samples from.

With tensor parallelism (`--tensor-parallel-size`), every stack's blocks split their heads and MLP width over the
ranks, as vLLM's Llama does (`split_blocks`), and each rank's state blocks hold its share of the key/value heads.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm import _custom_ops as vllm_ops
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsAttentionFree
from vllm.model_executor.models.utils import maybe_prefix
from vllm.platforms import current_platform

from ..attention_photon import photon_ops
from ..modeling_photon import PhotonAttention, PhotonMLP, PhotonModel
from .backend import PhotonStateMetadata
from .state import PhotonState


class PackedLinear(nn.Module):
    """A `nn.Linear` whose weight oneDNN packed once, for a CPU in half precision: vLLM's `onednn_mm`, the GEMM its
    own linear layers use there. `F.linear` runs the same oneDNN matmul but packs the weight again at every call
    (`bench.vllm.packed_linear`: 25-60 us more per product at 1 to 32 rows on an AMX Xeon), so the result is
    bit-equal and a decode step's small products cost a half to a third. The unpacked weight stays only where
    another module shares it (a tied LM head)."""

    def __init__(self, linear: nn.Linear, keep_weight: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.handler = vllm_ops.create_onednn_mm(linear.weight.detach().t(), 32)
        self.weight = linear.weight if keep_weight else None
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vllm_ops.onednn_mm(self.handler, x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packs_weights(dtype: torch.dtype) -> bool:
    """Whether `PackedLinear` serves this platform and dtype (vLLM's CPU build with oneDNN; fp32 keeps `F.linear`,
    whose MKL product rounds differently from oneDNN's)."""
    return current_platform.is_cpu() and dtype in (torch.bfloat16, torch.float16) and vllm_ops._supports_onednn


def split_blocks(model: PhotonModel, prefix: str = "model") -> None:
    """Tensor parallelism, in place: in every block of every stack (encoders and local decoders at each level), the
    attention keeps this rank's share of the query and key/value heads (`q_proj`, `k_proj`, `v_proj` column-parallel)
    and `o_proj` sums the ranks' shares (row-parallel, all-reduced); in the MLP, `gate_proj` and `up_proj` are
    column-parallel and `down_proj` row-parallel. Parameter names do not change, and each parallel weight loads its
    rank's slice of the checkpoint tensor. Embeddings, chunkers, converters, norms and the LM head are replicated:
    every rank holds them whole."""
    ranks = get_tensor_model_parallel_world_size()
    for name, module in model.named_modules(prefix=prefix):
        if isinstance(module, PhotonAttention):
            module.num_heads //= ranks
            module.num_kv_heads //= ranks
            columns, rows = ("q_proj", "k_proj", "v_proj"), ("o_proj",)
        elif isinstance(module, PhotonMLP):
            columns, rows = ("gate_proj", "up_proj"), ("down_proj",)
        else:
            continue
        for child in columns + rows:
            linear = getattr(module, child)
            parallel = ColumnParallelLinear if child in columns else RowParallelLinear
            setattr(module, child, parallel(linear.in_features, linear.out_features, bias=False, return_bias=False,
                                            prefix=f"{name}.{child}"))


class PhotonVllmForCausalLM(nn.Module, HasInnerState, IsAttentionFree):
    """`PhotonForCausalLM` for vLLM: the same modules and parameter names (`model.*`, `lm_head.weight`), so a
    checkpoint loads name for name."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = PhotonModel(config)
        tensor_parallel_size = vllm_config.parallel_config.tensor_parallel_size
        if tensor_parallel_size > 1:
            split_blocks(self.model, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.state = PhotonState(config, vllm_config.model_config.max_model_len, vllm_config.model_config.dtype,
                                 vllm_config.compilation_config, tensor_parallel_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "PHOTON takes token ids only: its encoder and its token decoder embed them with two different tables."
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """input_ids: [N] the step's tokens, request after request -> [N, D], the state that predicts the next
        token at each request's last token (other positions are not computed: zeros)."""
        if inputs_embeds is not None:
            self.embed_input_ids(input_ids)
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, dict):
            metadata = metadata.get(self.state.prefix)
        if metadata is None:  # vLLM's profiling run: a prefill of the batch's tokens, for its activation memory
            return self.model(input_ids[None], use_cache=False).last_hidden_state[0]
        assert isinstance(metadata, PhotonStateMetadata)
        lengths = metadata.query_lengths
        if not lengths:
            return self.model.embed_dec(input_ids).zero_()
        # Each request's tokens as a row of [R, T] (padded with its last token).
        starts = metadata.query_start_loc[:-1, None]
        source = (starts + torch.arange(max(lengths), device=input_ids.device)).clamp(max=metadata.last_tokens[:, None])
        tokens = input_ids[source]
        ops = photon_ops(self.config, input_ids.device, self.model.embed_dec.weight.dtype)
        states = self.model.extend(self.state.cache(), metadata.state_indices, metadata.computed, tokens, lengths, ops)
        hidden = states.new_zeros(input_ids.shape[0], states.shape[1])
        hidden[metadata.last_tokens] = states
        return hidden

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy a `PhotonForCausalLM` checkpoint's tensors name for name (a parallel layer's weight takes its rank's
        slice); a tied head shares the decoder embedding."""
        parameters = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in parameters:
                raise KeyError(f"The checkpoint has a tensor {name!r} that PHOTON's vLLM model does not.")
            parameter = parameters[name]
            getattr(parameter, "weight_loader", default_weight_loader)(parameter, tensor)
            loaded.add(name)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_dec.weight
            loaded.add("lm_head.weight")
        return loaded

    def process_weights_after_loading(self) -> None:
        """vLLM's hook once the weights are in: on a CPU in half precision, every linear layer becomes a
        `PackedLinear` (bit-equal, packed once)."""
        if not packs_weights(self.lm_head.weight.dtype):
            return
        shared = self.model.embed_dec.weight
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, PackedLinear(child, keep_weight=child.weight is shared))
