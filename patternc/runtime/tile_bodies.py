"""The work of one tile, shared by every pattern's kernels.

A generated kernel decides *which* tiles to visit and whether a tile is full; these functions
do the work for one tile, like the inner loop of Triton's fused-attention tutorial.  Scores
are kept in log2 units (qk_scale = softmax scale * log2(e)).
"""
from __future__ import annotations

from .jit import tl, triton


@triton.jit
def load_rows(base, pos, ok, stride_row, stride_d, offs_d, D: tl.constexpr, WIDEN: tl.constexpr):
    """Rows `pos` of one (batch, head) slice; 64-bit offsets, zero outside.

    WIDEN is set only under the CPU interpreter with bf16 inputs: Triton 3.6's interpreter
    multiplies bf16 tiles as raw integers, so they are widened (exactly) to fp32 first."""
    ptrs = base + pos.to(tl.int64)[:, None] * stride_row + offs_d[None, :] * stride_d
    x = tl.load(ptrs, mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if WIDEN:
        x = x.to(tl.float32)
    return x


@triton.jit
def tile_rows(desc, z, h, row0, r, base, pos, ok, stride_row, stride_d, offs_d, D: tl.constexpr,
               WIDEN: tl.constexpr, TMA: tl.constexpr):
    """Rows `pos` of head (z, h).  TMA (set by the host when the pass's positions are contiguous,
    pos = row0 + 0..R-1, and the tensor's layout is 16-byte aligned): one bulk copy by the
    tensor-memory accelerator, rows past n and columns past D read as zeros; it measured 7-10%
    faster than pointer loads on an H200 (docs/decisions.md: tma-loads).  TMA == 2: the positions are
    residue class r of a modulus m that divides n, pos = r + m * (row0 + 0..R-1), and the
    descriptor views the tensor as (B, H, n / m, m, D): the class's rows are again one box.
    Else pointer loads."""
    if TMA:
        if TMA == 2:
            x = desc.load([z.to(tl.int32), h.to(tl.int32), row0.to(tl.int32), r.to(tl.int32), 0])
        else:
            x = desc.load([z.to(tl.int32), h.to(tl.int32), row0.to(tl.int32), 0])
        x = x.reshape(pos.shape[0], offs_d.shape[0])
        if WIDEN:
            x = x.to(tl.float32)
    else:
        x = load_rows(base, pos, ok, stride_row, stride_d, offs_d, D, WIDEN)
    return x


@triton.jit
def softmax_step(acc, m_i, l_i, s, v, PREC: tl.constexpr):
    """The online-softmax update of rows (running max m_i, sum l_i, output acc) with one tile of
    log2-unit scores s and its values v; also the rescale factor and the tile's probabilities,
    for callers that keep more running sums.  Shared by the forward, selected and decode tiles."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet stays at zero
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i, alpha, p


@triton.jit
def fwd_tile(acc, m_i, l_i, q, kd, vd, z, hk, b0, r, k_base, v_base, sk_n, sk_d, sv_n, sv_d, j, keep, n, qk_scale,
              offs_d, D: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr,
              TMA: tl.constexpr):
    """Online-softmax update of one query tile with one key tile (keys at positions j, from b0)."""
    kv_ok = j < n
    k = tile_rows(kd, z, hk, b0, r, k_base, j, kv_ok, sk_n, sk_d, offs_d, D, WIDEN, TMA)
    v = tile_rows(vd, z, hk, b0, r, v_base, j, kv_ok, sv_n, sv_d, offs_d, D, WIDEN, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASKED:
        s = tl.where(keep, s, float("-inf"))
    acc, m_new, l_i, alpha, p = softmax_step(acc, m_i, l_i, s, v, PREC)
    return acc, m_new, l_i


@triton.jit
def dq_tile(dq, q, do, lse2, delta, kd, vd, z, hk, b0, r, k_base, v_base, sk_n, sk_d, sv_n, sv_d, j, keep, n,
             qk_scale, offs_d, D: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr,
             WIDEN: tl.constexpr, TMA: tl.constexpr):
    """dq += dS K for one key tile (P recomputed from the saved log-sum-exp)."""
    kv_ok = j < n
    k = tile_rows(kd, z, hk, b0, r, k_base, j, kv_ok, sk_n, sk_d, offs_d, D, WIDEN, TMA)
    v = tile_rows(vd, z, hk, b0, r, v_base, j, kv_ok, sv_n, sv_d, offs_d, D, WIDEN, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    p = tl.exp2(s - lse2[:, None])
    if MASKED:
        p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)


@triton.jit
def dkdv_tile(dk, dv, k, v, qd, dod, z, h, a0, r, q_base, do_base, sq_n, sq_d, so_n, so_d, lse_base, delta_base,
               dq_base, sdq_n, sdq_d, dqd, sm_scale, i, keep, n, qk_scale, offs_d, D: tl.constexpr,
               MASKED: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr, TMA: tl.constexpr,
               FUSED: tl.constexpr, RED_TMA: tl.constexpr):
    """dk, dv += contributions of one query tile (queries at positions i, from a0) to one key tile.

    FUSED: also dq += dS K for those queries, added atomically into a float32 buffer (several key
    tiles share a query tile).  That saves the dq kernel's recomputation of S and dP: 5 matmuls
    per tile pair instead of 7.  RED_TMA: the add is one bulk TMA reduction (Hopper; contiguous
    queries); else element atomics.  Atomic order varies, so dq's last bits vary between runs."""
    q_ok = i < n
    q = tile_rows(qd, z, h, a0, r, q_base, i, q_ok, sq_n, sq_d, offs_d, D, WIDEN, TMA)
    do = tile_rows(dod, z, h, a0, r, do_base, i, q_ok, so_n, so_d, offs_d, D, WIDEN, TMA)
    lse2 = tl.load(lse_base + i, mask=q_ok, other=float("inf"))
    delta = tl.load(delta_base + i, mask=q_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
    p_t = tl.exp2(s_t - lse2[None, :])
    if MASKED:
        p_t = tl.where(keep, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
    ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    dk += tl.dot(ds_t, q, input_precision=PREC)
    if FUSED:
        dq = tl.dot(tl.trans(ds_t), k, input_precision=PREC) * sm_scale
        if RED_TMA:
            dqd.atomic_add([z.to(tl.int32), h.to(tl.int32), a0.to(tl.int32), 0],
                           dq.reshape(1, 1, i.shape[0], offs_d.shape[0]))
        else:
            dq_ptrs = dq_base + i.to(tl.int64)[:, None] * sdq_n + offs_d[None, :] * sdq_d
            tl.atomic_add(dq_ptrs, dq, mask=q_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.jit
def bwd_prologue(O, DO, LSE, DELTA, LSE2, so0, so1, so2, so3, sdo0, sdo1, sdo2, sdo3, n, H,
                  BM: tl.constexpr, BD: tl.constexpr, D: tl.constexpr):
    """Per row: delta = sum(O * dO) and the log-sum-exp in log2 units (+inf for empty rows,
    so that exp2(s - lse2) is 0 there).  One pass over O and dO instead of several torch ops."""
    zh = tl.program_id(1)
    z = (zh // H).to(tl.int64)
    h = (zh % H).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    ok = rows < n
    offs_d = tl.arange(0, BD)
    io = ok[:, None] & (offs_d[None, :] < D)
    r64 = rows.to(tl.int64)[:, None]
    o = tl.load(O + z * so0 + h * so1 + r64 * so2 + offs_d[None, :] * so3, mask=io, other=0.0).to(tl.float32)
    do = tl.load(DO + z * sdo0 + h * sdo1 + r64 * sdo2 + offs_d[None, :] * sdo3, mask=io, other=0.0)
    base = (z * H + h) * n
    lse = tl.load(LSE + base + rows, mask=ok, other=0.0)
    tl.store(DELTA + base + rows, tl.sum(o * do.to(tl.float32), 1), mask=ok)
    tl.store(LSE2 + base + rows, tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634), mask=ok)


@triton.jit
def clip(x, lo, hi):
    """x clipped to [lo, hi]: a tile range cut to a split program's window."""
    return tl.minimum(tl.maximum(x, lo), hi)
