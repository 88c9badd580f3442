"""Continuous batching (`photon_hf.serving`): requests that join and leave a pool of rows at random steps get exactly
the tokens of `generate()` run alone, over the fuzz test's configuration space; the pool never reallocates; the
steps of an aligned pool are those of a single row; the compiled step does not recompile as rows come and go;
transformers' own entry points (`generate_batch`, the 5.17-5.24 and the 5.25 serving call patterns) drive it.
Everything exact runs in float64, as the generation fuzz test does."""

import asyncio
import random
import types

import pytest
import torch
from helpers import random_ids, tiny_model
from test_fuzz_generation import VOCAB, random_config
from torch._dynamo.utils import counters
from transformers import CompileConfig, GenerationConfig

from photon_hf import PhotonForCausalLM, kv_cache_bytes
from photon_hf.serving import PhotonBatchingManager, QueueFullError, RequestError, SamplingSettings, sample_tokens

CASES = 48


def _alone(model, prompt, settings) -> list[int]:
    """generate() on one prompt, seeded the way a request's `seed` promises."""
    if settings.get("seed") is not None:
        torch.manual_seed(settings["seed"])
    kwargs = dict(max_new_tokens=settings["max_new_tokens"], do_sample=settings.get("do_sample", False))
    if kwargs["do_sample"]:
        kwargs.update(temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"])
    if settings.get("eos_token_id") is not None:
        kwargs.update(eos_token_id=settings["eos_token_id"], pad_token_id=0)
    out = model.generate(torch.tensor([prompt]), **kwargs)
    return out[0, len(prompt):].tolist()


def _random_requests(rng: random.Random, count: int, longest: int):
    requests = []
    for i in range(count):
        length = rng.randint(1, longest - 16)
        settings = dict(max_new_tokens=rng.randint(1, min(15, longest - length)))
        if rng.random() < 0.4:
            settings.update(do_sample=True, temperature=rng.choice([0.7, 1.0, 1.5]), top_k=rng.choice([0, 5, 20]),
                            top_p=rng.choice([1.0, 0.9, 0.6]), seed=rng.randint(0, 10_000))
        if rng.random() < 0.2:
            settings["eos_token_id"] = rng.randint(1, VOCAB - 1)
        prompt = [rng.randint(1, VOCAB - 1) for _ in range(length)]
        requests.append((f"r{i}", rng.randint(0, 30), prompt, settings))  # id, arrival iteration, prompt, settings
    return requests


@pytest.mark.parametrize("seeds", [range(s, s + 8) for s in range(0, CASES, 8)], ids=lambda r: f"{r[0]}-{r[-1]}")
def test_requests_joining_and_leaving_equal_generate_alone(seeds):
    for seed in seeds:
        rng = random.Random(seed)
        config = random_config(rng)
        torch.manual_seed(seed)
        model = PhotonForCausalLM(config).double().eval()
        longest = 48
        manager = PhotonBatchingManager(model, max_batch_size=rng.randint(1, 4), max_cache_len=longest,
                                        align_phases=rng.random() < 0.6)
        requests = _random_requests(rng, rng.randint(3, 7), longest)
        cancel = {rid: rng.randint(0, 8) for rid, *_ in requests if rng.random() < 0.15}
        arrived: dict[str, int] = {}
        results = {}
        for iteration in range(400):
            for rid, at, prompt, settings in requests:
                if at == iteration:
                    manager.add_request(prompt, request_id=rid, **settings)
                    arrived[rid] = iteration
            for rid, after in cancel.items():
                if rid in arrived and iteration == arrived[rid] + after:
                    manager.cancel_request(rid)
            manager.iterate()
            while (out := manager.get_result(timeout=0)) is not None:
                assert out.request_id not in results, "a request answered twice"
                results[out.request_id] = out
            if iteration > 30 and all(r is None for r in manager._rows) and not manager._waiting:
                break
        for rid, _, prompt, settings in requests:
            if rid in cancel and rid not in results:
                continue
            assert rid in results, f"seed {seed}: request {rid} was lost"
            assert results[rid].error is None and results[rid].is_finished()
            assert results[rid].generated_tokens == _alone(model, prompt, settings), (
                f"seed {seed} ({config.chunk_sizes}, {config.decoder_input}, look-back {config.decoder_lookback}, "
                f"windows {config.encoder_windows}, aligned {manager.align_phases}): request {rid} {settings}"
            )
        assert all(r is None for r in manager._rows), "a finished or cancelled request kept its row"


def test_the_pool_never_reallocates_and_holds_what_the_cost_model_says():
    model = tiny_model()
    manager = PhotonBatchingManager(model, max_batch_size=3, max_cache_len=40)
    cache = manager.cache
    tensors = [t for layer in cache.layers for t in layer._row_tensors() if t is not None] + [cache.counts]
    addresses = [t.data_ptr() for t in tensors]
    for i in range(7):
        manager.add_request(random_ids(1, 3 + 4 * i, seed=i)[0].tolist(), max_new_tokens=9)
    finished = 0
    for _ in range(300):
        manager.iterate()
        while (out := manager.get_result(timeout=0)) is not None:
            finished += out.is_finished()
        if finished == 7:
            break
    assert finished == 7
    assert [t.data_ptr() for t in tensors] == addresses
    assert cache.nbytes() == 3 * kv_cache_bytes(model.config, 40, dtype=model.dtype)


def test_aligned_rows_take_the_steps_of_a_single_row_and_mixed_rows_do_not():
    config_steps = {}
    for aligned in (True, False):
        model = tiny_model()  # chunk sizes [4, 4]: a meta-chunk of 16
        manager = PhotonBatchingManager(model, max_batch_size=4, max_cache_len=64, align_phases=aligned)
        seen = set()

        def record(begin=manager.cache.begin_column, seen=seen):
            step = begin()
            seen.add(step)
            return step

        manager.cache.begin_column = record
        for i, length in enumerate((5, 12, 7, 14)):
            manager.add_request(random_ids(1, length, seed=i)[0].tolist(), max_new_tokens=30)
            for _ in range(3):
                manager.iterate()
        for _ in range(40):
            manager.iterate()
        config_steps[aligned] = seen
    levels = len(tiny_model().config.chunk_sizes)
    assert len(config_steps[True]) <= levels + 1
    assert all(all(step.every_row) for step in config_steps[True])  # no masked write anywhere
    assert len(config_steps[False]) > levels + 1


def test_sampling_follows_transformers_warpers():
    """sample_tokens' per-row temperature / top-k / top-p leave the same tokens as transformers' own warpers."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    settings = [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.9, 12, 0.5), (1.0, 1, 1.0), (2.0, 3, 0.3)]
    for row, (temperature, k, p) in enumerate(settings):
        scores = TemperatureLogitsWarper(temperature)(None, logits[row : row + 1].clone())
        if k:
            scores = TopKLogitsWarper(k)(None, scores)
        scores = TopPLogitsWarper(p)(None, scores)
        expected = torch.multinomial(scores.softmax(-1), 1, generator=torch.Generator().manual_seed(row))[0, 0]
        got = sample_tokens(
            logits,
            [SamplingSettings(1, do_sample=True, temperature=t, top_k=k, top_p=p) for t, k, p in settings],
            [torch.Generator().manual_seed(r) for r in range(6)],
        )[row]
        assert got == expected, f"row {row}"
        assert torch.isfinite(scores[0, got])  # never a token the warpers removed


def test_bad_requests_are_refused_with_a_reason():
    model = tiny_model()
    manager = PhotonBatchingManager(model, max_batch_size=1, max_cache_len=32, max_queue_size=2)
    with pytest.raises(RequestError, match="empty"):
        manager.add_request([])
    with pytest.raises(RequestError, match="max_new_tokens"):
        manager.add_request([1, 2], max_new_tokens=0)
    with pytest.raises(RequestError, match="longer than a row"):
        manager.add_request([1] * 30, max_new_tokens=5)
    with pytest.raises(RequestError, match="Unsupported"):
        manager.add_request([1, 2], max_new_tokens=3, frequency_penalty=0.5)
    with pytest.raises(RequestError, match=r"\[0, 61\)"):
        manager.add_request([1, 99], max_new_tokens=3)
    with pytest.raises(RequestError, match="temperature"):
        manager.add_request([1, 2], max_new_tokens=3, temperature=-1)
    manager.add_request([1, 2], request_id="a", max_new_tokens=3)
    with pytest.raises(RequestError, match="already"):
        manager.add_request([1, 2], request_id="a", max_new_tokens=3)
    manager.add_request([1, 2], max_new_tokens=3)
    with pytest.raises(QueueFullError):
        manager.add_request([1, 2], max_new_tokens=3)
    with pytest.raises(ValueError, match="repetition_penalty"):
        PhotonBatchingManager(model, GenerationConfig(repetition_penalty=1.2), max_cache_len=32)


def test_settings_a_request_leaves_unset_are_generates_defaults():
    """A sampled request that names no top_k / top_p, with a generation config that names none either, samples as
    generate() does (its defaults: top_k 50, top_p 1.0); the config's own values come first."""
    model = tiny_model().double()
    prompt = random_ids(1, 9)[0].tolist()
    for config, expected in ((GenerationConfig(), dict(top_k=50, top_p=1.0)),
                             (GenerationConfig(top_k=7, top_p=0.8), dict(top_k=7, top_p=0.8))):
        manager = PhotonBatchingManager(model, config, max_batch_size=2, max_cache_len=48)
        manager.add_request(prompt, request_id="s", max_new_tokens=20, temperature=1.2, seed=5)
        while (output := manager.get_result(timeout=0)) is None:
            manager.iterate()
        torch.manual_seed(5)
        alone = model.generate(torch.tensor([prompt]), generation_config=config, max_new_tokens=20, do_sample=True,
                               temperature=1.2)
        assert output.generated_tokens == alone[0, len(prompt):].tolist(), config
        explicit = _alone(model, prompt, dict(max_new_tokens=20, do_sample=True, temperature=1.2, seed=5, **expected))
        assert output.generated_tokens == explicit


def test_generate_batch_equals_generate_per_request():
    model = tiny_model().double()
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (1, 4, 17, 9, 33, 6)]
    config = GenerationConfig(max_new_tokens=12, do_sample=False)
    results = model.generate_batch(prompts, generation_config=config)
    assert len(results) == len(prompts)
    for prompt, output in zip(prompts, results.values(), strict=True):
        assert output.error is None
        assert output.generated_tokens == _alone(model, prompt, dict(max_new_tokens=12))


def test_compiled_step_does_not_recompile_as_rows_join_and_leave():
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(chunk_sizes=[2, 2], num_encoder_layers=1, num_decoder_layers=1)
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True
    generation_config = GenerationConfig(max_new_tokens=8, compile_config=compile_config)
    manager = PhotonBatchingManager(model, generation_config, max_batch_size=3, max_cache_len=40, compile=True)
    manager.warmup()
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= len(model.config.chunk_sizes) + 1
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (3, 6, 1, 9, 4, 7)]
    for i, prompt in enumerate(prompts):
        manager.add_request(prompt, request_id=str(i), max_new_tokens=5 + i)
        manager.iterate()
    results = {}
    for _ in range(100):
        manager.iterate()
        while (out := manager.get_result(timeout=0)) is not None:
            results[out.request_id] = out
    assert counters["stats"]["unique_graphs"] == graphs, "a row joining or leaving recompiled the step"
    assert sum(counters["graph_break"].values()) == 0
    for i, prompt in enumerate(prompts):
        assert results[str(i)].generated_tokens == _alone(model, prompt, dict(max_new_tokens=5 + i))
    torch._dynamo.reset()


def test_the_5_24_serving_call_pattern_streams_through_result_handlers():
    """transformers 5.17-5.24 serve (`CBGenerateManager`): init with the request's generation config, start,
    register a handler on the event loop, add_request(streaming=True), cancel_request."""
    model = tiny_model()
    prompt = random_ids(1, 7)[0].tolist()
    expected = _alone(model, prompt, dict(max_new_tokens=6))
    manager = model.init_continuous_batching(generation_config=GenerationConfig(max_new_tokens=6),
                                             continuous_batching_config=None)
    manager.start()
    try:
        async def serve():
            outputs, cancelled = [], []
            done = asyncio.get_running_loop().create_future()

            def on_output(output):
                outputs.append(output)
                if output.is_finished() and not done.done():
                    done.set_result(output)

            manager.register_result_handler("s", on_output)
            manager.add_request(prompt, request_id="s", streaming=True, max_new_tokens=6, eos_token_id=None)
            manager.register_result_handler("c", cancelled.append)
            manager.add_request(prompt, request_id="c", streaming=True, max_new_tokens=200)
            final = await asyncio.wait_for(done, 30)
            manager.cancel_request("c")
            await asyncio.sleep(0.2)
            return outputs, final

        outputs, final = asyncio.run(serve())
    finally:
        manager.stop(block=True, timeout=5)
    assert final.generated_tokens == expected
    assert [len(o.generated_tokens) for o in outputs] == list(range(1, 7))  # one output per token, in order
    assert manager.background_thread_status.fatal_error is None
    assert all(r is None for r in manager._rows)  # the cancelled request freed its row


def test_the_5_25_serving_call_pattern_polls_results_and_reads_state():
    """transformers 5.25 serve (`CBGenerateRunner`): init with a batching config and workload hints, warmup,
    start, add_request with the supported per-request keys (typed by `logit_processor.supported_keys`),
    get_result polling, the state line's `compute_free_capacity` and scheduler views."""
    model = tiny_model()
    hints = types.SimpleNamespace(max_prompt_length=40, max_generated_length=0, num_requests=None)
    manager = model.init_continuous_batching(continuous_batching_config=types.SimpleNamespace(), workload_hints=hints)
    supported = manager.logit_processor.supported_keys
    manager.warmup()
    manager.start()
    prompts = {str(i): random_ids(1, 4 + 3 * i, seed=i)[0].tolist() for i in range(4)}
    try:
        for rid, prompt in prompts.items():
            sampling = {"top_k": 1} if rid != "3" else {"temperature": 0.0}  # greedy, as 5.25 and OpenAI ask for it
            sampling = {k: supported[k](v) for k, v in sampling.items()}
            manager.add_request(prompt, request_id=rid, streaming=False, max_new_tokens=5, eos_token_id=None,
                                **sampling)
        used = 1 - manager.batch_processor.cache.compute_free_capacity()
        scheduler = manager.batch_processor.scheduler
        assert 0 <= used <= 1 and len(scheduler.active_requests) + len(scheduler.waiting_requests) <= 4
        results = {}
        while len(results) < 4:
            output = manager.get_result(timeout=5)
            assert output is not None
            results[output.request_id] = output
    finally:
        manager.stop(block=True, timeout=5)
        manager.destroy()
    for rid, prompt in prompts.items():
        assert results[rid].generated_tokens == _alone(model, prompt, dict(max_new_tokens=5))


def test_a_failing_step_fails_its_requests_and_marks_the_worker_dead():
    model = tiny_model()
    manager = PhotonBatchingManager(model, max_batch_size=2, max_cache_len=32)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    manager.add_request([1, 2, 3], request_id="x", max_new_tokens=4)
    manager._step = broken
    manager.start()
    output = manager.get_result(timeout=10)
    manager._thread.join(10)  # no stop(): the worker must end by itself rather than spin on a broken step
    dead = not manager.is_running()
    manager.stop()
    assert output.request_id == "x" and output.error is not None and "boom" in output.error
    assert manager.background_thread_status.fatal_error is not None
    assert dead
