"""Split walks of global rows: chunks computed by separate programs, then merged.

A global row attends every key, so its query tile would walk all n / BN key tiles while a
windowed tile walks a handful, and one program would run ~n / BN times longer than the rest.
The kernels cut such walks into chunks of CH tiles: the normal launch does chunk 0, a PARTIAL
launch the others, into float32 scratch rows; one merge launch then combines the chunks'
softmax states by log-sum-exp (forward), or adds their partial gradients (backward), in a
fixed order, so results stay deterministic.
"""
from __future__ import annotations

from .jit import tl, triton


def cdiv(a: int, b: int) -> int:  # host arithmetic: triton.cdiv goes through the JIT's call wrapper
    return -(-a // b)


def block_d(D: int) -> int:
    """The head dim padded for the kernels: a power of two >= 16 (extra columns read as zero)."""
    return max(16, 1 << max(int(D) - 1, 0).bit_length())


NO_SPLIT = ((0, 0, 0, 0), 0, 0, 0, ())


def split(heavy, n: int, tile: int, other_tile: int, chunk: int) -> tuple:
    """How a pass's heavy tiles are split: (bounds, chunk, parts, rows, segments).

    bounds (s0, s1, s2, s3): at most two tile ranges, e.g. global tokens at both ends (kernel
    arguments); chunk: tiles per chunk of a walk; parts: chunks beyond the first (0: no split);
    rows: scratch rows per chunk (every heavy tile's rows, by rank); segments: (first row, rows,
    offset in a chunk's scratch) per range.  No split when a walk has fewer than 3 chunks;
    chunks grow when many rows are heavy, so the float32 scratch stays within 4 n rows per head."""
    if heavy is None:
        return NO_SPLIT
    ranges = []
    for a, b in sorted(heavy(n)):
        a, b = max(a, 0), min(b, n)
        if b <= a:
            continue
        t0, t1 = a // tile, cdiv(b, tile)
        if ranges and t0 <= ranges[-1][1]:  # touching or overlapping tile ranges merge
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], t1))
        else:
            ranges.append((t0, t1))
    if not ranges:
        return NO_SPLIT
    if len(ranges) > 2:  # more than two groups: one bounding range
        ranges = [(ranges[0][0], max(t1 for _, t1 in ranges))]
    (s0, s1), (s2, s3) = (ranges + [(0, 0)])[:2]
    walk = cdiv(n, other_tile)
    heavy_rows = (s1 - s0 + s3 - s2) * tile
    max_parts = min(SPLIT_MAX_PARTS, 4 * n // heavy_rows)  # scratch <= 4 n rows per head
    ch = max(chunk, cdiv(walk, max_parts + 1))
    parts = cdiv(walk, ch) - 1
    if parts < 2:
        return NO_SPLIT
    segments = ((s0 * tile, min(n, s1 * tile) - s0 * tile, 0),) + \
        (((s2 * tile, min(n, s3 * tile) - s2 * tile, (s1 - s0) * tile),) if s3 > s2 else ())
    return (s0, s1, s2, s3), ch, parts, heavy_rows, segments


SPLIT_MAX_PARTS = 256  # chunks per walk at most (scratch memory at very long n)


def merge_rows(launch, o, lse, po, plse, r0: int, count: int, parts: int, h0: int, h1: int, off: int,
               per_chunk: int) -> None:
    """Combine chunk-0 results in (o, lse) rows r0 .. r0 + count with the other chunks' (out, lse),
    found at [off, off + count) of each chunk's `per_chunk` scratch rows: one kernel launch (a
    chain of torch ops here cost more host time than a short pattern's whole forward)."""
    B, H = o.shape[0], o.shape[1]
    BD = block_d(o.shape[3])
    launch(merge_kernel, (cdiv(count, MERGE_ROWS), B * (h1 - h0 + 1)))(
        o, lse, po, plse, *o.stride(), *po.stride(), o.shape[2], plse.shape[2], H, h1 - h0 + 1, h0, r0, count,
        off, per_chunk, parts, BR=MERGE_ROWS, CB=merge_chunks(BD), BD=BD, D=o.shape[3])


# Merges and adds read their chunks CB at a time (one [CB, BR, BD] load, reduced over CB): a loop
# over single chunks waits out one memory latency per chunk, and with ~60 chunks and few programs
# that was 75 us of Longformer's 1.18 ms forward at n = 65536 (Nsight Compute: long-scoreboard
# stalls, 28 cycles per instruction).  4 rows per program: 4x the programs, CB x BR x BD float32
# at 64 registers per thread.
MERGE_ROWS = 4


def merge_chunks(BD: int) -> int:
    return 16 if BD <= 128 else 8


@triton.jit
def merge_kernel(O, LSE, PO, PLSE, so0, so1, so2, so3, sp0, sp1, sp2, sp3, n, NP, H, HC, H0, R0, COUNT, OFF,
                  PER, PARTS, BR: tl.constexpr, CB: tl.constexpr, BD: tl.constexpr, D: tl.constexpr):
    """out = sum_c exp(lse_c - lse) out_c, lse = logsumexp_c lse_c over chunk 0 (O, LSE) and the
    PARTS scratch chunks, for BR rows of one head; CB chunks per step, reduced in a fixed order
    (deterministic)."""
    zh = tl.program_id(1)
    z = (zh // HC).to(tl.int64)
    h = (H0 + zh % HC).to(tl.int64)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ok = rows < COUNT
    offs_d = tl.arange(0, BD)
    io = ok[:, None] & (offs_d[None, :] < D)
    cs = tl.arange(0, CB)
    r = (R0 + rows).to(tl.int64)
    lse_row = LSE + (z * H + h) * n + r
    plse_row = PLSE + (z * H + h) * NP + OFF + rows
    o_ptrs = O + z * so0 + h * so1 + r[:, None] * so2 + offs_d[None, :] * so3
    p_ptrs = PO + z * sp0 + h * sp1 + (OFF + rows).to(tl.int64)[:, None] * sp2 + offs_d[None, :] * sp3
    lse0 = tl.load(lse_row, mask=ok, other=float("-inf"))
    m = lse0
    for c0 in range(0, PARTS, CB):  # the largest lse over the chunks, [CB, BR] at a time
        c = c0 + cs
        pl = tl.load(plse_row[None, :] + c[:, None] * PER, mask=(c < PARTS)[:, None] & ok[None, :],
                     other=float("-inf"))
        m = tl.maximum(m, tl.max(pl, axis=0))
    m_use = tl.where(m == float("-inf"), 0.0, m)  # rows that saw no key anywhere stay at zero
    w = tl.exp(lse0 - m_use)
    total = w
    acc = w[:, None] * tl.load(o_ptrs, mask=io, other=0.0).to(tl.float32)
    for c0 in range(0, PARTS, CB):
        c = c0 + cs
        cm = c < PARTS
        wc = tl.exp(tl.load(plse_row[None, :] + c[:, None] * PER, mask=cm[:, None] & ok[None, :],
                            other=float("-inf")) - m_use[None, :])  # [CB, BR]; 0 past the last chunk
        total += tl.sum(wc, axis=0)
        part = tl.load(p_ptrs[None, :, :] + (c.to(tl.int64) * PER * sp2)[:, None, None],
                       mask=cm[:, None, None] & io[None, :, :], other=0.0)  # [CB, BR, BD]
        acc += tl.sum(wc[:, :, None] * part, axis=0)
    safe = tl.where(total == 0.0, 1.0, total)
    tl.store(o_ptrs, (acc / safe[:, None]).to(O.dtype.element_ty), mask=io)
    tl.store(lse_row, tl.where(total == 0.0, float("-inf"), m_use + tl.log(safe)), mask=ok)


def add_rows(launch, g, parts_buf, r0: int, count: int, parts: int, off: int, per_chunk: int) -> None:
    """g rows r0 .. r0 + count += the chunks' partial sums, in a fixed order (deterministic); one
    kernel launch.  g and parts_buf are (B, heads, rows, D) views."""
    B, HC = g.shape[0], g.shape[1]
    BD = block_d(g.shape[3])
    launch(add_kernel, (cdiv(count, MERGE_ROWS), B * HC))(
        g, parts_buf, *g.stride(), *parts_buf.stride(), HC, r0, count, off, per_chunk, parts,
        BR=MERGE_ROWS, CB=merge_chunks(BD), BD=BD, D=g.shape[3])


@triton.jit
def add_kernel(G, P, sg0, sg1, sg2, sg3, sp0, sp1, sp2, sp3, HC, R0, COUNT, OFF, PER, PARTS,
                BR: tl.constexpr, CB: tl.constexpr, BD: tl.constexpr, D: tl.constexpr):
    """g += the PARTS chunks' partial sums, CB chunks per step (see merge_kernel)."""
    zh = tl.program_id(1)
    z = (zh // HC).to(tl.int64)
    h = (zh % HC).to(tl.int64)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ok = rows < COUNT
    offs_d = tl.arange(0, BD)
    io = ok[:, None] & (offs_d[None, :] < D)
    cs = tl.arange(0, CB)
    g_ptrs = G + z * sg0 + h * sg1 + (R0 + rows).to(tl.int64)[:, None] * sg2 + offs_d[None, :] * sg3
    p_ptrs = P + z * sp0 + h * sp1 + (OFF + rows).to(tl.int64)[:, None] * sp2 + offs_d[None, :] * sp3
    acc = tl.load(g_ptrs, mask=io, other=0.0).to(tl.float32)
    for c0 in range(0, PARTS, CB):
        c = c0 + cs
        part = tl.load(p_ptrs[None, :, :] + (c.to(tl.int64) * PER * sp2)[:, None, None],
                       mask=(c < PARTS)[:, None, None] & io[None, :, :], other=0.0)
        acc += tl.sum(part, axis=0)
    tl.store(g_ptrs, acc.to(G.dtype.element_ty), mask=io)
