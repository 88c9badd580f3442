"""Latent-stream attention: causal attention over a level's unit sequence, optionally inside a sliding window.

The context encoders run a causal Transformer over M units per row; `encoder_windows` lets unit i see only units
i - window + 1 .. i. This is FlashAttention-2 (online softmax in the forward; key-block-major dk/dv and
query-block-major dq programs in the backward, no atomics) that visits only the key blocks a query block can see,
so a window costs O(M x window) instead of the dense masked O(M^2) that SDPA needs. GQA: a dk/dv program loops
over the query heads of its group. Head dims that are not powers of two are padded with masks.
"""

from __future__ import annotations

import math

import torch

from ._utils import check_attention_shapes, check_runnable, configs, dot_precision, empty, next_power_of_2, tl, triton


def latent_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """Reference: causal attention, restricted to the last `window` keys (the query's own included) when given.

    q: [N, H, S, hd]; k, v: [N, Hkv, S, hd] -> [N, H, S, hd]. Full causal goes through SDPA's fused kernels; a
    window through SDPA with a dense boolean mask.
    """
    gqa = q.shape[1] != k.shape[1]
    seq = q.shape[2]
    if window is None or window >= seq:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, scale=scale, enable_gqa=gqa)
    pos = torch.arange(seq, device=q.device)
    distance = pos[:, None] - pos[None, :]
    mask = (distance >= 0) & (distance < window)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


_FWD_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    ],
    interpret=[triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)],
)
_DKDV_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    ],
    interpret=[triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)],
)
_DQ_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    ],
    interpret=[triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)],
)
_KEY = ["HEAD_DIM", "GROUP", "WINDOWED"]  # not S: one tuning serves every length (and generation's prefills)


@triton.jit
def _allowed(offs_m, offs_n, window, WINDOWED: tl.constexpr):
    """[BLOCK_M, BLOCK_N] keys each query may see: causal, and inside the window when there is one."""
    allowed = offs_n[None, :] <= offs_m[:, None]
    if WINDOWED:
        allowed = allowed & (offs_n[None, :] > offs_m[:, None] - window)
    return allowed


@triton.autotune(configs=configs(**_FWD_CONFIGS), key=_KEY)
@triton.jit
def _latent_fwd(
    Q, K, V, Out, LSE,
    sq_n, sq_h, sq_s, sq_d,
    sk_n, sk_h, sk_s, sk_d,
    sv_n, sv_h, sv_s, sv_d,
    so_n, so_h, so_s, so_d,
    S, H, window, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr, WINDOWED: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Out [N, H, S, hd] and LSE [N, H, S] (log2 of the softmax denominator, in units of qk_scale * score)."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = (bh // H).to(tl.int64)
    head = bh % H
    kv_head = head // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d[None, :] < HEAD_DIM
    q = tl.load(Q + n * sq_n + head * sq_h + offs_m[:, None] * sq_s + d[None, :] * sq_d,
                mask=(offs_m[:, None] < S) & d_mask, other=0.0)
    k_base = K + n * sk_n + kv_head * sk_h
    v_base = V + n * sv_n + kv_head * sv_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    lo = 0
    if WINDOWED:
        lo = tl.maximum(pid_m * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_mask
        k = tl.load(k_base + offs_n[:, None] * sk_s + d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_s + d[None, :] * sv_d, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(_allowed(offs_m, offs_n, window, WINDOWED), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past the end (never stored) see no key
    row_mask = offs_m < S
    tl.store(Out + n * so_n + head * so_h + offs_m[:, None] * so_s + d[None, :] * so_d,
             (acc / l_safe[:, None]).to(Out.dtype.element_ty), mask=row_mask[:, None] & d_mask)
    tl.store(LSE + bh.to(tl.int64) * S + offs_m, m_i + tl.log2(l_safe), mask=row_mask)


@triton.jit
def _latent_bwd_delta(
    Out, DO, DELTA,
    so_n, so_h, so_s, so_d,
    sdo_n, sdo_h, sdo_s, sdo_d,
    S, H,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """DELTA [N, H, S] = rowsum(dO * O), in float32."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = (bh // H).to(tl.int64)
    head = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_PAD)
    mask = (offs_m[:, None] < S) & (d[None, :] < HEAD_DIM)
    o = tl.load(Out + n * so_n + head * so_h + offs_m[:, None] * so_s + d[None, :] * so_d, mask=mask, other=0.0)
    do = tl.load(DO + n * sdo_n + head * sdo_h + offs_m[:, None] * sdo_s + d[None, :] * sdo_d, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * S + offs_m, delta, mask=offs_m < S)


@triton.autotune(configs=configs(**_DKDV_CONFIGS), key=_KEY)
@triton.jit
def _latent_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_n, sq_h, sq_s, sq_d,
    sk_n, sk_h, sk_s, sk_d,
    sv_n, sv_h, sv_s, sv_d,
    sdo_n, sdo_h, sdo_s, sdo_d,
    S, H, window, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr, WINDOWED: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv of one key block of one key/value head, summed over the GROUP query heads that read it. DK and DV
    are contiguous [N, Hkv, S, hd]."""
    bkv = tl.program_id(0)
    pid_n = tl.program_id(1)
    kv_heads = H // GROUP
    n = (bkv // kv_heads).to(tl.int64)
    kv_head = bkv % kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d[None, :] < HEAD_DIM
    kv_mask = (offs_n[:, None] < S) & d_mask
    k = tl.load(K + n * sk_n + kv_head * sk_h + offs_n[:, None] * sk_s + d[None, :] * sk_d, mask=kv_mask, other=0.0)
    v = tl.load(V + n * sv_n + kv_head * sv_h + offs_n[:, None] * sv_s + d[None, :] * sv_d, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_PAD], dtype=tl.float32)
    lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M  # the first query that can see this block is its first key
    hi = S
    if WINDOWED:
        hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N - 1 + window, S)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        bh = n * H + head
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_mask = offs_m < S
            q = tl.load(Q + n * sq_n + head * sq_h + offs_m[:, None] * sq_s + d[None, :] * sq_d,
                        mask=m_mask[:, None] & d_mask, other=0.0)
            do = tl.load(DO + n * sdo_n + head * sdo_h + offs_m[:, None] * sdo_s + d[None, :] * sdo_d,
                         mask=m_mask[:, None] & d_mask, other=0.0)
            lse = tl.load(LSE + bh * S + offs_m, mask=m_mask, other=0.0)
            delta = tl.load(DELTA + bh * S + offs_m, mask=m_mask, other=0.0)
            # Transposed scores [BLOCK_N, BLOCK_M], so that dk and dv accumulate without transposing back.
            allowed = tl.trans(_allowed(offs_m, offs_n, window, WINDOWED)) & m_mask[None, :]
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
            p_t = tl.where(allowed, tl.exp2(s_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    out = (bkv.to(tl.int64) * S + offs_n)[:, None] * HEAD_DIM + d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=configs(**_DQ_CONFIGS), key=_KEY)
@triton.jit
def _latent_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_n, sq_h, sq_s, sq_d,
    sk_n, sk_h, sk_s, sk_d,
    sv_n, sv_h, sv_s, sv_d,
    sdo_n, sdo_h, sdo_s, sdo_d,
    S, H, window, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr, WINDOWED: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq of one query block of one head. DQ is contiguous [N, H, S, hd]."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = (bh // H).to(tl.int64)
    head = bh % H
    kv_head = head // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < S
    d = tl.arange(0, HEAD_PAD)
    d_mask = d[None, :] < HEAD_DIM
    io_mask = m_mask[:, None] & d_mask
    q = tl.load(Q + n * sq_n + head * sq_h + offs_m[:, None] * sq_s + d[None, :] * sq_d, mask=io_mask, other=0.0)
    do = tl.load(DO + n * sdo_n + head * sdo_h + offs_m[:, None] * sdo_s + d[None, :] * sdo_d, mask=io_mask, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * S + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * S + offs_m, mask=m_mask, other=0.0)
    k_base = K + n * sk_n + kv_head * sk_h
    v_base = V + n * sv_n + kv_head * sv_h
    dq = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    lo = 0
    if WINDOWED:
        lo = tl.maximum(pid_m * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_mask
        k = tl.load(k_base + offs_n[:, None] * sk_s + d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_s + d[None, :] * sv_d, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(_allowed(offs_m, offs_n, window, WINDOWED), tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    out = (bh.to(tl.int64) * S + offs_m)[:, None] * HEAD_DIM + d[None, :]
    tl.store(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


def _meta(q: torch.Tensor, k: torch.Tensor, window: int | None) -> dict:
    seq = q.shape[2]
    return dict(
        HEAD_DIM=q.shape[3], HEAD_PAD=next_power_of_2(q.shape[3]), GROUP=q.shape[1] // k.shape[1],
        WINDOWED=window is not None and window < seq, PRECISION=dot_precision(q.dtype),
    )


class LatentAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, scale):
        n, heads, seq, head_dim = q.shape
        meta = _meta(q, k, window)
        o = empty(n, heads, seq, head_dim, dtype=q.dtype, device=q.device)
        lse = empty(n, heads, seq, dtype=torch.float32, device=q.device)
        grid = lambda m: (n * heads, triton.cdiv(seq, m["BLOCK_M"]))  # heads fastest: they share rows of K, V
        _latent_fwd[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                          seq, heads, window or seq, scale * math.log2(math.e), **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.window, ctx.scale, ctx.meta = window, scale, meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        n, heads, seq, head_dim = q.shape
        kv_heads = k.shape[1]
        meta, window = ctx.meta, ctx.window or seq
        delta = empty(n, heads, seq, dtype=torch.float32, device=q.device)
        _latent_bwd_delta[(n * heads, triton.cdiv(seq, 64))](
            o, do, delta, *o.stride(), *do.stride(), seq, heads,
            HEAD_DIM=head_dim, HEAD_PAD=meta["HEAD_PAD"], BLOCK_M=64,
        )
        dq = empty(n, heads, seq, head_dim, dtype=q.dtype, device=q.device)
        dk = empty(n, kv_heads, seq, head_dim, dtype=k.dtype, device=k.device)
        dv = empty(n, kv_heads, seq, head_dim, dtype=v.dtype, device=v.device)
        strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
        scales = (seq, heads, window, ctx.scale * math.log2(math.e), ctx.scale)
        _latent_bwd_dkdv[lambda m: (n * kv_heads, triton.cdiv(seq, m["BLOCK_N"]))](
            q, k, v, do, lse, delta, dk, dv, *strides, *scales, **meta
        )
        _latent_bwd_dq[lambda m: (n * heads, triton.cdiv(seq, m["BLOCK_M"]))](
            q, k, v, do, lse, delta, dq, *strides, *scales, **meta
        )
        return dq, dk, dv, None, None


def latent_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """Causal attention over a sequence, optionally over a sliding window of `window` keys (Triton, differentiable).

    q: [N, H, S, hd]; k, v: [N, Hkv, S, hd] with H a multiple of Hkv (GQA); any strides; float32, float16 or
    bfloat16 -> [N, H, S, hd]. Query i sees keys max(0, i - window + 1) .. i (all of 0 .. i when window is None).
    `scale` defaults to 1 / sqrt(hd).
    """
    check_runnable(q, k, v)
    check_attention_shapes(q, k, v)
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0 or q.shape[2] == 0:
        return q.new_empty(q.shape)
    return LatentAttention.apply(q, k, v, window, scale)
