"""Pretrain PHOTON with FSDP2 in a plain PyTorch loop: the route that shards on CPU processes too.

accelerate's FSDP plugin (`accelerate launch --config_file examples/accelerate/fsdp2.yaml ...`, the Trainer's route)
needs GPUs: on CPU processes it falls back to plain DDP without a word. This script shards the model itself with
`photon_hf.training.fully_shard_model` (FSDP2, one unit per PhotonBlock) and works on CPU processes (gloo) and GPUs
(NCCL, one per process) alike. Data is streamed (`photon_hf.data.training_stream`): each process packs its own share.

    torchrun --nproc_per_node 2 examples/pretrain_fsdp2.py --output_dir runs/fsdp2 --dataset corpus/ --max_steps 1000

The model is saved whole by process 0 (`save_pretrained`, with the tokenizer): AutoModelForCausalLM loads it.
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
from transformers import get_cosine_schedule_with_warmup, set_seed

from photon_hf import PHOTON_PRESETS, PhotonForCausalLM
from photon_hf.data import byte_tokenizer, first_blocks, load_text_corpus, pack_dataset, training_stream
from photon_hf.training import default_learning_rate, full_state_dict, fully_shard_model, model_config


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset", default="stdlib", help="'stdlib', local text files, or a Hub dataset name")
    parser.add_argument("--size", default="small", choices=list(PHOTON_PRESETS))
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16, help="blocks per process and step")
    parser.add_argument("--max_steps", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: default_learning_rate(config)")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--eval_blocks", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="compute in bf16, reduce gradients in fp32 (GPUs)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    if device is not None:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device is not None else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = device or torch.device("cpu")

    tokenizer = byte_tokenizer()
    blocks = pack_dataset(load_text_corpus(args.dataset, streaming=True), tokenizer, args.block_size)
    train = training_stream(blocks["train"], seed=args.seed, rank=rank, world_size=world)
    validation = first_blocks(blocks["validation"], args.eval_blocks)

    set_seed(args.seed)  # every process builds the same model; each keeps its shard
    config = model_config(args.size, tokenizer, max_position_embeddings=max(2048, args.block_size))
    model = PhotonForCausalLM(config).to(device)
    fsdp = {}
    if args.bf16:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        fsdp["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fully_shard_model(model, **fsdp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate or default_learning_rate(config),
                                  betas=(0.9, 0.95), weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)

    loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=args.batch_size)
    model.train()
    for step, batch in zip(range(1, args.max_steps + 1), loader, strict=False):
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        # The loss is a sum over this process's labels divided by the label count of all processes; FSDP averages
        # the gradients over the processes, so scale by their number to get the gradient of the global mean.
        count = torch.tensor(float((labels[:, 1:] != -100).sum()), device=device)
        dist.all_reduce(count)
        loss = model(ids, labels=labels, num_items_in_batch=count).loss * world
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if rank == 0 and (step % 10 == 0 or step == args.max_steps):
            print(f"step {step}: loss {loss.item() / world:.4f}", flush=True)

    model.eval()
    ids = torch.tensor(validation["input_ids"], device=device)
    with torch.no_grad():  # every process evaluates the same blocks (FSDP needs all of them in each forward)
        loss = model(ids, labels=ids).loss.item()
    weights = full_state_dict(model)  # gathers the shards: every process takes part
    if rank == 0:
        print(f"validation loss {loss:.4f}, perplexity {math.exp(loss):.2f}")
        whole = PhotonForCausalLM(config)
        whole.load_state_dict(weights)
        whole.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
