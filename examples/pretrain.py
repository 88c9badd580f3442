"""Pretrain PHOTON with the stock transformers Trainer (every TrainingArguments flag works).

One process (the Python standard library's source as data, no download):

    python examples/pretrain.py --output_dir runs/pretrain --max_steps 2000 --per_device_train_batch_size 16

Your own text (a .txt/.jsonl file, a folder, a glob, or a Hub dataset name) and a bigger shape:

    python examples/pretrain.py --output_dir runs/wiki --dataset wikitext --dataset_config wikitext-2-raw-v1 \
        --size base --block_size 512 --bf16 true

A corpus larger than memory: --streaming packs it on the fly (--max_steps is then required):

    python examples/pretrain.py --output_dir runs/big --dataset corpus/ --streaming --max_steps 20000

Several processes or GPUs (DDP), FSDP or DeepSpeed: start the same script with a launcher (docs/training.md), e.g.

    torchrun --nproc_per_node 8 examples/pretrain.py --output_dir runs/ddp ...
    accelerate launch --config_file examples/accelerate/fsdp2.yaml examples/pretrain.py --output_dir runs/fsdp ...
    torchrun --nproc_per_node 8 examples/pretrain.py --deepspeed examples/accelerate/deepspeed_zero2.json ...
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments, set_seed

from photon_hf import PHOTON_PRESETS, PhotonForCausalLM
from photon_hf.data import first_blocks, load_text_corpus, load_tokenizer, pack_dataset, training_stream
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
    streaming: bool = field(default=False, metadata={"help": "pack the dataset on the fly (needs --max_steps)"})
    shuffle_buffer: int = field(default=1000, metadata={"help": "with --streaming: blocks in the shuffle buffer"})


@dataclass
class ModelArguments:
    size: str = field(default="small", metadata={"help": f"a photon_hf.PHOTON_PRESETS shape: {list(PHOTON_PRESETS)}"})


def main():
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainingArguments))
    # Without a GPU, `use_cpu` must be on when TrainingArguments sets up its processes (when it is built): only then
    # do the CPU processes of torchrun / accelerate launch / DeepSpeed form one data-parallel job (gloo).
    parser.set_defaults(use_cpu=not accelerator_available())
    data_args, model_args, training_args = parser.parse_args_into_dataclasses()
    if data_args.streaming and training_args.max_steps <= 0:
        parser.error("--streaming needs --max_steps: a stream has no length to count epochs by.")

    tokenizer = load_tokenizer(data_args.tokenizer)
    source = dict(name=data_args.dataset_config, text_column=data_args.text_column, max_files=data_args.max_files)
    if data_args.streaming:  # nothing is read ahead: each process packs its own share as it trains
        blocks = pack_dataset(load_text_corpus(data_args.dataset, streaming=True, **source), tokenizer,
                              data_args.block_size, text_column=data_args.text_column)
        train = training_stream(blocks["train"], seed=training_args.seed, shuffle_buffer=data_args.shuffle_buffer,
                                rank=training_args.process_index, world_size=training_args.world_size)
        validation = first_blocks(blocks["validation"], data_args.max_eval_blocks)
    else:
        with training_args.main_process_first(desc="preparing the dataset"):
            corpus = load_text_corpus(data_args.dataset, num_proc=data_args.num_proc, **source)
            pack = dict(text_column=data_args.text_column, num_proc=data_args.num_proc)
            train = pack_dataset(corpus["train"], tokenizer, data_args.block_size, **pack)
            validation = pack_dataset(corpus["validation"], tokenizer, data_args.block_size,
                                      max_blocks=data_args.max_eval_blocks, **pack)

    set_seed(training_args.seed)  # the new model's weights
    config = model_config(model_args.size, tokenizer, max_position_embeddings=max(2048, data_args.block_size))
    model = PhotonForCausalLM(config)
    if training_args.process_index == 0:
        amount = "streamed blocks" if data_args.streaming else f"{len(train):,} training blocks"
        print(f"PHOTON '{model_args.size}': {model.num_parameters():,} parameters, {amount} of "
              f"{data_args.block_size} tokens")

    trainer = build_trainer(model, training_args, train, validation, tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_model()  # model + tokenizer in Hugging Face format, in --output_dir
    if trainer.is_world_process_zero():
        print(f"validation loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}")


if __name__ == "__main__":
    main()
