"""The `photon-hf` command line: quickstart, train, generate, export, info, serve.

Run `photon-hf --help`, or `photon-hf COMMAND --help` for one command. Every command is a thin layer over the
library (`photon_hf.training`, `photon_hf.data`, `photon_hf.hub`, `photon_hf.memory`) and stock transformers /
datasets / peft: `train` parses its flags into a `photon_hf.training.TrainJob` and runs it.

Exit codes: 0 on success, 2 for a mistake in the command line (a bad value, an empty prompt, a model that does not
resolve, a port that is taken), which is reported in one line before any model is loaded, 1 for an error during the
work.

This module imports no torch, transformers or peft at the top (only `photon_hf.presets` and `photon_hf.train_job`,
plain Python), and the `photon-hf` console script (`photon_hf_cli`) imports it without running `photon_hf/__init__.py`,
so help texts and usage errors come at once; each handler loads the package once its arguments are checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from .presets import PHOTON_PRESETS
from .train_job import QUICKSTART_DEFAULTS, TrainJob

EPILOG = """\
examples:
  photon-hf quickstart                                  train ~3 minutes on the Python stdlib, then generate
  photon-hf train --output-dir runs/small --max-steps 2000
  photon-hf train --output-dir runs/mine --dataset my_texts/ --size base
  photon-hf train --output-dir runs/big --dataset corpus/ --streaming --max-steps 20000
  photon-hf train --output-dir runs/lora --model runs/small --lora-r 8 --dataset notes.jsonl
  photon-hf generate --model runs/small --prompt "def parse(" --sample
  photon-hf export runs/small hub/photon-small --repo-id me/photon-small
  photon-hf info --size photon-600m --context-lengths 2048,32768
  torchrun --nproc_per_node 2 -m photon_hf train --output-dir runs/ddp    data parallel (CPU or GPU; docs/training.md)

The generation benchmark and the kernel benchmark are scripts in a source checkout, not commands:
  python -m bench.generation.run_generation --help, python -m bench.kernels.bench_kernels --help
"""


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class UsageError(Exception):
    """A mistake in the command line; the message says what to change."""


def _load_package():
    """Run `photon_hf/__init__.py` (torch, transformers, the Auto-class and PEFT registrations) if the `photon-hf`
    console script (`photon_hf_cli`) deferred it to parse the command line first; a no-op otherwise."""
    package = sys.modules[__package__]
    if not hasattr(package, "__version__"):
        package.__spec__.loader.exec_module(package)


# ------------------------------------------------------------------------------------------- argument types
def _int_at_least(minimum: int, note: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{note}, got {text!r}")
        return value

    return parse


def _float_in(low: float, high: float = math.inf, *, low_open: bool = True, what: str = ""):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (value > low if low_open else value >= low) and value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _prompt(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a non-empty prompt")
    return text


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


# ------------------------------------------------------------------------------------------ model resolution
def _looks_local(name: str) -> bool:
    """Whether a model name can only mean a local path (not a Hub id `name` or `owner/name`)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def resolve_model(name: str, what: str = "--model", hub: bool = True) -> str:
    """Check that `name` names a saved model before anything loads it: a local folder with a `config.json`, or (with
    `hub`) a Hugging Face Hub repository that is in the local cache or answers one request (no retries). Raises a
    `UsageError` that says which of these failed."""
    path = Path(name).expanduser()
    saved_by = "a folder saved by `photon-hf train` (or save_pretrained)"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{what} {name!r} is a folder without a config.json, not a saved model; pass {saved_by}.")
        return str(path)
    if path.exists():
        raise UsageError(f"{what} {name!r} is a file, not a model folder; pass {saved_by}.")
    if not hub or _looks_local(name):
        raise UsageError(f"{what} {name!r}: no such folder; pass {saved_by}.")
    _check_hub_model(name, what)
    return name


def _check_hub_model(repo_id: str, what: str):
    """A Hub model id resolves when its config.json is cached or the Hub says it exists: one request, so that a
    machine without network gets an answer at once instead of after the download retries."""
    from huggingface_hub import constants, errors, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    not_local = f"{what} {repo_id!r} is not a local folder"
    if constants.HF_HUB_OFFLINE:
        raise UsageError(
            f"{not_local}, and offline mode (HF_HUB_OFFLINE=1) forbids looking it up on the Hugging Face Hub (it is "
            "not in the local Hub cache)."
        )
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))
    except errors.GatedRepoError:
        raise UsageError(
            f"{not_local}; the Hub repository is gated: accept its terms and log in (`hf auth login`)."
        ) from None
    except errors.RepositoryNotFoundError:
        raise UsageError(
            f"{not_local} nor a model repository on the Hugging Face Hub (a private one needs `hf auth login`)."
        ) from None
    except errors.EntryNotFoundError:
        raise UsageError(f"{not_local}; the Hub repository {repo_id!r} has no config.json: no model.") from None
    except Exception as error:  # no network, DNS, proxy, timeout, Hub down
        reason = str(error).splitlines()[0] if str(error) else ""
        raise UsageError(
            f"{not_local}, and the Hugging Face Hub could not be reached to look it up (no network?): "
            f"{type(error).__name__}: {reason}"
        ) from None


# --------------------------------------------------------------------------------------------- shared output
def _print_cache_table(config, context_lengths, dtype, batch_size: int = 1):
    from .memory import cache_table, format_bytes, llama_layers

    name = str(dtype).replace("torch.", "")
    print(f"KV cache for {batch_size} sequence(s), {name}, vs a Llama of the same width and depth "
          f"({llama_layers(config)} layers):")
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


def _folder_size(folder: str) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


# ------------------------------------------------------------------------------------------------- train
def _add_job_arguments(parser):
    """One option per `TrainJob` field (`--max-steps` for `max_steps`), with the field's type, default, help text and
    option group (its metadata, which may also name another flag or hold argparse settings)."""
    types = {"int": int, "float": float, "str": str}
    groups = {None: parser}
    for field in dataclasses.fields(TrainJob):
        settings = dict(field.metadata)
        group_name = settings.pop("group")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        flag = settings.pop("flag", "--" + field.name.replace("_", "-"))
        kind = field.type.removesuffix(" | None")
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            settings["required"] = True
        elif kind == "bool":
            settings["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif kind == "dict":  # KEY=VALUE pairs (`_parse_overrides`)
            settings["action"] = "append"
        else:
            settings["type"] = types[kind]
        shown = default not in (dataclasses.MISSING, None) and default is not False
        if shown and "default:" not in settings["help"]:
            settings["help"] += f" (default: {'on' if default is True else default})"
        if default is not dataclasses.MISSING and kind != "dict":
            settings["default"] = default
        groups[group_name].add_argument(flag, dest=field.name, **settings)


def _add_train_parser(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="pretrain or fine-tune PHOTON with transformers.Trainer",
        description="Pretrain a new PHOTON model, or fine-tune a saved one (fully or with LoRA), with the stock "
                    "transformers Trainer. Saves a Hugging Face model folder (model, tokenizer, eval_results.json) "
                    "to --output-dir, with checkpoints to resume from. For several processes start it with "
                    "`torchrun --nproc_per_node N -m photon_hf train ...` or `accelerate launch --multi_gpu "
                    "--num_processes N -m photon_hf train ...` (docs/training.md: streaming, launchers, DeepSpeed, "
                    "FSDP2). Every option is a field of photon_hf.training.TrainJob.",
        epilog="example: photon-hf train --output-dir runs/small --max-steps 2000 --eval-steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(parser)
    parser.set_defaults(handler=_cmd_train)


def _train_job(args):
    """The `TrainJob` of `photon-hf train ARGS` (options and fields share their names; --set gives `overrides`)."""
    names = {field.name for field in dataclasses.fields(TrainJob)}
    values = {name: value for name, value in vars(args).items() if name in names}
    values["overrides"] = _parse_overrides(args.overrides)
    if args.model:
        values["model"] = resolve_model(args.model, hub=False)
    try:
        return TrainJob(**values)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _cmd_train(args) -> int:
    job = _train_job(args)
    _load_package()
    from accelerate import PartialState

    from .training import resume_checkpoint, run_training

    try:
        resume_checkpoint(job)  # a --resume with nothing to resume is a command-line mistake: say so before any work
    except ValueError as error:
        raise UsageError(str(error)) from None
    metrics = run_training(job)
    if not PartialState().is_main_process:
        return 0
    print(
        f"\nvalidation loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.3f}. Saved to "
        f"{job.output_dir}.\nnext: photon-hf generate --model {job.output_dir} --prompt 'def ' --sample\n"
        f"      photon-hf export {job.output_dir} {job.output_dir}-hub"
    )
    return 0


# ---------------------------------------------------------------------------------------------- generate
def _add_generate_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="generate text with a saved PHOTON model",
        description="Load a saved PHOTON model with AutoModelForCausalLM and continue each prompt with generate(). "
                    "Greedy by default; --sample draws tokens instead. With one prompt the text streams as it is "
                    "generated. Every value is checked before the model is loaded.",
        epilog="example: photon-hf generate --model runs/small --prompt 'import os' --sample --max-new-tokens 200",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="model folder (or Hub id, when reachable)")
    parser.add_argument(
        "--prompt", action="append", type=_prompt, help="prompt text; repeat for a batch (default: 'def ')"
    )
    parser.add_argument(
        "--max-new-tokens", type=_int_at_least(1), default=128, help="tokens to generate (default: 128)"
    )
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument(
        "--temperature", type=_float_in(0, what="a number > 0"), default=0.8, help="with --sample (default: 0.8)"
    )
    parser.add_argument(
        "--top-k", type=_int_at_least(0, " (0 turns top-k off)"), default=40, help="with --sample (default: 40)"
    )
    parser.add_argument(
        "--top-p", type=_float_in(0, 1, what="a number in (0, 1]"), default=1.0, help="with --sample (default: 1.0)"
    )
    parser.add_argument(
        "--repetition-penalty", type=_float_in(0, what="a number > 0 (1.0 = none)"), default=1.0,
        help="divide the scores of tokens already in the text by this (default: 1.0, none)",
    )
    parser.add_argument("--num-beams", type=_int_at_least(1), default=1, help="beam search width (default: 1)")
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
    name = resolve_model(args.model)
    _load_package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.padding_side = "left"
    prompts = args.prompt or ["def "]
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.sample,
        repetition_penalty=args.repetition_penalty,
    )
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
    if args.push_to_hub and not args.repo_id:
        raise UsageError("--push-to-hub needs --repo-id USER/NAME.")
    folder = resolve_model(args.model, what="model", hub=False)
    _load_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import export_for_hub, push_folder_to_hub, read_training_info

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = read_training_info(folder)
    eval_results = {k: v for k, v in info.items() if k.startswith("eval_")}
    output = export_for_hub(
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
    print(f"Wrote {output}: " + ", ".join(sorted(p.name for p in output.iterdir())))
    if not eval_results:
        print("note: no eval_results.json in the model folder, so the card has no evaluation loss.")
    if args.push_to_hub:
        commit = push_folder_to_hub(output, args.repo_id, private=args.private or None)
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
    parser.add_argument("model", nargs="?", help="saved model folder (or Hub id); default: --size")
    parser.add_argument("--size", default="small", choices=list(PHOTON_PRESETS), help="shape (default: small)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PhotonConfig field")
    parser.add_argument(
        "--context-lengths", type=_int_list, default=[1024, 4096, 32768, 131072],
        help="comma-separated context lengths (default: 1024,4096,32768,131072)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="cache dtype (default: bf16)")
    parser.add_argument(
        "--batch-size", type=_int_at_least(1), default=1, help="sequences held in the cache (default: 1)"
    )
    parser.set_defaults(handler=_cmd_info)


def _cmd_info(args) -> int:
    if args.model and args.set:
        raise UsageError("--set applies to --size shapes, not to a saved model.")
    name = resolve_model(args.model, what="model") if args.model else None
    _load_package()
    import torch
    from transformers import AutoConfig

    from .modeling_photon import PhotonForCausalLM
    from .training import model_config

    if name:
        config = AutoConfig.from_pretrained(name)
        if config.model_type != "photon":
            raise UsageError(f"{args.model!r} holds a {config.model_type!r} model, not a PHOTON one.")
        title = args.model
    else:
        try:
            config = model_config(args.size, **_parse_overrides(args.set))
        except ValueError as error:  # a --set value the config refuses
            raise UsageError(str(error)) from None
        title = f"size {args.size}" + (f" with {', '.join(args.set)}" if args.set else "")
    with torch.device("meta"):  # counts parameters without allocating them
        parameters = sum(p.numel() for p in PhotonForCausalLM(config).parameters())
    print(f"PHOTON ({title})")
    print("\n".join(_config_summary(config, parameters)))
    print()
    _print_cache_table(config, args.context_lengths, getattr(torch, DTYPES[args.dtype]), args.batch_size)
    return 0


# -------------------------------------------------------------------------------------------- quickstart
def _add_quickstart_parser(subparsers):
    defaults = QUICKSTART_DEFAULTS
    parser = subparsers.add_parser(
        "quickstart",
        help="train a small PHOTON for a few minutes on the Python stdlib, reload it, generate, compare caches",
        description="The whole loop on this machine, no download: pack the Python standard library's source into "
                    "byte-level blocks, train a small PHOTON with transformers.Trainer for --minutes, save it in "
                    "Hugging Face format, load it back with AutoModelForCausalLM, generate text with generate(), and "
                    "print its KV-cache memory beside a Llama of the same shape. Writes only the model folder "
                    "(7.4 MB for the small shape); the packed data stays in memory.",
        epilog="example: photon-hf quickstart --minutes 5 --output-dir photon-quickstart",
    )
    parser.add_argument("--output-dir", default="photon-quickstart", help="where to save (default: photon-quickstart)")
    parser.add_argument(
        "--minutes", type=_float_in(0, what="a number of minutes > 0"), default=defaults["minutes"],
        help=f"training time budget (default: {defaults['minutes']:g})",
    )
    parser.add_argument(
        "--size", default=defaults["size"], choices=[n for n in PHOTON_PRESETS if not n.startswith("photon-")],
        help=f"model shape (default: {defaults['size']})",
    )
    parser.add_argument(
        "--block-size", type=_int_at_least(2), default=defaults["block_size"],
        help=f"tokens per block (default: {defaults['block_size']})",
    )
    parser.add_argument(
        "--batch-size", type=_int_at_least(1), default=defaults["batch_size"],
        help=f"blocks per step (default: {defaults['batch_size']})",
    )
    parser.add_argument(
        "--learning-rate", type=_float_in(0, what="a number > 0"), default=defaults["learning_rate"],
        help="peak learning rate (default: photon_hf.training.default_learning_rate: 1e-3 x 128 / hidden size; "
        "with a look-back, 1e-3 x sqrt(128 / hidden size) above 128)",
    )
    parser.add_argument(
        "--save-checkpoints", action="store_true",
        help="also keep the final checkpoint-* folder (weights and optimizer state, about 3x the model) to resume "
             "from with `photon-hf train --resume`",
    )
    parser.add_argument("--prompt", type=_prompt, default="def ", help="prompt for the generation (default: 'def ')")
    parser.add_argument("--max-new-tokens", type=_int_at_least(1), default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_cmd_quickstart)


def _cmd_quickstart(args) -> int:
    _load_package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    from .memory import format_bytes, llama_kv_cache_bytes
    from .training import run_training, steps_in_time, torch_threads

    started = time.monotonic()
    job = TrainJob(
        output_dir=args.output_dir,
        size=args.size,
        block_size=args.block_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_minutes=args.minutes,
        save_checkpoints=args.save_checkpoints,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    device = "GPU" if torch.cuda.is_available() else "CPU"
    print(f"[1/4] Planning: timing a few training steps of a '{args.size}' PHOTON on this {device}...")
    threads, steps = steps_in_time(job, args.minutes * 60 * 0.9)  # leave room for the evaluations
    job = dataclasses.replace(
        job, max_steps=steps, eval_steps=max(1, steps // 4), logging_steps=max(1, steps // 20), save_steps=steps
    )
    print(f"      about {steps} steps of {args.batch_size} x {args.block_size} tokens fit in {args.minutes:g} minutes "
          f"({threads} CPU thread{'s' if threads > 1 else ''}).")
    print("[2/4] Training on the Python standard library's source (held-out files for validation)...")
    with torch_threads(threads):
        metrics = run_training(job)
    print(f"      validation loss {metrics['eval_loss']:.3f} nats/byte (perplexity {metrics['eval_perplexity']:.2f}); "
          f"an untrained model scores ln(259) = {math.log(259):.3f}.")

    print(f"[3/4] Loading {args.output_dir} back with AutoModelForCausalLM and generating from {args.prompt!r}:")
    model = AutoModelForCausalLM.from_pretrained(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    print(f"      {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters\n")
    inputs = tokenizer([args.prompt], return_tensors="pt")
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
        llama = llama_kv_cache_bytes(model.config, length, dtype=model.dtype)
        print(f"      measured PhotonCache after those {length} tokens: {format_bytes(cache.nbytes())} (allocated for "
              f"the whole generation) vs {format_bytes(llama)} for a same-shape Llama's KV cache")
    _print_cache_table(model.config, [1024, 4096, 32768, 131072], torch.bfloat16)
    print(f"\nDone in {(time.monotonic() - started) / 60:.1f} minutes. Wrote {args.output_dir}{os.sep} "
          f"({format_bytes(_folder_size(args.output_dir))}: the model, its tokenizer and evaluation results"
          f"{', and a checkpoint with optimizer state' if args.save_checkpoints else ''}). Try\n"
          f"  photon-hf generate --model {args.output_dir} --prompt 'import ' --sample\n"
          f"  photon-hf export {args.output_dir} {args.output_dir}-hub")
    return 0


# ------------------------------------------------------------------------------------------------- serve
API_KEY_ENV = "PHOTON_HF_API_KEY"  # the server's API key, when --api-key is not given


def _add_serve_parser(subparsers):
    parser = subparsers.add_parser(
        "serve",
        help="serve a PHOTON model to many users at once (OpenAI-compatible API)",
        description="Start transformers' own OpenAI-compatible server (`transformers serve`: /v1/models, "
                    "/v1/completions, /v1/chat/completions where the tokenizer has a chat template, streaming, "
                    "/health) with the model loaded and PHOTON's continuous batching on: requests share one decode "
                    "batch as they come and go, each answered exactly as generate() alone would. SIGINT or SIGTERM "
                    "stops admitting requests, lets those in flight finish, and exits 0. Needs the `serving` extra "
                    "(from a checkout: pip install \".[serving]\"). See docs/serving.md.",
        epilog="example: PHOTON_HF_API_KEY=secret photon-hf serve photon-quickstart --max-batch-size 64   then, "
               "from Python: openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='secret').completions."
               "create(model='photon-quickstart', prompt='import ', max_tokens=50)",
    )
    parser.add_argument("model", metavar="MODEL", help="model folder (save_pretrained or export), or a Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_int_at_least(1), default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="every /v1 route answers 401 without the header `Authorization: Bearer KEY` (default: "
                             f"${API_KEY_ENV}, which keeps the key out of the process list; unset: no key)")
    parser.add_argument("--enable-admin-routes", action="store_true",
                        help="allow transformers' /reset and /load_model, which stop or replace the model "
                             "(default: they answer 403)")
    parser.add_argument("--shutdown-timeout", type=_float_in(0, low_open=False, what="seconds >= 0"), default=25.0,
                        metavar="SECONDS",
                        help="after SIGINT or SIGTERM, how long the requests in flight may take to finish before "
                             "they are cut off (default: 25, under Kubernetes' 30 s grace period)")
    parser.add_argument("--max-batch-size", type=_int_at_least(1), default=32,
                        help="requests decoded at once: rows of the cache pool, allocated at start (default: 32)")
    parser.add_argument("--max-cache-len", type=_int_at_least(2), default=None,
                        help="tokens a request may hold, prompt plus answer (default: the model's "
                             "max_position_embeddings)")
    parser.add_argument("--mixed-phases", action="store_true",
                        help="admit requests at any phase of the meta-chunk (default: aligned, see docs/serving.md)")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (on CUDA it is by default)")
    parser.add_argument("--device", default="auto", help="device (default: auto)")
    parser.add_argument("--dtype", default="auto", help="weights' dtype, e.g. bfloat16 (default: auto)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the code of an exported folder")
    parser.add_argument("--default-seed", type=int, default=None,
                        help="seed of the random numbers of sampled requests without a seed of their own")
    parser.add_argument("--enable-cors", action="store_true", help="allow cross-origin requests")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="(default: warning)")
    parser.set_defaults(handler=_cmd_serve)


def check_port(host: str, port: int):
    """Raise OSError (one line) unless `host`:`port` can be listened on, binding as the server will (asyncio's
    `create_server`: every address `host` resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only, an address family the
    machine lacks skipped), so a taken port fails before the model loads."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise OSError(f"cannot listen on --host {host}: {error}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    continue
                raise OSError(f"cannot listen on {address[0]} port {port}: {error.strerror or error} (another "
                              "server holds it? choose another --port)") from None


def _cmd_serve(args) -> int:
    name = resolve_model(args.model, what="MODEL")
    try:
        check_port(args.host, args.port)
    except OSError as error:
        raise UsageError(str(error)) from None
    _load_package()
    try:
        from .server import serve
    except ImportError as error:
        raise UsageError(
            f"`photon-hf serve` needs the serving extra: from a checkout, pip install \".[serving]\" ({error})"
        ) from None
    serve(
        name, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
        max_cache_len=args.max_cache_len, align_phases=not args.mixed_phases, compile=args.compile,
        device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log_level=args.log_level,
        default_seed=args.default_seed, enable_cors=args.enable_cors,
        api_key=args.api_key, admin_routes=args.enable_admin_routes,
        shutdown_timeout=args.shutdown_timeout,
    )
    return 0


# -------------------------------------------------------------------------------------------------- main
# Each command: a function that adds its subparser (options, help, and its handler as `handler`), in the order of
# `photon-hf --help`. A handler checks what it can first, then calls `_load_package()` and imports the heavy modules.
COMMANDS = (
    _add_quickstart_parser, _add_train_parser, _add_generate_parser, _add_export_parser, _add_info_parser,
    _add_serve_parser,
)


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
    for add_parser in COMMANDS:
        add_parser(subparsers)
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
    except UsageError as error:
        if args.traceback:
            raise
        print(f"photon-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as error:  # OSError: files, downloads and from_pretrained's errors
        if args.traceback:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"photon-hf {args.command}: error: {message}", file=sys.stderr)
        print("(run `photon-hf --traceback ...` for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
