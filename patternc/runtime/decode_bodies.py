"""Triton functions of the decode kernels, shared by every pattern's.

A generated decode kernel decides which key tiles its rows need (the pattern's closed-form
ranges, evaluated on the device from cache_seqlens); these functions read a tile of cached
keys and values by position (through a ring of slots, a page table, or neither), fold it
into the rows' online softmax, and merge the partial results of split walks.  The pattern's
length-dependent arguments, which the kernel computes from n itself, use runtime.seq_bodies'
integer helpers, as the document-aware kernels do.
"""
from __future__ import annotations

from .jit import tl, triton
from .tile_bodies import softmax_step


@triton.jit
def cache_rows(base, page, row, s_page, s_tok, s_d, ok, offs_d, D: tl.constexpr, WIDEN: tl.constexpr):
    """Cached rows at (page, row in page): zeros where not ok.  WIDEN: see tile_bodies.load_rows."""
    ptrs = base + page * s_page + row[:, None] * s_tok + offs_d[None, :] * s_d
    x = tl.load(ptrs, mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if WIDEN:
        x = x.to(tl.float32)
    return x


@triton.jit
def cache_slots(PT, z, spt, pos, ok, FIXED, RINGW, PAGE: tl.constexpr, RING: tl.constexpr):
    """(page, row in page) of the cached positions `pos`, 64-bit: slot = position, or (RING) positions
    below FIXED in their own slot and later ones in a ring of RINGW slots; a paged cache (PAGE > 0)
    finds the slot's page in the row's page table."""
    slot = pos
    if RING:
        slot = tl.where(pos < FIXED, pos, FIXED + (pos - FIXED) % RINGW)
    if PAGE > 0:
        page = tl.load(PT + z.to(tl.int64) * spt + slot // PAGE, mask=ok, other=0).to(tl.int64)[:, None]
        row = slot % PAGE
    else:
        page = tl.zeros([1, 1], dtype=tl.int64)
        row = slot
    return page, row.to(tl.int64)


@triton.jit
def decode_tile(acc, m_i, l_i, q, k_base, v_base, PT, z, spt, sk0, sk2, sk3, sv0, sv2, sv3, j, keep, n, CAP,
                FIXED, RINGW, qk_scale, offs_d, D: tl.constexpr, PAGE: tl.constexpr, RING: tl.constexpr,
                PREC: tl.constexpr, WIDEN: tl.constexpr):
    """Online-softmax update of the rows with the cached keys at positions j (keep: allowed pairs)."""
    ok = (j >= 0) & (j < n)
    if not RING:
        ok = ok & (j < CAP)  # a plain cache holds CAP positions: never read past it
    page, row = cache_slots(PT, z, spt, j, ok, FIXED, RINGW, PAGE, RING)
    k = cache_rows(k_base, page, row, sk0, sk2, sk3, ok, offs_d, D, WIDEN)
    v = cache_rows(v_base, page, row, sv0, sv2, sv3, ok, offs_d, D, WIDEN)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    s = tl.where(keep & ok[None, :], s, float("-inf"))
    acc, m_new, l_i, alpha, p = softmax_step(acc, m_i, l_i, s, v, PREC)
    return acc, m_new, l_i


@triton.jit
def decode_combine(OP, LP, O, LSE, sp0, sp1, sp2, spp, sl0, sl1, sl2, slp, so0, so1, so2, so3, ROWS, H, T, NP,
                   BR: tl.constexpr, BD: tl.constexpr, D: tl.constexpr):
    """out = sum_p exp(lse_p - lse) out_p and lse = logsumexp_p lse_p over the NP partial results of
    BR rows (flattened (batch, head, new row)); partials with lse = -inf (splits or passes that met
    no key, or were never written) count for nothing."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ok = rows < ROWS
    r = (rows % T).to(tl.int64)
    h = ((rows // T) % H).to(tl.int64)
    b = (rows // (T * H)).to(tl.int64)
    offs_d = tl.arange(0, BD)
    io = ok[:, None] & (offs_d[None, :] < D)
    p_base = OP + b * sp0 + h * sp1 + r * sp2
    l_base = LP + b * sl0 + h * sl1 + r * sl2
    m = tl.full([BR], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BR], dtype=tl.float32)
    acc = tl.zeros([BR, BD], dtype=tl.float32)
    for part in range(0, NP):
        lse = tl.load(l_base + part * slp, mask=ok, other=float("-inf"))
        o = tl.load(p_base[:, None] + part * spp + offs_d[None, :], mask=io, other=0.0)
        o = tl.where((lse == float("-inf"))[:, None], 0.0, o)
        m_new = tl.maximum(m, lse)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_use)
        w = tl.exp(lse - m_use)
        acc = acc * alpha[:, None] + o * w[:, None]
        den = den * alpha + w
        m = m_new
    out = acc / tl.where(den == 0.0, 1.0, den)[:, None]
    lse = tl.where(den == 0.0, float("-inf"), m + tl.log(tl.where(den == 0.0, 1.0, den)))
    tl.store(O + b[:, None] * so0 + h[:, None] * so1 + r[:, None] * so2 + offs_d[None, :] * so3,
             out.to(O.dtype.element_ty), mask=io)
    tl.store(LSE + (b * H + h) * T + r, lse, mask=ok)


@triton.jit
def new_rows(n, T, cls, m, TR, hg, hk, GROUP, HPT, H0, H1, BM: tl.constexpr):
    """The tile's rows: GROUP heads x TR new rows, HPT heads from head group hg.  The new rows of
    class cls are positions n - T + cls + m*k (m = 1, cls = 0: all T of them, in token order).
    Returns each row's row of q (qrow), position i, query head h, and whether it is a real row."""
    rho = tl.arange(0, BM)
    qrow = cls + m * (rho % TR)
    i = n - T + qrow
    g = hg * HPT + rho // TR  # the head within the group
    h = hk * GROUP + g
    ok = (cls < m) & (rho < HPT * TR) & (g < GROUP) & (h >= H0) & (h <= H1) & (i >= 0)
    return qrow, i, h, ok


@triton.jit
def load_new_rows(Q, z, h, qrow, ok, sq0, sq1, sq2, sq3, offs_d, D: tl.constexpr, WIDEN: tl.constexpr):
    """The new rows' queries, (BM, BD), zeros outside."""
    ptrs = Q + z.to(tl.int64) * sq0 + h.to(tl.int64)[:, None] * sq1 + qrow.to(tl.int64)[:, None] * sq2 \
        + offs_d[None, :] * sq3
    q = tl.load(ptrs, mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if WIDEN:
        q = q.to(tl.float32)
    return q


@triton.jit
def cache_bases(K, V, z, hk, sk0, sk1, sv0, sv1, PAGE: tl.constexpr):
    """Where kv head hk's cached rows start: in batch row z of a plain cache; in every page of a paged
    one (its pages hold the batch row)."""
    k_base = K + hk.to(tl.int64) * sk1
    v_base = V + hk.to(tl.int64) * sv1
    if PAGE == 0:
        k_base += z.to(tl.int64) * sk0
        v_base += z.to(tl.int64) * sv0
    return k_base, v_base


@triton.jit
def store_new_rows(O, LSE, z, h, qrow, part, ok, acc, m_i, l_i, so0, so1, so2, so3, sop, sl0, sl1, sl2, slp,
                   offs_d, D: tl.constexpr):
    """The rows' softmax state, normalised, into partial `part` of O and LSE (natural log); rows that
    met no key give 0 and lse = -inf."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    zz = z.to(tl.int64)
    hh = h.to(tl.int64)
    rr = qrow.to(tl.int64)
    o_rows = zz * so0 + hh * so1 + rr * so2 + part * sop
    tl.store(O + o_rows[:, None] + offs_d[None, :] * so3, out.to(O.dtype.element_ty),
             mask=ok[:, None] & (offs_d[None, :] < D))
    tl.store(LSE + zz * sl0 + hh * sl1 + rr * sl2 + part * slp, lse, mask=ok)
