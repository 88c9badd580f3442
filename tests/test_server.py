"""`photon-hf serve` end to end: transformers' OpenAI-compatible server with PHOTON's continuous batching, started
as a subprocess on 127.0.0.1 (a free port), driven by the `openai` client with concurrent, streaming, chat, bad and
abandoned requests. Every answer equals `generate()` greedy on the same prompt; the server always shuts down.
Bounded: a few dozen requests of at most 24 tokens, each with a timeout."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from photon_hf import PhotonForCausalLM, byte_tokenizer, export_for_hub, photon_preset

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: "
PROMPTS = ["import ", "def main(", "class A:\n", "x = [", "for i in range(", "# PHOTON", "return ", "while True"]


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, folder: str, log_path, *options: str):
        self.folder, self.port, self.log_path = folder, _free_port(), log_path
        self.log = open(log_path, "w")
        command = [sys.executable, "-m", "photon_hf", "serve", folder, "--port", str(self.port), "--device", "cpu",
                   "--log-level", "info", *options]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {open(log_path).read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"the server did not answer in 120 s: {open(log_path).read()[-3000:]}")

    def client(self):
        return openai.OpenAI(base_url=self.url, api_key="none", timeout=60, max_retries=0)

    def post(self, route: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}/{route}", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    folder = _model_folder(root / "model")
    server = Server(folder, root / "server.log", "--max-batch-size", "4", "--max-cache-len", "256")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def reference(served):
    model = AutoModelForCausalLM.from_pretrained(served.folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(served.folder)

    def greedy(ids: list[int], max_new_tokens: int) -> str:
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    return tokenizer, greedy


def test_concurrent_completions_each_equal_generate_alone(served, reference):
    tokenizer, greedy = reference
    client = served.client()
    budgets = [5 + 2 * i for i in range(len(PROMPTS))]

    def ask(i):
        return client.completions.create(model=served.folder, prompt=PROMPTS[i], max_tokens=budgets[i], temperature=0)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(ask, range(len(PROMPTS))))
    for i, answer in enumerate(answers):
        assert answer.choices[0].text == greedy(tokenizer(PROMPTS[i])["input_ids"], budgets[i]), PROMPTS[i]


def test_streaming_and_chat(served, reference):
    tokenizer, greedy = reference
    client = served.client()
    stream = client.completions.create(model=served.folder, prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == greedy(tokenizer(PROMPTS[1])["input_ids"], 12)
    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model=served.folder, messages=messages, max_tokens=10, temperature=0)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert chat.choices[0].message.content == greedy(ids["input_ids"], 10)


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(served, reference):
    tokenizer, greedy = reference
    for body, fragment in [
        (dict(prompt="", max_tokens=5), "empty"),
        (dict(prompt="ab", max_tokens=0), "max_new_tokens"),
        (dict(prompt="ab", max_tokens=100_000), "longer than a row"),
        (dict(prompt="ab" * 200, max_tokens=5), "longer than a row"),
        (dict(prompt="ab", max_tokens=5, no_such_setting=1), "no_such_setting"),
    ]:
        status, answer = served.post("completions", dict(model=served.folder, **body))
        assert 400 <= status < 500, (body, status, answer)
        assert fragment in json.dumps(answer), answer
    answer = served.client().completions.create(model=served.folder, prompt="ab", max_tokens=4, temperature=0)
    assert answer.choices[0].text == greedy(tokenizer("ab")["input_ids"], 4)


def test_a_client_that_leaves_mid_stream_frees_its_row(served):
    client = served.client()
    stream = client.completions.create(model=served.folder, prompt="leave", max_tokens=200, temperature=0,
                                       stream=True)
    next(iter(stream))  # the request holds a row and streams ...
    stream.close()  # ... and the client goes away
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "cancelled" not in open(served.log_path).read():
        time.sleep(0.2)
    assert "cancelled" in open(served.log_path).read(), "the abandoned request kept its row"
    answer = client.completions.create(model=served.folder, prompt="stay", max_tokens=3, temperature=0)
    assert answer.choices[0].finish_reason == "length"


def test_an_exported_remote_code_folder_is_served(tmp_path, served):
    """The Hub folder (`export_for_hub`: code in the folder, `auto_map`) loads with --trust-remote-code."""
    model = AutoModelForCausalLM.from_pretrained(served.folder)
    tokenizer = AutoTokenizer.from_pretrained(served.folder)
    folder = tmp_path / "hub"
    export_for_hub(model, folder, tokenizer=tokenizer)
    server = Server(str(folder), tmp_path / "hub.log", "--trust-remote-code", "--max-batch-size", "2",
                    "--max-cache-len", "128")
    try:
        answer = server.client().completions.create(model=str(folder), prompt="import ", max_tokens=6, temperature=0)
    finally:
        server.close()
    ids = tokenizer("import ")["input_ids"]
    expected = tokenizer.decode(model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):],
                                skip_special_tokens=True)
    assert answer.choices[0].text == expected
