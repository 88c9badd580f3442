"""The `photon-hf` command line: quickstart, train, generate, export, info.

Run `photon-hf --help`, or `photon-hf COMMAND --help` for one command. Every command is a thin layer over the
library (`photon_hf.data`, `photon_hf.training`, `photon_hf.hub`) and stock transformers / datasets / peft.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  photon-hf quickstart                                  train ~3 minutes on the Python stdlib, then generate
  photon-hf train --output-dir runs/small --max-steps 2000
  photon-hf train --output-dir runs/mine --dataset my_texts/ --size base
  photon-hf train --output-dir runs/lora --model runs/small --lora-r 8 --dataset notes.jsonl
  photon-hf generate --model runs/small --prompt "def parse(" --sample
  photon-hf export runs/small hub/photon-small --repo-id me/photon-small
  photon-hf info --size photon-600m --context-lengths 2048,32768
  torchrun --nproc_per_node 2 -m photon_hf train --output-dir runs/ddp    data parallel (CPU or GPU)

The generation benchmark and the kernel benchmark are scripts in a source checkout, not commands:
  python bench/run_generation.py --help, python bench/bench_kernels.py --help
"""


class UsageError(Exception):
    """A mistake in the command line; the message says what to change."""


# ------------------------------------------------------------------------------------------------ helpers
def _parse_overrides(pairs: list[str] | None) -> dict:
    """["hidden_size=96", "chunk_sizes=[4,2]"] -> {"hidden_size": 96, "chunk_sizes": [4, 2]} (JSON values, else
    strings)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE (e.g. --set hidden_size=96), got {pair!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _dtype(name: str):
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise argparse.ArgumentTypeError(f"choose one of {sorted(dtypes)}")
    return dtypes[name]


def _describe_source(source: str | None, corpus) -> tuple[str, str]:
    """(short dataset name, one-paragraph description) of a training corpus, for the model card."""
    train, validation = len(corpus["train"]), len(corpus["validation"])
    if source in (None, "stdlib"):
        version = ".".join(map(str, sys.version_info[:2]))
        return (
            f"Python {version} standard library source",
            f"The Python {sys.version.split()[0]} standard library's own source files (the embedded default corpus "
            f"of photon_hf, read from the local installation): {train} files for training and {validation} held-out "
            "files for validation, split by a hash of each file's relative path.",
        )
    return source, f"`{source}`: {train} training documents and {validation} validation documents."


def _is_hub_name(source: str) -> bool:
    """Whether a --dataset value names a Hub dataset (not the embedded corpus, a local path or a glob)."""
    import glob
    import os

    return source != "stdlib" and not os.path.exists(source) and not glob.has_magic(source)


def _print_cache_table(config, context_lengths, dtype, batch_size: int = 1):
    from .memory import cache_table, format_bytes

    layers = sum(config.num_encoder_layers) + sum(config.num_decoder_layers)
    name = str(dtype).replace("torch.", "")
    print(f"KV cache for {batch_size} sequence(s), {name}, vs a Llama of the same width and depth ({layers} layers):")
    print(f"  {'context':>10}  {'PHOTON':>12}  {'same-shape Llama':>16}  {'ratio':>7}")
    for n, photon, llama in cache_table(config, context_lengths, dtype):
        photon, llama = photon * batch_size, llama * batch_size
        print(f"  {n:>10,}  {format_bytes(photon):>12}  {format_bytes(llama):>16}  {llama / photon:>6.1f}x")


def _config_summary(config, parameters: int) -> list[str]:
    return [
        f"  levels             {config.num_levels} (chunk sizes {', '.join(map(str, config.chunk_sizes))}; "
        f"converter widths {', '.join(map(str, config.converter_width))}; "
        f"{config.tokens_per_unit[-1]} tokens per top-level unit)",
        f"  hidden size        {config.hidden_size} ({config.num_attention_heads} heads, "
        f"{config.num_key_value_heads} KV heads, head dim {config.head_dim}); MLP {config.intermediate_size}",
        f"  layers             encoders {', '.join(map(str, config.num_encoder_layers))}; decoders "
        f"{', '.join(map(str, config.num_decoder_layers))}",
        f"  encoder windows    {config.encoder_windows or 'none (full causal)'}",
        f"  decoder input      {config.decoder_input}",
        f"  vocabulary         {config.vocab_size}",
        f"  parameters         {parameters:,}",
    ]


# ------------------------------------------------------------------------------------------------- train
def _add_data_arguments(parser):
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="stdlib", metavar="SOURCE",
        help="'stdlib' (default: the Python standard library's source, no download), a local .txt/.jsonl/.json "
             "file, a folder of them or a glob, or a Hugging Face dataset name (needs the Hub)",
    )
    group.add_argument(
        "--dataset-config", metavar="NAME", help="configuration of a Hub dataset (e.g. wikitext-2-raw-v1)"
    )
    group.add_argument(
        "--validation-data", metavar="SOURCE",
        help="separate local validation files (default: the dataset's validation split, else held-out documents)",
    )
    group.add_argument("--text-column", default="text", help="column / JSON field holding the text (default: text)")
    group.add_argument(
        "--validation-fraction", type=float, default=0.05,
        help="share of documents held out when the source has no validation split (default: 0.05)",
    )
    group.add_argument("--max-files", type=int, metavar="N", help="stdlib corpus only: use the first N files per split")
    group.add_argument("--block-size", type=int, default=256, help="tokens per training block (default: 256)")
    group.add_argument(
        "--eval-blocks", type=int, default=64,
        help="validation blocks per evaluation, evenly spread over the split; 0 = all (default: 64)",
    )
    group.add_argument(
        "--tokenizer", default="bytes",
        help="'bytes' (default: built-in byte-level tokenizer, no download) or an AutoTokenizer name or folder; "
             "ignored with --model, which brings its own",
    )
    group.add_argument("--num-proc", type=int, help="processes for tokenizing (datasets.map num_proc)")


def _add_model_arguments(parser, default_size: str):
    from .configuration_photon import PHOTON_PRESETS

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", metavar="PATH",
        help="continue from a saved PHOTON model (a folder from `photon-hf train` or save_pretrained); default: a "
             "new model of --size",
    )
    group.add_argument(
        "--size", default=default_size, choices=list(PHOTON_PRESETS),
        help=f"shape of a new model (default: {default_size}); tiny/small/base suit CPUs, photon-* are the paper's",
    )
    group.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a PhotonConfig field of a new model, e.g. --set hidden_size=96 --set chunk_sizes=[4,2]",
    )


def _add_optimisation_arguments(parser, *, max_steps, batch_size, learning_rate):
    group = parser.add_argument_group("optimisation")
    group.add_argument("--max-steps", type=int, default=max_steps, help=f"optimizer steps (default: {max_steps})")
    group.add_argument(
        "--max-minutes", type=float,
        help="also stop after this many minutes of training; the learning rate then decays by time or steps, "
             "whichever runs out first",
    )
    group.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"blocks per device and step (default: {batch_size})"
    )
    group.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")
    group.add_argument(
        "--learning-rate", type=float, default=learning_rate, help=f"peak learning rate (default: {learning_rate})"
    )
    group.add_argument("--warmup", type=float, default=0.05, help="warmup steps, or a fraction of --max-steps if < 1")
    group.add_argument("--weight-decay", type=float, default=0.1)
    group.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    group.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None,
        help="bf16 mixed precision (default: on where the GPU supports it)",
    )
    group.add_argument("--seed", type=int, default=0)


def _add_train_parser(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="pretrain or fine-tune PHOTON with transformers.Trainer",
        description="Pretrain a new PHOTON model, or fine-tune a saved one (fully or with LoRA), with the stock "
                    "transformers Trainer. Saves a Hugging Face model folder (model, tokenizer, eval_results.json) "
                    "to --output-dir, with checkpoints to resume from. For several processes start it with "
                    "`torchrun --nproc_per_node N -m photon_hf train ...` or `accelerate launch --multi_gpu "
                    "--num_processes N -m photon_hf train ...`.",
        epilog="example: photon-hf train --output-dir runs/small --max-steps 2000 --eval-steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", required=True, help="folder for checkpoints and the final model")
    _add_data_arguments(parser)
    _add_model_arguments(parser, default_size="small")
    group = parser.add_argument_group("LoRA (fine-tuning a saved --model)")
    group.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 (default) trains all weights")
    group.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 2 x rank)")
    group.add_argument("--lora-dropout", type=float, default=0.0)
    group.add_argument("--lora-chunker", action="store_true", help="also adapt each level's chunker")
    group.add_argument("--lora-converter", action="store_true", help="also adapt each level's converter")
    _add_optimisation_arguments(parser, max_steps=1000, batch_size=16, learning_rate=2e-3)
    group = parser.add_argument_group("evaluation and checkpoints")
    group.add_argument("--eval-steps", type=int, default=100, help="evaluate every N steps (default: 100)")
    group.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default: 500)")
    group.add_argument("--logging-steps", type=int, default=10)
    group.add_argument(
        "--resume", nargs="?", const="last", metavar="CHECKPOINT",
        help="resume from a checkpoint folder, or (no value) from the last checkpoint in --output-dir",
    )
    parser.set_defaults(handler=_cmd_train)


def _load_model_and_tokenizer(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import load_tokenizer
    from .training import model_config

    if args.model:
        if not Path(args.model).is_dir():
            raise UsageError(f"--model {args.model!r} is not a folder; pass a folder saved by `photon-hf train`.")
        if args.set:
            raise UsageError("--set changes the shape of a new model; it cannot be combined with --model.")
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        return model, tokenizer
    from .modeling_photon import PhotonForCausalLM

    tokenizer = load_tokenizer(args.tokenizer)
    overrides = _parse_overrides(args.set)
    overrides.setdefault("max_position_embeddings", max(args.block_size, 2048))
    config = model_config(args.size, tokenizer, **overrides)
    return PhotonForCausalLM(config), tokenizer


def _apply_lora(model, args):
    if args.lora_r <= 0:
        return model
    if not args.model:
        raise UsageError("LoRA adapts a trained model: pass --model PATH (a folder saved by `photon-hf train`).")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise UsageError(
            "--lora-r needs PEFT: install the training extras (pip install '.[train]' in a photon_hf checkout, or "
            "pip install peft)."
        ) from error
    from .lora import lora_target_modules

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(args.lora_chunker, args.lora_converter),
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def _resume_checkpoint(args) -> str | None:
    if args.resume is None:
        return None
    if args.resume != "last":
        if not Path(args.resume).is_dir():
            raise UsageError(f"--resume {args.resume!r} is not a checkpoint folder.")
        return args.resume
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last is None:
        raise UsageError(
            f"--resume found no checkpoint-* folder in {args.output_dir!r}; drop --resume to start afresh, or pass "
            "the checkpoint folder to resume from."
        )
    return last


def _prepare_data(args, tokenizer, training_args):
    from .data import load_text_corpus, pack_dataset

    with training_args.main_process_first(desc="preparing the dataset"):
        corpus = load_text_corpus(
            args.dataset,
            name=args.dataset_config,
            validation_source=args.validation_data,
            text_column=args.text_column,
            validation_fraction=args.validation_fraction,
            max_files=args.max_files,
            num_proc=args.num_proc,
        )
        train = pack_dataset(
            corpus["train"], tokenizer, args.block_size, text_column=args.text_column, num_proc=args.num_proc
        )
        validation = pack_dataset(
            corpus["validation"], tokenizer, args.block_size, text_column=args.text_column, num_proc=args.num_proc,
            max_blocks=args.eval_blocks or None,
        )
    return corpus, train, validation


def run_training(args, callbacks: list | None = None) -> dict:
    """The body of `photon-hf train` (and of the quickstart's training): returns the final evaluation metrics."""
    from .hub import TRAINING_INFO_FILE
    from .training import TimeBudgetCallback, TimeBudgetSchedule, build_trainer, training_arguments

    if args.max_minutes and args.resume:
        raise UsageError("--max-minutes starts a new time budget and cannot resume one: resume with --max-steps only.")
    resume = _resume_checkpoint(args)
    model, tokenizer = _load_model_and_tokenizer(args)
    meta = model.config.tokens_per_unit[-1]
    if args.block_size % meta:
        print(f"note: --block-size {args.block_size} is not a multiple of {meta} tokens (one top-level unit); "
              "each block is padded inside the model, which wastes compute.")
    model = _apply_lora(model, args)
    training_args = training_arguments(
        args.output_dir,
        bf16=args.bf16,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    corpus, train, validation = _prepare_data(args, tokenizer, training_args)
    callbacks = list(callbacks or [])
    if args.max_minutes:
        callbacks.append(TimeBudgetCallback(args.max_minutes))
    trainer = build_trainer(model, training_args, train, validation, tokenizer, callbacks=callbacks)
    if args.max_minutes:
        from torch.optim.lr_scheduler import LambdaLR

        trainer.create_optimizer()
        warmup = training_args.get_warmup_steps(args.max_steps)
        schedule = TimeBudgetSchedule(args.max_minutes * 60, args.max_steps, warmup)
        trainer.lr_scheduler = LambdaLR(trainer.optimizer, schedule)
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        final = trainer.model
        if args.lora_r > 0:  # keep the adapter, and save the merged model as the run's model
            final.save_pretrained(Path(args.output_dir) / "adapter")
            final = final.merge_and_unload()
        final.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        dataset_name, description = _describe_source(args.dataset, corpus)
        info = {
            "dataset_name": dataset_name,
            "training_data": description,
            "datasets": [args.dataset] if _is_hub_name(args.dataset) else [],
            "train_steps": trainer.state.global_step,
            "block_size": args.block_size,
        }
        (Path(args.output_dir) / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return metrics


def _cmd_train(args) -> int:
    from accelerate import PartialState

    metrics = run_training(args)
    if not PartialState().is_main_process:
        return 0
    print(
        f"\nvalidation loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.3f}. Saved to "
        f"{args.output_dir}.\nnext: photon-hf generate --model {args.output_dir} --prompt 'def ' --sample\n"
        f"      photon-hf export {args.output_dir} {args.output_dir}-hub"
    )
    return 0


# ---------------------------------------------------------------------------------------------- generate
def _add_generate_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="generate text with a saved PHOTON model",
        description="Load a saved PHOTON model with AutoModelForCausalLM and continue each prompt with generate(). "
                    "Greedy by default; --sample draws tokens instead. With one prompt the text streams as it is "
                    "generated.",
        epilog="example: photon-hf generate --model runs/small --prompt 'import os' --sample --max-new-tokens 200",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="model folder (or Hub id, when reachable)")
    parser.add_argument("--prompt", action="append", help="prompt text; repeat for a batch (default: 'def ')")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.8, help="with --sample (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="with --sample (default: 40)")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --sample (default: 1.0)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_cmd_generate)


def generate_text(model, tokenizer, prompts: list[str], *, stream: bool = False, **generate_kwargs) -> list[str]:
    """Continue each prompt with `model.generate`; returns the new text of each (streams it to stdout with a
    `TextStreamer` when `stream`)."""
    import torch
    from transformers import TextStreamer

    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if stream else None
    with torch.no_grad():
        output = model.generate(**inputs, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _cmd_generate(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    prompts = args.prompt or ["def "]
    kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.sample)
    if args.sample:
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    stream = len(prompts) == 1 and args.num_beams == 1
    texts = generate_text(model, tokenizer, prompts, stream=stream, **kwargs)
    if not stream:
        for prompt, text in zip(prompts, texts, strict=True):
            print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


# ------------------------------------------------------------------------------------------------ export
def _add_export_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a Hub-ready folder (weights, code, tokenizer, model card); optionally upload it",
        description="Write the folder a Hugging Face Hub repository needs so that anyone can load the model with "
                    "AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True), without photon_hf: "
                    "safetensors weights, config.json with auto_map, the modeling source files, the tokenizer, "
                    "generation_config.json and a model card with the evaluation loss and KV-cache size (read from "
                    "the files `photon-hf train` leaves). --push-to-hub uploads the folder.",
        epilog="example: photon-hf export runs/small hub/photon-small --repo-id me/photon-small --push-to-hub",
    )
    parser.add_argument("model", help="saved model folder (from `photon-hf train` or save_pretrained)")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--repo-id", help="Hub repository id (user/name) for the card's snippet and --push-to-hub")
    parser.add_argument("--model-name", help="title of the model card (default: the repository or folder name)")
    parser.add_argument("--training-data", help="training data description for the card (default: recorded by train)")
    parser.add_argument("--dataset-id", action="append", help="Hub dataset id for the card's metadata (repeatable)")
    parser.add_argument(
        "--context-lengths", type=_int_list, default=[1024, 4096, 32768],
        help="context lengths of the card's cache table (default: 1024,4096,32768)",
    )
    parser.add_argument("--push-to-hub", action="store_true", help="upload the folder to --repo-id (needs a Hub login)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repository")
    parser.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import export_for_hub, push_folder_to_hub, read_training_info

    if args.push_to_hub and not args.repo_id:
        raise UsageError("--push-to-hub needs --repo-id USER/NAME.")
    if not Path(args.model).is_dir():
        raise UsageError(f"{args.model!r} is not a folder; pass a folder saved by `photon-hf train`.")
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    info = read_training_info(args.model)
    eval_results = {k: v for k, v in info.items() if k.startswith("eval_")}
    folder = export_for_hub(
        model,
        args.output,
        tokenizer,
        model_name=args.model_name or (None if args.repo_id else Path(args.output).name),
        repo_id=args.repo_id,
        training_data=args.training_data or info.get("training_data"),
        dataset_name=info.get("dataset_name"),
        datasets=args.dataset_id or info.get("datasets") or None,
        eval_results=eval_results or None,
        context_lengths=args.context_lengths,
    )
    print(f"Wrote {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    if not eval_results:
        print("note: no eval_results.json in the model folder, so the card has no evaluation loss.")
    if args.push_to_hub:
        commit = push_folder_to_hub(folder, args.repo_id, private=args.private or None)
        print(f"Uploaded to {getattr(commit, 'commit_url', args.repo_id)}")
    return 0


# -------------------------------------------------------------------------------------------------- info
def _add_info_parser(subparsers):
    parser = subparsers.add_parser(
        "info",
        help="show a config, its parameter count and its KV cache beside a same-shape Llama",
        description="Print a PHOTON configuration, its parameter count and the KV-cache bytes per context length "
                    "next to a Llama with the same width, heads and total depth. Give a saved model folder, or "
                    "--size (with optional --set overrides) for a shape.",
        epilog="example: photon-hf info --size photon-600m --context-lengths 2048,8192,32768 --batch-size 8",
    )
    from .configuration_photon import PHOTON_PRESETS

    parser.add_argument("model", nargs="?", help="saved model folder (or Hub id); default: --size")
    parser.add_argument(
        "--size", default="small", choices=list(PHOTON_PRESETS), help="shape (default: small)"
    )
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PhotonConfig field")
    parser.add_argument(
        "--context-lengths", type=_int_list, default=[1024, 4096, 32768, 131072],
        help="comma-separated context lengths (default: 1024,4096,32768,131072)",
    )
    parser.add_argument("--dtype", type=_dtype, default="bf16", help="cache dtype: bf16 (default), fp16 or fp32")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences held in the cache (default: 1)")
    parser.set_defaults(handler=_cmd_info)


def _cmd_info(args) -> int:
    import torch
    from transformers import AutoConfig

    from .modeling_photon import PhotonForCausalLM
    from .training import model_config

    if args.model:
        if args.set:
            raise UsageError("--set applies to --size shapes, not to a saved model.")
        config = AutoConfig.from_pretrained(args.model)
        if config.model_type != "photon":
            raise UsageError(f"{args.model!r} holds a {config.model_type!r} model, not a PHOTON one.")
        title = args.model
    else:
        config = model_config(args.size, **_parse_overrides(args.set))
        title = f"size {args.size}" + (f" with {', '.join(args.set)}" if args.set else "")
    with torch.device("meta"):  # counts parameters without allocating them
        parameters = sum(p.numel() for p in PhotonForCausalLM(config).parameters())
    print(f"PHOTON ({title})")
    print("\n".join(_config_summary(config, parameters)))
    print()
    _print_cache_table(config, args.context_lengths, args.dtype, args.batch_size)
    return 0


# -------------------------------------------------------------------------------------------- quickstart
def _add_quickstart_parser(subparsers):
    parser = subparsers.add_parser(
        "quickstart",
        help="train a small PHOTON for a few minutes on the Python stdlib, reload it, generate, compare caches",
        description="The whole loop on this machine, no download: pack the Python standard library's source into "
                    "byte-level blocks, train a small PHOTON with transformers.Trainer for --minutes, save it in "
                    "Hugging Face format, load it back with AutoModelForCausalLM, generate text with generate(), and "
                    "print its KV-cache memory beside a Llama of the same shape.",
        epilog="example: photon-hf quickstart --minutes 5 --output-dir photon-quickstart",
    )
    parser.add_argument("--output-dir", default="photon-quickstart", help="where to save (default: photon-quickstart)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget (default: 3)")
    from .configuration_photon import PHOTON_PRESETS

    parser.add_argument(
        "--size", default="small", choices=[n for n in PHOTON_PRESETS if not n.startswith("photon-")],
        help="model shape (default: small)",
    )
    parser.add_argument("--block-size", type=int, default=256, help="tokens per block (default: 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per step (default: 16)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    parser.add_argument("--prompt", default="def ", help="prompt for the generation (default: 'def ')")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_cmd_quickstart)


def _plan_steps(args, seconds: float) -> tuple[int, int]:
    """Time a few training steps of a throwaway model of the quickstart's shape; on a CPU with torch's default
    thread count and with one thread (on a machine busy with other work, one thread can be many times faster).
    Returns (thread count, steps that fit in `seconds`) for the faster setting, which stays set."""
    import torch

    from .data import byte_tokenizer
    from .modeling_photon import PhotonForCausalLM
    from .training import model_config

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Trainer will train
    model = PhotonForCausalLM(model_config(args.size, byte_tokenizer(), max_position_embeddings=2048)).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.block_size), device=device)

    def seconds_per_step(threads: int) -> float:
        torch.set_num_threads(threads)
        timings = []
        for _ in range(4):
            started = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        return sorted(timings[1:])[1]  # median of the warm steps

    default_threads = torch.get_num_threads()
    options = {default_threads: seconds_per_step(default_threads)}
    if default_threads > 1 and device == "cpu":
        options[1] = seconds_per_step(1)
    threads = min(options, key=options.get)
    torch.set_num_threads(threads)
    return threads, max(20, int(seconds / options[threads]))


def _cmd_quickstart(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .memory import format_bytes

    started = time.monotonic()
    torch.manual_seed(args.seed)
    device = "GPU" if torch.cuda.is_available() else "CPU"
    print(f"[1/4] Planning: timing a few training steps of a '{args.size}' PHOTON on this {device}...")
    threads, steps = _plan_steps(args, args.minutes * 60 * 0.9)  # leave room for the evaluations
    print(f"      about {steps} steps of {args.batch_size} x {args.block_size} tokens fit in {args.minutes:g} minutes "
          f"({threads} CPU thread{'s' if threads > 1 else ''}).")
    train_args = argparse.Namespace(
        output_dir=args.output_dir, dataset="stdlib", dataset_config=None, validation_data=None, text_column="text",
        validation_fraction=0.05, max_files=None, block_size=args.block_size, eval_blocks=64, tokenizer="bytes",
        num_proc=None, model=None, size=args.size, set=None, lora_r=0, lora_alpha=None, lora_dropout=0.0,
        lora_chunker=False, lora_converter=False, max_steps=steps, max_minutes=args.minutes,
        batch_size=args.batch_size, grad_accum=1, learning_rate=args.learning_rate, warmup=0.05, weight_decay=0.1,
        gradient_checkpointing=False, bf16=None, seed=args.seed, eval_steps=max(1, steps // 4),
        save_steps=steps, logging_steps=max(1, steps // 20), resume=None,
    )
    print("[2/4] Training on the Python standard library's source (held-out files for validation)...")
    metrics = run_training(train_args)
    print(f"      validation loss {metrics['eval_loss']:.3f} nats/byte (perplexity {metrics['eval_perplexity']:.2f}); "
          f"an untrained model scores ln(259) = {math.log(259):.3f}.")

    print(f"[3/4] Loading {args.output_dir} back with AutoModelForCausalLM and generating from {args.prompt!r}:")
    model = AutoModelForCausalLM.from_pretrained(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    print(f"      {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters\n")
    inputs = tokenizer([args.prompt], return_tensors="pt")
    from transformers import TextStreamer

    print(args.prompt, end="", flush=True)
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.8, top_k=40,
            streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
            return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
        )
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    length = output.sequences.shape[1]
    print("\n[4/4] Cache memory:")
    if cache is not None:
        from .memory import llama_kv_cache_bytes

        llama = llama_kv_cache_bytes(model.config, length, dtype=model.dtype)
        print(f"      measured PhotonCache after those {length} tokens: {format_bytes(cache.nbytes())} (allocated for "
              f"the whole generation) vs {format_bytes(llama)} for a same-shape Llama's KV cache")
    _print_cache_table(model.config, [1024, 4096, 32768, 131072], torch.bfloat16)
    print(f"\nDone in {(time.monotonic() - started) / 60:.1f} minutes. The model is in {args.output_dir}; try\n"
          f"  photon-hf generate --model {args.output_dir} --prompt 'import ' --sample\n"
          f"  photon-hf export {args.output_dir} {args.output_dir}-hub")
    return 0


# -------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photon-hf",
        description="PHOTON hierarchical language models (arXiv 2512.20687) for Hugging Face transformers: train, "
                    "fine-tune, generate, export for the Hub, inspect cache memory. New here? Run "
                    "`photon-hf quickstart`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    _add_quickstart_parser(subparsers)
    _add_train_parser(subparsers)
    _add_generate_parser(subparsers)
    _add_export_parser(subparsers)
    _add_info_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `photon-hf` console script."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        if args.traceback:
            raise
        print(f"photon-hf {args.command}: error: {error}", file=sys.stderr)
        if not isinstance(error, UsageError):
            print("(run `photon-hf --traceback ...` for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
