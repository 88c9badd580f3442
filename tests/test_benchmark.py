"""The generation benchmark (`bench.generation`), end to end on tiny CPU models (structure and arithmetic, never
speed).

bench/ is not installed with the package: its modules are imported from the checkout's root (pytest's
`pythonpath`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.common import GIB, Budget
from bench.generation import harness as generation_harness
from bench.generation import report as generation_report
from bench.generation import run_generation
from bench.generation.harness import search_batches, stock_generate
from bench.generation.protocol import MODELS, REQUIRED_FIELDS, Regime, parse_regime
from photon_hf import kv_cache_bytes, llama_kv_cache_bytes, photon_preset

OOM_FROM = 3  # the simulated Llama runs out of memory from this batch size on


def simulated_generate(name, model, input_ids, **kwargs):
    """`generate` for the harness: stock, except that the Llama "runs out of memory" from batch OOM_FROM on."""
    if name == "llama" and input_ids.shape[0] >= OOM_FROM:
        raise torch.OutOfMemoryError("simulated out of memory")
    return stock_generate(name, model, input_ids, **kwargs)


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """One short CPU run: PF on a fixed ladder, DE by batch search, profile and sweep; Llama "runs out of memory"
    (simulated) from batch 3, so the ladder stops and the search bisects."""
    out = tmp_path_factory.mktemp("bench")
    options = run_generation.parse_args(
        [
            "--preset", "cpu-smoke", "--out-dir", str(out), "--budget-s", "900",
            "--regime", "PF=32/4:1,2,4", "--regime", "DE=4/16", "--search-start", "1", "--max-batch", "8",
            "--repeats", "2", "--sweep-contexts", "32,64", "--sweep-batch", "2", "--sweep-gen", "4",
            "--profile-batch", "2", "--profile-steps", "4",
        ]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path, results = generation_harness.run(options, generate=simulated_generate)
    finally:
        torch.set_num_threads(threads)
    files = sorted(out.glob("*.json"))
    assert files == [path], files
    assert any(r.get("status") == "ok" for r in results["records"])
    return path, json.loads(path.read_text())


def _records(results, record_type):
    return [r for r in results["records"] if r["record_type"] == record_type]


def test_json_fields_and_types(run_output):
    _, results = run_output
    meta = results["meta"]
    assert meta["device"].startswith("CPU") and meta["dtype"] == "float32" and meta["shape"] == "tiny"
    assert meta["photon_config"]["hidden_size"] == photon_preset("tiny").hidden_size
    assert {"torch", "transformers", "photon_hf"} <= set(meta["versions"])
    assert "--regime" in meta["command"] and meta["errors"] == []
    assert set(meta["sections"]) == {"PF", "DE", "profile", "sweep"}
    assert all(s["status"] == "ok" for s in meta["sections"].values())
    measured = _records(results, "generation") + _records(results, "sweep")
    assert measured
    for r in measured:
        missing = [f for f in REQUIRED_FIELDS if f not in r]
        assert not missing, (missing, r)
        assert r["device"] == meta["device"] and r["model"] in MODELS and r["status"] == "ok"
        for field in ("prompt_len", "gen_len", "batch_size"):
            assert isinstance(r[field], int) and r[field] >= 1
        for field in ("tok_per_s", "per_sample_gib", "analytic_kv_gib", "tpm"):
            assert isinstance(r[field], float) and r[field] > 0 and math.isfinite(r[field]), (field, r)


def test_both_models_in_every_regime_and_oom_handling(run_output):
    _, results = run_output
    gen = _records(results, "generation")
    batches = {
        (reg, m): sorted(r["batch_size"] for r in gen if (r["regime"], r["model"]) == (reg, m))
        for reg in ("PF", "DE")
        for m in MODELS
    }
    assert batches[("PF", "photon")] == [1, 2, 4]
    assert batches[("PF", "llama")] == [1, 2]  # the ladder stops at the first failure
    assert batches[("DE", "photon")] == [1, 2, 4, 8]  # doubling up to the cap
    assert batches[("DE", "llama")] == [1, 2]
    ooms = sorted((r["regime"], r["batch_size"]) for r in _records(results, "attempt") if r["status"] == "oom")
    assert ooms == [("DE", 3), ("DE", 4), ("PF", 4)]  # DE: 4 fails, bisection tries 3
    for regime in ("PF", "DE"):
        for model in MODELS:
            best = [r for r in gen if r["regime"] == regime and r["model"] == model and r["is_max_batch"]]
            assert len(best) == 1 and best[0]["batch_size"] == max(batches[(regime, model)])


def test_figures_follow_from_the_records(run_output):
    _, results = run_output
    config = photon_preset("tiny")
    rows = _records(results, "generation") + _records(results, "sweep")
    by_id = {r["id"]: r for r in results["records"]}
    for r in rows:
        tokens = r["prompt_len"] + r["gen_len"]
        fn = kv_cache_bytes if r["model"] == "photon" else llama_kv_cache_bytes
        assert r["analytic_kv_gib"] == pytest.approx(fn(config, tokens, 1, torch.float32) / GIB, rel=1e-12)
        # The cache generate returned holds prompt + gen - 1 tokens: within a few percent of the analytic size.
        assert r["cache_gib_measured"] == pytest.approx(r["analytic_kv_gib"], rel=0.1)
        assert r["tok_per_s"] == pytest.approx(r["batch_size"] * r["gen_len"] / r["wall_s"], rel=1e-12)
        assert r["tpm"] == pytest.approx(r["tok_per_s"] / 1e3 / r["per_sample_gib"], rel=1e-12)
        # Per-sample memory on the CPU: slope of the cache bytes between the two batch sizes it names.
        same = [
            x
            for x in rows
            if (x["record_type"], x["regime"], x["model"], x["prompt_len"])
            == (r["record_type"], r["regime"], r["model"], r["prompt_len"])
        ]
        a, b = (next(x for x in same if x["batch_size"] == n) for n in r["per_sample_batches"])
        assert b["batch_size"] == max(x["batch_size"] for x in same) and a["batch_size"] < b["batch_size"]
        slope = (b["cache_gib_measured"] * b["batch_size"] - a["cache_gib_measured"] * a["batch_size"]) / (
            b["batch_size"] - a["batch_size"]
        )
        assert r["per_sample_gib"] == pytest.approx(slope, rel=1e-9)
    assert by_id  # ids are unique
    assert len(by_id) == len(results["records"])


def test_ratios_come_from_the_same_run(run_output):
    _, results = run_output
    by_id = {r["id"]: r for r in results["records"]}
    ratios = _records(results, "ratio")
    assert {(r["regime"], r["basis"]) for r in ratios} >= {
        ("PF", "max_batch"),
        ("DE", "max_batch"),
        ("PF", "same_batch"),
    }
    for ratio in ratios:
        photon, llama = by_id[ratio["photon_record"]], by_id[ratio["llama_record"]]
        assert (photon["model"], llama["model"]) == ("photon", "llama")
        assert photon["regime"] == llama["regime"] == ratio["regime"]
        assert (photon["batch_size"], llama["batch_size"]) == (ratio["photon_batch"], ratio["llama_batch"])
        if ratio["basis"] == "max_batch":
            assert photon["is_max_batch"] and llama["is_max_batch"]
        else:
            assert photon["batch_size"] == llama["batch_size"]
        for field in ("tok_per_s", "per_sample_gib", "analytic_kv_gib", "tpm", "decode_step_ms"):
            assert ratio[f"{field}_ratio"] == pytest.approx(photon[field] / llama[field], rel=1e-12), field
    # The analytic cache of the tiny PHOTON is several times smaller than its same-size Llama's.
    assert all(r["analytic_kv_gib_ratio"] < 0.5 for r in ratios)


def test_sweep_profile_plots_and_report(run_output, capsys):
    path, results = run_output
    sweep = _records(results, "sweep")
    assert sorted({(r["model"], r["prompt_len"], r["batch_size"]) for r in sweep}) == sorted(
        (m, c, b) for m in MODELS for c in (32, 64) for b in (1, 2)
    )
    profiles = {r["model"]: r for r in _records(results, "profile")}
    assert set(profiles) == set(MODELS)
    for r in profiles.values():
        assert r["gen_len"] == 4 and r["batch_size"] == 2 and r["op_calls_per_step"] > 0 and r["top_cpu_ops"]
        assert r["gpu_busy_step_ms"] is None  # no GPU figures invented on the CPU
    assert (path.parent / f"{path.stem}_profile.txt").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert results["meta"].get("plots") == []
    else:
        assert sorted(results["meta"]["plots"]) == [
            str(path.with_suffix("")) + s for s in ("_batch.png", "_context.png")
        ]
    assert generation_report.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "**ratio P/L**" in text and "PHOTON" in text and "Llama" in text and "Context sweep" in text


def test_search_finds_the_largest_batch():
    limit = 37

    def probe(batch):
        return "ok" if batch <= limit else "oom"

    tried = search_batches(probe, start=1, cap=1000, tolerance=0)
    assert [b for b, _ in tried][:7] == [1, 2, 4, 8, 16, 32, 64]
    assert max(b for b, s in tried if s == "ok") == limit
    assert min(b for b, s in tried if s == "oom") == limit + 1
    # The first probe failing: bisect down from it.
    tried = search_batches(probe, start=100, cap=1000, tolerance=0)
    assert max(b for b, s in tried if s == "ok") == limit
    # A budget stop ends the search at once (no bisection on a time failure).
    tried = search_batches(lambda b: "ok" if b < 8 else "skipped_budget", start=1, cap=1000)
    assert tried == [(1, "ok"), (2, "ok"), (4, "ok"), (8, "skipped_budget")]
    # The cap is probed and never exceeded.
    assert search_batches(lambda b: "ok", start=3, cap=20)[-1] == (20, "ok")


def test_parse_regime():
    assert parse_regime("PF=2048/128") == Regime("PF", 2048, 128, None)
    assert parse_regime("DE-short=128/512:256,32") == Regime("DE-short", 128, 512, (32, 256))
    for bad in ("PF", "PF=2048", "PF=2048/1", "PF=2048/128:", "PF=0/128", "=1/2"):
        with pytest.raises(ValueError, match="Bad regime"):
            parse_regime(bad)


def test_budget_shares_by_weight():
    budget = Budget(100.0, {"a": 1.0, "b": 3.0})
    first = budget.deadline("a") - budget.start  # a quarter of the budget
    assert first == pytest.approx(25.0, abs=1.0) and budget.pending == {"b": 3.0}
    assert budget.deadline("b") - budget.start == pytest.approx(100.0, abs=1.0)  # the rest, all of it
    assert 0 < budget.remaining() <= 100.0 and budget.elapsed() >= 0


def test_the_package_holds_no_benchmark():
    import importlib.util

    assert importlib.util.find_spec("photon_hf.benchmark") is None


@pytest.mark.parametrize("decode", ["auto", "eager"])
def test_decode_mode_reaches_every_generate_call(tmp_path, decode):
    """--decode eager turns generate's auto-compile off for both models; under auto, every PHOTON call of one
    measurement (warm-up, prefill, timed runs) asks for the same cache size, so a compiled step is traced once."""
    calls = []

    def recording_generate(name, model, input_ids, **kwargs):
        config = kwargs["generation_config"]
        calls.append((name, config.disable_compile, getattr(config, "max_cache_len", None), input_ids.shape[1]))
        return stock_generate(name, model, input_ids, **kwargs)

    options = run_generation.parse_args(
        ["--preset", "cpu-smoke", "--out-dir", str(tmp_path), "--budget-s", "300", "--regime", "DE=5/9:2",
         "--sections", "regimes", "--repeats", "1", "--no-plots", "--decode", decode]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, results = generation_harness.run(options, generate=recording_generate)
    finally:
        torch.set_num_threads(threads)
    assert {name for name, *_ in calls} == set(MODELS)
    assert all(disabled == (decode == "eager") for _, disabled, _, _ in calls)
    assert {size for name, _, size, _ in calls if name == "photon"} == {5 + 9}
    assert all(size is None for name, _, size, _ in calls if name == "llama")
    assert results["meta"]["options"]["decode"] == decode


def test_the_chunked_prefill_benchmark_continues_a_row_exactly(tmp_path):
    """`bench.vllm.chunked_prefill` (no vLLM needed) runs a prompt unsplit and in chunks over a state view: the last
    states agree (float32), the chunk count and the floor follow from its own timings, and it writes its JSON."""
    from bench.vllm import chunked_prefill

    output = tmp_path / "chunked.json"
    chunked_prefill.main(["--size", "tiny", "--dtype", "float32", "--prompt-tokens", "40", "--chunk", "16",
                          "--max-model-len", "64", "--repeats", "1", "--threads", "1", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["chunks"] == 3 and result["continued_tokens"] == 8
    assert result["max_state_difference"] < 1e-4
    assert result["floor_ratio"] == pytest.approx(3 * result["fresh_chunk_s"] / result["unsplit_s"])
