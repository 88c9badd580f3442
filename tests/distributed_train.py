"""Worker for test_distributed.py: data-parallel PHOTON training on CPU processes (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_train.py OUT          # DDP, then FSDP2
    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_train.py OUT --deepspeed CONFIG  # ZeRO
    python tests/distributed_train.py OUT                                            # the one-process reference

1. The stock Trainer trains a tiny PHOTON for 3 SGD steps on 4 blocks with uneven label counts: 2 processes x 2
   blocks (DDP, or DeepSpeed with `--deepspeed`), or 1 process x 4 blocks. Each process gathers the whole final
   weights and saves them to OUT/{TAG}-rank{RANK}-of-{WORLD}.pt (TAG: "single", "ddp", "zero3", ...), and the
   Trainer saves the model to OUT/{TAG}-model (the test reloads it: not here, where a ZeRO-3 `from_pretrained` would
   wait for the other processes).
2. (two processes, no --deepspeed) FSDP2 the CPU way, `photon_hf.training.fully_shard_model` (one unit per
   PhotonBlock) and a plain loop: the same 3 SGD steps with the Trainer's gradient clipping, compared with one
   process with the whole batch (computed here, unsharded). Every rank saves its gathered weights to
   OUT/fsdp2-rank{RANK}-of-2.pt and a report (wrapped units, largest difference) to OUT/fsdp2-rank{RANK}.json;
   rank 0 saves the model to OUT/fsdp2-model.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, default_data_collator

import photon_hf
from photon_hf.data import byte_tokenizer
from photon_hf.training import full_state_dict, fully_shard_model, model_config, training_arguments

STEPS, LEARNING_RATE, MAX_GRAD_NORM = 3, 0.1, 1.0


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


def gathered_weights(trainer) -> dict:
    """The whole weights, in every process (ZeRO-3 partitions them: gather first)."""
    model = trainer.model
    if trainer.is_deepspeed_enabled:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trainer_run(out: Path, world: int, tag: str, deepspeed: str | None):
    ids, labels = blocks()
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    model = fresh_model()
    args = training_arguments(
        str(out / "trainer"), per_device_train_batch_size=4 // world, max_steps=STEPS, optim="sgd",
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM, eval_strategy="no", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=0, deepspeed=deepspeed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    assert args.world_size == world, (args.world_size, world)
    assert trainer.is_deepspeed_enabled == (deepspeed is not None)
    trainer.train()
    rank = args.process_index
    weights = gathered_weights(trainer)
    torch.save(weights, out / f"{tag}-rank{rank}-of-{world}.pt")
    trainer.save_model(str(out / f"{tag}-model"))


def fsdp2_run(out: Path):
    rank, world = dist.get_rank(), dist.get_world_size()
    ids, labels = blocks()
    total = int((labels[:, 1:] != -100).sum())

    reference = fresh_model()
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        reference(ids, labels=labels, num_items_in_batch=total).loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), MAX_GRAD_NORM)
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    model = fully_shard_model(fresh_model())
    units = [type(m).__name__ for m in model.modules() if m is not model and hasattr(m, "reshard")]
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    mine = slice(rank * 4 // world, (rank + 1) * 4 // world)
    for _ in range(STEPS):
        # FSDP averages gradients over ranks: scale the per-rank sum so that the average is the global mean.
        loss = model(ids[mine], labels=labels[mine], num_items_in_batch=total).loss * world
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)  # the Trainer's clipping, across shards
        optimizer.step()
        optimizer.zero_grad()
    weights = full_state_dict(model)
    torch.save(weights, out / f"fsdp2-rank{rank}-of-{world}.pt")
    expected = reference.state_dict()
    report = {
        "units": units,
        "max_difference": max((weights[k] - expected[k]).abs().max().item() for k in expected),
    }
    if rank == 0:
        unsharded = photon_hf.PhotonForCausalLM(reference.config)
        unsharded.load_state_dict(weights)
        unsharded.save_pretrained(out / "fsdp2-model")
    (out / f"fsdp2-rank{rank}.json").write_text(json.dumps(report))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--deepspeed", help="a DeepSpeed config (examples/accelerate/deepspeed_zero3.json)")
    cli = parser.parse_args()
    cli.out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = "single" if world == 1 else Path(cli.deepspeed).stem.removeprefix("deepspeed_") if cli.deepspeed else "ddp"
    trainer_run(cli.out, world, tag, cli.deepspeed)
    if world > 1:
        if not cli.deepspeed:
            fsdp2_run(cli.out)
        dist.barrier()
        dist.destroy_process_group()
        # Everything is written. Leave without the interpreter's teardown: on a loaded machine a gloo worker thread
        # still being destroyed there can abort the process ("terminate called without an active exception").
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
