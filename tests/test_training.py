"""Stock transformers.Trainer on PHOTON: exact gradient accumulation, gradient checkpointing, resuming,
perplexity, time budget, and a real learning check on the embedded corpus."""

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from train_helpers import max_difference, state, tiny_config, tiny_model
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

import photon_hf
from photon_hf import PHOTON_PRESETS, PhotonForCausalLM, photon_preset
from photon_hf.data import byte_tokenizer, load_text_corpus, pack_dataset
from photon_hf.modeling_photon import PhotonBlock
from photon_hf.train_job import DEFAULT_MAX_STEPS
from photon_hf.training import (
    TimeBudgetCallback,
    TrainJob,
    build_trainer,
    compute_perplexity,
    default_learning_rate,
    preprocess_logits_for_perplexity,
    run_training,
    torch_threads,
    training_arguments,
)


def _uneven_dataset(rows: int = 4, length: int = 40, seed: int = 0) -> Dataset:
    """Random blocks whose rows have different numbers of labelled tokens, so that a mean of per-micro-batch means
    differs from the mean over the whole accumulated batch."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 259, (rows, length), generator=generator)
    labels = ids.clone()
    labels[0, :30] = -100
    labels[3, 5:9] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def _args(tmp_path, **overrides) -> TrainingArguments:
    fields = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def _train(initial, config, dataset, tmp_path, model_hook=None, **overrides):
    model = photon_hf.PhotonForCausalLM(config)
    model.load_state_dict(initial)
    if model_hook is not None:
        model_hook(model)
    Trainer(model=model, args=_args(tmp_path, **overrides), train_dataset=dataset,
            data_collator=default_data_collator).train()
    return state(model)


@pytest.mark.parametrize("recursive_loss_weight", [0.0, 0.5])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, recursive_loss_weight):
    config = tiny_config(recursive_loss_weight=recursive_loss_weight)
    initial = state(photon_hf.PhotonForCausalLM(config))
    dataset = _uneven_dataset()
    seen = []

    def record_num_items(model):
        forward = model.forward

        @functools.wraps(forward)  # keeps the signature the Trainer inspects
        def spy(*args, **kwargs):
            seen.append(kwargs.get("num_items_in_batch"))
            return forward(*args, **kwargs)

        model.forward = spy

    one = _train(initial, config, dataset, tmp_path / "one", per_device_train_batch_size=4)
    accumulated = _train(initial, config, dataset, tmp_path / "ga", record_num_items, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2)
    assert max_difference(one, initial) > 1e-3  # it trained
    assert max_difference(one, accumulated) < 1e-6
    # The Trainer handed the forward the label count of the whole accumulated batch.
    labelled = sum(int((torch.tensor(row)[1:] != -100).sum()) for row in dataset["labels"])
    assert seen and all(int(n) == labelled for n in seen)

    # The check is sensitive: averaging per-micro-batch means (what a model that ignores num_items_in_batch
    # gets) moves the weights measurably.
    def ignore_num_items(model):
        model.accepts_loss_kwargs = False

    naive = _train(initial, config, dataset, tmp_path / "naive", ignore_num_items, per_device_train_batch_size=2,
                   gradient_accumulation_steps=2)
    assert max_difference(one, naive) > 1e-4


def test_gradient_checkpointing_same_gradients_and_weights(tmp_path):
    config = tiny_config(recursive_loss_weight=0.5)
    reference = tiny_model()
    checkpointed = tiny_model()
    # transformers 5.24 renamed the switch (the old name still works, with a FutureWarning).
    enable = getattr(checkpointed, "activation_checkpointing_enable", None)
    enable = enable or checkpointed.gradient_checkpointing_enable
    enable()
    assert checkpointed.model.gradient_checkpointing
    ids = torch.randint(0, 259, (3, 45), generator=torch.Generator().manual_seed(1))
    calls = []
    blocks = [m for m in checkpointed.modules() if isinstance(m, PhotonBlock)]
    for block in blocks:  # a hook inside the block: the recomputation in backward runs it again
        block.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    for model in (reference, checkpointed):
        model.train()
        model(ids, labels=ids).loss.backward()
    # Each block ran twice in the checkpointed model (forward, then recomputed in backward).
    assert len(calls) == 2 * len(blocks)
    for (name, a), (_, b) in zip(reference.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)

    initial = state(photon_hf.PhotonForCausalLM(config))
    dataset = _uneven_dataset(rows=8)
    plain = _train(initial, config, dataset, tmp_path / "plain", max_steps=3)
    with_gc = _train(initial, config, dataset, tmp_path / "gc", max_steps=3, gradient_checkpointing=True)
    assert max_difference(plain, with_gc) < 1e-6


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_continues_the_same_run(tmp_path):
    config = tiny_config()
    initial = state(photon_hf.PhotonForCausalLM(config))
    dataset = _uneven_dataset(rows=24, seed=3)
    common = dict(per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3, optim="adamw_torch",
                  lr_scheduler_type="cosine", warmup_steps=2, save_strategy="steps", save_steps=3)

    def run(output, resume=None, stop=None):
        model = photon_hf.PhotonForCausalLM(config)
        model.load_state_dict(initial)
        trainer = Trainer(model=model, args=_args(output, **common), train_dataset=dataset,
                          data_collator=default_data_collator, callbacks=[_StopAt(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return state(model), trainer

    straight, _ = run(tmp_path / "straight")
    interrupted, trainer = run(tmp_path / "resumed", stop=3)
    assert trainer.state.global_step == 3 and (tmp_path / "resumed" / "checkpoint-3").is_dir()
    assert max_difference(straight, interrupted) > 1e-4  # the interrupted run is really behind
    resumed, trainer = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-3"))
    assert trainer.state.global_step == 8
    assert max_difference(straight, resumed) < 1e-6


def _small_corpus(path, documents: int = 60):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(documents):
            f.write(json.dumps({"text": f"{i}: " + " ".join(f"w{w}" for w in rng.integers(0, 40, 30))}) + "\n")
    return str(path)


def _job(tmp_path, name: str, **fields) -> TrainJob:
    defaults = dict(dataset=_small_corpus(tmp_path / "corpus.jsonl"), size="tiny", block_size=32, batch_size=4,
                    max_steps=4, eval_blocks=2, eval_steps=4, save_steps=2, logging_steps=1, validation_fraction=0.2)
    return TrainJob(output_dir=str(tmp_path / name), **{**defaults, **fields})


def _saved(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


def test_seeded_runs_are_equal(tmp_path):
    """The seed fixes the new model's weights and the data order: two runs with one seed end bit-equal on a CPU,
    another seed gives another model."""
    first, again, other = (_job(tmp_path, name, seed=seed, max_steps=2, save_checkpoints=False)
                           for name, seed in (("first", 3), ("again", 3), ("other", 4)))
    for job in (first, again, other):
        run_training(job)
    a, b = _saved(first.output_dir), _saved(again.output_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max_difference(a, _saved(other.output_dir)) > 1e-3


def test_a_resumed_stream_continues_where_its_data_left_off(tmp_path):
    """A streamed run stopped at a checkpoint and resumed re-reads the blocks it had trained on and skips them, so
    it ends with the weights of an uninterrupted run."""
    straight = _job(tmp_path, "straight", streaming=True, shuffle_buffer=8)
    run_training(straight)
    interrupted = _job(tmp_path, "resumed", streaming=True, shuffle_buffer=8)
    run_training(interrupted, callbacks=[_StopAt(2)])
    stopped = _saved(interrupted.output_dir)
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    assert max_difference(_saved(straight.output_dir), stopped) > 1e-4  # the interrupted run is really behind
    run_training(dataclasses.replace(interrupted, resume="last"))
    assert max_difference(_saved(straight.output_dir), _saved(interrupted.output_dir)) < 1e-6
    record = json.loads((tmp_path / "resumed" / "photon_training.json").read_text())
    assert record["train_steps"] == 4 and "streamed: 16 training blocks" in record["training_data"]


def test_perplexity_metrics_and_time_budget(tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_model()
    dataset = _uneven_dataset(rows=6)
    args = training_arguments(str(tmp_path), per_device_eval_batch_size=4, max_steps=50, save_strategy="no",
                              eval_strategy="no", logging_steps=1, disable_tqdm=True)
    assert args.report_to in ([], "none", ["none"]) and not args.bf16 and args.use_cpu  # CPU defaults
    trainer = build_trainer(model, args, dataset, dataset, tokenizer, callbacks=[TimeBudgetCallback(1e-6)])
    metrics = trainer.evaluate()
    # Token-weighted loss from the reduced logits equals the loss over all labelled tokens of the set.
    with torch.no_grad():
        ids = torch.tensor(dataset["input_ids"])
        labels = torch.tensor(dataset["labels"])
        logits = model(ids).logits
    sums = preprocess_logits_for_perplexity(logits, labels).sum(0)
    expected = (sums[0] / sums[1]).item()
    assert metrics["eval_token_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert math.isfinite(metrics["eval_loss"])
    # The 1e-6 minute budget stops training after its first step.
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ValueError, match="no labelled token"):
        compute_perplexity(type("P", (), {"predictions": np.zeros((2, 2))})())


def test_train_job_checks_its_values_and_holds_the_defaults(tmp_path):
    """A bad value is refused when the job is built, with the field named; `training_arguments` and a job's
    arguments read the same defaults."""
    bad = {
        "block_size": 1, "batch_size": 0, "max_steps": -3, "learning_rate": 0.0, "lora_dropout": 1.0,
        "validation_fraction": 1.5, "size": "huge", "eval_blocks": -1, "max_minutes": 0, "output_dir": "",
    }
    for field, value in bad.items():
        flag = "--" + field.replace("_", "-")
        with pytest.raises(ValueError, match=f"`{field}` \\({flag}\\) must be"):
            TrainJob(**{"output_dir": str(tmp_path), **{field: value}})
    with pytest.raises(ValueError, match="--model PATH"):
        TrainJob(output_dir=str(tmp_path), lora_r=4)
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainJob(output_dir=str(tmp_path), model=str(tmp_path), overrides={"hidden_size": 96})
    with pytest.raises(ValueError, match="cannot resume"):
        TrainJob(output_dir=str(tmp_path), max_minutes=1.0, resume="last")
    with pytest.raises(ValueError, match=r"`max_steps` \(--max-steps\) is required with `streaming`"):
        TrainJob(output_dir=str(tmp_path), streaming=True)
    with pytest.raises(ValueError, match=r"`eval_blocks` \(--eval-blocks\) must be > 0 with `streaming`"):
        TrainJob(output_dir=str(tmp_path), streaming=True, max_steps=10, eval_blocks=0)
    with pytest.raises(ValueError, match=r"--num-proc"):
        TrainJob(output_dir=str(tmp_path), streaming=True, max_steps=10, num_proc=2)
    assert TrainJob(output_dir=str(tmp_path)).max_steps == DEFAULT_MAX_STEPS  # in memory, a default applies

    job = TrainJob(output_dir=str(tmp_path))
    plain = training_arguments(str(tmp_path))
    from_job = job.training_arguments()
    for name in ("learning_rate", "weight_decay", "adam_beta2", "warmup_steps", "max_grad_norm", "max_steps",
                 "per_device_train_batch_size", "eval_steps", "save_steps", "save_total_limit", "logging_steps"):
        assert getattr(from_job, name) == getattr(plain, name), name
    assert plain.learning_rate == default_learning_rate() and plain.warmup_steps == TrainJob.warmup
    wide = photon_preset("base")
    assert job.training_arguments(wide).learning_rate == training_arguments("x", config=wide).learning_rate
    assert TrainJob(output_dir="x", learning_rate=7e-4).training_arguments(wide).learning_rate == 7e-4
    no_checkpoints = TrainJob(output_dir=str(tmp_path), save_checkpoints=False).training_arguments()
    assert no_checkpoints.save_strategy == "no"


def test_torch_threads_is_scoped():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_training_on_the_embedded_corpus_learns(tmp_path):
    """A real learning check: 200 steps on the standard library's source bring the loss on held-out files far
    below its start and below what byte frequencies alone achieve (so the model uses context)."""
    tokenizer = byte_tokenizer()
    corpus = load_text_corpus(max_files=40)
    train = pack_dataset(corpus["train"], tokenizer, 128)
    validation = pack_dataset(corpus["validation"], tokenizer, 128, max_blocks=64)
    assert not set(corpus["train"]["path"]) & set(corpus["validation"]["path"])
    counts = np.bincount(np.concatenate([np.asarray(x) for x in train["input_ids"]]), minlength=259) + 1.0
    held_out = np.concatenate([np.asarray(x)[1:] for x in validation["input_ids"]])
    unigram = float(-np.log(counts / counts.sum())[held_out].mean())

    model = tiny_model()
    args = training_arguments(str(tmp_path), max_steps=200, per_device_train_batch_size=8, learning_rate=3e-3,
                              eval_strategy="no", save_strategy="no", logging_steps=20, disable_tqdm=True)
    trainer = build_trainer(model, args, train, validation, tokenizer)
    initial = trainer.evaluate()["eval_loss"]
    trainer.train()
    final = trainer.evaluate()["eval_loss"]
    assert initial == pytest.approx(math.log(259), abs=0.3)
    assert final < 0.6 * initial, (initial, final)
    assert final < unigram - 0.2, (final, unigram)


def test_default_learning_rate_keeps_lr_times_width_constant():
    """The property the default relies on (docs/quality.md): Adam moves a layer's outputs by about lr x fan-in per
    step, so the default learning rate falls as 1 / hidden_size and lr x width is the same for every shape."""
    products = {name: default_learning_rate(photon_preset(name)) * photon_preset(name).hidden_size
                for name in PHOTON_PRESETS}
    assert len({round(p, 12) for p in products.values()}) == 1, products
    assert default_learning_rate() == default_learning_rate(photon_preset("small"))  # the reference width


def test_lookback_learning_rate_meets_its_measured_best_rates():
    """docs/quality.md: with a token look-back the best rate was the default's at width 128 (1e-3), 7.07e-4 at 256
    (of 5e-4, 7.07e-4 and 1e-3) and twice the default's at 512 (5e-4 against 2.5e-4); `default_learning_rate` gives
    those, falling as 1 / sqrt(width) between and beyond."""
    def rate(width, lookback):
        return default_learning_rate(photon_preset("small", hidden_size=width, decoder_lookback=lookback or None))

    assert rate(128, 8) == rate(128, 0) == 1e-3
    assert rate(512, 8) == pytest.approx(2 * rate(512, 0)) and rate(512, 8) == pytest.approx(5e-4)
    assert rate(256, 8) == pytest.approx(7.07e-4, rel=1e-3)
    assert rate(512, 32) == rate(512, 8)
    widths = [128, 256, 512, 1024, 2048]
    assert len({round(rate(w, 8) * math.sqrt(w), 12) for w in widths}) == 1
    assert all(rate(w, 8) >= rate(w, 0) for w in [32, 64, *widths])  # never below the default's
    assert rate(32, 8) == rate(32, 0)


def _interface_growth(width: int, lr: float, steps: int = 12) -> float:
    """RMS of the top encoder's residual stream (what its final norm divides by) after `steps` AdamW steps on random
    bytes, over its RMS at initialisation."""
    torch.manual_seed(0)
    config = photon_preset("tiny", hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                           chunk_sizes=[2, 2])
    model = PhotonForCausalLM(config)
    norm = model.model.levels[-1].encoder.norm
    seen = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().pow(2).mean().sqrt()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    ids = torch.randint(0, 16, (4, 32), generator=torch.Generator().manual_seed(0))  # a few frequent "bytes"
    for _ in range(steps + 1):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle.remove()
    return float(seen[-1] / seen[0])


def test_default_learning_rate_keeps_interface_growth_flat_in_width():
    """What the rule buys, on the mechanism itself: under `default_learning_rate` the top encoder's residual stream
    grows about as much at width 256 as at 32, while one fixed learning rate (the width-32 default) blows it up at
    width 256."""
    narrow, wide = 32, 256
    scaled = _interface_growth(wide, default_learning_rate(photon_preset("tiny", hidden_size=wide)))
    reference = _interface_growth(narrow, default_learning_rate(photon_preset("tiny", hidden_size=narrow)))
    fixed = _interface_growth(wide, default_learning_rate(photon_preset("tiny", hidden_size=narrow)))
    assert fixed > 2 * reference, (fixed, reference)
    assert scaled < 2 * reference, (scaled, reference)
