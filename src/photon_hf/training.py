"""Training PHOTON with the stock `transformers.Trainer`.

Nothing here replaces a Trainer piece (but the training dataloader of a stream already split between processes,
`PerProcessStreamTrainer`); these are the few things a PHOTON run needs around it:

* `TrainJob` and `run_training`: one whole run (data, model or LoRA adapter, Trainer, time budget, resume, saving),
  the body of `photon-hf train` and of the quickstart. `TrainJob`'s field defaults are the defaults of every
  training run; `training_arguments` reads them too;
* `model_config`: a `PhotonConfig` of a named shape (`PHOTON_PRESETS`) whose vocabulary and special tokens match a
  tokenizer;
* `training_arguments`: `TrainingArguments` with those defaults (bf16 where the device supports it, evaluation and
  saving every `eval_steps` / `save_steps`, nothing reported to external trackers);
* `build_trainer`: a `Trainer` wired with the packed-block collator and evaluation perplexity
  (`compute_metrics=compute_perplexity`, `preprocess_logits_for_metrics=preprocess_logits_for_perplexity`);
* `TimeBudgetCallback` and `TimeBudgetSchedule`: stop after a wall-clock budget with a learning rate that has
  decayed by then (the quickstart trains "for a few minutes"); `steps_in_time` and `torch_threads` plan such a run.

Gradient accumulation is exact: `PhotonForCausalLM.forward` takes `**kwargs`, so the Trainer passes
`num_items_in_batch` (the label count of the whole accumulated batch) and the loss is a sum divided by it.
Gradient checkpointing (`TrainingArguments(gradient_checkpointing=True)`) recomputes each `PhotonBlock`. For data
parallel runs start the same script with `torchrun` or `accelerate launch`; a stream split between the processes
(`photon_hf.data.training_stream`) trains with `PerProcessStreamTrainer`. `fully_shard_model` shards a model with
FSDP2 without accelerate (on CPU processes too). docs/training.md covers streaming, the launchers, DDP, FSDP2 and
DeepSpeed ZeRO-2/3.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.utils import logging

from .configuration_photon import PhotonConfig
from .presets import photon_preset
from .train_job import DEFAULT_MAX_STEPS, TrainJob

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------------ the defaults
# PHOTON's peak learning rate at hidden size 128, measured with 4K-token batches (docs/quality.md); other widths
# scale it by 128 / hidden_size, or with a token look-back by sqrt(128 / hidden_size) above 128
# (`default_learning_rate`).
REFERENCE_WIDTH, REFERENCE_LEARNING_RATE = 128, 1e-3


def default_learning_rate(config: PhotonConfig | None = None) -> float:
    """PHOTON's default peak learning rate: `REFERENCE_LEARNING_RATE` at `REFERENCE_WIDTH`, times
    `REFERENCE_WIDTH / config.hidden_size` (1e-3 at 128, 2.5e-4 at 512; the reference width without a config).

    Adam moves every weight by about the learning rate per step, so a layer's outputs move by about lr x fan-in: at a
    fixed learning rate a wider PHOTON takes bigger steps. Too big, and the residual streams behind PHOTON's
    interfaces (every stack's final norm) grow within a few dozen steps until each latent is nearly the same vector
    at every position: the hierarchy then carries nothing and the token decoder learns alone (docs/quality.md, with
    the measurements). Keeping lr x hidden_size constant keeps that step the same at every width, the learning-rate
    rule of muP for hidden layers. Measured with batches of about 4K tokens; larger batches take larger rates.

    With a token look-back (`config.decoder_lookback > 0`) the measured best falls more slowly with width: the same
    1e-3 at 128 but 5e-4 at 512, twice the default's 2.5e-4 (at 2.5e-4 its perplexity per byte was 10% higher);
    probably because its token decoder reads the last tokens directly and leans less on the latents that a large
    step collapses. Above the
    reference width the rate is therefore `REFERENCE_LEARNING_RATE * sqrt(REFERENCE_WIDTH / hidden_size)`, which
    meets both measurements and a third taken since (7.07e-4 at 256, the best of 5e-4, 7.07e-4 and 1e-3); at or
    below it, the default's.
    """
    width = REFERENCE_WIDTH if config is None else config.hidden_size
    rate = REFERENCE_LEARNING_RATE * REFERENCE_WIDTH / width
    if config is not None and config.decoder_lookback and width > REFERENCE_WIDTH:
        rate = REFERENCE_LEARNING_RATE * math.sqrt(REFERENCE_WIDTH / width)
    return rate


def model_config(size: str = "small", tokenizer=None, **overrides) -> PhotonConfig:
    """A `PhotonConfig` of a named shape (`PHOTON_PRESETS`: the small CPU shapes "tiny", "small", "base" or the
    paper's "photon-600m", ...), with the vocabulary size and pad/bos/eos ids of `tokenizer` when given, and any
    field overridden."""
    fields = {}
    if tokenizer is not None:
        fields.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    fields.update(overrides)
    return photon_preset(size, **fields)


def bf16_available() -> bool:
    """Whether mixed-precision bf16 training is supported and worth it here (a CUDA device with bf16)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accelerator_available() -> bool:
    """Whether torch sees a GPU-like accelerator (CUDA, ROCm, XPU, MPS, ...)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def training_arguments(output_dir: str, *, config: PhotonConfig | None = None, bf16: bool | None = None,
                       **overrides) -> TrainingArguments:
    """`TrainingArguments` for a PHOTON run, with `TrainJob`'s defaults and the learning rate
    `default_learning_rate(config)`. `bf16=None` turns bf16 on where `bf16_available()`; every other field can be
    overridden by keyword (e.g. `learning_rate=5e-4`, `gradient_accumulation_steps=4`, `gradient_checkpointing=True`).

    On a machine without an accelerator `use_cpu=True` is set: only then does `accelerate` treat processes started by
    `torchrun` / `accelerate launch` as one data-parallel job (gloo) instead of independent runs.
    """
    if bf16 is None:
        bf16 = bf16_available()
    fields = dict(
        output_dir=output_dir,
        per_device_train_batch_size=TrainJob.batch_size,
        per_device_eval_batch_size=TrainJob.batch_size,
        learning_rate=default_learning_rate(config),
        weight_decay=TrainJob.weight_decay,
        adam_beta2=TrainJob.adam_beta2,
        warmup_steps=TrainJob.warmup,
        lr_scheduler_type=TrainJob.lr_scheduler_type,
        max_grad_norm=TrainJob.max_grad_norm,
        max_steps=DEFAULT_MAX_STEPS,
        logging_steps=TrainJob.logging_steps,
        eval_strategy="steps",
        eval_steps=TrainJob.eval_steps,
        save_strategy="steps",
        save_steps=TrainJob.save_steps,
        save_total_limit=TrainJob.save_total_limit,
        bf16=bf16,
        use_cpu=not accelerator_available(),
        report_to="none",
    )
    fields.update(overrides)
    # transformers 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ and "gradient_checkpointing" in fields:
        fields.setdefault("activation_checkpointing", fields.pop("gradient_checkpointing"))
    return TrainingArguments(**fields)


def preprocess_logits_for_perplexity(logits, labels: torch.Tensor) -> torch.Tensor:
    """`Trainer(preprocess_logits_for_metrics=...)`: reduce each eval batch to per-row (summed next-token negative
    log-likelihood, counted tokens), a [B, 2] float tensor, instead of keeping [B, T, V] logits."""
    if isinstance(logits, (tuple, list)):  # extra outputs (e.g. the recursive loss) follow the logits
        logits = logits[0]
    shifted = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=-100, reduction="none"
    )
    counted = shifted != -100
    return torch.stack([(nll * counted).sum(1), counted.sum(1).to(nll.dtype)], dim=1)


def compute_perplexity(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` after `preprocess_logits_for_perplexity`: the token-weighted mean loss
    ("token_loss") and its exponential ("perplexity"), logged as `eval_token_loss` / `eval_perplexity`."""
    sums = np.asarray(eval_prediction.predictions, dtype=np.float64).reshape(-1, 2).sum(0)
    if sums[1] == 0:
        raise ValueError("The evaluation set has no labelled token; check its `labels` (all -100?).")
    token_loss = float(sums[0] / sums[1])
    return {"token_loss": token_loss, "perplexity": perplexity(token_loss)}


def perplexity(loss: float) -> float:
    """exp(loss), `inf` where it overflows (a post-evaluation helper: `perplexity(metrics["eval_loss"])`)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class TimeBudgetSchedule:
    """A learning-rate factor for `torch.optim.lr_scheduler.LambdaLR` that ends on time: linear warmup over
    `warmup_steps`, then a cosine decay to zero driven by the larger of two progress fractions, the wall time since
    the first step over `seconds` and the step over `max_steps`.

    With `TimeBudgetCallback(seconds / 60)` a run stops on time and still ends with a decayed learning rate, however
    fast the machine turns out to be. Install it before `train()`:
    `trainer.create_optimizer(); trainer.lr_scheduler = LambdaLR(trainer.optimizer, TimeBudgetSchedule(...))`.
    """

    def __init__(self, seconds: float, max_steps: int, warmup_steps: int = 0):
        if seconds <= 0 or max_steps < 1:
            raise ValueError(f"Need a positive time budget and max_steps, got {seconds} s and {max_steps} steps.")
        self.seconds = float(seconds)
        self.max_steps = int(max_steps)
        self.warmup_steps = int(warmup_steps)
        self.started: float | None = None

    def __call__(self, step: int) -> float:
        if step == 0:  # LambdaLR evaluates step 0 when it is built, before training starts
            return 1.0 / (self.warmup_steps + 1) if self.warmup_steps else 1.0
        if self.started is None:
            self.started = time.monotonic()
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = max((time.monotonic() - self.started) / self.seconds, step / self.max_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class TimeBudgetCallback(TrainerCallback):
    """Stop training (and save and evaluate, as at the end of any run) once `minutes` of wall time have passed
    since training began."""

    def __init__(self, minutes: float):
        if minutes <= 0:
            raise ValueError(f"The time budget must be positive, got {minutes} minutes.")
        self.seconds = minutes * 60.0
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None and time.monotonic() - self.started >= self.seconds:
            logger.info(f"Time budget of {self.seconds / 60:.1f} minutes reached at step {state.global_step}.")
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            control.should_evaluate = args.eval_strategy != "no"
        return control


class PerProcessStreamTrainer(Trainer):
    """The stock `Trainer`, for a training stream that is already this process's share of the data
    (`photon_hf.data.training_stream` with `rank` and `world_size`, i.e. `datasets.distributed.split_dataset_by_node`).

    `accelerate` splits every `IterableDataset` it prepares between the processes once more (it shards the stream, or
    keeps one slice of each batch: accelerate issue #3547), which would drop part of each process's share, so the
    training dataloader here batches this process's blocks as they are; everything else is the stock `Trainer`'s.
    """

    def get_train_dataloader(self):
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        # One process's view: accelerate's device placement and gradient-accumulation bookkeeping, no split.
        return prepare_data_loader(
            loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )


def is_split_per_process(dataset) -> bool:
    """Whether `dataset` is a stream that `datasets.distributed.split_dataset_by_node` gave one process."""
    return getattr(dataset, "_distributed", None) is not None


def build_trainer(
    model,
    args: TrainingArguments,
    train_dataset=None,
    eval_dataset=None,
    tokenizer=None,
    callbacks: list | None = None,
    perplexity_metrics: bool = True,
) -> Trainer:
    """A stock `Trainer` for packed blocks (`photon_hf.data.pack_dataset`): `default_data_collator`, the
    tokenizer saved with every checkpoint, and (`perplexity_metrics`) evaluation perplexity. A training stream
    split between processes (`photon_hf.data.training_stream`) gets a `PerProcessStreamTrainer`, which keeps the
    split as it is."""
    trainer_class = PerProcessStreamTrainer if is_split_per_process(train_dataset) else Trainer
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_perplexity if perplexity_metrics else None,
        preprocess_logits_for_metrics=preprocess_logits_for_perplexity if perplexity_metrics else None,
        callbacks=callbacks,
    )


# ------------------------------------------------------------------------------------- FSDP2 without accelerate
def fully_shard_model(model, mesh=None, **fsdp_kwargs):
    """Shard `model` in place with FSDP2 (`torch.distributed.fsdp.fully_shard`) as accelerate's FSDP2 plugin would:
    one unit per module of a class the model lists in `_no_split_modules` (every `PhotonBlock`), and the rest
    (embeddings, chunkers, converters, norms, start latents, LM head) in the root unit. Returns `model`.

    accelerate's FSDP plugin needs GPUs (CPU processes fall back to plain DDP without a word), so this is the route
    that shards on CPU processes (gloo) too, with a training loop of one's own (`examples/pretrain_fsdp2.py`).
    `mesh` defaults to every process of the default process group; `fsdp_kwargs` (e.g. `mp_policy`,
    `reshard_after_forward`) go to each `fully_shard` call. FSDP2 averages gradients over the processes.
    """
    from torch.distributed.fsdp import fully_shard

    unit_classes = set(model._no_split_modules or ())
    for module in reversed(list(model.modules())):  # children before their parents, as accelerate does
        if module is not model and type(module).__name__ in unit_classes:
            fully_shard(module, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole weights of a model sharded by `fully_shard_model`, on the CPU, in every process (all processes must
    call it: it gathers the shards). `PhotonForCausalLM(config).load_state_dict(...)` takes them back unsharded."""
    return {
        name: (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().cpu()
        for name, tensor in model.state_dict().items()
    }


# ------------------------------------------------------------------------------------------------ a whole run
def run_training(job: TrainJob, callbacks: list | None = None) -> dict:
    """Carry out one `TrainJob`: prepare the data, build or load the model (with a LoRA adapter when `lora_r` > 0),
    train with a stock `Trainer`, evaluate, and save the model, tokenizer, `eval_results.json` and the training
    record (`photon_training.json`, read by `photon-hf export`) to `job.output_dir`. Returns the final evaluation
    metrics (`eval_loss`, `eval_perplexity`, ...)."""
    from transformers import set_seed

    from .hub import TRAINING_INFO_FILE

    resume = resume_checkpoint(job)
    set_seed(job.seed)  # the new model's weights (and a LoRA adapter's); the Trainer seeds the data order and dropout
    model, tokenizer = load_model_and_tokenizer(job)
    meta = model.config.tokens_per_unit[-1]
    if job.block_size % meta:
        logger.warning(
            f"block_size {job.block_size} is not a multiple of {meta} tokens (one top-level unit); each block is "
            "padded inside the model, which wastes compute."
        )
    model = apply_lora(model, job)
    training_args = job.training_arguments(model.config)
    corpus, train, validation = prepare_data(job, tokenizer, training_args)
    callbacks = list(callbacks or [])
    if job.max_minutes:
        callbacks.append(TimeBudgetCallback(job.max_minutes))
    trainer = build_trainer(model, training_args, train, validation, tokenizer, callbacks=callbacks)
    if job.max_minutes:
        from torch.optim.lr_scheduler import LambdaLR

        trainer.create_optimizer()
        warmup = training_args.get_warmup_steps(job.max_steps)
        schedule = TimeBudgetSchedule(job.max_minutes * 60, job.max_steps, warmup)
        trainer.lr_scheduler = LambdaLR(trainer.optimizer, schedule)
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        final = trainer.model
        if job.lora_r > 0:  # keep the adapter, and save the merged model as the run's model
            final.save_pretrained(Path(job.output_dir) / "adapter")
            final = final.merge_and_unload()
        final.save_pretrained(job.output_dir)
        tokenizer.save_pretrained(job.output_dir)
        streamed = None
        if job.streaming:
            blocks_per_step = training_args.train_batch_size * job.grad_accum * training_args.world_size
            streamed = (trainer.state.global_step * blocks_per_step, len(validation))
        dataset_name, description = _describe_source(job.dataset, corpus, streamed)
        info = {
            "dataset_name": dataset_name,
            "training_data": description,
            "datasets": [job.dataset] if _is_hub_name(job.dataset) else [],
            "train_steps": trainer.state.global_step,
            "block_size": job.block_size,
        }
        (Path(job.output_dir) / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return metrics


def resume_checkpoint(job: TrainJob) -> str | None:
    """The checkpoint folder `job.resume` names ("last": the newest `checkpoint-*` in `job.output_dir`), or None."""
    if job.resume is None:
        return None
    if job.resume != "last":
        if not Path(job.resume).is_dir():
            raise ValueError(f"`resume` (--resume) {job.resume!r} is not a checkpoint folder.")
        return job.resume
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(job.output_dir) if Path(job.output_dir).is_dir() else None
    if last is None:
        raise ValueError(
            f"`resume` (--resume) found no checkpoint-* folder in {job.output_dir!r}; drop --resume (`resume=None`) to "
            "start afresh, or pass the checkpoint folder to resume from."
        )
    return last


def load_model_and_tokenizer(job: TrainJob):
    """The saved model of `job.model` and its tokenizer, or a new model of `job.size` (with `job.overrides`) and the
    tokenizer `job.tokenizer` names."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import load_tokenizer
    from .modeling_photon import PhotonForCausalLM

    if job.model:
        if not Path(job.model).is_dir():
            raise FileNotFoundError(
                f"`model` (--model) {job.model!r} is not a folder; pass a folder saved by `photon-hf train`."
            )
        model = AutoModelForCausalLM.from_pretrained(job.model, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(job.model)
    tokenizer = load_tokenizer(job.tokenizer)
    overrides = dict(job.overrides)
    overrides.setdefault("max_position_embeddings", max(job.block_size, 2048))
    return PhotonForCausalLM(model_config(job.size, tokenizer, **overrides)), tokenizer


def apply_lora(model, job: TrainJob):
    """`model` wrapped in a PEFT LoRA adapter of rank `job.lora_r` (unchanged when it is 0)."""
    if job.lora_r <= 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError(
            "LoRA needs PEFT: install the training extras (pip install '.[train]' in a photon_hf checkout, or pip "
            "install peft)."
        ) from error
    from .lora import lora_target_modules

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=job.lora_r,
        lora_alpha=job.lora_alpha if job.lora_alpha is not None else 2 * job.lora_r,
        lora_dropout=job.lora_dropout,
        target_modules=lora_target_modules(job.lora_chunker, job.lora_converter),
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def prepare_data(job: TrainJob, tokenizer, training_args: TrainingArguments):
    """(documents, packed training blocks, packed validation blocks) of `job`; the main process goes first, so
    that other processes of a distributed run reuse its `datasets` cache.

    With `job.streaming` the documents are `IterableDataset`s, the training blocks this process's endless share of
    the packed stream (`training_stream`: shuffled with `job.seed`, split between the processes), and the validation
    blocks the first `job.eval_blocks` of the held-out stream, in memory."""
    from .data import first_blocks, load_text_corpus, pack_dataset, training_stream

    source = dict(
        name=job.dataset_config,
        validation_source=job.validation_data,
        text_column=job.text_column,
        validation_fraction=job.validation_fraction,
        max_files=job.max_files,
    )
    if job.streaming:
        corpus = load_text_corpus(job.dataset, streaming=True, **source)
        blocks = pack_dataset(corpus, tokenizer, job.block_size, text_column=job.text_column)
        validation = first_blocks(blocks["validation"], job.eval_blocks)
        train = training_stream(
            blocks["train"], seed=job.seed, shuffle_buffer=job.shuffle_buffer, rank=training_args.process_index,
            world_size=training_args.world_size,
        )
        return corpus, train, validation
    with training_args.main_process_first(desc="preparing the dataset"):
        corpus = load_text_corpus(job.dataset, num_proc=job.num_proc, **source)
        pack = dict(text_column=job.text_column, num_proc=job.num_proc)
        train = pack_dataset(corpus["train"], tokenizer, job.block_size, **pack)
        validation = pack_dataset(
            corpus["validation"], tokenizer, job.block_size, max_blocks=job.eval_blocks or None, **pack
        )
    return corpus, train, validation


def _is_hub_name(source: str) -> bool:
    """Whether a `dataset` value names a Hub dataset (not the embedded corpus, a local path or a glob)."""
    return source != "stdlib" and not os.path.exists(source) and not glob.has_magic(source)


def _describe_source(source: str | None, corpus, streamed: tuple[int, int] | None = None) -> tuple[str, str]:
    """(short dataset name, one-paragraph description) of a training corpus, for the model card. `streamed`: (blocks
    trained on, validation blocks) of a streamed run, whose documents are not counted."""
    stdlib = source in (None, "stdlib")
    if streamed is not None:
        unit = "files" if stdlib else "documents"
        amount = f"streamed: {streamed[0]} training blocks, validated on {streamed[1]} blocks of held-out {unit}"
    elif stdlib:
        amount = (f"{len(corpus['train'])} files for training and {len(corpus['validation'])} held-out files for "
                  "validation")
    else:
        amount = f"{len(corpus['train'])} training documents and {len(corpus['validation'])} validation documents"
    if stdlib:
        version = ".".join(map(str, sys.version_info[:2]))
        return (
            f"Python {version} standard library source",
            f"The Python {sys.version.split()[0]} standard library's own source files (the embedded default corpus "
            f"of photon_hf, read from the local installation): {amount}, split by a hash of each file's relative "
            "path.",
        )
    return source, f"`{source}`: {amount}."


# ------------------------------------------------------------------------------------------- runs on a budget
@contextlib.contextmanager
def torch_threads(count: int):
    """Inside the block torch uses `count` CPU threads; the previous count is restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def steps_in_time(job: TrainJob, seconds: float, min_steps: int = 20) -> tuple[int, int]:
    """Time a few training steps of a throwaway model of `job`'s shape (on the GPU when there is one; on a CPU with
    torch's default thread count and with one thread: on a machine busy with other work, one thread can be many
    times faster). Returns (CPU threads to train with, optimizer steps that fit in `seconds`); run the training
    inside `torch_threads(threads)`. The process's thread count is left as it was."""
    from .data import byte_tokenizer
    from .modeling_photon import PhotonForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Trainer will train
    config = model_config(job.size, byte_tokenizer(), max_position_embeddings=max(job.block_size, 2048))
    model = PhotonForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, config.vocab_size, (job.batch_size, job.block_size), device=device)

    def seconds_per_step(threads: int) -> float:
        timings = []
        with torch_threads(threads):
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
    return threads, max(min_steps, int(seconds / (options[threads] * job.grad_accum)))
