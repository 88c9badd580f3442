"""Pretrain PHOTON with the stock transformers Trainer (every TrainingArguments flag works).

One process (the Python standard library's source as data, no download):

    python examples/pretrain.py --output_dir runs/pretrain --max_steps 2000 --per_device_train_batch_size 16

Your own text (a .txt/.jsonl file, a folder, a glob, or a Hub dataset name) and a bigger shape:

    python examples/pretrain.py --output_dir runs/wiki --dataset wikitext --dataset_config wikitext-2-raw-v1 \
        --size base --block_size 512 --bf16 true

Several processes or GPUs (DDP), FSDP or DeepSpeed: start the same script with a launcher, e.g.

    torchrun --nproc_per_node 8 examples/pretrain.py --output_dir runs/ddp ...
    accelerate launch --config_file examples/accelerate/fsdp2.yaml examples/pretrain.py --output_dir runs/fsdp ...
    torchrun --nproc_per_node 8 examples/pretrain.py --deepspeed examples/accelerate/deepspeed_zero2.json ...
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from photon_hf import PHOTON_PRESETS, PhotonForCausalLM
from photon_hf.data import load_text_corpus, load_tokenizer, pack_dataset
from photon_hf.training import accelerator_available, build_trainer, model_config


@dataclass
class DataArguments:
    dataset: str = field(default="stdlib", metadata={"help": "'stdlib', local text files, or a Hub dataset name"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration"})
    text_column: str = field(default="text")
    tokenizer: str = field(default="bytes", metadata={"help": "'bytes' or an AutoTokenizer name/folder"})
    block_size: int = field(default=256, metadata={"help": "tokens per training block"})
    max_files: int | None = field(default=None, metadata={"help": "stdlib only: first N files per split"})
    max_eval_blocks: int = field(default=128, metadata={"help": "validation blocks per evaluation"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for tokenization"})


@dataclass
class ModelArguments:
    size: str = field(default="small", metadata={"help": f"a photon_hf.PHOTON_PRESETS shape: {list(PHOTON_PRESETS)}"})


def main():
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainingArguments))
    data_args, model_args, training_args = parser.parse_args_into_dataclasses()
    if not accelerator_available() and not training_args.use_cpu:
        training_args.use_cpu = True  # lets torchrun / accelerate launch run CPU processes as one DDP job (gloo)

    tokenizer = load_tokenizer(data_args.tokenizer)
    with training_args.main_process_first(desc="preparing the dataset"):
        corpus = load_text_corpus(data_args.dataset, name=data_args.dataset_config, text_column=data_args.text_column,
                                  max_files=data_args.max_files, num_proc=data_args.num_proc)
        packed = {
            split: pack_dataset(corpus[split], tokenizer, data_args.block_size, text_column=data_args.text_column,
                                num_proc=data_args.num_proc,
                                max_blocks=data_args.max_eval_blocks if split == "validation" else None)
            for split in ("train", "validation")
        }

    torch.manual_seed(training_args.seed)
    config = model_config(model_args.size, tokenizer, max_position_embeddings=max(2048, data_args.block_size))
    model = PhotonForCausalLM(config)
    if training_args.process_index == 0:
        print(f"PHOTON '{model_args.size}': {model.num_parameters():,} parameters, "
              f"{len(packed['train']):,} training blocks of {data_args.block_size} tokens")

    trainer = build_trainer(model, training_args, packed["train"], packed["validation"], tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_model()  # model + tokenizer in Hugging Face format, in --output_dir
    if trainer.is_world_process_zero():
        print(f"validation loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}")


if __name__ == "__main__":
    main()
