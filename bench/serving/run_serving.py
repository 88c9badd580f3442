"""Serving benchmark (`../shared/BENCH.md`, "Serving"): N concurrent clients on 127.0.0.1 against one server
process, in the same run, for

* `photon-cb`: `photon-hf serve` (transformers' server, PHOTON's continuous batching);
* `photon-serial`: the same server without continuous batching (transformers' one request at a time);
* `llama-cb`: the same-size Llama under `transformers serve --continuous-batching` (stock paged attention);

and, in process, the decode-step time of a full pool whose rows share one phase of the meta-chunk against one whose
rows are all at different phases (`--phases`).

Figures per server: output tokens/s, time to first token and per-token latency (median, p95), requests held at
once, and cache memory per active request (PHOTON: a row of the pool, sized for `--max-cache-len`; Llama: its KV
at the request's own length, paged). One JSON file a run under `bench/serving/results/`, and a plot where
matplotlib is installed.

    python -m bench.serving.run_serving --size small --clients 8 --new-tokens 64
    python -m bench.serving.run_serving --device cuda --size photon-600m --dtype bfloat16 --clients 256  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


LETTERS = 0x100  # token i is the character chr(LETTERS + i): a whole character each, so every token streams


def letters_tokenizer():
    """One printable character per token id (0..255), then <pad>, <bos>, <eos>. Random weights emit any id; with
    bytes most of them are partial UTF-8, which a streaming detokenizer holds back, so the client could not time
    each token."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={chr(LETTERS + i): i for i in range(256)}, merges=[]))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="left")


def make_models(root: Path, size: str, dtype: str, seed: int = 0) -> tuple[Path, Path, dict]:
    """A random-weight PHOTON of `size` and the same-shape Llama (`photon_hf.memory.llama_config_for`), saved with a
    one-character-per-token tokenizer; EOS off in both generation configs, so every request runs its whole
    budget."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from photon_hf import PhotonForCausalLM, photon_preset
    from photon_hf.memory import kv_cache_bytes, llama_config_for, llama_kv_cache_bytes

    tokenizer = letters_tokenizer()
    torch.manual_seed(seed)
    config = photon_preset(size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    folders = {}
    for name, model in (("photon", PhotonForCausalLM(config)), ("llama", LlamaForCausalLM(llama_config_for(config)))):
        model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                                                   do_sample=False)
        folders[name] = root / name
        model.to(getattr(torch, dtype)).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    item = getattr(torch, dtype)
    costs = dict(
        photon_row_bytes=lambda tokens: kv_cache_bytes(config, tokens, dtype=item),
        llama_bytes=lambda tokens: llama_kv_cache_bytes(config, tokens, dtype=item),
        photon_parameters=sum(p.numel() for p in PhotonForCausalLM(config).parameters()),
    )
    return folders["photon"], folders["llama"], costs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(process: subprocess.Popen, url: str, log: str, seconds: float, name: str = "the server"):
    """Poll `url` until the server `process` answers; raise, naming its log, if it exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{name} did not start in {seconds:.0f} s; see {log}")


class Server:
    """A server subprocess on 127.0.0.1 that always stops (context manager)."""

    def __init__(self, kind: str, folder: Path, args, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        common = dict(device=args.device, dtype=args.dtype)
        if kind == "photon-cb":
            command = [sys.executable, "-m", "photon_hf", "serve", str(folder), "--port", str(self.port),
                       "--max-batch-size", str(args.clients), "--max-cache-len", str(args.max_cache_len),
                       "--device", args.device, "--dtype", args.dtype]
            if args.compile:
                command.append("--compile")
        elif kind == "photon-serial":
            call = (f"from photon_hf.server import serve; serve({str(folder)!r}, port={self.port}, "
                    f"continuous_batching=False, device={common['device']!r}, dtype={common['dtype']!r})")
            command = [sys.executable, "-c", call]
        else:  # stock transformers serve, stock continuous batching
            command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder), "--port",
                       str(self.port), "--continuous-batching", "--device", args.device, "--dtype", args.dtype]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), USE_HUB_KERNELS="0")
        env.pop("PHOTON_HF_API_KEY", None)  # the clients send no key
        self.log = open(log, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self):
        wait_for_server(self.process, f"{self.url}/models", self.log.name, 300)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def one_request(url: str, model: str, prompt: str, new_tokens: int, delay: float, start: float) -> dict:
    """Streams one completion after `delay` seconds; returns its timings (seconds from `start`)."""
    time.sleep(delay)
    sent = time.perf_counter()
    body = dict(model=model, prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True)
    request = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    arrivals, characters = [], 0
    with urllib.request.urlopen(request, timeout=3600) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0].get("text"):
                    arrivals.append(time.perf_counter())
                    characters += len(chunk["choices"][0]["text"])
    done = time.perf_counter()
    # One character a token (`letters_tokenizer`). transformers 5.25's server sends the tokens that are ready together,
    # so a chunk can hold more than one token when the client falls behind: `gaps` are between chunks.
    return dict(sent=sent - start, first=(arrivals[0] - sent) if arrivals else None, end=done - start,
                chunks=len(arrivals), tokens=characters,
                gaps=[b - a for a, b in zip(arrivals, arrivals[1:], strict=False)])


def run_clients(url: str, model: str, workload: list[tuple[str, float]], new_tokens: int) -> dict:
    """One thread a client, each streaming its request after its arrival delay."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(workload)) as pool:
        futures = [pool.submit(one_request, url, model, prompt, new_tokens, delay, start) for prompt, delay in workload]
        results = [f.result() for f in futures]
    return summarize(results, new_tokens)


def summarize(results: list[dict], new_tokens: int) -> dict:
    def percentile(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None

    wall = max(r["end"] for r in results) - min(r["sent"] for r in results)
    firsts = [r["first"] for r in results if r["first"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    events = sorted([(r["sent"], 1) for r in results] + [(r["end"], -1) for r in results])
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return dict(
        requests=len(results),
        wall_s=wall,
        output_tokens_per_s=len(results) * new_tokens / wall,
        ttft_median_s=statistics.median(firsts),
        ttft_p95_s=percentile(firsts, 0.95),
        token_latency_median_ms=1000 * statistics.median(gaps) if gaps else None,
        token_latency_p95_ms=1000 * percentile(gaps, 0.95) if gaps else None,
        requests_held_peak=peak,
        per_request=results,
    )


def measure_phases(size: str, rows: int, steps: int, dtype: str, device: str, threads: int) -> dict:
    """Decode-step time of a full pool of `rows` rows: every row at one phase of the meta-chunk (aligned
    admission) against rows spread over all phases (mixed). Eager, in process."""
    import torch

    from photon_hf import PhotonForCausalLM, photon_preset
    from photon_hf.serving import PhotonBatchingManager

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PhotonForCausalLM(photon_preset(size, vocab_size=259)).to(device, getattr(torch, dtype)).eval()
    period = model.config.levels[-1].tokens_per_unit
    out = {}
    for name, aligned in (("aligned", True), ("mixed", False)):
        manager = PhotonBatchingManager(model, max_batch_size=rows, max_cache_len=64 + steps + 4 * period,
                                        align_phases=aligned, compile=False)
        for row in range(rows):  # aligned: prompts of one length; mixed: one length per phase
            length = 64 if aligned else 64 + row % period
            manager.add_request([1 + (7 * row + i) % 250 for i in range(length)], max_new_tokens=steps + 2 * period)
        manager.iterate()
        while manager._waiting or sum(r is not None for r in manager._rows) < rows:
            manager.iterate()
        for _ in range(period):  # warm up over one whole meta-chunk
            manager.iterate()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            manager.iterate()
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_step_ms"] = 1000 * (time.perf_counter() - start) / steps
    out["mixed_over_aligned"] = out["mixed_step_ms"] / out["aligned_step_ms"]
    out.update(rows=rows, steps=steps, period=period)
    return out


def plot(report: dict, path: Path) -> bool:
    """The report's three panels as a PNG at `path`; False (no plot) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(report["servers"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = {"photon-cb": "tab:blue", "photon-serial": "tab:cyan", "llama-cb": "tab:gray"}
    panels = (("output_tokens_per_s", "output tokens / s"), ("ttft_median_s", "time to first token, median (s)"),
              ("token_latency_median_ms", "per-token latency, median (ms)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [report["servers"][k][key] or 0 for k in kinds]
        ax.bar(kinds, values, color=[colors.get(k, "tab:orange") for k in kinds])
        ax.set_title(label, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=9)
    fig.suptitle(f"{report['clients']} concurrent clients, {report['new_tokens']} tokens each, {report['size']} "
                 f"({report['machine']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(report: dict, output: Path):
    """The figures as JSON at `output`, and the plot beside it (`.png`) where matplotlib is installed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    print(f"wrote {output}")
    if report["servers"]:
        if plot(report, output.with_suffix(".png")):
            print(f"wrote {output.with_suffix('.png')}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib); the figures are in the JSON file")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="PHOTON preset (default: small)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (and PHOTON's pool rows)")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(16, 96), help="prompt length range")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--arrival-window", type=float, default=0.5, help="requests arrive uniformly in [0, s)")
    parser.add_argument("--max-cache-len", type=int, default=256, help="PHOTON's pool row length")
    parser.add_argument("--servers", nargs="+", default=["photon-cb", "photon-serial", "llama-cb"])
    parser.add_argument("--phases", action="store_true", help="also measure aligned against mixed-phase steps")
    parser.add_argument("--phase-rows", type=int, default=32)
    parser.add_argument("--phase-steps", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="compile PHOTON's decode step")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: under bench/serving/results)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    workload = []
    for _ in range(args.clients):
        length = rng.randint(*args.prompt_tokens)
        prompt = "".join(chr(LETTERS + rng.randint(0, 255)) for _ in range(length))
        workload.append((prompt, rng.random() * args.arrival_window))
    machine = platform.processor() or platform.machine()
    if args.device == "cuda":
        import torch

        machine = torch.cuda.get_device_name()
    report = dict(size=args.size, clients=args.clients, new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
                  max_cache_len=args.max_cache_len, device=args.device, dtype=args.dtype, threads=args.threads,
                  machine=machine, date=time.strftime("%Y-%m-%d %H:%M"), servers={})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photon, llama, costs = make_models(root, args.size, args.dtype, args.seed)
        for kind in args.servers:
            folder = llama if kind.startswith("llama") else photon
            with Server(kind, folder, args, root / f"{kind}.log") as server:
                run_clients(server.url, str(folder), [(workload[0][0], 0.0)], 4)  # warm-up (first-call set-up)
                one = run_clients(server.url, str(folder), [(workload[0][0], 0.0)], args.new_tokens)
                print(f"{kind}: one request alone {one['wall_s']:.2f} s", flush=True)
                result = run_clients(server.url, str(folder), workload, args.new_tokens)
                result["one_request_alone_s"] = one["wall_s"]
                result["concurrent_over_one"] = result["wall_s"] / one["wall_s"]
            longest = args.prompt_tokens[1] + args.new_tokens
            result["cache_bytes_per_active_request"] = (
                costs["llama_bytes"](longest) if kind.startswith("llama") else costs["photon_row_bytes"](
                    args.max_cache_len)
            )
            report["servers"][kind] = result
            print(f"{kind}: {result['output_tokens_per_s']:.1f} tok/s, TTFT median {result['ttft_median_s']:.3f} s, "
                  f"token latency median {result['token_latency_median_ms']:.1f} ms, wall {result['wall_s']:.2f} s "
                  f"({result['concurrent_over_one']:.2f}x one request)", flush=True)
    for result in report["servers"].values():  # served throughput per memory: tokens/s per GiB a request holds
        result["served_tpm"] = result["output_tokens_per_s"] / (result["cache_bytes_per_active_request"] / 2**30)
    if "photon-cb" in report["servers"] and "llama-cb" in report["servers"]:
        servers = report["servers"]
        report["served_tpm_ratio"] = servers["photon-cb"]["served_tpm"] / servers["llama-cb"]["served_tpm"]
        print(f"served TPM ratio PHOTON / Llama: {report['served_tpm_ratio']:.1f}x", flush=True)
    if args.phases:
        report["phases"] = measure_phases(args.size, args.phase_rows, args.phase_steps, args.dtype, args.device,
                                          args.threads)
        print(f"phases: {report['phases']}", flush=True)
    write_report(report, args.output or RESULTS / f"serving_{time.strftime('%Y%m%d-%H%M%S')}_{args.device}.json")


if __name__ == "__main__":
    main()
