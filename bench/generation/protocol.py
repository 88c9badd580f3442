"""The generation benchmark's protocol (BENCH.md): the models, the regimes, the fields of a record, the presets.

The protocol follows the Block Transformer harness the paper uses: random weights (bf16 on a GPU, fp32 on the CPU),
random prompt ids, greedy decoding with EOS disabled (`min_new_tokens = max_new_tokens`), PHOTON and the same-size
Llama (`photon_hf.memory.llama_config_for`) in one process on one device, every figure of PHOTON divided by Llama's
figure from the same run. A run is made of sections, each within its share of a wall-clock budget:

* one per *regime* (prompt / generated lengths, e.g. PF 2048/128, DE 128/2048, DE-short 128/512): for each model,
  a fixed ladder of batch sizes or a search for the largest batch that fits (doubling, then bisection; out-of-memory
  ends a branch, it does not end the run). Per-sample memory = slope of the peak between the two largest batches
  that ran, throughput = batch x generated / wall time, TPM = throughput (K tok/s) / per-sample memory (GiB), and
  PHOTON / Llama ratios;
* `profile`: torch.profiler over a few decode steps of each model at one batch size;
* `sweep`: prompt lengths from 1K to 32K+ at batch 1 and at a large batch.

Model shapes are names of `photon_hf.PHOTON_PRESETS` (the paper's "photon-600m", the CPU "tiny").
"""

from __future__ import annotations

import dataclasses
import re

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


# Run presets, the defaults of `--preset NAME` (any option given on the command line wins). `weights` share the
# budget among sections.
RUN_PRESETS: dict[str, dict] = {
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
        shape="photon-600m",
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
    # The compiled-decoding GPU figures in about nine minutes a run: the paper's DE regime 128/2048 with PHOTON's
    # largest batch searched, PF 2048/128 on a ladder, the profile at batch 256. Every new batch size compiles
    # PHOTON's decode step once, in its warm-up: 36 to 46 s for the 600M shapes on an H200 (2026-11-30), so 200 s
    # measured nothing but the Llama. Run it twice, --decode auto and --decode eager (bench/gpu/compiled.sh).
    "gpu-compiled": dict(
        shape="photon-600m",
        budget_s=520.0,
        regimes=["DE=128/2048", "PF=2048/128:64,512,2048"],
        search_start=1024,
        max_batch=16384,
        repeats=1,
        sweep_contexts=[1024],
        sweep_batch=1,
        sweep_gen=32,
        profile_batch=256,
        profile_steps=16,
        sections=["regimes", "profile"],
        weights={"DE": 5.0, "PF": 2.0, "profile": 1.0},
    ),
    # The full protocol (paper regimes, batch search, 3 repeats, long sweep): about half an hour.
    "gpu-full": dict(
        shape="photon-600m",
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
