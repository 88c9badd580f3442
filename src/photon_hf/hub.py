"""Sharing PHOTON models on the Hugging Face Hub.

`export_for_hub` writes the folder a Hub repository needs so that anyone can load the model with stock
transformers, without installing photon_hf:

    model = AutoModelForCausalLM.from_pretrained("user/repo", trust_remote_code=True)

The folder holds the safetensors weights, `config.json` with an `auto_map` (AutoConfig, AutoModel,
AutoModelForCausalLM), the modeling, configuration and cache source files (flat relative imports, as
`trust_remote_code` requires), `generation_config.json`, the tokenizer files and a model card (`README.md`) whose
metadata and text give the paper, the training data, the measured evaluation loss and the KV-cache size.
`push_folder_to_hub` uploads it with the stock `huggingface_hub` client.

The remote-code registration (`register_for_auto_class`) happens only inside `auto_class_registration`, which
`export_for_hub` uses and undoes afterwards: at import time it would make transformers treat the installed package
as remote code. Use the same context manager around the stock `model.push_to_hub(...)` to upload the model with
its code (that path writes its own minimal model card).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from transformers import GenerationConfig
from transformers.utils import logging

from .memory import DEFAULT_CONTEXT_LENGTHS, cache_table, format_bytes
from .modeling_photon import PhotonForCausalLM, PhotonModel, PhotonPreTrainedModel

logger = logging.get_logger(__name__)

ARXIV_ID = "2512.20687"
AUTO_MAP = {
    "AutoConfig": "configuration_photon.PhotonConfig",
    "AutoModel": "modeling_photon.PhotonModel",
    "AutoModelForCausalLM": "modeling_photon.PhotonForCausalLM",
}
TRAINING_INFO_FILE = "photon_training.json"  # written by `photon-hf train`, read by `photon-hf export`

_MISSING = object()


@contextlib.contextmanager
def auto_class_registration(model: PhotonPreTrainedModel):
    """Inside the block, `model.save_pretrained` / `model.push_to_hub` also write the source files and an
    `auto_map` for AutoConfig, AutoModel and AutoModelForCausalLM. Everything is restored on exit."""
    model_class = type(model)
    if model_class is PhotonForCausalLM:
        auto_class = "AutoModelForCausalLM"
    elif model_class is PhotonModel:
        auto_class = "AutoModel"
    else:
        raise TypeError(
            f"Expected a PhotonForCausalLM or PhotonModel, got {model_class.__name__}. A PEFT model must be merged "
            "first: model = model.merge_and_unload()."
        )
    config = model.config
    config_class = type(config)
    saved = {
        "model_auto_class": model_class.__dict__.get("_auto_class", _MISSING),
        "config_auto_class": config_class.__dict__.get("_auto_class", _MISSING),
        "auto_map": config.__dict__.get("auto_map", _MISSING),
    }
    try:
        config_class.register_for_auto_class("AutoConfig")
        model_class.register_for_auto_class(auto_class)
        config.auto_map = dict(AUTO_MAP)
        yield model
    finally:
        for cls, key in ((model_class, "model_auto_class"), (config_class, "config_auto_class")):
            if saved[key] is _MISSING:
                if "_auto_class" in cls.__dict__:
                    delattr(cls, "_auto_class")
            else:
                cls._auto_class = saved[key]
        if saved["auto_map"] is _MISSING:
            config.__dict__.pop("auto_map", None)
        else:
            config.auto_map = saved["auto_map"]


def _metric(eval_results: dict | None, *names: str) -> float | None:
    for name in names:
        if eval_results and eval_results.get(name) is not None:
            return float(eval_results[name])
    return None


def model_card(
    model: PhotonPreTrainedModel,
    *,
    model_name: str = "PHOTON",
    repo_id: str | None = None,
    training_data: str | None = None,
    dataset_name: str | None = None,
    datasets: list[str] | None = None,
    eval_results: dict | None = None,
    context_lengths=DEFAULT_CONTEXT_LENGTHS,
    license: str = "apache-2.0",
    tokenizer_name: str | None = None,
):
    """A `huggingface_hub.ModelCard` for a PHOTON model: YAML metadata (`library_name`, `pipeline_tag`, tags with
    the paper's arXiv id, datasets, license, and a `model-index` with the evaluation loss and perplexity when
    `eval_results` has them) and a text with usage, shape, training data, evaluation and KV-cache size."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = model.config
    loss = _metric(eval_results, "eval_loss", "loss")
    token_loss = _metric(eval_results, "eval_token_loss")
    ppl = _metric(eval_results, "eval_perplexity", "perplexity")
    if ppl is None and loss is not None:
        ppl = math.exp(loss) if loss < 700 else float("inf")
    data_label = dataset_name or (datasets[0] if datasets else None) or "training data (validation split)"
    results = []
    if loss is not None:
        dataset_type = datasets[0] if datasets else "custom"
        for metric_type, value in (("loss", loss), ("perplexity", ppl)):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=dataset_type,
                    dataset_name=data_label,
                    dataset_split="validation",
                    metric_type=metric_type,
                    metric_value=round(value, 4),
                )
            )
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
        tags=["photon", "hierarchical-lm", "custom_code", f"arxiv:{ARXIV_ID}"],
        datasets=datasets or None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    where = repo_id or "path/to/this/folder"
    dtype = model.dtype
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        f"# {model_name}",
        "",
        f"A PHOTON hierarchical language model ([arXiv:{ARXIV_ID}](https://arxiv.org/abs/{ARXIV_ID}), \"Hierarchical "
        "Autoregressive Modeling for Lightspeed and Memory-Efficient Language Generation\"), packaged for Hugging Face "
        "transformers with the `photon_hf` package. A bottom-up encoder compresses every "
        f"{config.chunk_sizes[0]} tokens into a latent unit (and "
        f"{' x '.join(map(str, config.chunk_sizes[1:])) or 'no'} "
        "units above that into coarser ones); a top-down decoder expands them back to tokens, so only the coarsest "
        "stream keeps a cache that grows with the context.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}", trust_remote_code=True)',
        f'model = AutoModelForCausalLM.from_pretrained("{where}", trust_remote_code=True)',
        'inputs = tokenizer("def fibonacci(n):", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        "```",
        "",
        "`trust_remote_code=True` runs the modeling code stored in this repository (read it first, and pin a "
        "`revision=`); the tokenizer itself is a stock `tokenizers` one, but `AutoTokenizer` reads the model config "
        "first. Where the `photon_hf` package is installed, `import photon_hf` makes its own code load instead.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {parameters:,} |",
        f"| levels (chunk sizes C) | {config.num_levels} ({', '.join(map(str, config.chunk_sizes))}) |",
        f"| converter widths R | {', '.join(map(str, config.converter_width))} |",
        f"| hidden size / heads / KV heads | {config.hidden_size} / {config.num_attention_heads} / "
        f"{config.num_key_value_heads} |",
        f"| encoder / decoder layers per level | {', '.join(map(str, config.num_encoder_layers))} / "
        f"{', '.join(map(str, config.num_decoder_layers))} |",
        f"| vocabulary | {config.vocab_size}{f' ({tokenizer_name})' if tokenizer_name else ''} |",
        f"| weights dtype | {str(dtype).replace('torch.', '')} |",
        "",
        "## Training data",
        "",
        training_data or "Not recorded.",
        "",
        "## Evaluation",
        "",
    ]
    if loss is None:
        lines.append("No evaluation was recorded.")
    else:
        lines += [
            "Measured on the held-out validation split of the training data.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| loss (nats/token) | {loss:.4f} |",
            f"| perplexity | {ppl:.3f} |",
        ]
        if token_loss is not None:
            lines.append(f"| token-weighted loss | {token_loss:.4f} |")
    lines += [
        "",
        "## KV-cache memory",
        "",
        f"Per sequence, {str(dtype).replace('torch.', '')}, analytic (`photon_hf.kv_cache_bytes`) beside a Llama of "
        "the same width, heads and total depth (`photon_hf.llama_kv_cache_bytes`):",
        "",
        "| context (tokens) | PHOTON | same-shape Llama | ratio |",
        "|---|---|---|---|",
    ]
    for n, photon_bytes, llama_bytes in cache_table(config, context_lengths, dtype):
        lines.append(f"| {n:,} | {format_bytes(photon_bytes)} | {format_bytes(llama_bytes)} | "
                     f"{llama_bytes / photon_bytes:.1f}x |")
    lines += [
        "",
        "## Citation",
        "",
        "```bibtex",
        "@article{photon2025,",
        "  title   = {Hierarchical Autoregressive Modeling for Lightspeed and Memory-Efficient Language Generation},",
        f"  journal = {{arXiv preprint arXiv:{ARXIV_ID}}},",
        "  year    = {2025}",
        "}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def export_for_hub(
    model: PhotonPreTrainedModel,
    save_directory: str | os.PathLike,
    tokenizer=None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    training_data: str | None = None,
    dataset_name: str | None = None,
    datasets: list[str] | None = None,
    eval_results: dict | None = None,
    context_lengths=DEFAULT_CONTEXT_LENGTHS,
    license: str = "apache-2.0",
    max_shard_size: str | int = "5GB",
) -> Path:
    """Write the folder a Hub repository of this model needs, and return its path.

    Args:
        model: a `PhotonForCausalLM` (or `PhotonModel`); merge a PEFT model first (`merge_and_unload()`).
        save_directory: the folder (created if needed).
        tokenizer: saved beside the model (`tokenizer.json`, ...); its special tokens fill the ones the
            generation config lacks.
        model_name / repo_id: the card's title and the repository id its usage snippet loads from.
        training_data: a paragraph describing the training data, for the card.
        dataset_name: a short name of the evaluation data, for the card's `model-index`.
        datasets: Hub dataset ids for the card's metadata.
        eval_results: evaluation metrics (`Trainer.evaluate()` output: "eval_loss", optional
            "eval_perplexity"); the card reports them.
        context_lengths: the context lengths of the card's KV-cache table.
        license: the card's license.
        max_shard_size: passed to `save_pretrained`.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    with auto_class_registration(model):
        model.save_pretrained(save_directory, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
        _complete_generation_config(save_directory, tokenizer)
    name = model_name or (repo_id.split("/")[-1] if repo_id else "PHOTON")
    card = model_card(
        model,
        model_name=name,
        repo_id=repo_id,
        training_data=training_data,
        dataset_name=dataset_name,
        datasets=datasets,
        eval_results=eval_results,
        context_lengths=context_lengths,
        license=license,
        tokenizer_name=_tokenizer_label(tokenizer),
    )
    card.save(save_directory / "README.md")
    logger.info(f"Exported {type(model).__name__} for the Hub to {save_directory}.")
    return save_directory


def _tokenizer_label(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    from .data import is_byte_tokenizer

    return "byte-level: 256 bytes + <pad>, <bos>, <eos>" if is_byte_tokenizer(tokenizer) else type(tokenizer).__name__


def _complete_generation_config(folder: Path, tokenizer):
    """Give the saved generation config the tokenizer's pad/bos/eos ids where it has none."""
    path = folder / "generation_config.json"
    generation_config = GenerationConfig.from_pretrained(folder) if path.exists() else GenerationConfig()
    changed = False
    for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, field, None)
        if getattr(generation_config, field, None) is None and value is not None:
            setattr(generation_config, field, value)
            changed = True
    if changed or not path.exists():
        generation_config.save_pretrained(folder)


def read_training_info(folder: str | os.PathLike) -> dict:
    """What `photon-hf train` recorded in a model folder: the training-data description (`photon_training.json`)
    and the last evaluation metrics (`eval_results.json`, written by `Trainer.save_metrics`)."""
    folder = Path(folder)
    info: dict = {}
    for name in (TRAINING_INFO_FILE, "eval_results.json"):
        path = folder / name
        if path.exists():
            info.update(json.loads(path.read_text()))
    return info


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload PHOTON model",
):
    """Upload an exported folder to a Hub model repository (created if needed) with `huggingface_hub`; returns the
    commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
