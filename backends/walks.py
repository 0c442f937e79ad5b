"""A simulation of the Triton kernels' walks: which tiles each program computes.

The forward kernel of a pass visits, for each query tile, the union of its terms' key tile
ranges (patternc.ranges) plus the picked blocks of random terms and the selected blocks of
`select` terms.  A selection is known only at run time: the simulation counts its most, k
blocks per query block that no static term covers (`ir.static_part` gives the static walk).  Evaluating the same
range trees on numpy arrays of every query tile reproduces that walk on the host in
milliseconds, for the analysis's kernel tile efficiency and the schedule's compile-time
rules.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from patternc import intexpr as ix
from patternc import ir
from patternc import scalar as S
from patternc.lower import narrow_columns, plan
from patternc.ranges import Args, N, count_keys_below, query_major
from patternc.semantics import HASH_QB, HASH_SEED, HASH_T, allowed, mix32


def visited_tiles(expr, n: int, bm: int, bn: int) -> int:
    """How many (query tile, key tile) pairs the forward kernel computes at length n.

    `expr` must be evaluated at n (Pattern.at).  This evaluates the very range formulas the
    kernel prints (patternc.ranges trees) on numpy arrays of all query tiles at once, so it
    reports what the kernel does in milliseconds even at n = 2**20."""
    return sum(int(walk.sum()) for walk, _ in tile_walks(expr, n, bm, bn))


def computed_pairs(expr, n: int, bm: int, bn: int) -> int:
    """(query, key) pairs the forward kernel computes at length n: its visited tiles x bm x bn,
    where a narrow-column term's own step (`narrow_columns`) counts bm x its keys."""
    return round(sum(float(walk.sum()) for walk, _ in tile_walks(expr, n, bm, bn, narrow=True)) * bm * bn)


def tile_walks(expr, n: int, bm: int, bn: int, narrow: bool = False) -> list:
    """Per pass of `plan(expr)`: (key tiles each query tile's forward program walks, that tile's
    index within its residue class), one entry per program in launch order (numpy arrays).
    With `narrow`, a narrow-column term's own step counts as its keys / bn of a tile (floats),
    where the kernel takes it instead of walking the term."""
    if isinstance(expr, ir.Heads):
        raise TypeError("tile_walks and visited_tiles work on one head's pattern (a case of heads { ... })")
    pl = plan(expr)
    arg = Args()
    out = []
    for p in pl.passes:
        ranges = [query_major(t, p.space, arg) for t in p.terms]
        env: dict = {"n": n, **arg.env(n)}
        if p.space.kind == "diag":
            m = ix.evaluate(p.space.m, n)
            r = np.arange(min(m, n), dtype=np.int64)
            lq = (n - r + m - 1) // m
            per = -(-lq // bm)
            rr = np.repeat(r, per)
            lqq = np.repeat(lq, per)
            a0 = (np.arange(int(per.sum()), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)) * bm
            env.update(r=rr, LQ=lqq, L=lqq)
        else:
            a0 = np.arange(-(-n // bm), dtype=np.int64) * bm
            env.update(r=0, LQ=n, L=n)
            if p.space.kind == "keys":
                env["L"] = int(S.evaluate(count_keys_below(p.space, arg, N), env))
        env.update(a0=a0, a1=a0 + bm - 1)
        rows = a0.shape[0]
        walk = np.zeros(rows, dtype=np.float64 if narrow else np.int64)

        def ev(e: S.Expr):
            return np.broadcast_to(np.asarray(S.evaluate(e, env, np)), (rows,)).astype(np.int64)

        los, his = [], []
        randoms, selects = [], []
        for tr in ranges:
            lo, hi = ev(tr.lo), ev(tr.hi)
            ok = ev(tr.applies).astype(bool) & (hi >= lo)
            if tr.select is not None:
                selects.append((tr.select, lo, hi, ok))
            elif tr.random is None:
                los.append(np.where(ok, lo // bn, 0))
                his.append(np.where(ok, hi // bn + 1, 0))
            else:
                randoms.append((tr.random, lo, hi, ok))
        if narrow and p.space.kind == "identity" and len(los) > 1 and not randoms:
            # the kernel's own test (backends/triton.py, narrow steps): the term is nonempty and
            # every other term's key tiles are empty or clear of the term's columns
            for k, (t, tr) in enumerate(zip(p.terms, ranges)):
                nb = narrow_columns(t, p.space)
                if nb is None or nb >= bn:
                    continue
                lo_k, hi_k = ev(tr.lo), ev(tr.hi)
                apart = his[k] > los[k]
                for m in range(len(los)):
                    if m != k:
                        apart &= (his[m] <= los[m]) | (los[m] > hi_k // bn) | (his[m] <= lo_k // bn)
                his[k] = np.where(apart, los[k], his[k])
                walk += apart * (nb / bn)
        merged_lo = merged_hi = None
        if los:
            lo_m, hi_m = np.stack(los, 1), np.stack(his, 1)
            order = np.argsort(lo_m, 1, kind="stable")
            lo_m, hi_m = np.take_along_axis(lo_m, order, 1), np.take_along_axis(hi_m, order, 1)
            count = np.zeros(rows, dtype=np.int64)
            cur_lo, cur_hi = lo_m[:, 0].copy(), hi_m[:, 0].copy()
            for k in range(1, lo_m.shape[1]):  # sweep the sorted spans, merging overlaps
                gap = lo_m[:, k] > cur_hi
                count += np.where(gap, np.maximum(cur_hi - cur_lo, 0), 0)
                cur_lo = np.where(gap, lo_m[:, k], cur_lo)
                cur_hi = np.where(gap, hi_m[:, k], np.maximum(cur_hi, hi_m[:, k]))
            count += np.maximum(cur_hi - cur_lo, 0)
            walk += count
            merged_lo, merged_hi = lo_m, hi_m
        for rnd, lo, hi, ok in randoms:
            b, r_ = ix.evaluate(rnd.b, n), ix.evaluate(rnd.r, n)
            nkb = -(-n // b)
            picks = min(r_, nkb)
            key = (rnd.seed * HASH_SEED + 1) & 0xFFFFFFFF
            qb = a0 // b
            for t in range(picks):
                start = t * nkb // picks
                length = (t + 1) * nkb // picks - start
                kb = start + mix32((key + qb * HASH_QB + t * HASH_T) & 0xFFFFFFFF) % length
                klo, khi = np.maximum(kb * b, lo), np.minimum(kb * b + b - 1, hi)
                for off in range(-(-b // bn)):  # the key tiles of the picked block
                    kt = klo // bn + off
                    live = ok & (khi >= klo) & (kt <= khi // bn)
                    if merged_lo is not None:
                        live &= ~((merged_lo <= kt[:, None]) & (kt[:, None] < merged_hi)).any(1)
                    walk += live
        for sel, lo, hi, ok in selects:  # at most k blocks per query block, inside the term's range
            b, k, qb = (ix.evaluate(x, n) for x in (sel.b, sel.k, sel.qb))
            span = np.where(ok, np.maximum(hi // bn - lo // bn + 1, 0), 0)
            most = k * -(-b // bn) * -(-bm // qb)
            static = walk if not narrow else np.floor(walk)
            walk += np.maximum(np.minimum(most, span - static), 0)
        out.append((walk, a0 // bm))
    return out


def count_pairs(expr, n: int, chunk: int = 256) -> int:
    """Exact number of allowed pairs, by chunks of rows (numpy; for checks at moderate n)."""
    j = np.arange(n, dtype=np.int64)[None, :]
    total = 0
    for s in range(0, n, chunk):
        i = np.arange(s, min(n, s + chunk), dtype=np.int64)[:, None]
        total += int(np.broadcast_to(allowed(expr, i, j, n), (i.shape[0], n)).sum())
    return total


def kernel_tile_efficiency(expr, n: int, bm: int = 128, bn: int = 64, nnz: Optional[int] = None) -> float:
    """Allowed pairs / pairs the kernel computes (`computed_pairs`)."""
    computed = computed_pairs(expr, n, bm, bn)
    if computed == 0:
        return 1.0
    if nnz is None:
        nnz = count_pairs(expr, n)
    return nnz / computed
