"""Exact pair counts of an n-substituted expression, without building the n x n mask.

Query rows are cut into *ranges* in which every atom's key interval is an affine
function of the row with a fixed order; inside a range each segment between
consecutive endpoints has a fixed truth assignment, so its pairs are summed in
closed form over all rows of the range at once (with prefix tables over one
period for stride and summary atoms).  The number of ranges depends on the
pattern's structure (a few for bands, one per block for block/random atoms), not
on n, so n = 2**20 takes milliseconds.  The same machinery counts the pairs of
any rectangle, which tile classification uses for the tiles it cannot decide by
atom states alone, and a transposed engine counts per key column.

Exact always; the costs differ: strides and summaries together are counted row
by row (tables per row residue, or floor sums when one stride and one summary
have unrelated periods).  Only when the combined period of several
strides/summaries exceeds PERIOD_LIMIT does the counter fall back to evaluating
`semantics.allowed` over the rectangle in row chunks, which is O(n^2) and meant
for n <= 16384.  `Engine.work` estimates the cost before any of it runs, so
callers at very long lengths can decline.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np

from . import ir
from .atoms import atom_truth, atoms_of, eval_formula, random_picks, residue_in, residues_below, tview, view
from .semantics import allowed

SQUARE_CACHE_RANGES = 1 << 16  # full-square segment tables kept per engine up to this size
PERIOD_LIMIT = 1 << 22  # largest combined stride/summary period tabulated (else a slow exact path)


# ---------------------------------------------------------------- ranges of rows

def ragged(starts, counts):
    """(owner, values): for each k, values starts[k], starts[k]+1, ... (counts[k] of them)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts)), counts)
    off = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(np.asarray(starts, dtype=np.int64), counts) + off


def _split(s0, s1, pidx, ppos):
    """Cut ranges [s0, s1) at the points (pidx = range index, ppos = position) strictly inside.
    Returns (parent, new_s0, new_s1), sorted by parent then position."""
    keep = (ppos > s0[pidx]) & (ppos < s1[pidx])
    pidx, ppos = pidx[keep], ppos[keep]
    if len(pidx) == 0:
        return np.arange(len(s0)), s0, s1
    idx = np.concatenate([np.arange(len(s0)), pidx])
    pos = np.concatenate([s0, ppos])
    order = np.lexsort((pos, idx))
    idx, pos = idx[order], pos[order]
    keep = np.ones(len(idx), dtype=bool)
    keep[1:] = (idx[1:] != idx[:-1]) | (pos[1:] != pos[:-1])
    idx, pos = idx[keep], pos[keep]
    nxt = np.empty_like(pos)
    nxt[:-1] = pos[1:]
    last = np.ones(len(idx), dtype=bool)
    last[:-1] = idx[1:] != idx[:-1]
    nxt[last] = s1[idx[last]]
    return idx, pos, nxt


# ---------------------------------------------------------------- the counting engine

class Engine:
    """Exact pair counting for one concrete (n-substituted, single-head) expression."""

    def __init__(self, expr, n: int, transpose: bool = False):
        if isinstance(expr, ir.Heads):
            raise TypeError("per-head pattern: count each head's expression")
        self.expr, self.n, self.transpose = expr, n, transpose
        self.views = [(tview if transpose else view)(a, n) for a in atoms_of(expr)]
        self._inverse: dict = {}
        self.ivs = [v for v in self.views if not v.periodic]
        self.pvs = [v for v in self.views if v.periodic]
        dm = [v.args[0] for v in self.pvs if v.kind == "dmod"]
        km = [v.args[0] for v in self.pvs if v.kind == "kmod"]
        self.Pd = math.lcm(*dm) if dm else 1
        self.Pk = math.lcm(*km) if km else 1
        self.P = math.lcm(self.Pd, self.Pk)
        self.mixed = bool(dm) and bool(km)
        self.phase = 1 if dm else 0  # periodic coordinate y = j - phase * i
        # tables: one per truth assignment (and, with both strides and summaries, per row residue)
        self.slow = self.P > PERIOD_LIMIT or (self.mixed and self.P * min(self.Pd, n) > 4 * PERIOD_LIMIT)
        # one stride and one summary with unrelated periods: count their joint residues with floor
        # sums instead of (row residue x period) tables
        self.fsum = self.mixed and len(dm) == 1 and len(km) == 1 and (self.slow or self.P * min(self.Pd, n) > (1 << 20))
        if self.fsum:
            self.slow = False
        self._tables: dict = {}
        self.bands = [v for v in self.ivs if v.kind == "band"]
        self.steps = [v for v in self.ivs if v.kind in ("block", "random", "trandom")]

    @property
    def work(self) -> int:
        """About how many ranges (or rows, or pairs) counting the whole square visits, known
        before any of it runs: bands and row/key ranges cut the rows a few times, each block or
        random block of size b cuts them n/b times (times the picks), each summary row 2n/l
        times; periodic atoms add their table length; strides with summaries go row by row,
        and the slow path evaluates every pair."""
        n = self.n
        if self.slow:
            return n * n
        if self.mixed:
            return n * (1 + len(self.ivs))
        w = 4 * (len(self.ivs) + 1)
        for v in self.ivs:
            if v.kind == "block":
                w += n // v.args[0] + 1
            elif v.kind in ("random", "trandom"):
                r, b, _ = v.args
                w += (n // b + 1) * (2 + 2 * min(r, n // b + 1))
            elif v.kind == "rmod":
                w += 2 * (n // v.args[0] + 1)
        return w + (self.P if self.pvs else 0)

    @property
    def work_unit(self) -> str:
        """What `work` counts."""
        return "pairs" if self.slow else "rows" if self.mixed else "row ranges"

    # ---------------------------------------------------------- ranges
    def _step_points(self, s0, s1):
        pidx, ppos = [], []
        R = np.arange(len(s0))
        for v in self.ivs:
            if v.kind == "rows":
                for p in v.args:
                    pidx.append(R)
                    ppos.append(np.full(len(s0), p, dtype=np.int64))
        for v in self.ivs:
            if v.kind == "rmod":  # rows p*l + lo and p*l + hi start and end the selected rows
                l, lo, hi = v.args
                for off in (lo, hi):
                    first = (s0 - off) // l + 1
                    cnt = np.maximum(0, (s1 - 1 - off) // l - (s0 - off) // l)
                    owner, k = ragged(first, cnt)
                    pidx.append(owner)
                    ppos.append(k * l + off)
        for b in sorted({v.args[0] if v.kind == "block" else v.args[1] for v in self.steps}):
            first = s0 // b + 1
            cnt = np.maximum(0, (s1 - 1) // b - s0 // b)
            owner, k = ragged(first, cnt)
            pidx.append(owner)
            ppos.append(k * b)
        if not pidx:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(pidx), np.concatenate(ppos)

    def _consts(self, s0, b0, b1):
        """Endpoints that do not move with the row inside a range: (R, K0) matrix."""
        cols = [b0, b1]
        R = len(s0)
        for v in self.ivs:
            if v.kind == "cols":
                cols += [np.full(R, v.args[0], np.int64), np.full(R, v.args[1], np.int64)]
            elif v.kind == "block":
                b = v.args[0]
                B = (s0 // b) * b
                cols += [B, B + b]
            elif v.kind == "random":
                r, b, seed = v.args
                kb = random_picks(r, b, seed, self.n, s0 // b)
                for t in range(kb.shape[1]):
                    cols += [kb[:, t] * b, kb[:, t] * b + b]
            elif v.kind == "trandom":  # the query blocks that picked this key block
                r, b, seed = v.args
                start, qbs = self._picked_by(v)
                kb = s0 // b
                cnt = start[kb + 1] - start[kb]
                width = int(np.diff(start).max(initial=0))
                for t in range(width):
                    has = t < cnt
                    qb = np.where(has, qbs[np.minimum(start[kb] + t, max(len(qbs) - 1, 0))], 0)
                    cols += [np.where(has, qb * b, b0), np.where(has, qb * b + b, b0)]  # padding: empty
        return np.stack(cols, axis=1)

    def _picked_by(self, v):
        """CSR (start, query blocks) of the query blocks picking each key block."""
        got = self._inverse.get(v.node)
        if got is None:
            r, b, seed = v.args
            nqb = -(-self.n // b)
            qb = np.arange(nqb, dtype=np.int64)
            picks = random_picks(r, b, seed, self.n, qb)
            kb = picks.ravel()
            src = np.repeat(qb, picks.shape[1])
            order = np.lexsort((src, kb))
            kb, src = kb[order], src[order]
            start = np.searchsorted(kb, np.arange(nqb + 1))
            got = (start, src)
            self._inverse[v.node] = got
        return got

    def _slopes(self) -> np.ndarray:
        """Offsets c of the endpoints i + c that move with the row (band edges)."""
        cs = []
        for v in self.bands:
            lo, hi = v.args
            if hi is not None:
                cs.append(-hi)
            if lo is not None:
                cs.append(1 - lo)
        return np.array(cs, dtype=np.int64)

    def ranges(self, rid, a0, a1, b0, b1):
        """Row ranges (rid, s0, s1) of rectangles [a0,a1) x [b0,b1) inside which the order of
        all endpoints is fixed.  rid indexes the rectangles."""
        rid = np.asarray(rid, dtype=np.int64)
        s0, s1 = np.asarray(a0, np.int64), np.asarray(a1, np.int64)
        pidx, ppos = self._step_points(s0, s1)
        par, s0, s1 = _split(s0, s1, pidx, ppos)
        rid = rid[par]
        cs = self._slopes()
        if len(cs):
            C = self._consts(s0, b0[rid], b1[rid])
            cross = C[:, :, None] - cs[None, None, :]
            R = np.broadcast_to(np.arange(len(s0))[:, None, None], cross.shape)
            par, s0, s1 = _split(s0, s1, R.ravel(), cross.ravel())
            rid = rid[par]
        return rid, s0, s1

    # ---------------------------------------------------------- segments
    def segments(self, rid, s0, s1, b0, b1):
        """Per range: sorted endpoints -> segments with their truth (or table) data."""
        bb0, bb1 = b0[rid], b1[rid]
        C = self._consts(s0, bb0, bb1)
        cs = self._slopes()
        V = np.concatenate([C, s0[:, None] + cs[None, :]], axis=1)
        S = np.concatenate([np.zeros(C.shape[1], np.int64), np.ones(len(cs), np.int64)])
        S = np.broadcast_to(S, V.shape)
        order = np.argsort(V * 2 + S, axis=1, kind="stable")
        V = np.take_along_axis(V, order, 1)
        S = np.take_along_axis(S, order, 1)
        N = (s1 - s0)[:, None]
        vs, ve, ss, se = V[:, :-1], V[:, 1:], S[:, :-1], S[:, 1:]
        len0 = ve - vs
        dl = se - ss
        lenN = len0 + dl * (N - 1)
        trep = np.where(lenN > 0, N - 1, 0)
        lrep = np.where(lenN > 0, lenN, len0)
        row = s0[:, None] + trep
        x = vs + ss * trep
        live = (lrep > 0) & (x >= bb0[:, None]) & (x < bb1[:, None])
        env = {v.node: atom_truth(v, row, x, self.n) for v in self.ivs}
        return dict(vs=vs, ve=ve, ss=ss, se=se, len0=len0, dl=dl, N=N, row=row, x=x, live=live, env=env)

    # ---------------------------------------------------------- periodic tables
    def _table(self, code: int, rho: int = 0):
        key = (code, rho)
        t = self._tables.get(key)
        if t is None:
            env = {}
            for k, v in enumerate(self.ivs):
                env[v.node] = np.bool_((code >> k) & 1)
            y = np.arange(self.P, dtype=np.int64)
            for v in self.pvs:
                if v.kind == "dmod":
                    m = v.args[0]
                    env[v.node] = ((y - rho) % m == 0) if self.mixed else (y % m == 0)
                else:
                    env[v.node] = residue_in(y, v.args)
            h = np.broadcast_to(eval_formula(self.expr, env), (self.P,))
            T = np.zeros(self.P + 1, np.int64)
            np.cumsum(h, out=T[1:])
            U = np.zeros(self.P + 1, np.int64)
            np.cumsum(T[:-1], out=U[1:])
            t = (T, U)
            if len(self._tables) * (self.P + 1) > 4 * PERIOD_LIMIT:
                self._tables.clear()
            self._tables[key] = t
        return t

    def _codes(self, seg):
        code = np.zeros(seg["live"].shape, np.int64)
        for k, v in enumerate(self.ivs):
            code |= seg["env"][v.node].astype(np.int64) << k
        return code

    # ---------------------------------------------------------- counting
    def _segment_counts(self, seg):
        """Allowed pairs per segment, summed over the rows of its range: (R, K-1) int64."""
        N, live = seg["N"], seg["live"]
        if not self.pvs:
            val = np.broadcast_to(eval_formula(self.expr, seg["env"]), live.shape) & live
            tot = N * seg["len0"] + seg["dl"] * (N * (N - 1) // 2)
            return np.where(val, tot, 0)
        out = np.zeros(live.shape, np.int64)
        code = self._codes(seg)
        rr, kk = np.nonzero(live)
        if len(rr) == 0:
            return out
        if self.fsum:  # one row per range here
            out[rr, kk] = self._fsum_counts(code[rr, kk], seg["row"][rr, kk], seg["vs"][rr, kk], seg["ve"][rr, kk])
            return out
        c = code[rr, kk]
        P = self.P
        ps = self.phase if not self.mixed else 0
        Nk = N[rr, 0]
        if self.mixed:
            rho = seg["row"][rr, kk] % self.Pd  # mixed mode always runs with one row per range
        else:
            rho = np.zeros(len(rr), np.int64)
        keys = c * (self.Pd + 1) + rho
        ukeys, inv = np.unique(keys, return_inverse=True)
        Ts = np.empty((len(ukeys), P + 1), np.int64)
        Us = np.empty((len(ukeys), P + 1), np.int64)
        for u, key in enumerate(ukeys.tolist()):
            Ts[u], Us[u] = self._table(key // (self.Pd + 1), key % (self.Pd + 1))
        TP = Ts[:, P][inv]
        UP = Us[:, P][inv]

        def G(y):
            q, r = np.divmod(y, P)
            return q * TP + Ts[inv, r]

        def H(Y):
            q, r = np.divmod(Y, P)
            return TP * P * (q * (q - 1) // 2) + q * UP + r * q * TP + Us[inv, r]

        def sumG(a, sig):
            res = np.where(sig == 0, Nk * G(a), 0)
            res = np.where(sig == 1, H(a + Nk) - H(a), res)
            res = np.where(sig == -1, H(a + 1) - H(a - Nk + 1), res)
            return res

        start_row = seg["row"][rr, kk] - seg["trep"][rr, kk]
        ys = seg["vs"][rr, kk] - ps * start_row
        ye = seg["ve"][rr, kk] - ps * start_row
        sig_s = seg["ss"][rr, kk] - ps
        sig_e = seg["se"][rr, kk] - ps
        out[rr, kk] = sumG(ye, sig_e) - sumG(ys, sig_s)
        return out

    def _fsum_counts(self, code, row, s, e):
        """Allowed keys in [s, e) of row `row` when the periodic atoms are one stride D (m) and one
        key residue set K (l, lo, hi): from the counts of D, K and D & K (a floor sum), by minterms."""
        dv = next(v for v in self.pvs if v.kind == "dmod")
        kv = next(v for v in self.pvs if v.kind == "kmod")
        m = dv.args[0]
        l, lo, hi = kv.args
        uc, inv = np.unique(code, return_inverse=True)
        tt = np.zeros((len(uc), 4), bool)  # truth for (D, K) = (0,0), (0,1), (1,0), (1,1)
        dd, kk_ = np.array([False, False, True, True]), np.array([False, True, False, True])
        for u, cv in enumerate(uc.tolist()):
            env = {v.node: np.bool_((cv >> k) & 1) for k, v in enumerate(self.ivs)}
            env[dv.node], env[kv.node] = dd, kk_
            tt[u] = np.broadcast_to(eval_formula(self.expr, env), (4,))
        tt = tt[inv]
        ln = e - s
        cD = (e - 1 - row) // m - (s - 1 - row) // m

        cK = residues_below(e, kv.args) - residues_below(s, kv.args)
        j0 = s + (row - s) % m
        T = np.maximum(0, (e - j0 + m - 1) // m)
        # [lo <= x % l < hi] = floor((x + l - lo) / l) - floor((x + l - hi) / l)
        cDK = floor_sum(T, l, m, j0 + l - lo) - floor_sum(T, l, m, j0 + l - hi)
        mins = np.stack([ln - cD - cK + cDK, cK - cDK, cD - cDK, cDK], 1)
        return np.where(tt, mins, 0).sum(1)

    def rect_counts(self, a0, a1, b0, b1) -> np.ndarray:
        """Exact allowed pairs in each rectangle [a0,a1) x [b0,b1) (arrays, clipped to the square)."""
        n = self.n
        a0 = np.clip(np.asarray(a0, np.int64), 0, n)
        a1 = np.clip(np.asarray(a1, np.int64), 0, n)
        b0 = np.clip(np.asarray(b0, np.int64), 0, n)
        b1 = np.clip(np.asarray(b1, np.int64), 0, n)
        out = np.zeros(len(a0), np.int64)
        ok = np.nonzero((a1 > a0) & (b1 > b0))[0]
        if len(ok) == 0:
            return out
        if self.slow:
            for r in ok:
                if self.transpose:
                    out[r] = _dense_count(self.expr, n, int(b0[r]), int(b1[r]), int(a0[r]), int(a1[r]))
                else:
                    out[r] = _dense_count(self.expr, n, int(a0[r]), int(a1[r]), int(b0[r]), int(b1[r]))
            return out
        # batches of rectangles with a bounded number of row ranges (block/random atoms split rows)
        periods = [v.args[1] if v.kind in ("random", "trandom") else v.args[0]
                   for v in self.ivs if v.kind in ("block", "random", "trandom", "rmod")]
        est = (a1[ok] - a0[ok]) // (min(periods) if periods else n + 1) + 2
        cum = np.cumsum(est)
        bounds = np.searchsorted(cum, np.arange(0, int(cum[-1]) + (1 << 18), 1 << 18), "left")
        bounds = np.unique(np.concatenate([[0], bounds, [len(ok)]]))
        for lo_, hi_ in zip(bounds[:-1], bounds[1:]):
            sel = ok[lo_:hi_]
            if len(sel) == 0:
                continue
            rid, s0, s1 = self.ranges(sel, a0[sel], a1[sel], b0, b1)
            for rid_c, s0_c, s1_c in self._chunks(rid, s0, s1):
                per = self.range_counts(rid_c, s0_c, s1_c, b0, b1)
                np.add.at(out, rid_c, per)
        return out

    def _chunks(self, rid, s0, s1, size: int = 1 << 16):
        if self.mixed:  # one row per range, so that the row's residue picks the table
            own, rows = ragged(s0, s1 - s0)
            rid, s0, s1 = rid[own], rows, rows + 1
        for k in range(0, len(s0), size):
            yield rid[k:k + size], s0[k:k + size], s1[k:k + size]

    def range_counts(self, rid, s0, s1, b0, b1) -> np.ndarray:
        """Allowed pairs per range (summed over its rows)."""
        seg = self.segments(rid, s0, s1, b0, b1)
        seg["trep"] = seg["row"] - s0[:, None]
        return self._segment_counts(seg).sum(axis=1)

    def row_counts(self, rows) -> np.ndarray:
        """Allowed keys of each given query row (exact)."""
        rows = np.asarray(rows, np.int64)
        n = self.n
        z = np.zeros(len(rows), np.int64)
        if self.slow:
            if self.transpose:
                return np.array([_dense_count(self.expr, n, 0, n, int(r), int(r) + 1) for r in rows], np.int64)
            return np.array([_dense_count(self.expr, n, int(r), int(r) + 1, 0, n) for r in rows], np.int64)
        b0, b1 = np.zeros(1, np.int64), np.full(1, n, np.int64)
        out = np.zeros(len(rows), np.int64)
        for k in range(0, len(rows), 1 << 16):
            r = rows[k:k + (1 << 16)]
            out[k:k + len(r)] = self.range_counts(z[:len(r)], r, r + 1, b0, b1)
        return out

    def _lookup(self, key):
        """(h, next-true offset, previous-true offset) of a periodic table, cached."""
        got = self._tables.get(("ext",) + key)
        if got is None:
            T, _ = self._table(*key)
            h = np.diff(T) > 0
            P = self.P
            idx = np.arange(2 * P)
            true_at = np.where(np.concatenate([h, h]), idx, 4 * P)
            nxt = np.minimum.accumulate(true_at[::-1])[::-1][:P] - np.arange(P)
            true_at = np.where(np.concatenate([h, h]), idx, -4 * P)
            prv = np.arange(P, 2 * P) - np.maximum.accumulate(true_at)[P:]
            got = (h, nxt, prv)
            self._tables[("ext",) + key] = got
        return got

    def row_spans(self, a0: int = 0, a1: Optional[int] = None, b0: int = 0, b1: Optional[int] = None):
        """For each query row in [a0, a1): (allowed keys in [b0, b1), first allowed key, last allowed
        key), with -1 for both when the row has none.  Exact; per range for patterns without
        strides/summaries, otherwise row by row with next/previous-true tables."""
        n = self.n
        a1 = n if a1 is None else a1
        b1 = n if b1 is None else b1
        rows = max(0, a1 - a0)
        cnt = np.zeros(rows, np.int64)
        lo = np.full(rows, -1, np.int64)
        hi = np.full(rows, -1, np.int64)
        if rows == 0 or b1 <= b0:
            return cnt, lo, hi
        B0, B1 = np.array([b0], np.int64), np.array([b1], np.int64)
        if self.slow:
            j = np.arange(b0, b1, dtype=np.int64)
            for r in range(a0, a1):
                m = np.broadcast_to(allowed(self.expr, j, np.int64(r), n) if self.transpose
                                    else allowed(self.expr, np.int64(r), j, n), j.shape)
                w = np.nonzero(m)[0]
                cnt[r - a0] = len(w)
                if len(w):
                    lo[r - a0], hi[r - a0] = b0 + w[0], b0 + w[-1]
            return cnt, lo, hi
        rid, s0, s1 = self.ranges(np.zeros(1, np.int64), np.array([a0]), np.array([a1]), B0, B1)
        if self.fsum:
            raise NotImplementedError("first/last allowed keys with a stride and an unrelated summary")
        if self.pvs:  # row by row
            own, r_ = ragged(s0, s1 - s0)
            s0, s1, rid = r_, r_ + 1, rid[own]
        BIG = np.int64(1) << 62
        for k in range(0, len(s0), 1 << 15):
            r0, r1, rs = s0[k:k + (1 << 15)], s1[k:k + (1 << 15)], rid[k:k + (1 << 15)]
            seg = self.segments(rs, r0, r1, B0, B1)
            live = seg["live"]
            own, t = ragged(np.zeros(len(r0), np.int64), r1 - r0)
            row = r0[own] + t
            t = t[:, None]
            st = seg["vs"][own] + seg["ss"][own] * t
            en = seg["ve"][own] + seg["se"][own] * t
            if not self.pvs:
                val = np.broadcast_to(eval_formula(self.expr, seg["env"]), live.shape) & live
                ok = val[own] & (en > st)
                c_ = np.where(ok, en - st, 0).sum(1)
                l_ = np.where(ok, st, BIG).min(1)
                h_ = np.where(ok, en - 1, -1).max(1)
            else:
                code = self._codes(seg)
                ps = 0 if self.mixed else self.phase
                c_ = np.zeros(len(row), np.int64)
                l_ = np.full(len(row), BIG)
                h_ = np.full(len(row), -1, np.int64)
                rr, kk = np.nonzero(live)
                if len(rr):  # one row per range here, so range index == row index
                    rho = (r0[rr] % self.Pd) if self.mixed else np.zeros(len(rr), np.int64)
                    keys = code[rr, kk] * (self.Pd + 1) + rho
                    uk, inv = np.unique(keys, return_inverse=True)
                    P = self.P
                    Ts = np.stack([self._table(int(x) // (self.Pd + 1), int(x) % (self.Pd + 1))[0] for x in uk])
                    ext = [self._lookup((int(x) // (self.Pd + 1), int(x) % (self.Pd + 1))) for x in uk]
                    nx = np.stack([e[1] for e in ext])
                    pv = np.stack([e[2] for e in ext])
                    ys = st[rr, kk] - ps * r0[rr]
                    ye = en[rr, kk] - ps * r0[rr]
                    q0, m0 = np.divmod(ys, P)
                    q1, m1 = np.divmod(ye, P)
                    TP = Ts[inv, P]
                    cc = (q1 * TP + Ts[inv, m1]) - (q0 * TP + Ts[inv, m0])
                    f = ys + nx[inv, m0]
                    lq, lm = np.divmod(ye - 1, P)
                    g = ye - 1 - pv[inv, lm]
                    has = (cc > 0) & (ye > ys)
                    np.add.at(c_, rr, np.where(has, cc, 0))
                    np.minimum.at(l_, rr, np.where(has, f + ps * r0[rr], BIG))
                    np.maximum.at(h_, rr, np.where(has, g + ps * r0[rr], -1))
            idx = row - a0
            cnt[idx] = c_
            lo[idx] = np.where(c_ > 0, l_, -1)
            hi[idx] = np.where(c_ > 0, h_, -1)
        return cnt, lo, hi

    def range_table(self, a0: int = 0, a1: Optional[int] = None, b0: int = 0, b1: Optional[int] = None):
        """Rows [a0, a1) as ranges with their segments, for patterns without strides/summaries:
        dict(r0, r1, vs, ss, ve, se, val) where segment k of a range covers keys
        [vs + ss*t, ve + se*t) at row r0 + t and val says whether its keys are allowed.
        Everything the row-level analyses need, at a cost set by the pattern's structure."""
        if self.pvs or self.slow:
            raise ValueError("range tables need a pattern without stride/summary atoms")
        n = self.n
        a1 = n if a1 is None else a1
        b1 = n if b1 is None else b1
        if (a0, a1, b0, b1) == (0, n, 0, n):
            parts = [(r0, r1, seg) for r0, r1, seg in self.square()]
        else:
            B0, B1 = np.array([b0], np.int64), np.array([b1], np.int64)
            rid, s0, s1 = self.ranges(np.zeros(1, np.int64), np.array([a0]), np.array([a1]), B0, B1)
            parts = [(s0, s1, self.segments(rid, s0, s1, B0, B1))]
        cat = {k: np.concatenate([p[2][k] for p in parts]) for k in ("vs", "ss", "ve", "se", "live")}
        env = {k: np.concatenate([p[2]["env"][k] for p in parts]) for k in parts[0][2]["env"]}
        val = np.broadcast_to(eval_formula(self.expr, env), cat["live"].shape) & cat["live"]
        return dict(r0=np.concatenate([p[0] for p in parts]), r1=np.concatenate([p[1] for p in parts]),
                    vs=cat["vs"], ss=cat["ss"], ve=cat["ve"], se=cat["se"], val=val)

    def square(self) -> list:
        """The full square's ranges and segments as chunks [(s0, s1, seg)], cached when small."""
        got = getattr(self, "_square", None)
        if got is not None:
            return got
        n = self.n
        b0, b1 = np.zeros(1, np.int64), np.full(1, n, np.int64)
        rid, s0, s1 = self.ranges(np.zeros(1, np.int64), np.zeros(1, np.int64), b1, b0, b1)
        out = []
        for k in range(0, len(s0), 1 << 16):
            r0, r1 = s0[k:k + (1 << 16)], s1[k:k + (1 << 16)]
            seg = self.segments(rid[k:k + (1 << 16)], r0, r1, b0, b1)
            seg["trep"] = seg["row"] - r0[:, None]
            out.append((r0, r1, seg))
        if len(s0) <= SQUARE_CACHE_RANGES:
            self._square = out
        return out

    def total(self) -> int:
        if self.slow or self.mixed or self.n <= 0:
            return int(self.rect_counts([0], [self.n], [0], [self.n])[0])
        return int(sum(int(self._segment_counts(seg).sum()) for _, _, seg in self.square()))

    def empty_rows(self, limit: int = 5) -> tuple[int, list]:
        """(number of query rows with no allowed key, the first `limit` of them), exactly.

        Ranges whose per-row count is affine are decided from their two end rows; ranges with
        periodic segments are decided by a lower bound, and counted row by row only if needed."""
        n = self.n
        if self.slow:
            cnt = self.row_counts(np.arange(n))
            z = np.nonzero(cnt == 0)[0]
            return len(z), [int(v) for v in z[:limit]]
        zero_rows: list = []
        count = 0
        suspects: list = []
        for r0, r1, seg in self.square():
            N = seg["N"][:, 0]
            live = seg["live"]
            first = seg["len0"]
            last = seg["len0"] + seg["dl"] * (seg["N"] - 1)
            if not self.pvs:
                val = np.broadcast_to(eval_formula(self.expr, seg["env"]), live.shape) & live
                A = np.where(val, first, 0).sum(1)
                Z = np.where(val, last, 0).sum(1)
                # affine per-row count from A (first row) to Z (last row): zeros only at the ends
                allz = (A == 0) & (Z == 0)
                count += int(N[allz].sum())
                for r in np.nonzero(allz)[0][:limit]:
                    zero_rows.extend(range(int(r0[r]), int(min(r1[r], r0[r] + limit))))
                one_a = (A == 0) & (Z > 0)
                one_z = (Z == 0) & (A > 0)
                count += int(one_a.sum() + one_z.sum())
                zero_rows.extend(int(v) for v in r0[one_a][:limit])
                zero_rows.extend(int(v) for v in (r1[one_z] - 1)[:limit])
                continue
            code = self._codes(seg)
            minlen = np.minimum(first, last)
            maxlen = np.maximum(first, last)
            lower = np.zeros(len(r0), np.int64)
            upper = np.zeros(len(r0), np.int64)
            rr, kk = np.nonzero(live)
            if len(rr):
                c = code[rr, kk]
                uc, inv = np.unique(c, return_inverse=True)
                if self.mixed:  # no cheap bound: every live range is checked row by row
                    tp_lo, tp_hi = np.zeros(len(rr), np.int64), np.full(len(rr), self.P, np.int64)
                else:
                    tp = np.array([self._table(int(u))[0][-1] for u in uc.tolist()], np.int64)
                    tp_lo = tp_hi = tp[inv]
                P = self.P
                full = tp_lo == P
                lo = np.where(full, minlen[rr, kk], (minlen[rr, kk] // P) * tp_lo)
                hi = np.where(tp_hi == 0, 0, maxlen[rr, kk])
                np.add.at(lower, rr, lo)
                np.add.at(upper, rr, hi)
            allz = upper == 0
            count += int(N[allz].sum())
            for r in np.nonzero(allz)[0][:limit]:
                zero_rows.extend(range(int(r0[r]), int(min(r1[r], r0[r] + limit))))
            sus = (~allz) & (lower == 0)
            for r in np.nonzero(sus)[0]:
                suspects.append((int(r0[r]), int(r1[r])))
        if suspects:
            rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in suspects])
            cnt = self.row_counts(rows)
            z = rows[cnt == 0]
            count += len(z)
            zero_rows.extend(int(v) for v in z[:limit])
        return count, sorted(set(zero_rows))[:limit]


def _dense_count(expr, n: int, a0: int, a1: int, b0: int, b1: int) -> int:
    """Exact count by evaluating the semantics oracle on the rectangle (slow path)."""
    j = np.arange(b0, b1, dtype=np.int64)[None, :]
    total = 0
    step = max(1, (1 << 22) // max(1, b1 - b0))
    for r in range(a0, a1, step):
        i = np.arange(r, min(a1, r + step), dtype=np.int64)[:, None]
        total += int(np.broadcast_to(allowed(expr, i, j, n), (i.shape[0], j.shape[1])).sum())
    return total


def floor_sum(N, M, A, B) -> np.ndarray:
    """sum_{t=0}^{N-1} floor((A t + B) / M) elementwise (N >= 0, M >= 1, A >= 0, B >= 0), by the
    Euclid-like reduction (logarithmic rounds)."""
    N, M, A, B = (np.array(np.broadcast_to(x, np.broadcast(N, M, A, B).shape), np.int64) for x in (N, M, A, B))
    ans = np.zeros(N.shape, np.int64)
    live = N > 0
    while live.any():
        q = A // M
        ans += np.where(live, (N * (N - 1) // 2) * q, 0)
        A = np.where(live, A % M, A)
        q = B // M
        ans += np.where(live, N * q, 0)
        B = np.where(live, B % M, B)
        y = A * N + B
        live &= y >= M
        N2, B2 = y // np.maximum(M, 1), y % np.maximum(M, 1)
        M, A, N, B = np.where(live, A, M), np.where(live, M, A), np.where(live, N2, 0), np.where(live, B2, B)
    return ans


@lru_cache(maxsize=8)
def engine(expr, n: int, transpose: bool = False) -> Engine:
    """A cached counting engine for (expr, n); transpose=True counts per key column instead."""
    return Engine(expr, n, transpose)


def count_nnz(expr_at_n, n: int) -> int:
    """Exact number of allowed pairs of an n-substituted expression (single head; for
    `ir.Heads`, the sum over all heads)."""
    if isinstance(expr_at_n, ir.Heads):
        return sum((c.hi - c.lo + 1) * count_nnz(c.expr, n) for c in expr_at_n.cases)
    if n <= 0:
        return 0
    return engine(expr_at_n, n).total()


def count_rect(expr_at_n, n: int, a0, a1, b0, b1) -> np.ndarray:
    """Exact allowed pairs inside each rectangle [a0, a1) x [b0, b1) (vectorised)."""
    return engine(expr_at_n, n).rect_counts(a0, a1, b0, b1)
