"""The generation benchmark harness: PHOTON against a same-size Llama through the same `generate()` call.

`GenerationBench` holds the two models, the records and the metadata of one run; each `run_*` method is one section
of the protocol (`bench.generation.protocol`), and `run(options)` runs them all within a budget and writes one JSON per
run (`{"meta": {...}, "records": [...]}`, rewritten after every section so that a run cut short keeps what it
measured), the PNG plots beside it and the markdown summary (`bench.generation.report`).

Every generation goes through one function, `generate(name, model, input_ids, **kwargs)`, by default
`stock_generate` (`model.generate`); `run(options, generate=...)` takes another, e.g. one that simulates running
out of memory in the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from bench.common import (
    GIB,
    Budget,
    cuda_ms,
    device_description,
    git_commit,
    is_oom,
    split_deadline,
    synchronize,
    versions,
    write_json,
)
from bench.generation.protocol import LABELS, MODELS, PROFILE_PROMPT_LEN, WARMUP_TOKENS, Regime
from bench.generation.report import fmt, make_plots, render_markdown
from photon_hf import photon_preset
from photon_hf.memory import decode_step_cost, kv_cache_bytes, llama_config_for, llama_kv_cache_bytes, roofline_step_ms


def stock_generate(name: str, model, input_ids: torch.Tensor, **kwargs):
    """The generation every measurement times: the model's own `generate` (`name` is "photon" or "llama")."""
    return model.generate(input_ids, **kwargs)


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



# ------------------------------------------------------------------------------------------------ the harness
class GenerationBench:
    """Holds the two models, the records and the metadata of one run; each `run_*` method is one section.

    `generate(name, model, input_ids, **kwargs)` makes every generation of the run (default: `stock_generate`).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        device: torch.device,
        dtype: torch.dtype,
        generate: Callable[..., object] = stock_generate,
    ):
        self.args, self.device, self.dtype = args, device, dtype
        self.generate_fn = generate
        self.cuda = device.type == "cuda"
        self.device_name = device_description(device)
        self.t0 = time.monotonic()
        self.records: list[dict] = []
        self.next_id = 0
        self.config = photon_preset(args.shape, kernel_backend=args.kernel_backend)
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
            versions=versions(),
            git_commit=git_commit(),
            protocol=dict(
                decoding="greedy, EOS disabled (min_new_tokens = max_new_tokens, eos = pad = vocab_size - 1)",
                prompts="random ids, the same for both models at each batch size and length",
                llama="transformers.LlamaForCausalLM, attn_implementation='sdpa', dynamic cache (generate's default)",
                decode="auto: what stock generate does (PHOTON's compileable cache: its decode step compiled with "
                "CUDA graphs on a GPU; the Llama's dynamic cache: eager); eager: disable_compile=True for both",
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

        def timed(fn, *operands):  # seconds
            return cuda_ms(lambda: fn(*operands), repeats=10, warmup=2) / 1e3

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

    def generation_config(self, name: str, new_tokens: int, cache_len: int | None = None) -> GenerationConfig:
        """Greedy, EOS disabled. `--decode eager` turns generate's auto-compile off (`disable_compile`); otherwise
        PHOTON's cache is sized for `cache_len` columns, so that every call of one measurement (warm-up included)
        shares the compiled decode step's graphs."""
        fields = dict(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos,
            pad_token_id=self.eos,
            use_cache=True,
            return_dict_in_generate=True,
            disable_compile=self.args.decode == "eager",
        )
        if name == "photon" and cache_len is not None:
            fields["max_cache_len"] = cache_len
        return GenerationConfig(**fields)

    def generate(self, name: str, ids: torch.Tensor, new_tokens: int, deadline: float,
                 cache_len: int | None = None) -> GenRun:
        """One `generate` call (through `self.generate_fn`), timed with the device synchronised, with its peak
        memory and the size of the cache it returned. `cache_len`: the columns every call of this measurement
        reaches (a fixed cache size, for compiled decoding)."""
        model = self.models[name]
        mask = torch.ones_like(ids)
        config = self.generation_config(name, new_tokens, cache_len)
        stop = StoppingCriteriaList([DeadlineCriterion(deadline)])
        base = None
        if self.cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        out = self.generate_fn(name, model, ids, attention_mask=mask, generation_config=config, stopping_criteria=stop)
        synchronize(self.device)
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
            total = regime.prompt_len + regime.gen_len
            warm = self.generate(name, ids, 1 + steps, deadline, total)  # warm-up: kernels, graphs, allocator
            prefill = self.generate(name, ids, 1, deadline, total)  # prefill alone
            short = self.generate(name, ids, 1 + steps, deadline, total)
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
                run = self.generate(name, ids, regime.gen_len, deadline, total)
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
            self.set_per_sample_figures(rows)
            for row in rows:
                row["is_max_batch"] = False
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

    def set_per_sample_figures(self, rows: list[dict], decode: bool = False):
        """Give every row of one model and shape its per-sample memory (`per_sample_memory`) and TPM (and, with
        `decode`, the TPM of the decode steps alone)."""
        per_sample, source, batches = self.per_sample_memory(rows)
        for row in rows:
            row.update(
                per_sample_gib=per_sample,
                per_sample_source=source,
                per_sample_batches=batches,
                tpm=row["tok_per_s"] / 1e3 / per_sample if per_sample else None,
            )
            if decode:
                tok_per_s = row["decode_tok_per_s"]
                row["decode_tpm"] = tok_per_s / 1e3 / per_sample if per_sample and tok_per_s else None

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
            first = self.generate(name, ids, 3, deadline, context + gen)  # warm-up of this shape, decode steps too
            if time.monotonic() + 2 * first.seconds > deadline:
                return self._attempt(base, "skipped_budget", f"prefill and two steps took {first.seconds:.1f} s")
            full = self.generate(name, ids, gen, deadline, context + gen)
            if not full.completed:
                return self._attempt(base, "timeout", "the section's deadline passed")
            prefill = self.generate(name, ids, 1, deadline, context + gen).seconds
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
                self.set_per_sample_figures(rows, decode=True)
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
                f"{fmt(record['gpu_busy_step_ms'], '.2f')} ms, {fmt(record['kernels_per_step'], '.0f')} kernels, "
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
        total = PROFILE_PROMPT_LEN + 1 + steps
        warm = self.generate(name, ids, 1 + steps, deadline, total)
        if not warm.completed or time.monotonic() + 6 * warm.seconds > deadline:
            return None, f"warm-up took {warm.seconds:.1f} s, too long for the budget left"
        plain_one = min(self.generate(name, ids, 1, deadline, total).seconds for _ in range(2))
        plain_all = self.generate(name, ids, 1 + steps, deadline, total)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        tables, walls = [], []
        for new_tokens in (1, 1 + steps):
            with profile(activities=activities) as prof:
                run = self.generate(name, ids, new_tokens, deadline, total)
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



def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, generate: Callable[..., object] = stock_generate) -> tuple[Path, dict]:
    """Run the sections of `args` (`run_generation.parse_args`) and write the JSON (after every section), the plots
    and the summary; every generation goes through `generate` (see `stock_generate`)."""
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    ]
    transformers.logging.set_verbosity_error()  # generate's per-call notices would bury the summary
    bench = GenerationBench(args, device, dtype, generate)
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

