"""Chunk-local attention: causal attention inside many short, independent windows (the PHOTON local decoders).

Every local decoder attends inside windows of W = R + C - 1 positions (5 for the paper's shapes), one window per
unit: [N, H, W, hd] with N = batch x units. A generic attention kernel spends one 64- or 128-row tile per
(window, head) and wastes almost all of it. Here one program packs floor(BLOCK / W) whole windows of one head into
a BLOCK-row tile, computes the BLOCK x BLOCK score tile with one `tl.dot` and masks it block-diagonally (same
window, causal). Windows never straddle tiles, so every softmax row is complete inside its tile: the backward pass
recomputes the probabilities exactly and needs no saved log-sum-exp and no cross-program reduction. GQA: the
backward program of a key/value head loops over the query heads of its group and accumulates dk, dv in registers.
"""

from __future__ import annotations

import math

import torch

from ._utils import check_attention_shapes, check_runnable, configs, dot_precision, empty, next_power_of_2, tl, triton
from .latent_attention import latent_attention


def chunk_local_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Reference: causal attention inside each window, through PyTorch SDPA.

    q: [N, H, W, hd]; k, v: [N, Hkv, W, hd] (H a multiple of Hkv) -> [N, H, W, hd].
    """
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=q.shape[2] > 1, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def _prune(configs_, named_args, **kwargs):
    """Keep the tiles that hold at least one whole window."""
    return [c for c in configs_ if c.kwargs["BLOCK"] >= kwargs["W"]]


# Hopper candidates, checked free of register spills for hd 52 -> 64 (the backward keeps more tiles live).
_FWD_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK": 64}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK": 128}, num_warps=8, num_stages=1),
    ],
    interpret=[triton.Config({"BLOCK": 16}, num_warps=1, num_stages=1)],
)
_BWD_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK": 32}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK": 64}, num_warps=8, num_stages=1),
    ],
    interpret=[triton.Config({"BLOCK": 16}, num_warps=1, num_stages=1)],
)
_KEY = ["W", "HEAD_DIM", "GROUP"]


@triton.jit
def _rows(base, head, window, pos, d, s_n, s_h, s_s, s_d):
    """Pointers [BLOCK, HEAD_PAD] to the rows (window, head, pos) of an [N, H, W, hd] tensor of strides s_*."""
    return base + head * s_h + window[:, None] * s_n + pos[:, None] * s_s + d[None, :] * s_d


@triton.jit
def _tile_rows(tile, N, W: tl.constexpr, BLOCK: tl.constexpr):
    """Rows of tile `tile`: window index, position in the window, window slot in the tile and validity, [BLOCK]."""
    per_tile = BLOCK // W
    rows = tl.arange(0, BLOCK)
    local = rows // W
    window = tile.to(tl.int64) * per_tile + local
    return window, rows % W, local, (local < per_tile) & (window < N)


@triton.autotune(configs=configs(**_FWD_CONFIGS), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _chunk_local_fwd(
    Q, K, V, Out,
    sq_n, sq_h, sq_s, sq_d,
    sk_n, sk_h, sk_s, sk_d,
    sv_n, sv_h, sv_s, sv_d,
    so_n, so_h, so_s, so_d,
    N, H, qk_scale,
    W: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK: tl.constexpr,
):
    # Heads vary fastest along the grid, so the programs running together read the same rows of [N, W, H, hd].
    tile = tl.program_id(0) // H
    head = tl.program_id(0) % H
    kv_head = head // GROUP
    window, pos, local, valid = _tile_rows(tile, N, W, BLOCK)
    d = tl.arange(0, HEAD_PAD)
    io_mask = valid[:, None] & (d[None, :] < HEAD_DIM)

    q = tl.load(_rows(Q, head, window, pos, d, sq_n, sq_h, sq_s, sq_d), mask=io_mask, other=0.0)
    k = tl.load(_rows(K, kv_head, window, pos, d, sk_n, sk_h, sk_s, sk_d), mask=io_mask, other=0.0)
    v = tl.load(_rows(V, kv_head, window, pos, d, sv_n, sv_h, sv_s, sv_d), mask=io_mask, other=0.0)

    # Block-diagonal causal mask; the diagonal is always kept, so no row is empty (padding rows included).
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 units
    allowed = (local[:, None] == local[None, :]) & (pos[None, :] <= pos[:, None])
    s = tl.where(allowed, s, float("-inf"))
    p = tl.exp2(s - tl.max(s, 1)[:, None])
    p = p / tl.sum(p, 1)[:, None]
    o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    out = _rows(Out, head, window, pos, d, so_n, so_h, so_s, so_d)
    tl.store(out, o.to(Out.dtype.element_ty), mask=io_mask)


@triton.autotune(configs=configs(**_BWD_CONFIGS), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _chunk_local_bwd(
    Q, K, V, DO, DQ, DK, DV,
    sq_n, sq_h, sq_s, sq_d,
    sk_n, sk_h, sk_s, sk_d,
    sv_n, sv_h, sv_s, sv_d,
    sdo_n, sdo_h, sdo_s, sdo_d,
    N, H, qk_scale, sm_scale,
    W: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK: tl.constexpr,
):
    """dq, dk, dv of one tile for one key/value head and the GROUP query heads that share it. The gradients are
    written contiguously: DQ [N, H, W, hd], DK and DV [N, Hkv, W, hd]."""
    kv_heads = H // GROUP
    tile = tl.program_id(0) // kv_heads
    kv_head = tl.program_id(0) % kv_heads
    window, pos, local, valid = _tile_rows(tile, N, W, BLOCK)
    d = tl.arange(0, HEAD_PAD)
    io_mask = valid[:, None] & (d[None, :] < HEAD_DIM)
    allowed = (local[:, None] == local[None, :]) & (pos[None, :] <= pos[:, None])

    k = tl.load(_rows(K, kv_head, window, pos, d, sk_n, sk_h, sk_s, sk_d), mask=io_mask, other=0.0)
    v = tl.load(_rows(V, kv_head, window, pos, d, sv_n, sv_h, sv_s, sv_d), mask=io_mask, other=0.0)
    dk = tl.zeros([BLOCK, HEAD_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK, HEAD_PAD], dtype=tl.float32)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        q = tl.load(_rows(Q, head, window, pos, d, sq_n, sq_h, sq_s, sq_d), mask=io_mask, other=0.0)
        do = tl.load(_rows(DO, head, window, pos, d, sdo_n, sdo_h, sdo_s, sdo_d), mask=io_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(allowed, s, float("-inf"))
        p = tl.exp2(s - tl.max(s, 1)[:, None])
        p = p / tl.sum(p, 1)[:, None]
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - tl.sum(p * dp, 1)[:, None])  # rows are complete: sum_j p * dp = rowsum(dO * O)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * sm_scale
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        row_q = (window * H + head) * W + pos
        tl.store(DQ + row_q[:, None] * HEAD_DIM + d[None, :], dq.to(DQ.dtype.element_ty), mask=io_mask)
    row_kv = (window * kv_heads + kv_head) * W + pos
    tl.store(DK + row_kv[:, None] * HEAD_DIM + d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + row_kv[:, None] * HEAD_DIM + d[None, :], dv.to(DV.dtype.element_ty), mask=io_mask)


def _largest_tile() -> int:
    """The longest window that both kernels have a tile for."""
    return min(max(c.kwargs["BLOCK"] for c in configs(**cfgs)) for cfgs in (_FWD_CONFIGS, _BWD_CONFIGS))


def _grid(n: int, heads: int, window: int):
    """One program per (tile of whole windows, head), flattened: the first grid axis has no 65535 limit."""
    return lambda meta: (triton.cdiv(n, meta["BLOCK"] // window) * heads,)


class ChunkLocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        n, heads, window, head_dim = q.shape
        kv_heads = k.shape[1]
        o = empty(n, heads, window, head_dim, dtype=q.dtype, device=q.device)
        meta = dict(W=window, HEAD_DIM=head_dim, HEAD_PAD=next_power_of_2(head_dim), GROUP=heads // kv_heads,
                    PRECISION=dot_precision(q.dtype))
        _chunk_local_fwd[_grid(n, heads, window)](
            q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(), n, heads, scale * math.log2(math.e), **meta
        )
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.meta = scale, meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        n, heads, window, head_dim = q.shape
        kv_heads = k.shape[1]
        dq = empty(n, heads, window, head_dim, dtype=q.dtype, device=q.device)
        dk = empty(n, kv_heads, window, head_dim, dtype=k.dtype, device=k.device)
        dv = empty(n, kv_heads, window, head_dim, dtype=v.dtype, device=v.device)
        _chunk_local_bwd[_grid(n, kv_heads, window)](
            q, k, v, do, dq, dk, dv, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            n, heads, ctx.scale * math.log2(math.e), ctx.scale, **ctx.meta,
        )
        return dq, dk, dv, None


def chunk_local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Causal attention inside each of N independent windows (Triton, differentiable).

    q: [N, H, W, hd]; k, v: [N, Hkv, W, hd] with H a multiple of Hkv (GQA); any strides; float32, float16 or
    bfloat16 -> [N, H, W, hd]. `scale` defaults to 1 / sqrt(hd). Windows longer than the largest tile run
    through `latent_attention` (a causal sequence per window).
    """
    check_runnable(q, k, v)
    check_attention_shapes(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0:
        return q.new_empty(q.shape)
    if q.shape[2] > _largest_tile():
        return latent_attention(q, k, v, window=None, scale=scale)
    return ChunkLocalAttention.apply(q, k, v, scale)
