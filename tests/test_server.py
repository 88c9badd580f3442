"""`photon-hf serve` end to end: transformers' OpenAI-compatible server with PHOTON's continuous batching, started
as a subprocess on 127.0.0.1 (a free port), driven by the `openai` client and plain HTTP with concurrent,
streaming, chat, sampled, bad and abandoned requests, as an operator runs it: an API key, admin routes off,
`/health`, a taken port, SIGTERM with a stream in flight. Greedy answers equal `generate()` greedy on the same
prompt; a sampled answer with a seed equals `generate()` after `torch.manual_seed(seed)`, alone or in a busy batch.
Every server always shuts down. Bounded: a few dozen requests of at most 24 tokens, each with a timeout."""

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import time
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from helpers import console_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from photon_hf import PhotonForCausalLM, byte_tokenizer, export_for_hub, photon_preset
from photon_hf import server as photon_server
from photon_hf.server import model_problem

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: "
PROMPTS = ["import ", "def main(", "class A:\n", "x = [", "for i in range(", "# PHOTON", "return ", "while True"]
KEY = "test-key"  # the module's server takes it from PHOTON_HF_API_KEY


def _model_folder(path) -> str:
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = photon_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = PhotonForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def same_text(streamed: str, whole: str) -> bool:
    """A stream's text against the whole answer decoded at once: the same, but for an unfinished UTF-8 sequence at
    the very end (random weights emit any byte), which the stream holds back and the whole decode shows as U+FFFD."""
    return whole.startswith(streamed) and set(whole[len(streamed):]) <= {"\ufffd"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`photon-hf serve FOLDER` on 127.0.0.1, in a process group of its own; `close` always stops it."""

    def __init__(self, folder: str, log_path, *options: str, key: str | None = None, env: dict | None = None):
        self.folder, self.port, self.log_path, self.key = folder, _free_port(), log_path, key
        self.log = open(log_path, "w")
        command = [console_script(), "serve", folder, "--port", str(self.port), "--device", "cpu", "--log-level",
                   "info", *options]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.close()
                raise RuntimeError(f"the server exited: {self.output()[-3000:]}")
            if self.request("GET", "/health")[0] == 200:
                return
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"the server did not answer in 120 s: {self.output()[-3000:]}")

    def output(self) -> str:
        return Path(self.log_path).read_text()

    def client(self):
        return openai.OpenAI(base_url=self.url, api_key=self.key or "none", timeout=60, max_retries=0)

    def request(self, method: str, route: str, body: dict | None = None, key: str | None = "default"):
        """(status, answer) of one request; `key`: the server's by default, None for none."""
        key = self.key if key == "default" else key
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{route}", data=data, headers=headers,
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        except OSError as error:  # not listening (yet)
            return None, str(error)
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:  # an event stream
            return status, text

    def post(self, route: str, body: dict, **kwargs) -> tuple[int, dict]:
        return self.request("POST", f"/v1/{route}", body, **kwargs)

    def close(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    folder = _model_folder(root / "model")
    server = Server(folder, root / "server.log", "--max-batch-size", "4", "--max-cache-len", "256", key=KEY,
                    env={"PHOTON_HF_API_KEY": KEY})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def reference(served):
    model = AutoModelForCausalLM.from_pretrained(served.folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(served.folder)

    @functools.cache
    def expected(prompt: str, max_new_tokens: int, seed: int | None = None, **sampling) -> str:
        """generate() alone: greedy, or sampled with `sampling` after torch.manual_seed(seed)."""
        ids = tokenizer(prompt)["input_ids"]
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=bool(sampling),
                             **sampling)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    return tokenizer, model, expected


def test_concurrent_completions_each_equal_generate_alone(served, reference):
    _, _, expected = reference
    client = served.client()
    budgets = [5 + 2 * i for i in range(len(PROMPTS))]

    def ask(i):
        return client.completions.create(model=served.folder, prompt=PROMPTS[i], max_tokens=budgets[i], temperature=0)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(ask, range(len(PROMPTS))))
    for i, answer in enumerate(answers):
        assert answer.choices[0].text == expected(PROMPTS[i], budgets[i]), PROMPTS[i]


def test_streaming_and_chat(served, reference):
    tokenizer, model, expected = reference
    client = served.client()
    stream = client.completions.create(model=served.folder, prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                       stream=True)
    assert same_text("".join(chunk.choices[0].text for chunk in stream), expected(PROMPTS[1], 12))
    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model=served.folder, messages=messages, max_tokens=10, temperature=0)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    greedy = model.generate(torch.tensor([ids["input_ids"]]), max_new_tokens=10, do_sample=False)
    assert chat.choices[0].message.content == tokenizer.decode(greedy[0, len(ids["input_ids"]):],
                                                               skip_special_tokens=True)


def test_the_api_key_guards_v1(served):
    for key in (None, "wrong"):
        for method, route, body in (("GET", "/v1/models", None),
                                    ("POST", "/v1/completions", dict(model=served.folder, prompt="ab", max_tokens=2))):
            status, answer = served.request(method, route, body, key=key)
            assert status == 401 and "API key" in answer["detail"], (key, route, status, answer)
    assert served.request("GET", "/v1/models")[0] == 200
    assert served.request("GET", "/health", key=None) == (200, {"status": "ok"})  # for probes: no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0).models.list()


def test_admin_routes_are_refused_and_an_in_flight_stream_goes_on(served, reference):
    _, _, expected = reference
    stream = served.client().completions.create(model=served.folder, prompt=PROMPTS[0], max_tokens=40,
                                                temperature=0, stream=True)  # no EOS before the budget
    chunks = iter(stream)
    text = next(chunks).choices[0].text  # the request holds a row and streams ...
    for route, body in (("/reset", {}), ("/load_model", {"model": served.folder})):  # ... while a client tries these
        status, answer = served.request("POST", route, body)
        assert status == 403 and "--enable-admin-routes" in answer["detail"], (route, status, answer)
    text += "".join(chunk.choices[0].text for chunk in chunks)
    assert same_text(text, expected(PROMPTS[0], 40))
    assert served.request("GET", "/health") == (200, {"status": "ok"})


def test_sampled_requests_with_a_seed_repeat_alone_and_in_a_busy_batch(served, reference):
    """`temperature` > 0 samples though the model's generation config does not; with a `seed` the answer is
    `generate()`'s after torch.manual_seed(seed) (its defaults: top_k 50), alone and among 8 concurrent requests
    (the pool holds 4: the others wait), streamed or not; `top_k` and `top_p` reach the manager."""
    _, _, expected = reference
    client = served.client()
    seeded = dict(prompt=PROMPTS[0], max_tokens=20, temperature=0.8, seed=1234)
    narrow = dict(prompt=PROMPTS[3], max_tokens=20, temperature=1.3, seed=7, top_p=0.9, extra_body={"top_k": 5})

    def ask(request: dict) -> str:
        request = dict(request)
        if request.pop("stream", False):
            chunks = client.completions.create(model=served.folder, stream=True, **request)
            return "".join(chunk.choices[0].text for chunk in chunks)
        return client.completions.create(model=served.folder, **request).choices[0].text

    alone = ask(seeded)
    assert alone == expected(PROMPTS[0], 20, seed=1234, temperature=0.8)
    assert alone != expected(PROMPTS[0], 20)  # not greedy
    assert ask(narrow) == expected(PROMPTS[3], 20, seed=7, temperature=1.3, top_k=5, top_p=0.9)
    busy = [seeded, {**seeded, "stream": True}, narrow,
            dict(prompt=PROMPTS[4], max_tokens=24, temperature=0),
            dict(prompt=PROMPTS[5], max_tokens=16, temperature=1.0),  # sampled without a seed
            dict(prompt=PROMPTS[6], max_tokens=24, temperature=0.7, seed=99, stream=True),
            dict(prompt=PROMPTS[7], max_tokens=12, temperature=0, stream=True),
            dict(prompt=PROMPTS[1], max_tokens=20, temperature=2.0, seed=1234)]
    with ThreadPoolExecutor(len(busy)) as pool:
        answers = list(pool.map(ask, busy))
    assert answers[0] == alone and same_text(answers[1], alone)
    assert answers[2] == expected(PROMPTS[3], 20, seed=7, temperature=1.3, top_k=5, top_p=0.9)
    assert answers[3] == expected(PROMPTS[4], 24)
    assert same_text(answers[5], expected(PROMPTS[6], 24, seed=99, temperature=0.7))


def test_bad_sampling_values_get_a_400_naming_the_field(served, reference):
    _, _, expected = reference
    base = dict(model=served.folder, prompt="ab", max_tokens=4)
    for fields, fragment in [
        (dict(temperature=-0.5), "temperature"), (dict(temperature="hot"), "temperature"),
        (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
        (dict(seed="x"), "seed"), (dict(max_tokens=0), "max_tokens"),
        (dict(n=2), "n=2"), (dict(best_of=3), "best_of=3"),
        (dict(frequency_penalty=0.5), "frequency_penalty"), (dict(stop=["\n"]), "stop"),
        (dict(temperature=-1, stream=True), "temperature"),  # a 400, not an error inside a 200 stream
    ]:
        status, answer = served.post("completions", {**base, **fields})
        assert status == 400 and fragment in answer["detail"], (fields, status, answer)
        assert len(answer["detail"].splitlines()) == 1
    chat = dict(model=served.folder, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    status, answer = served.post("chat/completions", {**chat, "n": 2})
    assert status == 400 and "n=2" in answer["detail"], (status, answer)
    answer = served.client().completions.create(model=served.folder, prompt="ab", max_tokens=4, temperature=0)
    assert answer.choices[0].text == expected("ab", 4)


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(served, reference):
    _, _, expected = reference
    for body, fragment in [
        (dict(prompt="", max_tokens=5), "empty"),
        (dict(prompt="ab", max_tokens=100_000), "longer than a row"),
        (dict(prompt="ab" * 200, max_tokens=5), "longer than a row"),
        (dict(prompt="ab", max_tokens=5, no_such_setting=1), "no_such_setting"),
    ]:
        status, answer = served.post("completions", dict(model=served.folder, **body))
        assert 400 <= status < 500, (body, status, answer)
        assert fragment in json.dumps(answer), answer
    answer = served.client().completions.create(model=served.folder, prompt="ab", max_tokens=4, temperature=0)
    assert answer.choices[0].text == expected("ab", 4)


def test_a_client_that_leaves_mid_stream_frees_its_row(served):
    client = served.client()
    stream = client.completions.create(model=served.folder, prompt="leave", max_tokens=200, temperature=0,
                                       stream=True)
    next(iter(stream))  # the request holds a row and streams ...
    stream.close()  # ... and the client goes away
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "cancelled" not in served.output():
        time.sleep(0.2)
    assert "cancelled" in served.output(), "the abandoned request kept its row"
    answer = client.completions.create(model=served.folder, prompt="stay", max_tokens=3, temperature=0)
    assert answer.choices[0].finish_reason == "length"


def test_a_taken_port_fails_at_once_in_one_line(served):
    """A second server on the module server's port stops before loading anything, with one line."""
    result = subprocess.run([console_script(), "serve", served.folder, "--port", str(served.port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"port {served.port}" in result.stderr and "--port" in result.stderr, result.stderr
    assert served.request("GET", "/health") == (200, {"status": "ok"})  # the first server is untouched


def test_health_reports_what_stops_the_model():
    """`/health`'s reason, for transformers 5.25's model process and 5.17-5.24's model in the server's process."""
    process = types.SimpleNamespace(is_alive=lambda: True, exitcode=None)
    engine = types.SimpleNamespace(managed_process=process, is_dead=False, fatal_error=None, process_running=True)
    manager = types.SimpleNamespace(engines={"m": engine})
    assert model_problem(manager) is None
    engine.process_running, engine.managed_process = False, None  # /reset
    assert "stopped" in model_problem(manager)
    engine.process_running, engine.managed_process = True, types.SimpleNamespace(is_alive=lambda: False, exitcode=-9)
    assert "exit code -9" in model_problem(manager)
    engine.is_dead, engine.fatal_error = True, "boom"
    assert "boom" in model_problem(manager)
    assert model_problem(types.SimpleNamespace(engines={})) == "no model is loaded"
    alive = types.SimpleNamespace(is_cb_alive=lambda: True)
    assert model_problem(types.SimpleNamespace(loaded_models={"m": object()}), alive) is None
    assert "no model is loaded" in model_problem(types.SimpleNamespace(loaded_models={}), alive)
    dead = types.SimpleNamespace(is_cb_alive=lambda: False)
    assert "worker died" in model_problem(types.SimpleNamespace(loaded_models={"m": object()}), dead)


def test_requests_still_running_at_the_shutdown_timeout_are_cut_off_cleanly(monkeypatch):
    """The drain is uvicorn's graceful shutdown, bounded by --shutdown-timeout; what it cancels at the timeout gets a
    503, or a last error event if it streams, and is counted (no traceback, no 500)."""
    options = photon_server._ServeOptions(shutdown_timeout=7)
    monkeypatch.setattr(photon_server, "_options", options)
    assert photon_server._DrainingServer(uvicorn.Config(app=None)).config.timeout_graceful_shutdown == 7
    monkeypatch.setattr(photon_server, "_traffic", photon_server._Traffic())

    async def cut_off(streams: bool) -> list[dict]:
        async def app(scope, receive, send):
            if streams:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            await asyncio.Event().wait()  # generating, until cancelled

        sent = []

        async def send(message):
            sent.append(message)

        gate = photon_server._Gate(app, options)
        scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
        task = asyncio.create_task(gate(scope, None, send))
        await asyncio.sleep(0.05)
        photon_server._traffic.stopping(signal.SIGTERM)
        task.cancel()
        await task  # returns: the cancellation is answered, not raised
        return sent

    sent = asyncio.run(cut_off(streams=False))
    assert sent[0]["status"] == 503 and b"--shutdown-timeout 7 s" in sent[-1]["body"]
    sent = asyncio.run(cut_off(streams=True))
    assert sent[-1]["body"].startswith(b'data: {"error": "The server stopped') and not sent[-1].get("more_body")
    assert photon_server._traffic.cut_off == 1 and photon_server._traffic.in_flight == 0


def test_an_exported_folder_with_a_key_and_admin_routes_drains_a_stream_on_sigterm(tmp_path, served, reference):
    """The Hub folder (`export_for_hub`: code in the folder, `auto_map`) loads with --trust-remote-code; `--api-key`
    wins over PHOTON_HF_API_KEY; --enable-admin-routes opens the admin routes (to a request with the key; /reset
    would stop the model, so /load_model stands for them); SIGTERM with a stream in flight: the stream completes,
    the server exits 0 with one line and no traceback."""
    tokenizer, model, expected = reference
    folder = tmp_path / "hub"
    export_for_hub(model, folder, tokenizer=tokenizer)
    server = Server(str(folder), tmp_path / "hub.log", "--trust-remote-code", "--max-batch-size", "2",
                    "--max-cache-len", "128", "--api-key", "flag-key", "--enable-admin-routes", "--shutdown-timeout",
                    "60", key="flag-key", env={"PHOTON_HF_API_KEY": "env-key"})
    try:
        client = server.client()
        answer = client.completions.create(model=str(folder), prompt="import ", max_tokens=6, temperature=0)
        assert answer.choices[0].text == expected("import ", 6)
        assert server.request("GET", "/v1/models", key="env-key")[0] == 401
        assert server.request("POST", "/load_model", {"model": str(folder)}, key=None)[0] == 401  # key first
        status, answer = server.request("POST", "/load_model", {"model": str(folder)})
        assert status == 200 and '"ready"' in answer, (status, answer)
        stream = client.completions.create(model=str(folder), prompt=PROMPTS[0], max_tokens=64, temperature=0,
                                           stream=True, stream_options={"include_usage": True})  # no EOS before 64
        chunks = iter(stream)
        text = next(chunks).choices[0].text
        server.process.send_signal(signal.SIGTERM)
        rest = list(chunks)
        assert server.process.wait(60) == 0
    finally:
        server.close()
    assert [chunk.usage.completion_tokens for chunk in rest if chunk.usage] == [64]  # the whole budget
    assert [chunk.choices[0].finish_reason for chunk in rest if chunk.choices][-1] == "length"
    text += "".join(chunk.choices[0].text for chunk in rest if chunk.choices)
    assert same_text(text, expected(PROMPTS[0], 64))
    log = server.output()
    assert "Traceback" not in log, log[-3000:]
    stopped = [line for line in log.splitlines() if line.startswith("photon-hf serve: stopped")]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0] and "1 request(s) in flight finished" in stopped[0], log
