"""Activation memory of a PHOTON training step: the bytes autograd keeps for the backward pass, per token.

One forward with labels of `--batch` x `--tokens` tokens on the CPU, with and without gradient checkpointing, in
fp32 and under bf16 autocast; every tensor autograd saves (`torch.autograd.graph.saved_tensors_hooks`) is counted
once by its storage, leaving out the model's own weights (and, under autocast, their bf16 copies, which the
autocast cache holds once per step whatever the batch). What this counts grows with batch x tokens; the peak of a
step adds the transient buffers of the largest operation and, in the backward pass, the gradients.

    python -m bench.training.activation_memory --size photon-600m --tokens 512
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from photon_hf import PHOTON_PRESETS, PhotonForCausalLM, photon_preset

RESULTS = Path(__file__).resolve().parent / "results"


def saved_bytes(model, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves in one forward with labels, weights and their copies left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(sorted(p.shape)) for p in model.parameters()}  # a copy may be saved transposed
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        is_weight_copy = autocast and tensor.dtype == torch.bfloat16 and tuple(sorted(tensor.shape)) in weight_shapes
        if storage.data_ptr() not in weights and not is_weight_copy:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), cast:
        model(ids, labels=ids)
    return sum(storages.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="photon-600m", choices=list(PHOTON_PRESETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = photon_preset(args.size, max_position_embeddings=max(2048, args.tokens))
    model = PhotonForCausalLM(config).train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.tokens))
    tokens = args.batch * args.tokens
    record = {"size": args.size, "batch": args.batch, "tokens": args.tokens, "bytes_per_token": {}}
    for checkpointing in (False, True):
        if checkpointing:  # transformers 5.24 renamed it
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        for autocast in (False, True):
            name = f"{'bf16 autocast' if autocast else 'fp32'}{', gradient checkpointing' if checkpointing else ''}"
            per_token = saved_bytes(model, ids, autocast) / tokens
            record["bytes_per_token"][name] = per_token
            print(f"{args.size} {name}: {per_token / 2**10:.0f} KiB per token "
                  f"({per_token * 8 * 2048 / 2**30:.2f} GiB for 8 x 2048 tokens)", flush=True)
    output = args.output or RESULTS / f"activation-memory-{args.size}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
