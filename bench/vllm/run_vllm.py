"""PHOTON in vLLM against the same-size Llama in the same vLLM build (`../shared/BENCH.md`, "Serving in vLLM").

In one run, on 127.0.0.1, with random weights and the one-character-per-token tokenizer of `bench.serving`:

* **concurrency**: vLLM's own "Maximum concurrency for N tokens per request" for PHOTON (`photon_hf.vllm`, one state
  block of `kv_cache_bytes(config, max_model_len)` per request) and for the Llama (paged KV), same KV budget
  (`VLLM_CPU_KVCACHE_SPACE` on a CPU, `--gpu-memory-utilization` on a GPU) and the same `--max-model-len`;
* **serving**: N = 8, 32, 128 concurrent clients (closed loop, each sending `--requests-per-client` streamed
  completions one after another) against vLLM's OpenAI server for PHOTON and for the Llama, and against
  `photon-hf serve` (transformers' server with PHOTON's continuous batching): output tokens/s, time to first token
  and per-token latency (median, p95);
* **chunked prefill**: one prompt of `--long-prompt` tokens prefilled unsplit and in chunks of `--chunk` tokens
  (vLLM's token budget), in process, PHOTON and the Llama;
* **profile**: PyTorch's profiler over PHOTON's engine steps at `--profile-requests` concurrent requests, in process:
  the share of the model's time in matrix products and attention (arithmetic) against everything else.

One JSON file a run under `bench/vllm/results/`, a Markdown table beside it, and a plot (with matplotlib).

    python -m bench.vllm.run_vllm --serve-python .venv/bin/python     # CPU: vllm-cpu, the `base` preset
    python -m bench.vllm.run_vllm --device cuda --size photon-600m --dtype bfloat16 --clients 32 128 512 \\
        --gpu-memory-utilization 0.6 --skip photon-serve                  # GPU (bench/gpu/vllm.sh)

Run it in the vLLM environment (docs/vllm.md). `photon-hf serve` runs with `--serve-python` (default: this Python),
e.g. the main environment's, whose transformers it is tested with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.serving.run_serving import LETTERS, free_port, make_models, summarize, wait_for_server

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("photon-vllm", "llama-vllm", "photon-serve")


class Server:
    """A server subprocess on 127.0.0.1 that always stops (context manager)."""

    def __init__(self, kind: str, folder: Path, args, log: Path):
        self.kind, self.port = kind, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, VLLM_HOST_IP="127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING="1")
        if kind == "photon-serve":
            command = [args.serve_python, "-m", "photon_hf", "serve", str(folder), "--host", "127.0.0.1", "--port",
                       str(self.port), "--max-batch-size", str(max(args.clients)), "--max-cache-len",
                       str(args.max_model_len), "--device", args.device, "--dtype", args.dtype]
            self.model = str(folder)
        else:
            command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                       "--served-model-name", kind, "--host", "127.0.0.1", "--port", str(self.port), "--dtype",
                       args.dtype, "--max-model-len", str(args.max_model_len), "--max-num-seqs",
                       str(max(args.clients))]
            if args.device == "cuda":
                command += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
            else:
                env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_space)
            self.model = kind
        self.log = open(log, "w")  # noqa: SIM115  (closed in __exit__)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def __enter__(self):
        wait_for_server(self.process, f"{self.url}/v1/models", self.log.name, 900, self.kind)
        return self

    def __exit__(self, *exc):
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def max_concurrency(self) -> float | None:
        """vLLM's own figure, from its start-up log."""
        self.log.flush()
        found = re.findall(r"Maximum concurrency for [\d,]+ tokens per request: ([\d,.]+)x", Path(self.log.name)
                           .read_text())
        return float(found[-1].replace(",", "")) if found else None


def stream(url: str, model: str, prompt: str, new_tokens: int, start: float, vllm: bool) -> dict:
    """One streamed completion of exactly `new_tokens` tokens; its timings (seconds from `start`)."""
    import urllib.request

    body = dict(model=model, prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True)
    if vllm:  # every token counted by id (a random model emits special tokens, which have no text)
        body.update(ignore_eos=True, return_token_ids=True)
    sent = time.perf_counter()
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    arrivals, characters, tokens = [], 0, 0
    with urllib.request.urlopen(request, timeout=3600) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and (choices[0].get("text") or choices[0].get("token_ids")):
                    arrivals.append(time.perf_counter())
                    characters += len(choices[0].get("text") or "")
                    tokens += len(choices[0].get("token_ids") or [])
    done = time.perf_counter()
    if vllm and tokens != new_tokens:
        raise RuntimeError(f"asked for {new_tokens} tokens, got {tokens}")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return dict(sent=sent - start, first=(arrivals[0] - sent) if arrivals else None, end=done - start,
                chunks=len(arrivals), tokens=tokens or characters, gaps=gaps)


def serve_clients(server: Server, prompts: list[list[str]], new_tokens: int) -> dict:
    """Closed loop: client i sends prompts[i] one after another."""
    start = time.perf_counter()
    vllm = server.kind != "photon-serve"

    def client(own: list[str]) -> list[dict]:
        return [stream(server.url, server.model, prompt, new_tokens, start, vllm) for prompt in own]

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = [r for rs in pool.map(client, prompts) for r in rs]
    summary = summarize(results, new_tokens)
    summary.pop("per_request")
    return summary


def workload(clients: int, per_client: int, lengths: tuple[int, int], seed: int) -> list[list[str]]:
    rng = random.Random(seed + clients)
    return [["".join(chr(LETTERS + rng.randint(0, 255)) for _ in range(rng.randint(*lengths)))
             for _ in range(per_client)] for _ in range(clients)]


def in_process_engine(folder: Path, args, **options):
    os.environ.update(VLLM_HOST_IP="127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    if args.device != "cuda":
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_space)
    from vllm import LLM

    settings = dict(model=str(folder), dtype=args.dtype, max_model_len=args.max_model_len, skip_tokenizer_init=True,
                    seed=0)
    if args.device == "cuda":
        settings["gpu_memory_utilization"] = args.gpu_memory_utilization
    settings.update(options)
    return LLM(**settings)


def close(llm):
    import gc

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@contextlib.contextmanager
def photon_forward_timer():
    """Adds the seconds spent in PHOTON's forward (in this process: an in-process engine) to the yielded list's
    one entry: the model's share of the engine's time; the rest is vLLM's own work a step (scheduler, input
    preparation, sampler, bookkeeping)."""
    import torch

    from photon_hf.vllm.model import PhotonVllmForCausalLM

    forward, spent = PhotonVllmForCausalLM.forward, [0.0]

    def timed(self, *inputs, **options):
        start = time.perf_counter()
        try:
            hidden = forward(self, *inputs, **options)
            if hidden.is_cuda:  # the forward's kernels, not just their launches (a sync vLLM would not make)
                torch.cuda.synchronize()
            return hidden
        finally:
            spent[0] += time.perf_counter() - start

    PhotonVllmForCausalLM.forward = timed
    try:
        yield spent
    finally:
        PhotonVllmForCausalLM.forward = forward


def chunked_prefill(folder: Path, args, photon: bool = False) -> dict:
    """Time to prefill one `--long-prompt`-token prompt (one token generated), unsplit and in `--chunk`-token
    chunks (vLLM's token budget); median of `--repeats` prompts, each new (no prefix cache), after a warm-up. Also
    the time of one engine step with a one-token prompt, and for PHOTON the time inside its forward, which splits
    each figure into the model's work and vLLM's own work a step."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def prompt(seed: int, length: int = args.long_prompt):
        rng = random.Random(seed)
        return TokensPrompt(prompt_token_ids=[rng.randint(0, 255) for _ in range(length)])

    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    out = {}
    for name, budget in (("unsplit", max(args.long_prompt, args.max_model_len)), ("chunked", args.chunk)):
        llm = in_process_engine(folder, args, max_num_batched_tokens=budget, max_num_seqs=8,
                                enable_prefix_caching=False)
        try:
            llm.generate(prompt(0), params, use_tqdm=False)
            times, forwards = [], []
            with photon_forward_timer() if photon else contextlib.nullcontext([0.0]) as spent:
                for repeat in range(args.repeats):
                    spent[0], start = 0.0, time.perf_counter()
                    llm.generate(prompt(1 + repeat), params, use_tqdm=False)
                    times.append(time.perf_counter() - start)
                    forwards.append(spent[0])
            if name == "chunked":
                steps = []
                for repeat in range(args.repeats):
                    start = time.perf_counter()
                    llm.generate(prompt(100 + repeat, 1), params, use_tqdm=False)
                    steps.append(time.perf_counter() - start)
                out["one_token_step_s"] = statistics.median(steps)
        finally:
            close(llm)
        out[f"{name}_s"] = statistics.median(times)
        if photon:
            out[f"{name}_forward_s"] = statistics.median(forwards)
    chunks = -(-args.long_prompt // args.chunk)
    out["chunked_over_unsplit"] = out["chunked_s"] / out["unsplit_s"]
    out.update(prompt_tokens=args.long_prompt, chunk_tokens=args.chunk, chunks=chunks)
    if photon:
        # vLLM's own work a step, and the ratio if every chunk's forward cost just its share of the unsplit one.
        out["vllm_step_s"] = (out["chunked_s"] - out["chunked_forward_s"]) / chunks
        out["floor_over_unsplit"] = (chunks * out["vllm_step_s"] + out["unsplit_forward_s"]) / out["unsplit_s"]
    return out


ARITHMETIC = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product",
              "aten::_flash_attention", "aten::_efficient_attention", "aten::linear", "aten::matmul",
              "aten::mkldnn", "aten::_mkl", "_C::onednn_mm")  # the last: vLLM's CPU GEMM (`PackedLinear`)
OPS = ("aten::", "_C::")  # PyTorch's ops and vLLM's own


def profile(folder: Path, args) -> dict:
    """PyTorch's profiler over PHOTON's engine during `--profile-requests` concurrent greedy requests: time in the
    model's forward, in matrix products and attention (self time of those ops) and in every other op."""
    import torch
    from torch.profiler import ProfilerActivity
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = in_process_engine(folder, args, max_num_seqs=args.profile_requests)
    rng = random.Random(2)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randint(0, 255) for _ in range(rng.randint(*args.prompt_tokens))])
               for _ in range(args.profile_requests)]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    try:
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with photon_forward_timer() as spent:
            start = time.perf_counter()
            with torch.profiler.profile(activities=activities) as prof:
                llm.generate(prompts, params, use_tqdm=False)
            wall = time.perf_counter() - start
    finally:
        close(llm)
    events = prof.key_averages()
    total_ops = sum(e.self_cpu_time_total for e in events if e.key.startswith(OPS)) / 1e6
    arithmetic = sum(e.self_cpu_time_total for e in events if e.key.startswith(ARITHMETIC)) / 1e6
    top = sorted((e for e in events if e.key.startswith(OPS)), key=lambda e: -e.self_cpu_time_total)[:12]
    return dict(requests=args.profile_requests, new_tokens=args.new_tokens, wall_s=wall, model_forward_s=spent[0],
                ops_self_s=total_ops, arithmetic_self_s=arithmetic, arithmetic_share_of_wall=arithmetic / wall,
                ops_share_of_wall=total_ops / wall, model_share_of_wall=spent[0] / wall,
                top_ops=[(e.key, e.self_cpu_time_total / 1e6, e.count) for e in top])


def plot(report: dict, path: Path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("output_tokens_per_s", "output tokens / s"), ("ttft_median_s", "time to first token, median (s)"),
              ("token_latency_median_ms", "per-token latency, median (ms)"))
    colors = {"photon-vllm": "tab:blue", "llama-vllm": "tab:gray", "photon-serve": "tab:cyan"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for kind, runs in report["serving"].items():
            clients = sorted(int(c) for c in runs)
            ax.plot(clients, [runs[str(c)][key] for c in clients], "o-", label=kind, color=colors.get(kind))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    conc = report.get("max_concurrency", {})
    fig.suptitle(f"{report['size']} ({report['dtype']}), max_model_len {report['max_model_len']}, {report['machine']}"
                 f"; vLLM max concurrency PHOTON {conc.get('photon-vllm')} vs Llama {conc.get('llama-vllm')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(report: dict) -> str:
    lines = [f"# PHOTON in vLLM: {report['size']} ({report['dtype']}), {report['machine']}, {report['date']}", ""]
    conc = report.get("max_concurrency", {})
    if conc:
        lines += [f"vLLM's maximum concurrency at {report['max_model_len']} tokens per request, same KV budget: "
                  f"PHOTON {conc.get('photon-vllm')}, Llama {conc.get('llama-vllm')} "
                  f"({report.get('concurrency_ratio', float('nan')):.1f}x).", ""]
    if report["serving"]:  # none when a run measured chunked prefill or the profile alone
        lines += ["| server | clients | output tok/s | TTFT median (s) | TTFT p95 (s) | per-token median (ms) | "
                  "p95 (ms) |", "|---|---|---|---|---|---|---|"]
    for kind, runs in report["serving"].items():
        for clients, r in sorted(runs.items(), key=lambda item: int(item[0])):
            lines.append(f"| {kind} | {clients} | {r['output_tokens_per_s']:.1f} | {r['ttft_median_s']:.3f} | "
                         f"{r['ttft_p95_s']:.3f} | {r['token_latency_median_ms']:.1f} | "
                         f"{r['token_latency_p95_ms']:.1f} |")
    for name, result in report.get("chunked_prefill", {}).items():
        if "error" in result:
            lines += ["", f"Chunked prefill, {name}: {result['error']}"]
            continue
        text = (f"Chunked prefill, {name}: {result['prompt_tokens']} tokens unsplit {result['unsplit_s']:.3f} s, in "
                f"{result['chunk_tokens']}-token chunks {result['chunked_s']:.3f} s "
                f"({result['chunked_over_unsplit']:.2f}x).")
        if "one_token_step_s" in result:  # older results lack it
            text += f" One engine step of a one-token prompt: {1e3 * result['one_token_step_s']:.1f} ms."
        if "floor_over_unsplit" in result:
            text += (f" The model's forward: {result['unsplit_forward_s']:.3f} s unsplit, "
                     f"{result['chunked_forward_s']:.3f} s chunked; vLLM's own work {1e3 * result['vllm_step_s']:.1f} "
                     f"ms a step, so chunks whose forward cost only their share of the unsplit one would still take "
                     f"{result['floor_over_unsplit']:.2f}x.")
        lines += ["", text]
    if "profile" in report:
        p = report["profile"]
        forward = (f"PHOTON's forward {100 * p['model_share_of_wall']:.0f}% of the engine's wall time (the rest is "
                   "vLLM's scheduler, sampler and bookkeeping), " if "model_share_of_wall" in p else "")
        lines += ["", f"Profile (PHOTON, {p['requests']} requests x {p['new_tokens']} tokens, {p['wall_s']:.2f} s): "
                  f"{forward}matrix products and attention {100 * p['arithmetic_share_of_wall']:.0f}%, all ops "
                  f"(PyTorch's and vLLM's) {100 * p['ops_share_of_wall']:.0f}%."]
    return "\n".join(lines) + "\n"


def _command_line(argv: list[str]) -> str:
    """This run's command, as run from the repository root, with paths relative to it (results name no machine's
    folders)."""
    args = [os.path.relpath(arg) if os.path.isabs(arg) else arg for arg in argv]
    return shlex.join(["python", "-m", "bench.vllm.run_vllm", *args])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", help="PHOTON preset (default: base)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-space", type=int, default=1, help="CPU: KV budget in GiB (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin measurements per figure (median)")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(64, 256), help="prompt length range")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--long-prompt", type=int, default=2040, help="chunked prefill: the prompt's length")
    parser.add_argument("--chunk", type=int, default=256, help="chunked prefill: vLLM's token budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill-sizes", nargs="*", default=[], help="chunked prefill also at these presets")
    parser.add_argument("--profile-requests", type=int, default=32)
    parser.add_argument("--serve-python", default=sys.executable, help="the Python that runs `photon-hf serve`")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*SERVERS, "chunked-prefill", "profile"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the plot (and table) of a result JSON")
    args = parser.parse_args(argv)
    if args.replot:  # e.g. in an environment with matplotlib
        report = json.loads(args.replot.read_text())
        args.replot.with_suffix(".md").write_text(markdown(report))
        if report["serving"]:  # the plot draws the serving figures
            plot(report, args.replot.with_suffix(".png"))
        return

    machine = platform.processor() or platform.machine()
    if args.device == "cuda":
        import torch

        machine = torch.cuda.get_device_name()
    report = dict(size=args.size, dtype=args.dtype, device=args.device, machine=machine,
                  date=time.strftime("%Y-%m-%d %H:%M"), max_model_len=args.max_model_len, kv_space_gib=args.kv_space,
                  clients=args.clients, requests_per_client=args.requests_per_client,
                  prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, serving={}, max_concurrency={},
                  command=_command_line(sys.argv[1:] if argv is None else list(argv)))
    logs = Path(tempfile.mkdtemp(prefix="photon-vllm-bench-"))
    print(f"server logs: {logs}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photon, llama, costs = make_models(root, args.size, args.dtype, args.seed)
        report["photon_row_bytes"] = costs["photon_row_bytes"](args.max_model_len)
        report["llama_bytes"] = costs["llama_bytes"](args.max_model_len)
        # Every server stays up while the others are measured (an idle vLLM engine waits on its socket), and the
        # measurements go round-robin, `--rounds` times: each figure is the median of its rounds, taken under the
        # same conditions as the others'.
        with contextlib.ExitStack() as stack:
            servers = {}
            for kind in SERVERS:
                if kind in args.skip:
                    continue
                folder = llama if kind.startswith("llama") else photon
                servers[kind] = server = stack.enter_context(Server(kind, folder, args, logs / f"{kind}.log"))
                if kind != "photon-serve":
                    report["max_concurrency"][kind] = server.max_concurrency()
                serve_clients(server, [["".join(chr(LETTERS + i) for i in range(32))]], 4)  # warm-up
            rounds: dict[tuple[str, int], list[dict]] = {}
            for round_ in range(args.rounds):
                for clients in args.clients:
                    prompts = workload(clients, args.requests_per_client, args.prompt_tokens, args.seed + round_)
                    for kind, server in servers.items():
                        result = serve_clients(server, prompts, args.new_tokens)
                        rounds.setdefault((kind, clients), []).append(result)
                        print(f"round {round_}: {kind} {clients:4d} clients: {result['output_tokens_per_s']:8.1f} "
                              f"tok/s, TTFT median {result['ttft_median_s']:.3f} s, per token "
                              f"{result['token_latency_median_ms']:.1f} ms", flush=True)
        for (kind, clients), results in rounds.items():
            median = {key: statistics.median(r[key] for r in results) for key in results[0]
                      if isinstance(results[0][key], (int, float))}
            median["rounds_output_tokens_per_s"] = [r["output_tokens_per_s"] for r in results]
            report["serving"].setdefault(kind, {})[str(clients)] = median
        conc = report["max_concurrency"]
        if conc.get("photon-vllm") and conc.get("llama-vllm"):
            report["concurrency_ratio"] = conc["photon-vllm"] / conc["llama-vllm"]
            print(f"vLLM max concurrency at {args.max_model_len}: PHOTON {conc['photon-vllm']}x, Llama "
                  f"{conc['llama-vllm']}x ({report['concurrency_ratio']:.1f}x)", flush=True)
        if "chunked-prefill" not in args.skip:
            report["chunked_prefill"] = {name: chunked_prefill(folder, args, photon=name == "photon")
                                         for name, folder in (("photon", photon), ("llama", llama))}
            print(f"chunked prefill: {report['chunked_prefill']}", flush=True)
            for size in args.prefill_sizes:  # the same measurement at other shapes
                big_photon, big_llama, _ = make_models(root / size, size, args.dtype, args.seed)
                for name, folder in ((f"photon {size}", big_photon), (f"llama {size}", big_llama)):
                    try:
                        report["chunked_prefill"][name] = chunked_prefill(folder, args,
                                                                          photon=name.startswith("photon"))
                    except Exception as error:  # e.g. vllm-cpu's attention has no kernel for the 600M head size
                        report["chunked_prefill"][name] = dict(error=f"{type(error).__name__}: {error}"[:300])
                    print(f"chunked prefill, {name}: {report['chunked_prefill'][name]}", flush=True)
        if "profile" not in args.skip:
            report["profile"] = profile(photon, args)
            print(f"profile: {json.dumps(report['profile'], indent=1)}", flush=True)
    output = args.output or RESULTS / f"vllm_{time.strftime('%Y%m%d-%H%M%S')}_{args.device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    output.with_suffix(".md").write_text(markdown(report))
    if report["serving"]:
        plot(report, output.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
