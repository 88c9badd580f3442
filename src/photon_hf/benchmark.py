"""Generation benchmark: PHOTON against a same-size Llama through the same stock `generate()` call.

The protocol is the one of BENCH.md, which follows the Block Transformer harness that the paper uses: random weights
(bf16 on a GPU, fp32 on the CPU), random prompt ids, greedy decoding with EOS disabled (`min_new_tokens =
max_new_tokens`), both models in one process on one device, every figure of PHOTON divided by Llama's figure from the
same run. Sections, each within its share of a wall-clock budget (`--budget-s`) and each catching its own failures:

* one per *regime* (prompt / generated lengths, e.g. PF 2048/128, DE 128/2048, DE-short 128/512): for each model,
  a fixed ladder of batch sizes or a search for the largest batch that fits (doubling, then bisection; out-of-memory
  ends a branch, it does not end the run). Each batch size: warm-up, then `generate` timed with the device
  synchronised (prefill included; median of `--repeats`), peak allocated memory, the size of the returned cache.
  Then per-sample memory = slope of the peak between the two largest batches that ran, throughput = batch x
  generated / wall time, TPM = throughput (K tok/s) / per-sample memory (GiB), and PHOTON / Llama ratios;
* `profile`: torch.profiler over a few decode steps of each model at one batch size: time per step split into GPU
  kernel time and the rest (CPU, Python, launch gaps), kernel launches per step, the top ops;
* `sweep`: prompt lengths from 1K to 32K+ at batch 1 and at a large batch: prefill time, latency per generated
  token, measured and analytic cache bytes, per-sample memory and TPM against context length.

Output: one JSON file per run under `--out-dir` (`{"meta": {...}, "records": [...]}`, rewritten after every section
so that a run cut short keeps what it measured), PNG plots beside it, and a markdown summary printed last.
`python bench/run_generation.py --help` lists the options; docs/benchmarks.md explains the reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from .configuration_photon import photon_preset
from .memory import decode_step_cost, kv_cache_bytes, llama_config_for, llama_kv_cache_bytes, roofline_step_ms

GIB = 2**30
MODELS = ("photon", "llama")
LABELS = {"photon": "PHOTON", "llama": "Llama"}
REQUIRED_FIELDS = (
    "device",
    "model",
    "regime",
    "prompt_len",
    "gen_len",
    "batch_size",
    "tok_per_s",
    "per_sample_gib",
    "analytic_kv_gib",
    "tpm",
)
PROFILE_PROMPT_LEN = 128  # prompt of the profiled generations: short, so that decode steps dominate
WARMUP_TOKENS = 8  # decode steps of the short generations that warm up and estimate a measurement
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_oom(exc: BaseException) -> bool:
    """Out of device memory, including the forms that are not `OutOfMemoryError` (cuBLAS workspace allocation)."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and any(s in str(exc) for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory"))
    )


# ------------------------------------------------------------------------------------------------ configuration
SHAPES = {"paper-600m": lambda: photon_preset("photon-600m"), "tiny": lambda: photon_preset("tiny")}


@dataclasses.dataclass(frozen=True)
class Regime:
    """A generation regime: prompt and generated lengths, and a fixed batch ladder (None: search the largest)."""

    name: str
    prompt_len: int
    gen_len: int
    ladder: tuple[int, ...] | None = None

    @property
    def mean_context(self) -> float:
        """Average context length over the decode steps (where the roofline of a step is evaluated)."""
        return self.prompt_len + self.gen_len / 2

    def spec(self) -> str:
        ladder = "" if self.ladder is None else ":" + ",".join(map(str, self.ladder))
        return f"{self.name}={self.prompt_len}/{self.gen_len}{ladder}"


def parse_regime(spec: str) -> Regime:
    """`NAME=PROMPT/GEN` (batch search) or `NAME=PROMPT/GEN:B1,B2,...` (fixed ladder), e.g. `PF=2048/128`."""
    match = re.fullmatch(r"([A-Za-z][\w-]*)=(\d+)/(\d+)(?::(\d+(?:,\d+)*))?", spec.strip())
    if match is None:
        raise ValueError(
            f"Bad regime {spec!r}: expected NAME=PROMPT/GEN or NAME=PROMPT/GEN:B1,B2,... (e.g. PF=2048/128)."
        )
    name, prompt, gen, ladder = match.groups()
    if int(prompt) < 1 or int(gen) < 2:
        raise ValueError(f"Bad regime {spec!r}: the prompt needs >= 1 token and the generation >= 2 tokens.")
    batches = None if ladder is None else tuple(sorted({int(b) for b in ladder.split(",")}))
    if batches is not None and batches[0] < 1:
        raise ValueError(f"Bad regime {spec!r}: batch sizes must be >= 1.")
    return Regime(name, int(prompt), int(gen), batches)


# Defaults of each preset (any option given on the command line wins). `weights` share the budget among sections.
PRESETS: dict[str, dict] = {
    # Tiny models on the CPU: checks the harness end to end (CI), figures mean nothing for a GPU.
    "cpu-smoke": dict(
        shape="tiny",
        budget_s=300.0,
        regimes=["PF=2048/128", "DE-short=128/512"],
        search_start=1,
        max_batch=8,
        repeats=2,
        sweep_contexts=[1024, 4096, 16384],
        sweep_batch=4,
        sweep_gen=16,
        profile_batch=8,
        profile_steps=16,
        sections=["regimes", "profile", "sweep"],
        weights={"PF": 1.0, "DE-short": 1.0, "profile": 0.5, "sweep": 1.0},
    ),
    # The paper's 600M shapes in about four minutes of one H100/H200: DE 128/512 and PF 2048/128 on fixed ladders
    # (each model stops at its first OOM or when its share of the budget is spent), the profile, a small sweep.
    "gpu-short": dict(
        shape="paper-600m",
        budget_s=220.0,
        regimes=["DE-short=128/512:32,256,1024,4096", "PF=2048/128:16,64,512,2048"],
        search_start=16,
        max_batch=16384,
        repeats=1,
        sweep_contexts=[1024, 4096, 16384, 32768],
        sweep_batch=16,
        sweep_gen=32,
        profile_batch=256,
        profile_steps=16,
        sections=["regimes", "profile", "sweep"],
        weights={"DE-short": 5.0, "PF": 2.0, "profile": 1.0, "sweep": 3.0},
    ),
    # The full protocol (paper regimes, batch search, 3 repeats, long sweep): about half an hour.
    "gpu-full": dict(
        shape="paper-600m",
        budget_s=1800.0,
        regimes=["PF=2048/128", "DE=128/2048", "DE-short=128/512"],
        search_start=16,
        max_batch=16384,
        repeats=3,
        sweep_contexts=[1024, 2048, 4096, 8192, 16384, 32768, 65536],
        sweep_batch=64,
        sweep_gen=64,
        profile_batch=256,
        profile_steps=16,
        sections=["regimes", "profile", "sweep"],
        weights={"PF": 4.0, "DE": 8.0, "DE-short": 3.0, "profile": 1.0, "sweep": 4.0},
    ),
}
SECTIONS = ("regimes", "profile", "sweep")


# ------------------------------------------------------------------------------------------------ small helpers
class DeadlineCriterion(StoppingCriteria):
    """Stops `generate` once the section's deadline has passed, so that no single run can eat the whole budget. A
    run stopped this way is short of tokens and is discarded. Costs one tiny fill kernel per step, for both models."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, input_ids, scores, **kwargs):
        late = time.monotonic() > self.deadline
        return torch.full((input_ids.shape[0],), late, dtype=torch.bool, device=input_ids.device)


def output_cache(out):
    """The cache returned by `generate` (field `cache` from transformers 5.24 on, `past_key_values` before)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    for name in ("cache", "past_key_values"):
        if name in fields:
            return getattr(out, name)
    return None


def cache_nbytes(cache) -> int | None:
    """Bytes held by a cache: `PhotonCache.nbytes()`, or the tensors of every layer of a transformers Cache."""
    if cache is None:
        return None
    if callable(getattr(cache, "nbytes", None)):
        return int(cache.nbytes())
    total, seen = 0, set()
    for layer in getattr(cache, "layers", []):
        for value in vars(layer).values():
            if torch.is_tensor(value) and id(value) not in seen:
                seen.add(id(value))
                total += value.numel() * value.element_size()
    return total


@dataclasses.dataclass
class GenRun:
    seconds: float
    peak_bytes: int | None  # CUDA: peak allocated during the call, above what was allocated before it
    cache_bytes: int | None  # bytes of the cache `generate` returned
    completed: bool  # False when the deadline criterion cut it short


class Budget:
    """A wall-clock budget shared among named sections in proportion to their weights; what a section leaves
    unused goes to the sections after it."""

    def __init__(self, seconds: float, weights: dict[str, float]):
        self.end = time.monotonic() + seconds
        self.pending = dict(weights)

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def deadline(self, section: str) -> float:
        weight = self.pending.pop(section, 1.0)
        share = weight / (weight + sum(self.pending.values()))
        return time.monotonic() + self.remaining() * share


def split_deadline(deadline: float, parts: int) -> float:
    """The deadline of the first of `parts` equal shares of the time left before `deadline`."""
    now = time.monotonic()
    return now + max(0.0, deadline - now) / max(parts, 1)


def search_batches(probe, start: int, cap: int, tolerance: float = 1 / 16) -> list[tuple[int, str]]:
    """Find the largest batch size for which `probe(batch)` returns "ok": double from `start` (up to `cap`) until a
    failure, then, if that failure was "oom", bisect between the last success and it until the gap is at most
    `tolerance` of the success (at least 1). Any other failure (budget, timeout, error) ends the search. Returns
    the (batch, status) of every probe, in order."""
    tried: list[tuple[int, str]] = []
    good, bad = 0, None
    batch = max(1, start)
    while batch <= cap:
        status = probe(batch)
        tried.append((batch, status))
        if status != "ok":
            bad = batch if status == "oom" else None
            if status != "oom":
                return tried
            break
        good = batch
        if batch == cap:
            return tried
        batch = min(2 * batch, cap)
    while bad is not None and bad - good > max(1, int(good * tolerance)):
        batch = (good + bad) // 2
        status = probe(batch)
        tried.append((batch, status))
        if status == "ok":
            good = batch
        elif status == "oom":
            bad = batch
        else:
            break
    return tried


def _fmt(value, spec: str = ".3g", none: str = "–") -> str:
    """Format a figure for the tables; spec "n" gives 4 significant digits without exponents (12,345 or 0.0123)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    if spec == "n":
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return format(value, spec)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------ the harness
class Bench:
    """Holds the two models, the records and the metadata of one run; each `run_*` method is one section."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.cuda = device.type == "cuda"
        self.device_name = device_description(device)
        self.t0 = time.monotonic()
        self.records: list[dict] = []
        self.next_id = 0
        self.config = SHAPES[args.shape]()
        self.config.kernel_backend = args.kernel_backend
        longest = max(
            [r.prompt_len + r.gen_len for r in args.regimes]
            + [c + args.sweep_gen for c in args.sweep_contexts]
            + [PROFILE_PROMPT_LEN + args.profile_steps + 1]
        )
        self.config.max_position_embeddings = max(self.config.max_position_embeddings, longest)
        self.llama_config = llama_config_for(self.config)
        self.models: dict[str, torch.nn.Module] = {}
        self.ceilings: dict[str, float] | None = None
        self.eos = self.config.vocab_size - 1  # prompts avoid it; min_new_tokens keeps generate from emitting it
        self.meta = dict(
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join([Path(sys.argv[0]).name] + list(args.argv)),
            argv=list(args.argv),
            preset=args.preset,
            options={k: [r.spec() for r in v] if k == "regimes" else v for k, v in vars(args).items() if k != "argv"},
            device=self.device_name,
            device_type=device.type,
            dtype=str(dtype).replace("torch.", ""),
            shape=args.shape,
            versions=dict(
                python=platform.python_version(),
                torch=torch.__version__,
                transformers=transformers.__version__,
                photon_hf=_package_version(),
                cuda=torch.version.cuda,
            ),
            git_commit=_git_commit(),
            protocol=dict(
                decoding="greedy, EOS disabled (min_new_tokens = max_new_tokens, eos = pad = vocab_size - 1)",
                prompts="random ids, the same for both models at each batch size and length",
                llama="transformers.LlamaForCausalLM, attn_implementation='sdpa', dynamic cache (generate's default)",
                timing="wall time of generate (prefill included), device synchronised, after warm-up; median of the "
                "repeats",
                per_sample_memory="CUDA: slope of torch.cuda.max_memory_allocated between the two largest batch "
                "sizes that ran; CPU: slope of the returned cache's bytes (no allocator statistics)",
                analytic_kv="kv_cache_bytes / llama_kv_cache_bytes at prompt_len + gen_len tokens, per sample",
                tpm="tok_per_s / 1000 / per_sample_gib",
            ),
            sections={},
            errors=[],
        )
        if self.cuda:
            props = torch.cuda.get_device_properties(device)
            self.meta.update(gpu_memory_gib=props.total_memory / GIB, compute_capability=f"{props.major}.{props.minor}")

    # ------------------------------------------------------------------------------------------------ plumbing
    def log(self, message: str):
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    def error(self, where: str, exc: BaseException):
        """Print the traceback, keep a one-line summary in the metadata, and go on."""
        traceback.print_exc()
        self.meta["errors"].append(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        self.log(f"{where} failed ({type(exc).__name__}); continuing")

    def failure(self, exc: Exception, where: str) -> tuple[str, str]:
        """(status, message) of a failed measurement: "oom" quietly, anything else with its traceback."""
        if is_oom(exc):
            return "oom", (str(exc).splitlines() or [""])[0][:200]
        self.error(where, exc)
        return "error", f"{type(exc).__name__}: {exc}"[:300]

    def add(self, record: dict) -> dict:
        record["id"] = self.next_id
        self.next_id += 1
        self.records.append(record)
        return record

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def results(self) -> dict:
        self.meta["wall_s"] = time.monotonic() - self.t0
        return dict(meta=self.meta, records=self.records)

    # ------------------------------------------------------------------------------------------------- set-up
    def setup(self):
        """Build both models with random weights on the device, and measure the device's two ceilings."""
        torch.manual_seed(self.args.seed)
        with torch.device(self.device):
            self.models["photon"] = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype).eval()
            self.models["llama"] = AutoModelForCausalLM.from_config(
                self.llama_config, dtype=self.dtype, attn_implementation="sdpa"
            ).eval()
        for model in self.models.values():
            model.to(self.device)  # a no-op where the device context already placed everything
        params = {name: sum(p.numel() for p in model.parameters()) for name, model in self.models.items()}
        modeling = sys.modules[type(self.models["photon"]).__module__]
        self.meta.update(
            params=params,
            photon_config=self.config.to_diff_dict(),
            llama_config=self.llama_config.to_diff_dict(),
            llama_attn_implementation=self.models["llama"].config._attn_implementation,
            photon_kernels=getattr(modeling, "photon_kernels", None) is not None,
        )
        self.log(
            f"models built: PHOTON {params['photon'] / 1e6:.1f}M, Llama {params['llama'] / 1e6:.1f}M parameters, "
            f"{self.meta['dtype']} on {self.device_name}"
        )
        if self.cuda:
            try:
                self.ceilings = self.measure_ceilings()
                self.meta["ceilings"] = self.ceilings
                self.log(
                    f"ceilings: copy {self.ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul "
                    f"{self.ceilings['matmul_flop_per_s'] / 1e12:.0f} TFLOP/s ({self.meta['dtype']})"
                )
            except Exception as exc:  # the rooflines are a bonus: never lose the run to them
                self.error("ceilings", exc)

    def measure_ceilings(self) -> dict[str, float]:
        """Device-to-device copy bandwidth (bytes read + written) and the matmul rate, measured on random data."""

        def timed(fn, *operands, repeats=10):
            for _ in range(2):
                fn(*operands)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn(*operands)
            stop.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(stop) / 1e3 / repeats

        source = torch.randn(GIB // 4, device=self.device)  # 1 GiB of float32
        copy_s = timed(torch.Tensor.copy_, torch.empty_like(source), source)
        del source
        n = 8192
        mm_s = timed(torch.matmul, *(torch.randn(n, n, device=self.device, dtype=self.dtype) for _ in range(2)))
        self.free()
        return dict(copy_bytes_per_s=2 * GIB / copy_s, matmul_flop_per_s=2 * n**3 / mm_s)

    # -------------------------------------------------------------------------------------------- generation
    def prompt(self, batch: int, length: int) -> torch.Tensor:
        """Random prompt ids (never the EOS id), the same for both models at a given batch size and length."""
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + batch * 7919 + length)
        return torch.randint(0, self.eos, (batch, length), generator=generator).to(self.device)

    def generation_config(self, new_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos,
            pad_token_id=self.eos,
            use_cache=True,
            return_dict_in_generate=True,
        )

    def generate(self, name: str, ids: torch.Tensor, new_tokens: int, deadline: float) -> GenRun:
        """One stock `generate` call, timed with the device synchronised, with its peak memory and cache size."""
        model = self.models[name]
        mask = torch.ones_like(ids)
        config = self.generation_config(new_tokens)
        stop = StoppingCriteriaList([DeadlineCriterion(deadline)])
        base = None
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, generation_config=config, stopping_criteria=stop)
        self.sync()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(self.device) - base if self.cuda else None
        completed = out.sequences.shape[1] == ids.shape[1] + new_tokens
        return GenRun(seconds, peak, cache_nbytes(output_cache(out)), completed)

    def analytic_kv_gib(self, name: str, tokens: int) -> float:
        fn = kv_cache_bytes if name == "photon" else llama_kv_cache_bytes
        return fn(self.config, tokens, 1, self.dtype) / GIB

    def roofline(self, name: str, context: float, batch: int) -> float | None:
        if self.ceilings is None:
            return None
        cost = decode_step_cost(self.config, name, context, torch.empty((), dtype=self.dtype).element_size())
        return roofline_step_ms(cost, batch, self.ceilings["copy_bytes_per_s"], self.ceilings["matmul_flop_per_s"])

    def _base_record(self, record_type: str, name: str, regime: str, prompt_len: int, gen_len: int, batch: int):
        return dict(
            record_type=record_type,
            device=self.device_name,
            model=name,
            regime=regime,
            prompt_len=prompt_len,
            gen_len=gen_len,
            batch_size=batch,
        )

    def _attempt(self, base: dict, status: str, message: str = "", **extra) -> dict:
        return self.add(dict(base, record_type="attempt", status=status, message=message, **extra))

    def measure(self, name: str, regime: Regime, batch: int, deadline: float) -> dict:
        """Warm up, estimate, then time `generate` at one batch size. Returns the record: record_type "generation"
        (status "ok") or "attempt" (status "oom", "timeout", "skipped_budget" or "error")."""
        base = self._base_record("generation", name, regime.name, regime.prompt_len, regime.gen_len, batch)
        steps = min(WARMUP_TOKENS, regime.gen_len - 1)
        failure = None
        try:
            ids = self.prompt(batch, regime.prompt_len)
            warm = self.generate(name, ids, 1 + steps, deadline)  # warm-up: kernels, allocator blocks
            prefill = self.generate(name, ids, 1, deadline)  # prefill alone
            short = self.generate(name, ids, 1 + steps, deadline)
            if not (warm.completed and short.completed):
                return self._attempt(base, "timeout", "the section's deadline passed during the warm-up")
            step_s = max(short.seconds - prefill.seconds, 0.0) / steps
            estimate = prefill.seconds + step_s * (regime.gen_len - 1)
            if time.monotonic() + estimate > deadline:
                return self._attempt(
                    base,
                    "skipped_budget",
                    f"estimated {estimate:.1f} s, budget left {max(0.0, deadline - time.monotonic()):.1f} s",
                    estimate_s=estimate,
                )
            runs: list[GenRun] = []
            while len(runs) < self.args.repeats:
                run = self.generate(name, ids, regime.gen_len, deadline)
                if not run.completed:
                    break
                runs.append(run)
                if time.monotonic() + run.seconds > deadline:
                    break
            if not runs:
                return self._attempt(base, "timeout", "the section's deadline passed during the timed run")
        except Exception as exc:
            failure = self.failure(exc, f"{regime.name} {name} batch {batch}")
        if failure is not None:
            ids = None
            self.free()
            return self._attempt(base, *failure)
        wall = statistics.median(r.seconds for r in runs)
        decode_ms = (wall - prefill.seconds) / (regime.gen_len - 1) * 1e3
        roof = self.roofline(name, regime.mean_context, batch)
        peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
        return self.add(
            dict(
                base,
                status="ok",
                wall_s=wall,
                wall_s_runs=[r.seconds for r in runs],
                repeats=len(runs),
                tok_per_s=batch * regime.gen_len / wall,
                prefill_s=prefill.seconds,
                decode_step_ms=decode_ms,
                estimate_s=estimate,
                peak_gib=max(peaks) / GIB if peaks else None,
                cache_gib_measured=runs[0].cache_bytes / batch / GIB if runs[0].cache_bytes is not None else None,
                analytic_kv_gib=self.analytic_kv_gib(name, regime.prompt_len + regime.gen_len),
                per_sample_gib=None,
                per_sample_source=None,
                per_sample_batches=None,
                tpm=None,
                is_max_batch=False,
                roofline_step_ms=roof,
                step_over_roofline=decode_ms / roof if roof else None,
            )
        )

    # ----------------------------------------------------------------------------------------------- regimes
    def run_regime(self, regime: Regime, deadline: float):
        """Both models through one regime: the fixed ladder (stopping at the first failure) or the batch search."""
        for index, name in enumerate(MODELS):
            model_deadline = split_deadline(deadline, len(MODELS) - index)
            self.log(f"{regime.spec()}: {LABELS[name]}, {max(0.0, model_deadline - time.monotonic()):.0f} s")

            def probe(batch, name=name, model_deadline=model_deadline):
                record = self.measure(name, regime, batch, model_deadline)
                shown = (
                    f"{record['tok_per_s'] / 1e3:.2f} K tok/s, {record['decode_step_ms']:.1f} ms/step"
                    if record["status"] == "ok"
                    else record["message"]
                )
                self.log(f"  {LABELS[name]} {regime.name} batch {batch}: {record['status']} ({shown})")
                return record["status"]

            if regime.ladder is not None:
                for batch in regime.ladder:
                    if probe(batch) != "ok":
                        break
            else:
                search_batches(probe, self.args.search_start, self.args.max_batch)
            self.free()
        self.derive(regime.name)

    def derive(self, regime: str):
        """Per-sample memory, TPM, the largest batch of each model, and the PHOTON / Llama ratio records."""
        best = {}
        for name in MODELS:
            rows = [
                r
                for r in self.records
                if r["record_type"] == "generation" and r["regime"] == regime and r["model"] == name
            ]
            per_sample, source, batches = self.per_sample_memory(rows)
            for row in rows:
                row.update(
                    per_sample_gib=per_sample,
                    per_sample_source=source,
                    per_sample_batches=batches,
                    tpm=row["tok_per_s"] / 1e3 / per_sample if per_sample else None,
                    is_max_batch=False,
                )
            if rows:
                best[name] = max(rows, key=lambda r: r["batch_size"])
                best[name]["is_max_batch"] = True
        self.records = [r for r in self.records if not (r["record_type"] == "ratio" and r["regime"] == regime)]
        if len(best) < len(MODELS):
            return
        self.add(self.ratio_record(regime, "max_batch", best["photon"], best["llama"]))
        llama_rows = {
            r["batch_size"]: r
            for r in self.records
            if r["record_type"] == "generation" and r["regime"] == regime and r["model"] == "llama"
        }
        for row in self.records:
            if row["record_type"] == "generation" and row["regime"] == regime and row["model"] == "photon":
                if row["batch_size"] in llama_rows:
                    self.add(self.ratio_record(regime, "same_batch", row, llama_rows[row["batch_size"]]))

    def per_sample_memory(self, rows: list[dict]) -> tuple[float | None, str | None, list[int] | None]:
        """Slope of the peak allocated memory (CUDA) or of the cache bytes (CPU) between the two largest batches."""
        key, source = (
            ("peak_gib", "cuda_peak_allocated_slope") if self.cuda else ("cache_gib_measured", "cache_bytes_slope")
        )
        usable = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["batch_size"])
        if len(usable) < 2:
            return None, None, None
        a, b = usable[-2], usable[-1]
        total = (lambda r: r[key]) if self.cuda else (lambda r: r[key] * r["batch_size"])  # cache figure is per sample
        slope = (total(b) - total(a)) / (b["batch_size"] - a["batch_size"])
        return (slope, source, [a["batch_size"], b["batch_size"]]) if slope > 0 else (None, None, None)

    def ratio_record(self, regime: str, basis: str, photon: dict, llama: dict) -> dict:
        """PHOTON / Llama for each figure, from two records of this run (their ids are kept for checking)."""

        def ratio(key):
            p, q = photon.get(key), llama.get(key)
            return p / q if p is not None and q else None

        return dict(
            record_type="ratio",
            device=self.device_name,
            regime=regime,
            basis=basis,
            prompt_len=photon["prompt_len"],
            gen_len=photon["gen_len"],
            photon_batch=photon["batch_size"],
            llama_batch=llama["batch_size"],
            photon_record=photon["id"],
            llama_record=llama["id"],
            tok_per_s_ratio=ratio("tok_per_s"),
            per_sample_gib_ratio=ratio("per_sample_gib"),
            analytic_kv_gib_ratio=ratio("analytic_kv_gib"),
            tpm_ratio=ratio("tpm"),
            decode_step_ms_ratio=ratio("decode_step_ms"),
        )

    # ------------------------------------------------------------------------------------------------- sweep
    def fits(self, name: str, tokens: int, batch: int) -> bool:
        """Whether the analytic cache of `batch` samples leaves room on the device (always True on the CPU)."""
        if not self.cuda:
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        available = free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return self.analytic_kv_gib(name, tokens) * GIB * batch * 1.1 < available

    def sweep_point(self, name: str, context: int, batch: int, deadline: float) -> dict:
        """A warm-up (prefill and two decode steps, so that first-call compilation stays out of the timing), a
        generation of `sweep_gen` tokens and the prefill alone: latency per generated token =
        (t_gen - t_prefill) / (gen - 1)."""
        gen = self.args.sweep_gen
        base = self._base_record("sweep", name, "sweep", context, gen, batch)
        if not self.fits(name, context + gen, batch):
            return self._attempt(base, "skipped_fit", "the analytic cache alone does not fit in free memory")
        failure = None
        try:
            ids = self.prompt(batch, context)
            first = self.generate(name, ids, 3, deadline)  # warm-up of this shape, decode steps included
            if time.monotonic() + 2 * first.seconds > deadline:
                return self._attempt(base, "skipped_budget", f"prefill and two steps took {first.seconds:.1f} s")
            full = self.generate(name, ids, gen, deadline)
            if not full.completed:
                return self._attempt(base, "timeout", "the section's deadline passed")
            prefill = self.generate(name, ids, 1, deadline).seconds
        except Exception as exc:
            failure = self.failure(exc, f"sweep {name} context {context} batch {batch}")
        if failure is not None:
            ids = None
            self.free()
            return self._attempt(base, *failure)
        decode_ms = max(full.seconds - prefill, 0.0) / (gen - 1) * 1e3
        roof = self.roofline(name, context + gen / 2, batch)
        return self.add(
            dict(
                base,
                status="ok",
                wall_s=full.seconds,
                tok_per_s=batch * gen / full.seconds,
                prefill_s=prefill,
                decode_ms_per_token=decode_ms,
                decode_tok_per_s=batch / decode_ms * 1e3 if decode_ms > 0 else None,
                peak_gib=full.peak_bytes / GIB if full.peak_bytes is not None else None,
                cache_gib_measured=full.cache_bytes / batch / GIB if full.cache_bytes is not None else None,
                analytic_kv_gib=self.analytic_kv_gib(name, context + gen),
                per_sample_gib=None,
                per_sample_source=None,
                per_sample_batches=None,
                tpm=None,
                decode_tpm=None,
                roofline_step_ms=roof,
                step_over_roofline=decode_ms / roof if roof else None,
            )
        )

    def run_sweep(self, deadline: float):
        """Context lengths in increasing order; per model batch 1, then the large batch (halved while it fails to
        fit). A model that fails at batch 1 (or runs out of budget) is dropped for the longer contexts."""
        active = list(MODELS)
        for context in sorted(self.args.sweep_contexts):
            for name in list(active):
                rows = []
                record = self.sweep_point(name, context, 1, deadline)
                self.log(
                    f"  sweep {LABELS[name]} context {context} batch 1: {record['status']}"
                    + (f" ({record['decode_ms_per_token']:.2f} ms/token)" if record["status"] == "ok" else "")
                )
                if record["status"] != "ok":
                    active.remove(name)
                    continue
                rows.append(record)
                batch = self.args.sweep_batch
                while batch > 1:
                    record = self.sweep_point(name, context, batch, deadline)
                    self.log(f"  sweep {LABELS[name]} context {context} batch {batch}: {record['status']}")
                    if record["status"] == "ok":
                        rows.append(record)
                        break
                    if record["status"] not in ("oom", "skipped_fit"):
                        break
                    batch //= 2
                per_sample, source, batches = self.per_sample_memory(rows)
                for row in rows:
                    row.update(
                        per_sample_gib=per_sample,
                        per_sample_source=source,
                        per_sample_batches=batches,
                        tpm=row["tok_per_s"] / 1e3 / per_sample if per_sample else None,
                        decode_tpm=row["decode_tok_per_s"] / 1e3 / per_sample
                        if per_sample and row["decode_tok_per_s"]
                        else None,
                    )
            if not active:
                break

    # ----------------------------------------------------------------------------------------------- profile
    def run_profile(self, deadline: float):
        """For each model: plain timing and torch.profiler of `generate` with 1 and 1 + N new tokens at the profile
        batch; the difference divided by N is one decode step (prefill and fixed costs cancel)."""
        batch, steps = self.args.profile_batch, self.args.profile_steps
        lines = []
        for index, name in enumerate(MODELS):
            model_deadline = split_deadline(deadline, len(MODELS) - index)
            try:
                record, text = self.profile_model(name, batch, steps, model_deadline)
            except Exception as exc:
                status, message = self.failure(exc, f"profile {name}")
                self.free()
                base = self._base_record("profile", name, "profile", PROFILE_PROMPT_LEN, steps, batch)
                self._attempt(base, status, message)
                self.log(f"  profile {LABELS[name]} batch {batch}: {status}")
                continue
            if record is None:
                self.log(f"  profile {LABELS[name]}: skipped ({text})")
                continue
            self.add(record)
            lines.append(text)
            self.log(
                f"  profile {LABELS[name]} batch {batch}: {record['wall_step_ms']:.2f} ms/step, GPU kernels "
                f"{_fmt(record['gpu_busy_step_ms'], '.2f')} ms, {_fmt(record['kernels_per_step'], '.0f')} kernels, "
                f"{record['op_calls_per_step']:.0f} op calls per step"
            )
        if lines and self.args.out_stem is not None:
            path = Path(f"{self.args.out_stem}_profile.txt")
            path.write_text("\n\n".join(lines) + "\n")
            self.meta["profile_tables"] = str(path)

    def profile_model(self, name: str, batch: int, steps: int, deadline: float) -> tuple[dict | None, str]:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        ids = self.prompt(batch, PROFILE_PROMPT_LEN)
        warm = self.generate(name, ids, 1 + steps, deadline)
        if not warm.completed or time.monotonic() + 6 * warm.seconds > deadline:
            return None, f"warm-up took {warm.seconds:.1f} s, too long for the budget left"
        plain_one = min(self.generate(name, ids, 1, deadline).seconds for _ in range(2))
        plain_all = self.generate(name, ids, 1 + steps, deadline)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        tables, walls = [], []
        for new_tokens in (1, 1 + steps):
            with profile(activities=activities) as prof:
                run = self.generate(name, ids, new_tokens, deadline)
            walls.append(run.seconds)
            table = {}
            for evt in prof.key_averages():
                if getattr(evt, "is_user_annotation", False):
                    continue
                device_time = getattr(evt, "self_device_time_total", None)
                if device_time is None:
                    device_time = getattr(evt, "self_cuda_time_total", 0)
                on_device = evt.device_type != DeviceType.CPU
                table[(evt.key, on_device)] = (evt.count, evt.self_cpu_time_total, device_time)
            tables.append(table)
        if not plain_all.completed:
            return None, "deadline passed"
        try:
            full_table = prof.key_averages().table(
                sort_by="self_device_time_total" if self.cuda else "self_cpu_time_total", row_limit=25
            )
        except Exception:  # an older profiler without device-time sorting: the numbers above do not depend on it
            full_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)

        def per_step(key):  # (calls, self CPU us, self device us) of one decode step
            one = tables[0].get(key, (0, 0.0, 0.0))
            many = tables[1].get(key, (0, 0.0, 0.0))
            return tuple((m - o) / steps for m, o in zip(many, one, strict=True))

        keys = set(tables[0]) | set(tables[1])
        rows = {key: per_step(key) for key in keys}
        device_rows = [v for (k, on_device), v in rows.items() if on_device]
        cpu_rows = {k: v for (k, on_device), v in rows.items() if not on_device}
        gpu_busy = kernels = None
        if self.cuda:
            # Kernel (and memcpy) rows carry the device time; should a profiler build list none, fall back to the
            # device time attributed to the launching ops and to the count of launch calls.
            gpu_busy = sum(v[2] for v in device_rows) / 1e3 or sum(v[2] for v in cpu_rows.values()) / 1e3 or None
            kernels = sum(v[0] for v in device_rows) or sum(v[0] for k, v in cpu_rows.items() if "LaunchKernel" in k)
            if gpu_busy is None:  # no device activity recorded (CUPTI unavailable): say so rather than report 0
                kernels = None
                self.meta["errors"].append(f"profile {name}: the profiler recorded no GPU activity")
        wall_step = (plain_all.seconds - plain_one) / steps * 1e3

        def top(index):
            ranked = sorted(cpu_rows.items(), key=lambda kv: kv[1][index], reverse=True)[:8]
            return [
                dict(op=k, calls=v[0], self_cpu_us=v[1], self_gpu_us=v[2] if self.cuda else None)
                for k, v in ranked
                if v[index] > 0
            ]

        record = dict(
            self._base_record("profile", name, "profile", PROFILE_PROMPT_LEN, steps, batch),
            status="ok",
            wall_step_ms=wall_step,
            profiled_step_ms=(walls[1] - walls[0]) / steps * 1e3,
            gpu_busy_step_ms=gpu_busy,
            gpu_idle_step_ms=wall_step - gpu_busy if gpu_busy is not None else None,
            kernels_per_step=kernels,
            op_calls_per_step=sum(v[0] for k, v in cpu_rows.items() if k.startswith("aten::")),
            torch_cpu_step_ms=sum(v[1] for v in cpu_rows.values()) / 1e3,
            roofline_step_ms=self.roofline(name, PROFILE_PROMPT_LEN + steps / 2, batch),
            top_gpu_ops=top(2) if self.cuda else [],
            top_cpu_ops=top(1),
        )
        header = (
            f"== {LABELS[name]}: generate at batch {batch}, prompt {PROFILE_PROMPT_LEN}, {1 + steps} new tokens "
            f"(profiled; sorted by self {'device' if self.cuda else 'CPU'} time) =="
        )
        return record, header + "\n" + full_table

    # ----------------------------------------------------------------------------------------------- driver
    def run_section(self, section: str, deadline: float):
        started = time.monotonic()
        self.log(f"section {section}: {max(0.0, deadline - started):.0f} s")
        status = "ok"
        try:
            if section == "profile":
                self.run_profile(deadline)
            elif section == "sweep":
                self.run_sweep(deadline)
            else:
                self.run_regime(next(r for r in self.args.regimes if r.name == section), deadline)
        except Exception as exc:
            status = "error"
            self.error(f"section {section}", exc)
        finally:
            self.free()
        self.meta["sections"][section] = dict(status=status, seconds=time.monotonic() - started)


def _package_version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------------------------------ report
def render_markdown(results: dict, json_path: str | None = None) -> str:
    """The markdown summary of a results JSON (what `bench/report.py` prints and a run prints last)."""
    meta, records = results["meta"], results["records"]
    versions = meta.get("versions", {})
    out = [
        f"## PHOTON vs Llama generation: {meta.get('device')} ({meta.get('dtype')}, torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}, preset {meta.get('preset')}, {meta.get('shape')})",
        "",
    ]
    gen = [r for r in records if r["record_type"] == "generation"]
    attempts = [r for r in records if r["record_type"] == "attempt"]
    regimes = list(
        dict.fromkeys(r["regime"] for r in gen + [a for a in attempts if a["regime"] not in ("sweep", "profile")])
    )
    if regimes:
        out += [
            "Largest batch that ran per model. TPM = K tok/s / GiB per sample; ratio = PHOTON / Llama (same run).",
            "",
            "| regime | model | batch | K tok/s | ms/step | GiB/sample | KV GiB/sample (analytic) | TPM | x roofline |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for regime in regimes:
            rows = [r for r in gen if r["regime"] == regime and r.get("is_max_batch")]
            for r in sorted(rows, key=lambda r: MODELS.index(r["model"])):
                out.append(
                    f"| {regime} {r['prompt_len']}/{r['gen_len']} | {LABELS[r['model']]} | {r['batch_size']} | "
                    f"{_fmt(r['tok_per_s'] / 1e3, '.3g')} | {_fmt(r.get('decode_step_ms'), '.3g')} | "
                    f"{_fmt(r['per_sample_gib'], '.4g')} | {_fmt(r['analytic_kv_gib'], '.4g')} | "
                    f"{_fmt(r['tpm'], 'n')} | {_fmt(r.get('step_over_roofline'), '.1f')} |"
                )
            ratio = next(
                (
                    x
                    for x in records
                    if x["record_type"] == "ratio" and x["regime"] == regime and x["basis"] == "max_batch"
                ),
                None,
            )
            if ratio:
                out.append(
                    f"| {regime} | **ratio P/L** | {ratio['photon_batch']}/{ratio['llama_batch']} | "
                    f"**{_fmt(ratio['tok_per_s_ratio'], '.3g')}x** | {_fmt(ratio['decode_step_ms_ratio'], '.3g')}x | "
                    f"{_fmt(ratio['per_sample_gib_ratio'], '.3g')}x | {_fmt(ratio['analytic_kv_gib_ratio'], '.3g')}x | "
                    f"**{_fmt(ratio['tpm_ratio'], 'n')}x** | |"
                )
        out += [
            "",
            "Throughput by batch (K tok/s; OOM / budget where a model stopped):",
            "",
            "| regime | batch | PHOTON | Llama | P/L |",
            "|---|---:|---:|---:|---:|",
        ]
        for regime in regimes:
            cells: dict[int, dict[str, str]] = {}
            values: dict[int, dict[str, float]] = {}
            for r in gen + attempts:
                if r["regime"] != regime:
                    continue
                ok = r["record_type"] == "generation"
                cells.setdefault(r["batch_size"], {})[r["model"]] = (
                    _fmt(r["tok_per_s"] / 1e3, ".3g") if ok else r["status"].replace("skipped_", "")
                )
                if ok:
                    values.setdefault(r["batch_size"], {})[r["model"]] = r["tok_per_s"]
            for batch in sorted(cells):
                v = values.get(batch, {})
                ratio = v["photon"] / v["llama"] if "photon" in v and "llama" in v else None
                out.append(
                    f"| {regime} | {batch} | {cells[batch].get('photon', '')} | {cells[batch].get('llama', '')} | "
                    f"{_fmt(ratio, '.3g', '')} |"
                )
        out.append("")
    sweep = [r for r in records if r["record_type"] == "sweep"]
    if sweep:
        out += [
            "Context sweep (ms/token = decode latency per generated token; K tok/s and TPM include the prefill, "
            "TPM decode does not):",
            "",
            "| context | model | b=1 ms/token | batch | ms/token | K tok/s | GiB/sample | KV GiB analytic "
            "| KV GiB measured | TPM | TPM decode |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for context in sorted({r["prompt_len"] for r in sweep}):
            for name in MODELS:
                rows = sorted(
                    (r for r in sweep if r["prompt_len"] == context and r["model"] == name),
                    key=lambda r: r["batch_size"],
                )
                if not rows:
                    continue
                one, big = rows[0], rows[-1]
                out.append(
                    f"| {context} | {LABELS[name]} | {_fmt(one['decode_ms_per_token'], '.3g')} | {big['batch_size']} | "
                    f"{_fmt(big['decode_ms_per_token'], '.3g')} | {_fmt(big['tok_per_s'] / 1e3, '.3g')} | "
                    f"{_fmt(big['per_sample_gib'], '.4g')} | {_fmt(big['analytic_kv_gib'], '.4g')} | "
                    f"{_fmt(big['cache_gib_measured'], '.4g')} | {_fmt(big['tpm'], 'n')} | "
                    f"{_fmt(big.get('decode_tpm'), 'n')} |"
                )
        out.append("")
    profiles = [r for r in records if r["record_type"] == "profile"]
    if profiles:
        out += [
            "Profile, per decode step (difference of generate with 1 + N and 1 new tokens; GPU = kernel time; "
            "idle = wall - GPU):",
            "",
            "| model | batch | wall ms | GPU ms | idle ms | roofline ms | kernels | aten calls | top GPU op "
            "| top CPU op |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in profiles:
            top_gpu = r["top_gpu_ops"][0] if r["top_gpu_ops"] else None
            top_cpu = r["top_cpu_ops"][0] if r["top_cpu_ops"] else None
            out.append(
                f"| {LABELS[r['model']]} | {r['batch_size']} | {r['wall_step_ms']:.2f} | "
                f"{_fmt(r['gpu_busy_step_ms'], '.2f')} | {_fmt(r['gpu_idle_step_ms'], '.2f')} | "
                f"{_fmt(r['roofline_step_ms'], '.3g')} | {_fmt(r['kernels_per_step'], '.0f')} | "
                f"{r['op_calls_per_step']:.0f} | "
                + (f"{top_gpu['op']} {top_gpu['self_gpu_us'] / 1e3:.2f} ms | " if top_gpu else "– | ")
                + (f"{top_cpu['op']} {top_cpu['self_cpu_us'] / 1e3:.2f} ms |" if top_cpu else "– |")
            )
        out.append("")
        for r in profiles:  # the next few ops, per step: where a shortfall comes from
            for kind, key, unit in (("GPU", "self_gpu_us", "top_gpu_ops"), ("CPU", "self_cpu_us", "top_cpu_ops")):
                ops = ", ".join(
                    f"{op['op'].replace('aten::', '')} {op[key] / 1e3:.2f} ms ({op['calls']:.0f}x)"
                    for op in r[unit][:5]
                )
                if ops:
                    out.append(f"- {LABELS[r['model']]} top {kind} per step: {ops}")
        out.append("")
    ceilings = meta.get("ceilings")
    if ceilings:
        out.append(
            f"Ceilings measured in this run: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul "
            f"{ceilings['matmul_flop_per_s'] / 1e12:.0f} TFLOP/s."
        )
    sections = ", ".join(f"{k} {v['status']} {v['seconds']:.0f}s" for k, v in meta.get("sections", {}).items())
    out.append(
        f"Sections: {sections or 'none'}; wall {meta.get('wall_s', 0):.0f} s"
        + ("; INTERRUPTED" if meta.get("interrupted") else "")
        + "."
    )
    for error in meta.get("errors", []):
        out.append(f"- error: {error}")
    if json_path:
        out.append(f"JSON: {json_path}" + (f"; plots: {', '.join(meta['plots'])}" if meta.get("plots") else ""))
    return "\n".join(out)


def make_plots(results: dict, stem: str) -> list[str]:
    """Throughput against batch (per regime) and memory / TPM / latency against context length, as PNG files
    `{stem}_batch.png` and `{stem}_context.png`. Returns the paths written ([] without matplotlib or data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed: no plots. Install it (pip install 'photon-hf[bench]') and redraw them "
            "with: python bench/report.py RESULTS.json --plots",
            flush=True,
        )
        return []
    records, meta = results["records"], results["meta"]
    colors = {"photon": "tab:blue", "llama": "tab:orange"}
    written = []
    title = f"{meta.get('device')} · {meta.get('dtype')} · {meta.get('shape')}"
    gen = [r for r in records if r["record_type"] == "generation"]
    attempts = [r for r in records if r["record_type"] == "attempt"]
    regimes = list(dict.fromkeys(r["regime"] for r in gen))
    if regimes:
        fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4.2), squeeze=False)
        for ax, regime in zip(axes[0], regimes, strict=True):
            for name in MODELS:
                rows = sorted(
                    (r for r in gen if r["regime"] == regime and r["model"] == name), key=lambda r: r["batch_size"]
                )
                if rows:
                    ax.plot(
                        [r["batch_size"] for r in rows],
                        [r["tok_per_s"] / 1e3 for r in rows],
                        "o-",
                        color=colors[name],
                        label=LABELS[name],
                    )
                for fail in (r for r in attempts if r["regime"] == regime and r["model"] == name):
                    ax.axvline(fail["batch_size"], color=colors[name], ls=":", lw=1)
                    ax.annotate(
                        f"{LABELS[name]} {fail['status'].replace('skipped_', '')}",
                        (fail["batch_size"], 0.02),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        fontsize=7,
                        color=colors[name],
                    )
            ratio = next(
                (
                    x
                    for x in records
                    if x["record_type"] == "ratio" and x["regime"] == regime and x["basis"] == "max_batch"
                ),
                None,
            )
            sample = next(r for r in gen if r["regime"] == regime)
            subtitle = f"{regime} {sample['prompt_len']}/{sample['gen_len']}"
            if ratio and ratio.get("tpm_ratio"):
                subtitle += f"\nTPM P/L {ratio['tpm_ratio']:.0f}x, throughput {ratio['tok_per_s_ratio']:.1f}x"
            ax.set(
                xscale="log", yscale="log", xlabel="batch size", ylabel="K tokens/s (prefill included)", title=subtitle
            )
            _log_ticks(ax.xaxis, sorted({r["batch_size"] for r in gen + attempts if r["regime"] == regime}))
            _plain_labels(ax.yaxis)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"Throughput vs batch · {title}", fontsize=10)
        fig.tight_layout()
        path = f"{stem}_batch.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sweep = [r for r in records if r["record_type"] == "sweep"]
    if sweep:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        for name in MODELS:
            rows = [r for r in sweep if r["model"] == name]
            contexts = sorted({r["prompt_len"] for r in rows})
            big = [max((r for r in rows if r["prompt_len"] == c), key=lambda r: r["batch_size"]) for c in contexts]
            one = [next((r for r in rows if r["prompt_len"] == c and r["batch_size"] == 1), None) for c in contexts]
            measured = [(c, r["per_sample_gib"]) for c, r in zip(contexts, big, strict=True) if r["per_sample_gib"]]
            if measured:
                axes[0].plot(
                    *zip(*measured, strict=True), "o-", color=colors[name], label=f"{LABELS[name]} measured (slope)"
                )
            axes[0].plot(
                contexts,
                [r["analytic_kv_gib"] for r in big],
                "x--",
                color=colors[name],
                label=f"{LABELS[name]} analytic KV",
            )
            tpm = [(c, r["tpm"], r["batch_size"]) for c, r in zip(contexts, big, strict=True) if r["tpm"]]
            if tpm:
                axes[1].plot(
                    [t[0] for t in tpm],
                    [t[1] for t in tpm],
                    "o-",
                    color=colors[name],
                    label=f"{LABELS[name]} (prefill included)",
                )
                for c, value, batch in tpm:
                    axes[1].annotate(
                        f"b={batch}",
                        (c, value),
                        xytext=(4, 4),
                        textcoords="offset points",
                        fontsize=7,
                        color=colors[name],
                    )
            decode = [(c, r["decode_tpm"]) for c, r in zip(contexts, big, strict=True) if r.get("decode_tpm")]
            if decode:
                axes[1].plot(
                    *zip(*decode, strict=True), "s:", color=colors[name], label=f"{LABELS[name]} (decode only)"
                )
            latency = [(c, r["decode_ms_per_token"]) for c, r in zip(contexts, one, strict=True) if r is not None]
            if latency:
                axes[2].plot(*zip(*latency, strict=True), "o-", color=colors[name], label=LABELS[name])
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="GiB per sample",
            title="Memory per sample vs context",
        )
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="TPM (K tok/s per GiB)",
            title=f"TPM vs context (sweep batch, {sweep[0]['gen_len']} generated)",
        )
        axes[2].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="ms per generated token",
            title="Decode latency at batch 1",
        )
        for ax in axes:
            _log_ticks(ax.xaxis, sorted({r["prompt_len"] for r in sweep}))
            _plain_labels(ax.yaxis)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Context sweep · {title}", fontsize=10)
        fig.tight_layout()
        path = f"{stem}_context.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _log_ticks(axis, values: list[int]):
    """Label a log axis with the plain values that were measured (no 2 x 10^0 style labels)."""
    import matplotlib.ticker

    axis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if v < 1e4 else f"{v / 1024:g}K"))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def _plain_labels(axis):
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (0.5, 2, 300) on a log axis."""
    import matplotlib.ticker

    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 10 else f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def write_json(path: Path, results: dict):
    """Write through a temporary file, so that a run killed mid-write keeps the previous complete version."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photon-hf bench",
        description="PHOTON vs a same-size Llama through the same stock generate(): throughput, memory per sample, "
        "TPM and their ratios (BENCH.md protocol). Options left out come from the preset.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="defaults: gpu-short on CUDA, else cpu-smoke")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shapes: the paper's 600M or a tiny CPU pair")
    parser.add_argument(
        "--kernel-backend",
        choices=["auto", "torch", "triton"],
        default="auto",
        help="PHOTON's kernel_backend: auto (Triton kernels on CUDA when importable), torch or triton",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget of all sections (set-up not included)")
    parser.add_argument(
        "--regime",
        dest="regimes",
        action="append",
        type=parse_regime,
        metavar="NAME=P/G[:B,...]",
        help="a regime (repeatable): prompt/generated lengths, optionally a fixed batch ladder "
        "(else search the largest batch). Replaces the preset's regimes.",
    )
    parser.add_argument("--search-start", type=int, help="first batch size of the batch search")
    parser.add_argument("--max-batch", type=int, help="largest batch size the search tries")
    parser.add_argument("--repeats", type=int, help="timed generate calls per batch size (median)")
    parser.add_argument(
        "--sections",
        type=lambda s: [x for x in s.split(",") if x],
        metavar="LIST",
        help=f"comma list of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--profile", action="store_true", help="profiler mode: run only the profile section")
    parser.add_argument("--profile-batch", type=int, help="batch size of the profiled generations")
    parser.add_argument(
        "--profile-steps",
        type=int,
        help="decode steps profiled, N (a multiple of the meta-chunk, 16, covers every PHOTON step kind)",
    )
    parser.add_argument(
        "--sweep-contexts",
        type=lambda s: [int(x) for x in s.split(",") if x],
        metavar="LIST",
        help="comma list of prompt lengths for the context sweep",
    )
    parser.add_argument("--sweep-batch", type=int, help="the sweep's large batch (halved while it does not fit)")
    parser.add_argument("--sweep-gen", type=int, help="tokens generated at each sweep point (>= 2)")
    parser.add_argument("--out-dir", default="bench/results", help="where the JSON and plots go (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts (default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset is None:
        args.preset = "gpu-short" if torch.device(args.device).type == "cuda" else "cpu-smoke"
    preset = PRESETS[args.preset]
    for key, value in preset.items():
        if key == "weights":
            continue
        if getattr(args, key, None) is None:
            setattr(args, key, [parse_regime(v) for v in value] if key == "regimes" else value)
    if args.profile:
        args.sections = ["profile"]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    names = [r.name for r in args.regimes]
    if len(set(names)) != len(names) or set(names) & set(SECTIONS):
        parser.error(f"regime names must be distinct and not one of {SECTIONS}: {names}")
    if args.sweep_gen < 2 or args.profile_steps < 1 or args.repeats < 1 or args.max_batch < 1:
        parser.error("--sweep-gen must be >= 2, --profile-steps, --repeats and --max-batch >= 1")
    args.weights = {**{r.name: 1.0 for r in args.regimes}, "profile": 0.5, "sweep": 1.0, **preset["weights"]}
    args.out_stem = None
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> tuple[Path, dict]:
    """Run the sections of `args` and write the JSON (after every section), the plots and the summary."""
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    ]
    transformers.logging.set_verbosity_error()  # generate's per-call notices would bury the summary
    bench = Bench(args, device, dtype)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", bench.device_name).strip("-")[:40]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gen_{stamp}_{slug}.json"
    args.out_stem = str(path.with_suffix(""))
    bench.log(f"photon_hf benchmark, preset {args.preset}, device {bench.device_name}, writing {path}")
    sections = []
    for section in args.sections:
        sections += [r.name for r in args.regimes] if section == "regimes" else [section]
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a `timeout` kill still leaves the JSON and the summary
    try:
        bench.setup()
        budget = Budget(args.budget_s, {s: args.weights.get(s, 1.0) for s in sections})
        for section in sections:
            bench.run_section(section, budget.deadline(section))
            write_json(path, bench.results())
    except KeyboardInterrupt as exc:
        bench.meta["interrupted"] = str(exc) or "KeyboardInterrupt"
    except Exception as exc:
        bench.error("run", exc)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    results = bench.results()
    if not args.no_plots:
        try:
            bench.meta["plots"] = make_plots(results, args.out_stem)
        except Exception as exc:
            bench.error("plots", exc)
    write_json(path, results)
    print("\n" + render_markdown(results, str(path)), flush=True)
    return path, results


def main(argv: list[str] | None = None) -> int:
    """Entry point (`photon-hf bench ARGS`, `python bench/run_generation.py ARGS`). Returns 0 when at least one
    generation was measured."""
    _, results = run(parse_args(argv))
    return 0 if any(r.get("status") == "ok" for r in results["records"]) else 1


def report_main(argv: list[str] | None = None) -> int:
    """`python bench/report.py RESULTS.json [--plots]`: print the markdown tables of a results JSON (and redraw
    its plots)."""
    parser = argparse.ArgumentParser(
        description="Render the markdown tables (and optionally the plots) of a results JSON."
    )
    parser.add_argument("json", help="a results file written by the benchmark")
    parser.add_argument("--plots", action="store_true", help="(re)draw the PNG plots beside the JSON")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.json).read_text())
    if args.plots:
        results["meta"]["plots"] = make_plots(results, str(Path(args.json).with_suffix("")))
    print(render_markdown(results, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
