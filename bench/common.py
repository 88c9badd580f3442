"""Timing, budgets and bookkeeping shared by the benchmark jobs (`bench.generation`, `bench.kernels`).

bench/ is not part of the installed package: its scripts run as modules from the repository root of a source
checkout (`python -m bench.generation.run_generation`), with `photon_hf` installed or made importable by
`bench/gpu/env.sh`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_oom(exc: BaseException) -> bool:
    """Out of device memory, including the forms that are not `OutOfMemoryError` (cuBLAS workspace allocation)."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and any(s in str(exc) for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory"))
    )


# --------------------------------------------------------------------------------------------------- budgets
class Budget:
    """A wall-clock budget. With `weights` it is shared among named sections in proportion to their weights
    (`deadline(section)`), and what a section leaves unused goes to the sections after it."""

    def __init__(self, seconds: float, weights: dict[str, float] | None = None):
        self.start = time.monotonic()
        self.end = self.start + seconds
        self.pending = dict(weights or {})

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def deadline(self, section: str) -> float:
        """The monotonic time by which `section` must end: its weight's share of the time left."""
        weight = self.pending.pop(section, 1.0)
        share = weight / (weight + sum(self.pending.values()))
        return time.monotonic() + self.remaining() * share


def split_deadline(deadline: float, parts: int) -> float:
    """The deadline of the first of `parts` equal shares of the time left before `deadline`."""
    now = time.monotonic()
    return now + max(0.0, deadline - now) / max(parts, 1)


# ---------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_ms(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of `fn()` on the current CUDA stream, each call between two CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def host_ms(fn, repeats: int = 2, warmup: int = 0) -> float:
    """Median milliseconds of `fn()` by the host clock (the CPU smoke runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ bookkeeping
def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str | None]:
    """Versions of what a measurement depends on."""
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import photon_hf

        photon_version = photon_hf.__version__
    except ImportError:
        photon_version = None
    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        triton=triton_version,
        photon_hf=photon_version,
        cuda=torch.version.cuda,
    )


def git_commit() -> str | None:
    """The short commit of this checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=REPO
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: str | os.PathLike, data: dict):
    """Write through a temporary file, so that a run killed mid-write keeps the previous complete version."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
