"""Training PHOTON with the stock `transformers.Trainer`.

Nothing here replaces a Trainer piece; these are the few things a PHOTON run needs around it:

* `model_config`: a `PhotonConfig` of a named shape (`PHOTON_PRESETS`) whose vocabulary and special tokens match a
  tokenizer;
* `training_arguments`: `TrainingArguments` with defaults that suit small PHOTON runs (bf16 where the device
  supports it, evaluation and saving every `eval_steps`, nothing reported to external trackers);
* `build_trainer`: a `Trainer` wired with the packed-block collator and evaluation perplexity
  (`compute_metrics=compute_perplexity`, `preprocess_logits_for_metrics=preprocess_logits_for_perplexity`);
* `TimeBudgetCallback` and `TimeBudgetSchedule`: stop after a wall-clock budget with a learning rate that has
  decayed by then (the quickstart trains "for a few minutes").

Gradient accumulation is exact: `PhotonForCausalLM.forward` takes `**kwargs`, so the Trainer passes
`num_items_in_batch` (the label count of the whole accumulated batch) and the loss is a sum divided by it.
Gradient checkpointing (`TrainingArguments(gradient_checkpointing=True)`) recomputes each `PhotonBlock`. For data
parallel runs start the same script with `torchrun` or `accelerate launch` (see the README's "Training" section for
FSDP and DeepSpeed).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.utils import logging

from .configuration_photon import PhotonConfig, photon_preset

logger = logging.get_logger(__name__)

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


def training_arguments(output_dir: str, *, bf16: bool | None = None, **overrides) -> TrainingArguments:
    """`TrainingArguments` for a PHOTON run. `bf16=None` turns bf16 on where `bf16_available()`; every other
    field can be overridden by keyword (e.g. `gradient_accumulation_steps=4`, `gradient_checkpointing=True`).

    On a machine without an accelerator `use_cpu=True` is set: only then does `accelerate` treat processes started by
    `torchrun` / `accelerate launch` as one data-parallel job (gloo) instead of independent runs.
    """
    if bf16 is None:
        bf16 = bf16_available()
    fields = dict(
        output_dir=output_dir,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        learning_rate=2e-3,
        weight_decay=0.1,
        adam_beta2=0.95,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        max_steps=1000,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=100,
        save_strategy="steps",
        save_steps=500,
        save_total_limit=2,
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
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control


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
    tokenizer saved with every checkpoint, and (`perplexity_metrics`) evaluation perplexity."""
    return Trainer(
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
