"""The quality study script end to end on tiny models (CPU, a few seconds of training each)."""

import importlib.util
import json
import math
from pathlib import Path

import torch

STUDY = Path(__file__).resolve().parents[1] / "bench" / "quality_study.py"


def _load():
    spec = importlib.util.spec_from_file_location("quality_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_study_runs_and_compares_equal_flop_models(tmp_path):
    study = _load()
    out = tmp_path / "quality.json"
    threads = torch.get_num_threads()
    try:
        study.main(["--device", "cpu", "--seconds", "2", "--hidden", "32", "--heads", "2", "--layers", "1",
                    "--seq-len", "32", "--batch", "4", "--eval-tokens", "2048", "--prompts", "3", "--prompt-len", "8",
                    "--gen-len", "20", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    photon, llama = results["models"]["photon"], results["models"]["llama"]
    for record in (photon, llama):
        assert record["steps"] > 0 and record["tokens_seen"] == record["steps"] * 4 * 32
        assert math.isfinite(record["valid_bits_per_byte"]) and 0 < record["valid_bits_per_byte"] < 12
        # fp32 on the CPU: cached greedy generation must agree with the teacher-forced argmax everywhere.
        assert record["greedy_agreement"] == 1.0
    # The Llama is the one of the same width whose training FLOPs per token are closest to PHOTON's.
    assert abs(llama["train_flops_per_token"] / photon["train_flops_per_token"] - 1) < 0.5
    expected = 2 ** (photon["valid_bits_per_byte"] - llama["valid_bits_per_byte"])
    assert math.isclose(results["perplexity_ratio_per_byte"], expected, rel_tol=1e-9)
    assert results["train_tokens_available"] > 1_000_000  # the standard library's source, train split


def test_training_flops_per_token_of_the_600m_shapes():
    """Sanity of the analytic count: the vanilla 600M Llama does about 6 x 0.61 GFLOP per token in matmuls, and
    PHOTON's four stacks of four layers do fewer per token (the encoders see 1/4 and 1/16 of the tokens)."""
    from transformers import LlamaConfig

    import photon_hf

    study = _load()
    llama = LlamaConfig(vocab_size=32000, hidden_size=1664, intermediate_size=4096, num_hidden_layers=16,
                        num_attention_heads=32, tie_word_embeddings=False)
    matmul = 6 * (16 * (4 * 1664**2 + 3 * 1664 * 4096) + 1664 * 32000)
    assert matmul < study.llama_training_flops_per_token(llama, 2048) < 1.2 * matmul
    photon = study.photon_training_flops_per_token(photon_hf.photon_preset("photon-600m"), 2048)
    assert 0.3 * matmul < photon < 0.7 * matmul
