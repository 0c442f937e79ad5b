"""Triton functions the kernels of a pattern with `select(...)` call.

A query tile lies inside one query block (its tiles divide qblock), so the forward and dq
kernels load that block's selection once (`select_row`: k entries, a repeated block and empty
slots read -1) and ask per key tile which keys are in a listed block (`select_keys`).  The
dk/dv kernel asks per query tile; residue-class passes, whose tiles mix query blocks, ask per
pair (`select_hits`).  `fwd_tile_sel` is the forward's tile step with the block mass: a
(rows x slots) accumulator rescaled with the online softmax like the output, so the mass comes
from the same pass.
"""
from __future__ import annotations

from .jit import tl, triton
from .tile_bodies import softmax_step, tile_rows


@triton.jit
def select_row(sel_head, qb, K: tl.constexpr, KPAD: tl.constexpr):
    """The key blocks that query block qb lists ([KPAD]), each once: a block repeated in a later
    slot, an empty slot (-1) and the padding read -1, which no key block matches."""
    slot = tl.arange(0, KPAD)
    row = tl.load(sel_head + qb.to(tl.int64) * K + slot, mask=slot < K, other=-1)
    repeat = tl.sum(((row[:, None] == row[None, :]) & (slot[None, :] < slot[:, None])).to(tl.int32), 1)
    return tl.where(repeat > 0, -1, row)


@triton.jit
def select_keys(row, j, BLK: tl.constexpr):
    """[len(j)] bool: the block of key position j is listed in `row` (from select_row)."""
    return tl.sum(((j // BLK)[:, None] == row[None, :]).to(tl.int32), 1) > 0


@triton.jit
def select_hits(sel_head, i, j, NQB, QBLK: tl.constexpr, BLK: tl.constexpr, K: tl.constexpr):
    """Per pair (i and j broadcast): does i's query block list j's key block?  For tiles whose
    rows lie in several query blocks (residue classes): K loads per row."""
    qb = i // QBLK
    kb = j // BLK
    hit = (qb < 0) & (kb < 0)
    for s in range(K):
        listed = tl.load(sel_head + qb.to(tl.int64) * K + s, mask=qb < NQB, other=-1)
        hit = hit | (listed == kb)
    return hit


@triton.jit
def fwd_tile_sel(acc, m_i, l_i, macc, q, kd, vd, z, hk, b0, r, k_base, v_base, sk_n, sk_d, sv_n, sv_d, j, keep, n,
                  qk_scale, offs_d, row, BLK: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
                  PREC: tl.constexpr, WIDEN: tl.constexpr, TMA: tl.constexpr, MASS: tl.constexpr):
    """fwd_tile (runtime.tile_bodies) for a pattern with select(...); MASS: also add each listed
    block's share of this tile's probabilities to macc [BM, KPAD] (rescaled like acc)."""
    kv_ok = j < n
    k = tile_rows(kd, z, hk, b0, r, k_base, j, kv_ok, sk_n, sk_d, offs_d, D, WIDEN, TMA)
    v = tile_rows(vd, z, hk, b0, r, v_base, j, kv_ok, sv_n, sv_d, offs_d, D, WIDEN, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASKED:
        s = tl.where(keep, s, float("-inf"))
    acc, m_new, l_i, alpha, p = softmax_step(acc, m_i, l_i, s, v, PREC)
    if MASS:
        hit = ((j // BLK)[:, None] == row[None, :]) & kv_ok[:, None]  # [BN, KPAD]: key j in slot s
        macc = macc * alpha[:, None] + tl.dot(p, hit.to(tl.float32), input_precision=PREC)
    return acc, m_new, l_i, macc
