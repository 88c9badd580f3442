"""Decode-time attention: one new query per sequence over that sequence's slice of a KV cache.

During generation each row adds one query per step and attends over its own cached keys, whose valid range
differs per row (left-padded rows hold fewer units, sliding windows and ring buffers start later). The kernel
reads the cache in place: `rows` maps each query to its cache row, so no gathered copy of the cache is made, and
[start, end) bounds each row's keys, so no mask tensor is built. One program serves one key/value head and the
GQA group of query heads that read it (the cache is read once per group). When batch x kv-heads programs cannot
fill the GPU the keys are split into `num_splits` ranges reduced by a second kernel (flash-decoding). Inference
only: no backward.
"""

from __future__ import annotations

import math

import torch

from ._utils import check_runnable, configs, dot_precision, empty, multiprocessors, next_power_of_2, tl, triton


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor | int,
    end: torch.Tensor | int,
    rows: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference: gather the rows, mask keys outside [start, end), SDPA. Same arguments as `decode_attention`."""
    n, heads, head_dim = q.shape
    k = k_cache if rows is None else k_cache.index_select(0, rows)
    v = v_cache if rows is None else v_cache.index_select(0, rows)
    pos = torch.arange(k.shape[2], device=q.device)
    start = torch.as_tensor(start, device=q.device).reshape(-1, 1)
    end = torch.as_tensor(end, device=q.device).reshape(-1, 1)
    mask = ((pos[None, :] >= start) & (pos[None, :] < end))[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=mask, scale=scale, enable_gqa=heads != k.shape[1]
    )
    return out[:, :, 0]


_CONFIGS = dict(
    hopper=[
        triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3),
    ],
    interpret=[triton.Config({"BLOCK_N": 16}, num_warps=1, num_stages=1)],
)


@triton.autotune(configs=configs(**_CONFIGS), key=["HEAD_DIM", "GROUP", "SPLIT"])
@triton.jit
def _decode_fwd(
    Q, K, V, ROWS, START, END, Out, PART_O, PART_LSE,
    sq_n, sq_h, sq_d,
    sk_b, sk_h, sk_s, sk_d,
    sv_b, sv_h, sv_s, sv_d,
    H, splits, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HAS_ROWS: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Query i, key/value head kv_head, key range `split` of `splits`. Without SPLIT (one range) the normalised
    output goes to Out [n, H, hd]; with SPLIT the partial results go to PART_O [n, H, splits, hd] (each normalised
    by its own denominator) and PART_LSE [n, H, splits] (log2 of that denominator), for `_decode_combine`."""
    i = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if HAS_ROWS:
        row = tl.load(ROWS + i).to(tl.int64)
    else:
        row = i
    start = tl.load(START + i).to(tl.int32)
    end = tl.load(END + i).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(end - start, splits), BLOCK_N) * BLOCK_N
    lo = start + split * per_split
    hi = tl.minimum(lo + per_split, end)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    head = kv_head * GROUP + g
    qd_mask = (g[:, None] < GROUP) & (d[None, :] < HEAD_DIM)
    q = tl.load(Q + i * sq_n + head[:, None] * sq_h + d[None, :] * sq_d, mask=qd_mask, other=0.0)
    k_base = K + row * sk_b + kv_head * sk_h
    v_base = V + row * sv_b + kv_head * sv_h
    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < hi
        kv_mask = key_ok[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(k_base + offs_n[:, None] * sk_s + d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_s + d[None, :] * sv_d, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every visited block has a valid key
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split: its LSE is -inf and the combine ignores it
    if not SPLIT:
        out = Out + (i * H + head[:, None]) * HEAD_DIM + d[None, :]
        tl.store(out, (acc / l_safe[:, None]).to(Out.dtype.element_ty), mask=qd_mask)
    else:
        part = (i * H + head) * splits + split
        tl.store(PART_O + part[:, None] * HEAD_DIM + d[None, :], acc / l_safe[:, None], mask=qd_mask)
        tl.store(PART_LSE + part, m_i + tl.log2(l_safe), mask=g < GROUP)


@triton.jit
def _decode_combine(
    PART_O, PART_LSE, Out, splits,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """Out[i, h] = the softmax-weighted mean of the `splits` partial outputs of query i, head h."""
    ih = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_PAD)
    lse = tl.load(PART_LSE + ih * splits + s, mask=s < splits, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))
    part = tl.load(PART_O + (ih * splits + s)[:, None] * HEAD_DIM + d[None, :],
                   mask=(s[:, None] < splits) & (d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(Out + ih * HEAD_DIM + d, out.to(Out.dtype.element_ty), mask=d < HEAD_DIM)


def default_num_splits(batch: int, kv_heads: int, keys: int, device: torch.device) -> int:
    """Enough key splits to give every multiprocessor about two programs, with at least 256 keys per split."""
    programs = batch * kv_heads
    return max(1, min(triton.cdiv(2 * multiprocessors(device), programs), triton.cdiv(keys, 256), 64))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor | int,
    end: torch.Tensor | int,
    rows: torch.Tensor | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of one query per row over its cached keys (Triton, inference only).

    q: [n, H, hd]; k_cache, v_cache: [B, Hkv, K, hd] (any strides, e.g. one layer of a larger cache) with H a
    multiple of Hkv; rows: [n] cache row of each query (None: query i reads row i, n == B); start, end: ints or
    [n] integer tensors, the keys [start, end) each query sees (at least one) -> [n, H, hd] in q's dtype.
    `num_splits` (default: `default_num_splits`) splits every row's keys into that many ranges.
    """
    check_runnable(q, k_cache, v_cache)
    n, heads, head_dim = q.shape
    batch, kv_heads, keys, _ = k_cache.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim or heads % kv_heads != 0:
        raise ValueError(f"q {tuple(q.shape)} and caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} disagree")
    if rows is None and n != batch:
        raise ValueError(f"{n} queries need `rows` to index a cache of {batch} rows")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q and the caches must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if n == 0:
        return q.new_empty(q.shape)
    scale = head_dim**-0.5 if scale is None else scale
    start = _per_row(start, n, q.device)
    end = _per_row(end, n, q.device)
    splits = num_splits or default_num_splits(n, kv_heads, keys, q.device)
    group = heads // kv_heads
    o = empty(n, heads, head_dim, dtype=q.dtype, device=q.device)
    part_o = part_lse = o  # unused with one split
    if splits > 1:
        part_o = empty(n, heads, splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = empty(n, heads, splits, dtype=torch.float32, device=q.device)
    head_pad = next_power_of_2(head_dim)
    _decode_fwd[(n, kv_heads, splits)](
        q, k_cache, v_cache, rows if rows is not None else start, start, end, o, part_o, part_lse,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), heads, splits, scale * math.log2(math.e),
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, GROUP=group, GROUP_PAD=next_power_of_2(group),
        HAS_ROWS=rows is not None, SPLIT=splits > 1, PRECISION=dot_precision(q.dtype),
    )
    if splits > 1:
        _decode_combine[(n * heads,)](
            # A fixed SPLITS_PAD: one compilation serves every split count up to 64 (the count follows the cache
            # size, so a per-count constexpr would compile again inside a timed generation at each new context).
            part_o, part_lse, o, splits, HEAD_DIM=head_dim, HEAD_PAD=head_pad, SPLITS_PAD=next_power_of_2(splits, 64),
        )
    return o


def _per_row(bound: torch.Tensor | int, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(bound, int):
        return torch.full((n,), bound, dtype=torch.int32, device=device)
    if bound.shape != (n,):
        raise ValueError(f"per-row key bounds must have shape ({n},), got {tuple(bound.shape)}")
    return bound

