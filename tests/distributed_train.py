"""Worker for test_distributed.py: data-parallel PHOTON training on CPU processes (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_train.py OUT   # two processes
    python tests/distributed_train.py OUT                                              # the one-process reference

1. The stock Trainer trains a tiny PHOTON for 3 SGD steps on 4 blocks with uneven label counts: 2 processes x 2
   blocks, or 1 process x 4 blocks. Each process saves its final weights to OUT/trainer-rank{RANK}-of-{WORLD}.pt.
2. (two processes only) FSDP2 with accelerate's transformer auto-wrap policy, which reads the model's
   `_no_split_modules`: one SGD step, compared with the same step on an unsharded model. Writes
   OUT/fsdp-rank{RANK}.json.
"""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, default_data_collator

import photon_hf
from photon_hf.data import byte_tokenizer
from photon_hf.training import model_config, training_arguments


def blocks():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 259, (4, 48), generator=generator)
    labels = ids.clone()
    labels[0, :30] = -100
    labels[2, 10:14] = -100
    return ids, labels


def fresh_model():
    torch.manual_seed(0)
    return photon_hf.PhotonForCausalLM(model_config("tiny", byte_tokenizer()))


def trainer_run(out: Path, world: int):
    ids, labels = blocks()
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    model = fresh_model()
    args = training_arguments(
        str(out / "trainer"), per_device_train_batch_size=4 // world, max_steps=3, optim="sgd", learning_rate=0.1,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, eval_strategy="no", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    assert args.world_size == world, (args.world_size, world)
    trainer.train()
    rank = args.process_index
    torch.save(model.state_dict(), out / f"trainer-rank{rank}-of-{world}.pt")


def fsdp_run(out: Path):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    rank, world = dist.get_rank(), dist.get_world_size()
    ids, labels = blocks()
    total = int((labels[:, 1:] != -100).sum())

    reference = fresh_model()
    reference(ids, labels=labels, num_items_in_batch=total).loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad

    model = fresh_model()
    policy = fsdp2_prepare_auto_wrap_policy(
        SimpleNamespace(auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=None), model
    )
    mesh = init_device_mesh("cpu", (world,))
    wrapped = []
    for name, module in reversed(list(model.named_modules())):  # children before parents, like accelerate
        if name and policy(module):
            fully_shard(module, mesh=mesh)
            wrapped.append(type(module).__name__)
    fully_shard(model, mesh=mesh)
    mine = slice(rank * 4 // world, (rank + 1) * 4 // world)
    # FSDP averages gradients over ranks: scale the per-rank sum so the average is the global mean.
    loss = model(ids[mine], labels=labels[mine], num_items_in_batch=total).loss * world
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    expected = reference.state_dict()
    difference = max((full[k] - expected[k]).abs().max().item() for k in expected)
    report = {"wrapped": sorted(set(wrapped)), "units": len(wrapped), "max_difference": difference}
    (out / f"fsdp-rank{rank}.json").write_text(json.dumps(report))


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    trainer_run(out, world)
    if world > 1:
        fsdp_run(out)
        dist.barrier()
        dist.destroy_process_group()
        # Everything is written. Leave without the interpreter's teardown: on a loaded machine a gloo worker thread
        # still being destroyed there can abort the process ("terminate called without an active exception").
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
