"""`TrainJob`: one training run, and the home of every training default and of the help text of `photon-hf train`.

Plain Python, importable without torch or transformers (the command line builds its options from it before
loading anything); `photon_hf.training.run_training` carries a job out.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from .presets import PHOTON_PRESETS

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from .configuration_photon import PhotonConfig

LORA = "LoRA (fine-tuning a saved --model)"
CHECKPOINTS = "evaluation and checkpoints"
DEFAULT_MAX_STEPS = 1000  # `max_steps` of an in-memory run that sets none (a streamed run must set it)


def _option(default=dataclasses.MISSING, group: str | None = None, *, help: str, **argparse_settings):
    """A `TrainJob` field with its `photon-hf train` option: the help text, the option group, and any other argparse
    setting (`metavar`, `choices`, `nargs`, `flag` for another name than --field-name). A callable default is a
    default factory."""
    metadata = {"help": help, "group": group, **argparse_settings}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainJob:
    """One training run, as `run_training` carries it out (`photon-hf train` parses its flags into one).

    The field defaults are the defaults of every PHOTON training run, and each field's metadata holds its help
    text: `photon-hf train` makes one option of each field (`--max-steps` for `max_steps`, with the field's type,
    default and help), and `training_arguments` reads the defaults, so a default changes here and nowhere else.
    Bad values raise a `ValueError` naming the field when the job is built, before any data or model is loaded.

    Data: `dataset` is "stdlib" (the Python standard library's source), local text files or a Hub dataset name;
    `eval_blocks` validation blocks are kept, evenly spread (0 = all). With `streaming` the documents are read,
    tokenized and packed as training consumes them (`photon_hf.data.training_stream`), nothing is held in memory or
    the `datasets` cache, `max_steps` must be given, and the validation set is the first `eval_blocks` blocks of the
    held-out documents. Model: a new model of shape `size` (a
    `PHOTON_PRESETS` name) with `overrides` applied to its config, or a saved one (`model`, a folder); `lora_r` > 0
    trains a LoRA adapter on a saved model instead of all weights. `max_minutes` also stops on time, with a
    learning rate that decays by time or steps, whichever runs out first. `save_checkpoints=False` keeps no
    `checkpoint-*` folder (optimizer state) in `output_dir`, only the final model; `resume` ("last" or a checkpoint
    folder) continues a run that kept them.
    """

    output_dir: str = _option(help="folder for checkpoints and the final model")
    # data
    dataset: str = _option(
        "stdlib", "data", metavar="SOURCE",
        help="'stdlib' (the Python standard library's source, no download), a local .txt/.jsonl/.json file, a folder "
             "of them or a glob, or a Hugging Face dataset name (needs the Hub)",
    )
    dataset_config: str | None = _option(None, "data", metavar="NAME",
                                         help="configuration of a Hub dataset (e.g. wikitext-2-raw-v1)")
    validation_data: str | None = _option(
        None, "data", metavar="SOURCE",
        help="separate local validation files (default: the dataset's validation split, else held-out documents)",
    )
    text_column: str = _option("text", "data", help="column / JSON field holding the text")
    validation_fraction: float = _option(0.05, "data",
                                         help="share of documents held out when the source has no validation split")
    max_files: int | None = _option(None, "data", metavar="N",
                                    help="stdlib corpus only: use the first N files per split")
    block_size: int = _option(256, "data", help="tokens per training block")
    eval_blocks: int = _option(
        64, "data", help="validation blocks per evaluation, evenly spread over the split (with --streaming: its first "
                         "blocks); 0 = all",
    )
    streaming: bool = _option(
        False, "data",
        help="read, tokenize and pack the dataset on the fly as training consumes it (local files, folders, Hub "
             "datasets, stdlib), holding no copy in memory or the datasets cache; needs --max-steps",
    )
    shuffle_buffer: int = _option(
        1000, "data", metavar="BLOCKS",
        help="with --streaming: blocks in the shuffle buffer (the shard order is shuffled too); 0 keeps the corpus's "
             "order",
    )
    tokenizer: str = _option(
        "bytes", "data",
        help="'bytes' (the built-in byte-level tokenizer, no download) or an AutoTokenizer name or folder; ignored "
             "with --model, which brings its own",
    )
    num_proc: int | None = _option(None, "data", help="processes for tokenizing (datasets.map num_proc)")
    # model
    model: str | None = _option(
        None, "model", metavar="PATH",
        help="continue from a saved PHOTON model (a folder from `photon-hf train` or save_pretrained); default: a new "
             "model of --size",
    )
    size: str = _option(
        "small", "model", choices=tuple(PHOTON_PRESETS),
        help="shape of a new model; tiny/small/base suit CPUs, photon-* are the paper's",
    )
    overrides: dict = _option(
        dict, "model", flag="--set", metavar="KEY=VALUE",
        help="override a PhotonConfig field of a new model, e.g. --set hidden_size=96 --set chunk_sizes=[4,2]",
    )
    # LoRA
    lora_r: int = _option(0, LORA, help="LoRA rank; 0 trains all weights")
    lora_alpha: float | None = _option(None, LORA, help="LoRA alpha (default: 2 x rank)")
    lora_dropout: float = _option(0.0, LORA, help="dropout on the LoRA input")
    lora_chunker: bool = _option(False, LORA, help="also adapt each level's chunker")
    lora_converter: bool = _option(False, LORA, help="also adapt each level's converter")
    # optimisation
    max_steps: int | None = _option(
        None, "optimisation", metavar="N",
        help=f"optimizer steps (default: {DEFAULT_MAX_STEPS}; required with --streaming)",
    )
    max_minutes: float | None = _option(
        None, "optimisation",
        help="also stop after this many minutes of training; the learning rate then decays by time or steps, "
             "whichever runs out first",
    )
    batch_size: int = _option(16, "optimisation", help="blocks per device and step")
    grad_accum: int = _option(1, "optimisation", help="gradient accumulation steps")
    learning_rate: float | None = _option(
        None, "optimisation",
        help="peak learning rate (default: photon_hf.training.default_learning_rate: 1e-3 x 128 / hidden size; "
        "with a look-back, 1e-3 x sqrt(128 / hidden size) above 128)",
    )
    warmup: float = _option(0.05, "optimisation", help="warmup steps, or a fraction of --max-steps if < 1")
    weight_decay: float = _option(0.1, "optimisation", help="AdamW weight decay")
    adam_beta2: float = _option(0.95, "optimisation", help="AdamW beta2")
    lr_scheduler_type: str = _option("cosine", "optimisation", help="transformers learning-rate schedule")
    max_grad_norm: float = _option(1.0, "optimisation", help="gradient clipping norm")
    gradient_checkpointing: bool = _option(False, "optimisation", help="recompute activations to save memory")
    bf16: bool | None = _option(None, "optimisation",
                                help="bf16 mixed precision (default: on where the GPU supports it)")
    deepspeed: str | None = _option(
        None, "optimisation", metavar="CONFIG",
        help="DeepSpeed config file, e.g. examples/accelerate/deepspeed_zero3.json (ZeRO-3); start the command with "
             "torchrun or accelerate launch",
    )
    seed: int = _option(
        0, "optimisation",
        help="random seed of the new model's weights, the data order and dropout: equal seeds give equal runs",
    )
    # evaluation and checkpoints
    eval_steps: int = _option(100, CHECKPOINTS, help="evaluate every N steps")
    logging_steps: int = _option(10, CHECKPOINTS, help="log every N steps")
    save_steps: int = _option(500, CHECKPOINTS, help="checkpoint every N steps")
    save_total_limit: int = _option(2, CHECKPOINTS, help="checkpoints kept in --output-dir")
    save_checkpoints: bool = _option(
        True, CHECKPOINTS,
        help="keep checkpoint-* folders (weights and optimizer state) in --output-dir to resume from",
    )
    resume: str | None = _option(
        None, CHECKPOINTS, nargs="?", const="last", metavar="CHECKPOINT",
        help="resume from a checkpoint folder, or (no value) from the last checkpoint in --output-dir",
    )

    def __post_init__(self):
        def flag(name: str) -> str:
            return FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-"))

        def check(name: str, ok: bool, requirement: str):
            if not ok:
                raise ValueError(f"`{name}` ({flag(name)}) must be {requirement}, got {getattr(self, name)!r}.")

        def positive_int(name: str, optional: bool = False, minimum: int = 1):
            value = getattr(self, name)
            if optional and value is None:
                return
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            check(name, ok, f"an int >= {minimum}" + (" or None" if optional else ""))

        check("output_dir", bool(self.output_dir), "a folder name")
        check("size", self.size in PHOTON_PRESETS, f"one of {', '.join(PHOTON_PRESETS)}")
        check("validation_fraction", 0 < self.validation_fraction < 1, "between 0 and 1")
        positive_int("block_size", minimum=2)
        for name in ("batch_size", "grad_accum", "eval_steps", "logging_steps", "save_steps"):
            positive_int(name)
        for name in ("max_files", "num_proc", "save_total_limit", "max_steps"):
            positive_int(name, optional=True)
        positive_int("eval_blocks", minimum=0)
        positive_int("shuffle_buffer", minimum=0)
        positive_int("lora_r", minimum=0)
        check("learning_rate", self.learning_rate is None or self.learning_rate > 0, "> 0 or None")
        check("warmup", self.warmup >= 0, ">= 0")
        check("weight_decay", self.weight_decay >= 0, ">= 0")
        check("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)")
        check("max_minutes", self.max_minutes is None or self.max_minutes > 0, "> 0 or None")
        if self.lora_r > 0 and not self.model:
            raise ValueError(
                "LoRA (`lora_r` > 0, --lora-r) adapts a trained model: set `model` (--model PATH) to a folder saved by "
                "`photon-hf train`."
            )
        if self.model and self.overrides:
            raise ValueError(
                "`overrides` (--set) change the shape of a new model; they cannot be combined with `model` (--model)."
            )
        if self.max_minutes and self.resume:
            raise ValueError(
                "`max_minutes` (--max-minutes) starts a new time budget and cannot resume one: resume with `max_steps` "
                "(--max-steps) only."
            )
        if not self.model:
            from .training import model_config

            model_config(self.size, **self.overrides)  # a bad `overrides` value raises its ValueError here
        if self.deepspeed is not None and not os.path.isfile(self.deepspeed):
            raise ValueError(
                f"`deepspeed` (--deepspeed) {self.deepspeed!r} is not a file; pass a DeepSpeed JSON config."
            )
        if self.resume and not self.save_checkpoints:
            raise ValueError(
                "`resume` (--resume) continues from checkpoints, so it needs `save_checkpoints=True` "
                "(--save-checkpoints)."
            )
        if self.streaming:
            if self.max_steps is None:
                raise ValueError(
                    "`max_steps` (--max-steps) is required with `streaming` (--streaming): a stream has no length to "
                    "count epochs by, so say how many optimizer steps to train."
                )
            if self.eval_blocks == 0:
                raise ValueError(
                    "`eval_blocks` (--eval-blocks) must be > 0 with `streaming` (--streaming): the validation set is "
                    "the first blocks of a stream, which has no end to read to."
                )
            if self.num_proc is not None:
                raise ValueError(
                    "`num_proc` (--num-proc) does not apply to `streaming` (--streaming): each process packs its own "
                    "stream as it trains."
                )
        elif self.max_steps is None:
            self.max_steps = DEFAULT_MAX_STEPS

    def training_arguments(self, config: PhotonConfig | None = None) -> TrainingArguments:
        """The `TrainingArguments` of this job for a model with `config` (which sets the default learning rate)."""
        from .training import default_learning_rate, training_arguments

        return training_arguments(
            self.output_dir,
            config=config,
            bf16=self.bf16,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.learning_rate or default_learning_rate(config),
            warmup_steps=self.warmup,
            weight_decay=self.weight_decay,
            adam_beta2=self.adam_beta2,
            lr_scheduler_type=self.lr_scheduler_type,
            max_grad_norm=self.max_grad_norm,
            max_steps=self.max_steps,
            eval_steps=self.eval_steps,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_checkpoints else "no",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            gradient_checkpointing=self.gradient_checkpointing,
            deepspeed=self.deepspeed,
            seed=self.seed,
        )


FIELDS = {field.name: field for field in dataclasses.fields(TrainJob)}

# The quickstart's own defaults: a few minutes of the "small" shape on a CPU (at `default_learning_rate`), and no
# checkpoint left behind (`photon-hf quickstart --save-checkpoints` keeps them).
QUICKSTART_DEFAULTS = dict(minutes=3.0, size="small", block_size=256, batch_size=16, learning_rate=None)
