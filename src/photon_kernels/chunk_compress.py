"""Chunk compression: the chunker of levels >= 1, RMSNorm(C x D) followed by Linear(C x D -> D, bias).

The C units of a chunk are contiguous, so their concatenation is a free reshape to rows x = [R, K] (K = C x D).
Because RMSNorm scales a row by one number, the norm folds into the projection:

    y = (g * (x * rstd)) @ W^T + b = rstd * ((x * g) @ W^T) + b,     rstd = 1 / sqrt(mean(x^2) + eps)

`chunk_compress` is one GEMM kernel whose K loop also accumulates the row's sum of squares, so x is read once and
the normalised activation never goes to memory. Its backward uses cuBLAS for the two GEMMs (dh = dy W,
dW = dy^T h) and one row kernel that computes dx, the norm-weight gradient partials and h (recomputed) together.

LoRA safety: `chunk_compress` reads the projection's weight. When the projection is not a plain `nn.Linear`
(a PEFT LoRA layer, a quantised layer, a hooked module), use `rms_norm` (the norm alone, fused) and call the
module itself on its output, so the wrapper sees its input.
"""

from __future__ import annotations

import torch

from ._utils import (
    check_runnable,
    configs,
    dot_precision,
    empty,
    interpreting,
    multiprocessors,
    next_power_of_2,
    tl,
    triton,
)

# The norm kernels hold a whole row in registers.
MAX_NORM_WIDTH = 16384


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Reference RMSNorm, the model's `PhotonRMSNorm`: one fused op that normalises in float32 for half inputs,
    casts back and scales by the weight in x's dtype. x: [..., K] -> [..., K] in x's dtype."""
    return torch.nn.functional.rms_norm(x, weight.shape, weight.to(x.dtype), eps)


def chunk_compress_ref(
    x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-6
) -> torch.Tensor:
    """Reference chunker: x [..., K] -> Linear(RMSNorm(x)) [..., N]; weight [N, K], bias [N] or None."""
    return torch.nn.functional.linear(rms_norm_ref(x, norm_weight, eps), weight, bias)


# ------------------------------------------------------------------------------------------------- norm kernels
@triton.jit
def _rms_norm_fwd(X, G, H, RSTD, sx_r, K, eps, BLOCK_K: tl.constexpr):
    """One row: H[r] = G * cast(X[r] * rstd), RSTD[r] = rstd (float32). H is contiguous [R, K]."""
    r = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    mask = k < K
    x = tl.load(X + r * sx_r + k, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / K + eps)
    g = tl.load(G + k, mask=mask, other=0.0).to(tl.float32)
    h = (x * rstd).to(H.dtype.element_ty).to(tl.float32) * g
    tl.store(H + r * K + k, h.to(H.dtype.element_ty), mask=mask)
    tl.store(RSTD + r, rstd)


@triton.jit
def _rms_norm_bwd(
    X, G, RSTD, DH, DX, H, DG_PART, sx_r, sdh_r, R, K, rows_per_program,
    WRITE_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Rows [pid * rows_per_program, ...): DX = d/dx of h = G * cast(X * rstd) given DH = dL/dh, the program's
    partial sum of dL/dG in DG_PART[pid] (float32 [programs, K]) and, with WRITE_H, h itself (for dW)."""
    pid = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)
    mask = k < K
    g = tl.load(G + k, mask=mask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK_K], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_program
    for r in range(first, tl.minimum(first + rows_per_program, R)):
        x = tl.load(X + r * sx_r + k, mask=mask, other=0.0).to(tl.float32)
        dh = tl.load(DH + r * sdh_r + k, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + r)
        x_hat = x * rstd
        x_hat_cast = x_hat.to(DX.dtype.element_ty).to(tl.float32)
        dg += dh * x_hat_cast
        dx_hat = dh * g
        dx = rstd * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, 0) / K))
        tl.store(DX + r * K + k, dx.to(DX.dtype.element_ty), mask=mask)
        if WRITE_H:
            tl.store(H + r * K + k, (x_hat_cast * g).to(H.dtype.element_ty), mask=mask)
    tl.store(DG_PART + pid.to(tl.int64) * K + k, dg, mask=mask)


def _norm_warps(block: int) -> int:
    """Warps for a whole-row kernel: 8 for 4 x 1664 -> 8192 (16 caps registers at 128 and spills the backward)."""
    return 1 if interpreting() else max(4, min(16, block // 1024))


def _norm_backward(x2, g, rstd, dh, write_h: bool):
    """dx [R, K], dg [K] and (write_h) h [R, K] from the saved row-major x2 [R, K], rstd [R] and dh [R, K]."""
    rows, width = x2.shape
    programs = min(rows, 4 * multiprocessors(x2.device))
    rows_per_program = triton.cdiv(rows, programs)
    programs = triton.cdiv(rows, rows_per_program)
    dx = empty(rows, width, dtype=x2.dtype, device=x2.device)
    h = empty(rows, width, dtype=x2.dtype, device=x2.device) if write_h else dx
    dg_part = empty(programs, width, dtype=torch.float32, device=x2.device)
    block = next_power_of_2(width)
    _rms_norm_bwd[(programs,)](
        x2, g, rstd, dh, dx, h, dg_part, x2.stride(0), dh.stride(0), rows, width, rows_per_program,
        WRITE_H=write_h, BLOCK_K=block, num_warps=_norm_warps(block),
    )
    return dx, dg_part.sum(0).to(g.dtype), h if write_h else None


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, g, eps):
        rows, width = x2.shape
        h = empty(rows, width, dtype=x2.dtype, device=x2.device)
        rstd = empty(rows, dtype=torch.float32, device=x2.device)
        block = next_power_of_2(width)
        _rms_norm_fwd[(rows,)](x2, g, h, rstd, x2.stride(0), width, eps, BLOCK_K=block, num_warps=_norm_warps(block))
        ctx.save_for_backward(x2, g, rstd)
        return h

    @staticmethod
    def backward(ctx, dh):
        x2, g, rstd = ctx.saved_tensors
        dx, dg, _ = _norm_backward(x2, g, rstd, _rows(dh, x2.shape[1]), write_h=False)
        return dx, dg, None


# ------------------------------------------------------------------------------------------ fused norm + GEMM
# Hopper candidates: the scaled x tile feeds wgmma from registers, so BLOCK_K = 32 (64 spills at these tiles).
_GEMM_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ],
    interpret=[triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=1, num_stages=1)],
)


@triton.autotune(configs=configs(**_GEMM_CONFIGS), key=["N", "K", "HAS_BIAS"])  # not R: generation varies it
@triton.jit
def _chunk_compress_fwd(
    X, G, W, B, Y, RSTD, R, N, K, sx_r, sw_n, sw_k, eps,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Y [R, N] = rstd * ((X * G) @ W^T) + B and RSTD [R] (float32), one [BLOCK_M, BLOCK_N] tile a program."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(R, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n  # grouped tile order: neighbouring programs share X rows and W columns in L2
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < R
    n_mask = offs_n < N
    x_rows = X + offs_m.to(tl.int64)[:, None] * sx_r
    w_cols = W + offs_n.to(tl.int64)[None, :] * sw_n

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        g = tl.load(G + offs_k, mask=k_mask, other=0.0)
        w = tl.load(w_cols + offs_k[:, None] * sw_k, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        xf = x.to(tl.float32)
        sum_sq += tl.sum(xf * xf, 1)
        acc += tl.dot((xf * g.to(tl.float32)[None, :]).to(x.dtype), w, input_precision=PRECISION)
    rstd = tl.rsqrt(sum_sq / K + eps)
    y = acc * rstd[:, None]
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], y.to(Y.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])
    if pid_n == 0:
        tl.store(RSTD + offs_m, rstd, mask=m_mask)


class ChunkCompress(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, g, weight, bias, eps):
        rows, width = x2.shape
        out = weight.shape[0]
        y = empty(rows, out, dtype=x2.dtype, device=x2.device)
        rstd = empty(rows, dtype=torch.float32, device=x2.device)
        grid = lambda m: (triton.cdiv(rows, m["BLOCK_M"]) * triton.cdiv(out, m["BLOCK_N"]),)
        _chunk_compress_fwd[grid](
            x2, g, weight, bias if bias is not None else g, y, rstd, rows, out, width,
            x2.stride(0), weight.stride(0), weight.stride(1), eps,
            HAS_BIAS=bias is not None, PRECISION=dot_precision(x2.dtype),
        )
        ctx.save_for_backward(x2, g, weight, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, g, weight, rstd = ctx.saved_tensors
        dh = dy.mm(weight)
        dx, dg, h = _norm_backward(x2, g, rstd, dh, write_h=True)
        dweight = dy.t().mm(h)
        dbias = dy.sum(0, dtype=torch.float32).to(dy.dtype) if ctx.has_bias else None
        return dx, dg, dweight, dbias, None


# ----------------------------------------------------------------------------------------------- public entries
def _rows(x: torch.Tensor, width: int) -> torch.Tensor:
    x2 = x.reshape(-1, width)
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def _check(x: torch.Tensor, *params: torch.Tensor | None) -> None:
    dtypes = {x.dtype, *(p.dtype for p in params if p is not None)}
    if len(dtypes) != 1 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x and the parameters must share one dtype among float32/float16/bfloat16, got {dtypes}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused RMSNorm (Triton, differentiable), the same function as `rms_norm_ref`. x: [..., K], weight: [K]."""
    check_runnable(x, weight)
    _check(x, weight)
    width = x.shape[-1]
    if width > MAX_NORM_WIDTH:
        raise ValueError(f"rms_norm: rows of {width} > {MAX_NORM_WIDTH} elements are not supported")
    if x.numel() == 0:
        return x.new_empty(x.shape)
    return RMSNorm.apply(_rows(x, width), weight, eps).view(x.shape)


def chunk_compress(
    x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-6
) -> torch.Tensor:
    """Fused chunker (Triton, differentiable): Linear(RMSNorm(x)) as in `chunk_compress_ref`.

    x: [..., K] (the C concatenated units); norm_weight: [K]; weight: [N, K]; bias: [N] or None -> [..., N].
    Reads `weight` directly: pass only the weight of a plain `nn.Linear` (see the module docstring).
    """
    check_runnable(x, norm_weight, weight, bias)
    _check(x, norm_weight, weight, bias)
    width = x.shape[-1]
    if norm_weight.shape != (width,) or weight.dim() != 2 or weight.shape[1] != width:
        raise ValueError(f"x [..., {width}] needs norm_weight [{width}] and weight [N, {width}]; got "
                         f"{tuple(norm_weight.shape)}, {tuple(weight.shape)}")
    if width > MAX_NORM_WIDTH:
        raise ValueError(f"chunk_compress: rows of {width} > {MAX_NORM_WIDTH} elements are not supported")
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], weight.shape[0])
    y = ChunkCompress.apply(_rows(x, width), norm_weight, weight, bias, eps)
    return y.view(*x.shape[:-1], weight.shape[0])
