"""The quality study end to end on tiny models, and the pieces its fairness rests on."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.quality import study
from photon_hf import memory


def test_sweep_and_report_end_to_end(tmp_path):
    results = tmp_path / "runs.jsonl"
    args = ["sweep", "--widths", "32", "--models", "photon", "llama", "llama-size", "--lrs", "1e-3", "3e-3",
            "--steps", "4", "--seq-len", "32", "--batch", "2", "--eval-tokens", "1024", "--selection-tokens", "512",
            "--legacy-tokens", "256", "--eval-every", "2", "--results", str(results)]
    study.main(args)
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(runs) == 6
    photon = [r for r in runs if r["model"] == "photon"]
    llama = [r for r in runs if r["model"] == "llama"]
    size = [r for r in runs if r["model"] == "llama-size"]
    for r in runs:
        assert math.isfinite(r["valid_bits_per_byte"]) and 0 < r["valid_bits_per_byte"] < 12
        assert r["tokens_seen"] == r["steps"] * 2 * 32
        assert 0 <= r["copyable_fraction"] <= 1
        assert len(r["valid_bits_by_chunk_position"]) == study.CHUNK_PHASES
        # Scored on three sets of windows; the learning curve has a point every 2 steps, the last one at the end.
        assert r["valid_bits_per_byte"] != r["selection_bits_per_byte"] != r["legacy_bits_per_byte"]
        assert [p["step"] for p in r["curve"]][-1] == r["steps"]
        assert r["curve"][-1]["tokens_seen"] == r["tokens_seen"]
    for r in photon + llama:
        assert [p["step"] for p in r["curve"]] == [2, 4]
        assert r["curve"][0]["bits_per_byte"] != r["curve"][1]["bits_per_byte"]
    # Equal tokens for the FLOP-matched Llama, equal total training FLOPs (fewer tokens) for the same-size one.
    assert all(r["steps"] == 4 for r in photon + llama)
    assert size[0]["parameters"] > llama[0]["parameters"]
    assert size[0]["tokens_seen"] < photon[0]["tokens_seen"]
    budget = photon[0]["train_flops"]
    assert abs(size[0]["train_flops"] - budget) <= size[0]["train_flops_per_token"] * 2 * 32  # within one step
    # fp32 on the CPU: cached greedy generation agrees with the teacher-forced argmax everywhere.
    assert all(r["greedy_agreement"] == 1.0 for r in photon)
    study.main(args)  # a second sweep skips the runs already in the file
    assert len(results.read_text().splitlines()) == 6

    summary = study.main(["report", "--results", str(results), "--out", str(tmp_path / "report")])["rows"]
    best = {r["model"]: r for r in summary}
    for name, group in (("photon", photon), ("llama", llama)):
        assert best[name]["valid_bits_per_byte"] == min(r["valid_bits_per_byte"] for r in group)
        assert sorted(lr for lr, _ in best[name]["sweep"]) == [1e-3, 3e-3]
    ratio = 2 ** (best["photon"]["valid_bits_per_byte"] - best["llama"]["valid_bits_per_byte"])
    assert math.isclose(best["photon"]["perplexity_ratio_vs_llama"], ratio, rel_tol=1e-12)
    assert (tmp_path / "report.png").stat().st_size > 0
    assert "| 32 |" in (tmp_path / "report.md").read_text()
    assert {r["selected_on"] for r in summary} == {"selection"}

    curves = study.main(["trend", "--results", str(results), "--out", str(tmp_path / "trend")])["curves"]
    by_name = {c["model"]: c for c in curves}
    assert set(by_name) == {"photon", "llama", "llama-size"}
    for point, ref in zip(by_name["photon"]["points"], by_name["llama"]["points"], strict=True):
        assert point["ratio_vs_llama"] == pytest.approx(2 ** (point["bits_per_byte"] - ref["bits_per_byte"]))
        assert point["copyable_gap_bits"] == pytest.approx(point["bits_copyable"] - ref["bits_copyable"])
    assert by_name["photon"]["train_flops_per_token"] == photon[0]["train_flops_per_token"]
    assert (tmp_path / "trend.png").stat().st_size > 0


def test_each_photon_is_compared_with_the_best_llama_at_no_more_compute(tmp_path):
    """Two PHOTONs of different compute, each swept with its own FLOP-matched Llama (5 and 14 layers at width 32):
    the small PHOTON is compared with the 5-layer Llama (the only one not above its compute, though the 14-layer one
    scores better); the large one with whichever of the two scores better on the selection split, both costing less
    than it; a PHOTON cheaper than every Llama with the closest. The report and the curves use that Llama."""
    results = tmp_path / "runs.jsonl"
    common = ["sweep", "--widths", "32", "--models", "photon", "llama", "--lrs", "3e-3", "--steps", "2",
              "--seq-len", "32", "--batch", "2", "--eval-tokens", "256", "--selection-tokens", "256",
              "--legacy-tokens", "0", "--eval-every", "2", "--no-agreement", "--results", str(results)]
    study.main(common)
    study.main(common + ["--photon", "num_decoder_layers=6"])
    runs = study.load_results(results)
    llamas = {r["config"]["num_hidden_layers"]: r for r in runs if r["model"] == "llama"}
    photons = {r["config"]["num_decoder_layers"][0]: r for r in runs if r["model"] == "photon"}
    assert set(llamas) == {5, 14} and set(photons) == {2, 6}
    flops = {name: r["train_flops_per_token"] for name, r in (("l5", llamas[5]), ("l14", llamas[14]),
                                                               ("p2", photons[2]), ("p6", photons[6]))}
    assert flops["l5"] < flops["p2"] < flops["l14"] < flops["p6"]
    cheap = dict(photons[2], train_flops_per_token=0.5 * llamas[5]["train_flops_per_token"])
    assert study.reference_llama(cheap, list(llamas.values())) is llamas[5]

    for better in (14, 5):  # which Llama scores better on the selection split
        llamas[better]["selection_bits_per_byte"] = 1.0
        llamas[19 - better]["selection_bits_per_byte"] = 2.0
        results.write_text("".join(json.dumps(r) + "\n" for r in [*llamas.values(), *photons.values()]))
        own = {2: llamas[5], 6: llamas[better]}
        for layers, photon in photons.items():
            assert study.reference_llama(photon, list(llamas.values())) is own[layers]
        rows = study.main(["report", "--results", str(results), "--out", str(tmp_path / "report")])["rows"]
        assert {r["variant"] for r in rows if r["model"] == "llama"} == {"llama 5 layers", "llama 14 layers"}
        for row in (r for r in rows if r["model"] == "photon"):
            ref = own[row["photon_overrides"].get("num_decoder_layers", 2)]
            assert row["llama_layers"] == ref["config"]["num_hidden_layers"]
            assert row["perplexity_ratio_vs_llama"] == pytest.approx(
                2 ** (row["valid_bits_per_byte"] - ref["valid_bits_per_byte"]))
        curves = study.main(["trend", "--results", str(results), "--out", str(tmp_path / "trend")])["curves"]
        for curve in (c for c in curves if c["model"] == "photon"):
            ref = own[6 if "num_decoder_layers" in curve["variant"] else 2]
            assert curve["llama"] == study.variant_name(ref)
            assert curve["points"][-1]["ratio_vs_llama"] == pytest.approx(
                2 ** (curve["points"][-1]["bits_per_byte"] - ref["curve"][-1]["bits_per_byte"]))
    assert "llama 14 layers" in (tmp_path / "trend.md").read_text()


def test_a_run_interrupted_and_continued_equals_the_run_uninterrupted(tmp_path):
    """A run paused at step 3 (checkpointed: model, optimizer, RNG, data position, curve so far), then continued by
    the same command, ends with bit-equal weights and the same curve and figures as the run done in one go; a run
    killed between checkpoints continues from its last one."""
    common = ["sweep", "--widths", "32", "--models", "photon", "--lrs", "3e-3", "--steps", "6", "--seq-len", "32",
              "--batch", "2", "--eval-tokens", "1024", "--selection-tokens", "512", "--legacy-tokens", "0",
              "--eval-every", "2", "--no-agreement", "--photon", "decoder_lookback=4"]
    whole, parts = tmp_path / "whole.jsonl", tmp_path / "parts.jsonl"
    study.main(common + ["--results", str(whole)])
    study.main(common + ["--results", str(parts), "--pause-at", "3"])
    assert not parts.exists()  # nothing recorded: the run is paused, not done
    (saved,) = (tmp_path / "parts.checkpoints").iterdir()
    state = torch.load(saved, weights_only=True)
    assert state["steps_done"] == 3 and [p["step"] for p in state["curve"]] == [2] and not state["finished"]
    study.main(common + ["--results", str(parts)])
    (a,), (b,) = study.load_results(whole), study.load_results(parts)
    assert [p["step"] for p in b["curve"]] == [2, 4, 6]
    assert a["curve"] == b["curve"] and a["train_loss_trace"] == b["train_loss_trace"]
    for field in ("valid_bits_per_byte", "selection_bits_per_byte", "valid_bits_by_chunk_position"):
        assert a[field] == b[field]
    weights = [torch.load(next((tmp_path / f"{name}.checkpoints").iterdir()), weights_only=True)
               for name in ("whole", "parts")]
    assert all(w["finished"] and "optimizer" not in w for w in weights)
    assert weights[0]["model"].keys() == weights[1]["model"].keys()
    assert all(torch.equal(weights[0]["model"][k], weights[1]["model"][k]) for k in weights[0]["model"])
    # Another run's checkpoint under this run's name is refused, not silently continued.
    other = study.RunCheckpoint(tmp_path / "parts.checkpoints", "another run")
    other.path = saved
    with pytest.raises(SystemExit, match="another run's checkpoint"):
        other.load()


def test_evaluation_windows_spread_over_the_whole_stream_without_overlap():
    stream = np.arange(10_000, dtype=np.int32) % 251
    windows = study.spread_windows(stream, 40 * 64, 64)
    assert windows.ids.shape == (40, 64) and windows.copyable.shape == (40, 63)
    positions = np.linspace(0, len(stream) - 64 - study.COPY_SPAN, 40).astype(np.int64)
    assert np.array_equal(windows.ids, np.stack([stream[p : p + 64] for p in positions]))
    assert positions[0] == 0 and positions[-1] + 64 + study.COPY_SPAN == len(stream)  # first byte to last
    assert np.all(np.diff(positions) >= 64)  # no window overlaps the next
    leading = study.leading_windows(stream, 3 * 64, 64)
    assert np.array_equal(leading.ids.ravel(), stream[: 3 * 64])
    assert np.array_equal(windows.every(2).ids, windows.ids[::2])


def test_selection_split_is_held_out_of_training_and_validation():
    train, selection, validation = (set(study.study_files(s)) for s in ("train", "selection", "validation"))
    assert selection and not selection & train and not selection & validation and not train & validation
    assert 0.01 < len(selection) / (len(train) + len(selection) + len(validation)) < 0.06


def test_learning_rates_are_picked_on_the_selection_split():
    def run(lr, valid, selection):
        return {"model": "photon", "width": 64, "lr": lr, "photon_overrides": {}, "recipe": {"steps": 1},
                "eval_tokens": 1, "valid_bits_per_byte": valid, "selection_bits_per_byte": selection}

    best = study.best_runs([run(1e-3, 2.0, 2.5), run(2e-3, 1.9, 2.6), run(4e-3, 2.1, 2.7)])
    (winner,) = best.values()
    assert winner["lr"] == 1e-3 and winner["selected_on"] == "selection"  # not 2e-3, the best on the reported set
    assert winner["sweep"] == [[1e-3, 2.5], [2e-3, 2.6], [4e-3, 2.7]] and winner["lr_at_edge"]


def test_the_study_takes_its_costs_and_llamas_from_the_cost_model():
    """The study's Llamas are `photon_hf.memory`'s (the study adds room for its positions), and every cost figure a
    run records, or a report recomputes from the recorded config, is the cost model's."""
    photon = study.photon_config(128)
    chosen = study.matched_llama(photon, 4096)
    assert chosen.to_dict() == memory.flop_matched_llama(photon, 4096, max_position_embeddings=4096).to_dict()
    assert (chosen.pad_token_id, chosen.bos_token_id, chosen.eos_token_id) == (study.PAD, study.BOS, study.EOS)
    size = study.same_size_llama(photon, 512)
    assert size.num_hidden_layers == memory.parameter_matched_llama(photon).num_hidden_layers
    assert size.num_hidden_layers > chosen.num_hidden_layers
    for config in (photon, chosen):
        figures = study.cost_figures(config, 512)
        assert figures["train_flops_per_token"] == memory.training_flops_per_token(config, 512)
        record = {"config": config.to_diff_dict()}
        assert study.cost_figures(study.recorded_config(record), 512) == figures
    assert study.decode_flops_per_token(photon) == memory.decode_step_cost(photon, "photon", 2048)["sample_flops"]
    assert study.cache_bytes_per_token(chosen) == memory.llama_kv_cache_bytes(chosen, 2048) / 2048


def test_weight_decay_reaches_linear_weights_only():
    import photon_hf

    model = photon_hf.PhotonForCausalLM(study.photon_config(32))
    decay, no_decay = study.parameter_groups(model, 0.1)
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "model.start_latents" in undecayed and "model.embed_enc.weight" in undecayed
    assert any("norm" in n for n in undecayed) and any(n.endswith("bias") for n in undecayed)


def test_copyable_positions_by_hand():
    span = study.COPY_SPAN
    pattern = np.arange(1, span + 1, dtype=np.int32)
    window = np.concatenate([pattern, [99, 98], pattern, [97]]).astype(np.int32)
    flags = study.copyable_positions(window, np.zeros(span, dtype=np.int32))
    # Target t is copyable when window[t : t + span] already occurs inside window[:t]: only the start of the
    # repeated pattern (t = span + 2) qualifies.
    assert flags.tolist() == [t == span + 2 for t in range(1, len(window))]


def test_copy_sources_distances_and_alignment_by_hand():
    span = study.COPY_SPAN
    pattern = np.arange(1, span + 1, dtype=np.int32)
    # The pattern at 0, again 10 bytes later (out of the chunk phase), again 12 bytes after that (in phase).
    window = np.concatenate([pattern, [99, 98], pattern, [97, 96, 95, 94], pattern, np.full(span, 90)])
    stream = np.concatenate([window, np.zeros(span)]).astype(np.int32)
    windows = study.window_set(stream, np.array([0]), len(window))
    targets = {t: (d, a) for t, (d, a) in enumerate(zip(windows.distance[0], windows.aligned[0], strict=True), 1) if d}
    assert targets == {span + 2: (span + 2, False), 2 * span + 6: (span + 4, True)}
    assert np.array_equal(windows.copyable, windows.distance > 0)
    assert windows.target_bytes.tolist() == [[1] * (len(window) - 1)]
    # Tokens of several bytes: the same bytes in tokens of 2 (and 1), distances in bytes, alignment in tokens.
    pieces = [b"ab", b"cd", b"ef", b"gh", b"ab", b"cd", b"ef", b"gh", b"x", b"ab", b"cd", b"ef", b"gh", b"yy"]
    vocab = sorted(set(pieces))
    ids = np.array([vocab.index(b) for b in pieces] + [vocab.index(b"yy")] * span, dtype=np.int32)
    windows = study.window_set(ids, np.array([0]), len(pieces), token_bytes=vocab)
    assert windows.target_bytes[0].tolist() == [len(b) for b in pieces[1:]]
    # "abcdefgh" again at token 4 (8 bytes = 4 tokens back: in phase) and at token 9 (9 bytes = 5 tokens back).
    assert {t: (d, a) for t, (d, a) in enumerate(zip(windows.distance[0], windows.aligned[0], strict=True), 1)
            if d} == {4: (8, True), 9: (9, False)}


def test_copy_distances_by_hand():
    span = study.COPY_SPAN
    pattern = np.arange(1, span + 1, dtype=np.int32)
    # The pattern at 0, again at span + 2 (copyable from 10 back), again at 2 * span + 5 (copyable from the nearer
    # occurrence, span + 3 back); padding keeps every span inside the window.
    window = np.concatenate([pattern, [99, 98], pattern, [97, 96, 95], pattern, np.full(span, 90)]).astype(np.int32)
    windows = study.window_set(np.concatenate([window, np.zeros(span, dtype=np.int32)]), np.array([0]), len(window))
    assert study.copy_distances(windows).tolist() == [span + 2, span + 3]


def test_schedule_warms_up_then_decays_to_a_tenth():
    recipe = study.Recipe(steps=200, warmup=0.05)
    factors = [recipe.lr_factor(s) for s in range(200)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_subword_tokenizer_round_trips_bytes_and_runs_are_scored_per_byte(tmp_path):
    """The `bpe` command trains a byte-level BPE (specials 0-2, the 256 bytes, merges); any file, even one that is
    not UTF-8, decodes back to its exact bytes; bits per byte divide a target's loss by the bytes it stands for; and a
    sweep with --tokenizer trains and scores its models on those tokens."""
    lines = ["def f(x):\n    return x + 1\n", "class A:\n    def g(self):\n        return self.value\n", "# caf\xe9\n"]
    files = []
    for i in range(4):
        path = tmp_path / f"f{i}.py"
        path.write_bytes(("".join(lines[(i + j) % 3] for j in range(40))).encode("latin-1") + bytes([0xFF, 0x80, i]))
        files.append(str(path))
    out = tmp_path / "bpe.json"
    study.main(["bpe", "--vocab-size", "300", "--train-files", *files[:3], "--out", str(out)])
    vocab = study.load_vocabulary(str(out))
    assert (vocab.pad, vocab.bos, vocab.eos) == (0, 1, 2) and 259 < vocab.size <= 300
    stream = vocab.stream([files[3]])  # a file the tokenizer did not see
    original = Path(files[3]).read_bytes()
    assert stream[-1] == vocab.eos and b"".join(vocab.token_bytes[i] for i in stream[:-1]) == original
    assert len(stream) < len(original) / 2  # merges learned: under half a token a byte

    windows = study.spread_windows(stream, 4 * 32, 32, vocab.token_bytes)
    assert windows.target_bytes.sum() > windows.target_bytes.size  # tokens of several bytes

    class Uniform(nn.Module):  # the same logits everywhere: every target costs log(vocab) nats
        def forward(self, input_ids, use_cache=False):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, vocab.size)})()

    bits = study.evaluate(Uniform(), windows, 2, torch.device("cpu"), False)["bits_per_byte"]
    assert bits == pytest.approx(math.log2(vocab.size) * windows.target_bytes.size / windows.target_bytes.sum())

    results = tmp_path / "runs.jsonl"
    study.main(["sweep", "--widths", "32", "--models", "photon", "llama", "--lrs", "3e-3", "--steps", "3",
                "--seq-len", "32", "--batch", "2", "--eval-tokens", "128", "--legacy-tokens", "0", "--no-agreement",
                "--tokenizer", str(out), "--train-files", *files[:3], "--valid-files", files[3],
                "--results", str(results)])
    runs = study.load_results(results)
    assert {r["tokenizer"] for r in runs} == {"bpe"} and all(r["config"]["vocab_size"] == vocab.size for r in runs)
    assert all(r["evaluation"]["tokenizer"]["name"] == "bpe" and 0 < r["valid_bits_per_byte"] < 12 for r in runs)
    layers = next(r["config"]["num_hidden_layers"] for r in runs if r["model"] == "llama")
    assert {study.variant_name(r) for r in runs} == {"photon tokens=bpe", f"llama {layers} layers tokens=bpe"}


def test_the_tokenizer_is_trained_on_the_training_split_only(tmp_path, monkeypatch):
    seen = {}

    def fake_train(files, vocab_size):
        seen["files"] = {str(Path(f).relative_to(study.stdlib_root())) for f in files}
        raise SystemExit("stop before training")

    monkeypatch.setattr(study, "train_bpe", fake_train)
    with pytest.raises(SystemExit, match="stop before training"):
        study.main(["bpe", "--out", str(tmp_path / "bpe.json")])
    assert seen["files"] == set(study.study_files("train"))
    assert not seen["files"] & set(study.study_files("validation") + study.study_files("selection"))
