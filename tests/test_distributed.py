"""Data-parallel training in two CPU processes (gloo), each compared with one process that takes the whole batch:
the stock Trainer under DDP and under DeepSpeed ZeRO-3 (the shipped config), FSDP2 the CPU way
(`fully_shard_model`), and `photon-hf train --streaming` under torchrun. Every rank must end with the same weights,
equal to the one-process run's, and the saved model must reload with the same logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import max_difference, state, tiny_model
from transformers import AutoModelForCausalLM

import photon_hf
from photon_hf.data import byte_tokenizer
from photon_hf.training import model_config

SCRIPT = Path(__file__).with_name("distributed_train.py")
ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {"OMP_NUM_THREADS": "1"}  # two processes on a small machine: one thread each


def _run(command, timeout=300, cwd=None):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env={**os.environ, **ENV})
    output = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{output}"


def _weights(out: Path, tag: str, rank: int, world: int) -> dict:
    return torch.load(out / f"{tag}-rank{rank}-of-{world}.pt")


def _reload_difference(folder: Path, weights: dict) -> float:
    """Largest |logit| difference between the model saved in `folder` and a model holding `weights`."""
    ids = torch.randint(0, 259, (2, 40), generator=torch.Generator().manual_seed(1))
    trained = photon_hf.PhotonForCausalLM(model_config("tiny", byte_tokenizer()))
    trained.load_state_dict(weights)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        return (reloaded(ids).logits - trained(ids).logits).abs().max().item()


def _check_two_like_one(out: Path, tag: str, single: dict):
    rank0, rank1 = _weights(out, tag, 0, 2), _weights(out, tag, 1, 2)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), (tag, key)  # every rank holds the same model
    # 2 processes x 2 blocks == 1 process x 4 blocks, with uneven label counts (num_items_in_batch is gathered).
    assert max_difference(rank0, single) < 1e-6, tag
    assert _reload_difference(out / f"{tag}-model", rank0) < 1e-6, tag


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference: the Trainer with the whole batch (distributed_train.py without a launcher)."""
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, str(SCRIPT), str(out)])
    weights = _weights(out, "single", 0, 1)
    assert _reload_difference(out / "single-model", weights) < 1e-6
    assert max_difference(weights, state(tiny_model(seed=0))) > 1e-3  # training moved the weights
    return weights


@pytest.mark.slow
def test_ddp_and_fsdp2_two_processes_train_like_one(tmp_path, single):
    _run([*TORCHRUN, str(SCRIPT), str(tmp_path)])
    _check_two_like_one(tmp_path, "ddp", single)
    _check_two_like_one(tmp_path, "fsdp2", single)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"fsdp2-rank{rank}.json").read_text())
        # One FSDP unit per PhotonBlock (4 stacks x 1 layer in the tiny model), nothing else split off; the same
        # steps as one unsharded process with the whole batch.
        assert report["units"] == ["FSDPPhotonBlock"] * 4, report
        assert report["max_difference"] < 1e-6, report


@pytest.mark.slow
def test_deepspeed_zero3_two_processes_train_like_one(tmp_path, single):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the `tests` extra; install it to run ZeRO-3")
    config = ROOT / "examples" / "accelerate" / "deepspeed_zero3.json"
    _run([*TORCHRUN, str(SCRIPT), str(tmp_path), "--deepspeed", str(config)])
    _check_two_like_one(tmp_path, "zero3", single)


@pytest.mark.slow
def test_streaming_cli_two_processes_train_like_one(tmp_path):
    """`torchrun ... -m photon_hf train --streaming` forms one job: each process trains on its own blocks of the
    stream (split_dataset_by_node), and 2 processes x 2 blocks give the weights of 1 process x 4 blocks."""
    corpus = tmp_path / "corpus.jsonl"
    generator = torch.Generator().manual_seed(0)
    with corpus.open("w") as f:
        for i in range(60):
            words = torch.randint(0, 50, (int(torch.randint(5, 60, (1,), generator=generator)),), generator=generator)
            f.write(json.dumps({"text": f"{i}: " + " ".join(f"w{int(w)}" for w in words)}) + "\n")
    common = ["train", "--dataset", str(corpus), "--streaming", "--size", "tiny", "--max-steps", "3",
              "--block-size", "32", "--eval-blocks", "2", "--eval-steps", "3", "--logging-steps", "1",
              "--shuffle-buffer", "16", "--seed", "5", "--validation-fraction", "0.2", "--no-save-checkpoints"]
    _run([*TORCHRUN, "-m", "photon_hf", *common, "--output-dir", str(tmp_path / "two"), "--batch-size", "2"])
    _run([sys.executable, "-m", "photon_hf", *common, "--output-dir", str(tmp_path / "one"), "--batch-size", "4"])
    two = load_file(tmp_path / "two" / "model.safetensors")
    one = load_file(tmp_path / "one" / "model.safetensors")
    assert max_difference(two, one) < 1e-5
    record = json.loads((tmp_path / "two" / "photon_training.json").read_text())
    assert "streamed: 12 training blocks" in record["training_data"], record  # 3 steps x 2 processes x 2 blocks
