"""Comparison of a kernel with its PyTorch reference, shared by test_kernels.py (CPU) and test_kernels_gpu.py.

The reference runs in float64 as the ground truth. The kernel must be about as accurate as the reference itself
run in the kernel's dtype: its relative L2 error at most twice the reference's, or the dtype's floor (1e-5 for
float32). Every kernel output, forward and backward, is NaN-poisoned before the kernel writes it, so an
element the kernel forgets to write fails the check instead of passing on stale memory.
"""

from __future__ import annotations

import contextlib

import torch

import photon_kernels as pk

FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, with ||want|| floored at 1e-3 x sqrt(numel) (an RMS of 1e-3) so that a gradient
    that is exactly zero in theory (e.g. dq of a one-key window) is compared in absolute terms."""
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-3 * want.numel() ** 0.5)).item()


def _run(fn, inputs, dtype, grad_out, kwargs, poison):
    xs = [x.detach().to(dtype).requires_grad_(grad_out is not None) for x in inputs]
    with pk.poison_outputs() if poison else contextlib.nullcontext():
        out = fn(*xs, **kwargs)
        if grad_out is None:
            return [out]
        return [out, *torch.autograd.grad(out, xs, grad_out(out).to(out.dtype))]


def check_kernel(kernel, reference, inputs, dtype, names, grad=True, **kwargs):
    """Run `kernel` and `reference` on `inputs` (float32 tensors, cast to `dtype`) with the same `kwargs`; compare
    the output and, with `grad`, the gradient of every input (`names`: labels of the inputs) for one random
    upstream gradient. Returns {label: relative error}."""
    torch.manual_seed(1234)
    out_shape = reference(*[x.double() for x in inputs], **kwargs).shape
    upstream = torch.randn(out_shape, dtype=torch.float64, device=inputs[0].device)
    grad_out = (lambda out: upstream) if grad else None
    got = _run(kernel, inputs, dtype, grad_out, kwargs, poison=True)
    want = _run(reference, inputs, torch.float64, grad_out, kwargs, poison=False)
    base = _run(reference, inputs, dtype, grad_out, kwargs, poison=False)
    labels = ["out"] + [f"d{n}" for n in names][: len(got) - 1]
    errors = {}
    for i, label in enumerate(labels):
        assert got[i].shape == want[i].shape, f"{label}: shape {tuple(got[i].shape)} != {tuple(want[i].shape)}"
        assert torch.isfinite(got[i]).all(), f"{label}: NaN or inf in the kernel result (an unwritten element?)"
        err = relative_error(got[i], want[i])
        allowed = max(FLOOR[dtype], 2 * relative_error(base[i], want[i]))
        assert err <= allowed, f"{label}: relative error {err:.2e} > {allowed:.2e} ({dtype})"
        errors[label] = err
    return errors
