"""Shared helpers: the optional Triton import, run-time checks, output allocation and tile configs."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the kernels modules still import; every public entry point calls `check_runnable` first
    HAS_TRITON = False

    class _Placeholder:
        """Stands in for `triton` / `triton.language` so that kernel definitions import without Triton."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_, **__):
            return lambda f: f

        @staticmethod
        def Config(*_, **__):  # noqa: N802 - mirrors triton.Config
            return None

    triton = tl = _Placeholder()


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`, read when Triton compiles the
    kernels at import, so it must be set before `photon_kernels` is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the Triton kernels cannot run on `device` (None when they can)."""
    device = torch.device(device)
    if not HAS_TRITON:
        return "the `triton` package is not installed (pip install 'photon-hf[triton]')"
    if device.type == "cuda":
        return None if not interpreting() else "TRITON_INTERPRET=1 is set, which runs kernels on CPU tensors only"
    if device.type == "cpu":
        return None if interpreting() else "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    return f"Triton kernels run on CUDA (or on CPU under TRITON_INTERPRET=1), not on {device.type!r} tensors"


def check_runnable(*tensors: torch.Tensor) -> None:
    """Raise a clear RuntimeError when the Triton kernels cannot run on these tensors."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise RuntimeError(f"photon_kernels: all tensors must be on one device, got {sorted(map(str, devices))}.")
    reason = triton_unavailable_reason(devices.pop())
    if reason is not None:
        raise RuntimeError(f"photon_kernels: cannot run the Triton kernels: {reason}.")


def check_attention_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [N, H, S, hd] and k, v [N, Hkv, S, hd] of one float dtype, H a multiple of Hkv, or a ValueError."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"expected q [N, H, S, hd] and k, v [N, Hkv, S, hd]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} disagree (GQA needs H % Hkv == 0)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v must share one dtype among float32/float16/bfloat16; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")


# ---------------------------------------------------------------------------------------------- output buffers
_POISON = False


@contextlib.contextmanager
def poison_outputs():
    """While active, every buffer a kernel wrapper allocates with `empty` is filled with NaN (integers: -1), so a
    kernel that leaves part of its output unwritten produces NaN instead of passing on stale memory. For tests."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.empty` for kernel outputs (NaN-filled under `poison_outputs`)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 stands in for the CPU interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


# --------------------------------------------------------------------------------------------------- tile math
def next_power_of_2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum) (tl.dot needs every block dimension >= 16)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact IEEE products for float32 inputs (the reference is fp32 too), the tensor
    cores' native precision for 16-bit inputs (where the setting does not apply)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def configs(hopper: list, interpret: list) -> list:
    """Autotuning candidates: `hopper` (tuned for H100/H200) on a GPU, `interpret` (a single small-tile config,
    so that tiny test shapes still span several tiles and nothing is benchmarked) in the CPU interpreter."""
    return interpret if interpreting() else hopper
