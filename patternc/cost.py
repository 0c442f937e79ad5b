"""Cost of a pattern: exact pair counts, closed forms in n, flops and asymptotic order.

Two ways to count the allowed pairs (i, j), 0 <= i, j < n:

* `nnz_formula(pattern.expr)`: a sympy closed form in the symbol n, derived
  from the atoms' interval and modular structure by inclusion-exclusion.
  It holds for every n >= 1 (Min/Max/floor keep small n exact) and is
  checked against the exact counter before it is returned; None when the
  pattern has no closed form we can derive (random, mixed moduli, ...).
* `count_nnz(expr_at_n, n)`: an exact counter that never builds the mask.
  Query rows are cut into *ranges* in which every atom's key interval is an
  affine function of the row with a fixed order; inside a range each
  segment between consecutive endpoints has a fixed truth assignment, so
  its pairs are summed in closed form over all rows of the range at once
  (with prefix tables over one period for stride and summary atoms).  The
  number of ranges depends on the pattern's structure (a few for bands,
  one per block for block/random atoms), not on n, so n = 2**20 takes
  milliseconds.  The same machinery counts the pairs of any rectangle,
  which tile classification uses for the tiles it cannot decide by atom
  states alone, and a transposed view counts per key column.

  Exact always; the costs differ: strides and summaries together are
  counted row by row (tables per row residue, or floor sums when one stride
  and one summary have unrelated periods).  Only when the combined period of
  several strides/summaries exceeds PERIOD_LIMIT does the counter fall back
  to evaluating `semantics.allowed` over the rectangle in row chunks, which
  is O(n^2) and meant for n <= 16384.

Flop convention (FlashAttention's): the forward pass does two matmuls
(S = QK^T and O = PV) over the allowed pairs, 2 flops per multiply-add, so
`flops_fwd = 4 * nnz * head_dim` per head; the backward pass does five
(recompute S, dV, dP, dQ, dK), so `flops_bwd = 2.5 * flops_fwd`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from . import ir
from .intexpr import Const, EvalError, NVar, Op, _apply, evaluate, make
from .semantics import random_allowed, random_layout

SQUARE_CACHE_RANGES = 1 << 16  # full-square segment tables kept per engine up to this size
PERIOD_LIMIT = 1 << 22  # largest combined stride/summary period tabulated (else a slow exact path)


# ============================================================== formula evaluation

def eval_formula(node, env: dict):
    """Evaluate the boolean structure of `node` with atoms looked up in `env`
    (numpy bool arrays or np.bool_ scalars, broadcast together)."""
    if isinstance(node, ir.All):
        return np.True_
    if isinstance(node, ir.Empty):
        return np.False_
    if isinstance(node, ir.Union):
        out = eval_formula(node.items[0], env)
        for y in node.items[1:]:
            out = out | eval_formula(y, env)
        return out
    if isinstance(node, ir.Inter):
        out = eval_formula(node.items[0], env)
        for y in node.items[1:]:
            out = out & eval_formula(y, env)
        return out
    if isinstance(node, ir.Not):
        return ~eval_formula(node.x, env)
    return env[node]


def atoms_of(expr) -> list:
    """The distinct atoms of an expression, in first-seen order."""
    seen: dict = {}
    for node in ir.walk(expr):
        if isinstance(node, ir.ATOMS) and node not in seen:
            seen[node] = None
    return list(seen)


# ============================================================== atom views

@dataclass(frozen=True)
class AtomView:
    """An atom with its arguments evaluated at n, seen as one of:
    'band' (lo, hi; None = unbounded), 'cols' (a, b), 'rows' (a, b),
    'block' (b), 'random' (r, b, seed), 'dmod' (m; periodic in j - i),
    'kmod' (l, c; periodic in j), 'true' (always allowed inside the square).
    Moduli >= n are rewritten as intervals (they cannot wrap inside the square)."""

    node: object
    kind: str
    args: tuple

    @property
    def periodic(self) -> bool:
        return self.kind in ("dmod", "kmod")


def view(node, n: int) -> AtomView:
    ev = [None if e is None else evaluate(e, n) for e in ir.int_args(node)]
    if isinstance(node, ir.Band):
        lo = None if node.lo is None else evaluate(node.lo, n)
        hi = None if node.hi is None else evaluate(node.hi, n)
        return AtomView(node, "band", (lo, hi))
    if isinstance(node, ir.Rows):
        return AtomView(node, "rows", tuple(ev))
    if isinstance(node, ir.Cols):
        return AtomView(node, "cols", tuple(ev))
    if isinstance(node, ir.Block):
        (b,) = ev
        return AtomView(node, "true", ()) if b >= n else AtomView(node, "block", (b,))
    if isinstance(node, ir.DiagMod):
        (m,) = ev
        return AtomView(node, "band", (0, 0)) if m >= n else AtomView(node, "dmod", (m,))
    if isinstance(node, ir.KeyMod):
        l, c = ev
        if l >= n:  # j % l == j for every key
            return AtomView(node, "cols", (l - c, l))
        return AtomView(node, "kmod", (l, c))
    if isinstance(node, ir.Random):
        r, b = ev
        return AtomView(node, "random", (r, b, node.seed))
    raise TypeError(f"not an atom: {node!r}")


def tview(node, n: int) -> AtomView:
    """The view of an atom in the transposed mask (rows are keys, columns are queries):
    bands mirror, rows and columns swap, a summary becomes a periodic row set ('rmod') and
    random blocks are looked up from the keys' side ('trandom')."""
    v = view(node, n)
    k, a = v.kind, v.args
    if k == "band":
        lo, hi = a
        return AtomView(node, "band", (None if hi is None else -hi, None if lo is None else -lo))
    if k == "rows":
        return AtomView(node, "cols", a)
    if k == "cols":
        return AtomView(node, "rows", a)
    if k == "kmod":
        return AtomView(node, "rmod", a)
    if k == "random":
        return AtomView(node, "trandom", a)
    return v


def atom_truth(v: AtomView, i, j, n: int):
    """Pointwise truth of one atom (numpy broadcasting), without the bounds checks."""
    k, a = v.kind, v.args
    if k == "band":
        d = i - j
        lo, hi = a
        out = np.ones(np.broadcast(i, j).shape, dtype=bool)
        if lo is not None:
            out &= d >= lo
        if hi is not None:
            out &= d <= hi
        return out
    if k == "cols":
        return np.broadcast_to((j >= a[0]) & (j < a[1]), np.broadcast(i, j).shape)
    if k == "rows":
        return np.broadcast_to((i >= a[0]) & (i < a[1]), np.broadcast(i, j).shape)
    if k == "block":
        return i // a[0] == j // a[0]
    if k == "dmod":
        return (i - j) % a[0] == 0
    if k == "kmod":
        l, c = a
        return np.broadcast_to(j % l >= l - c, np.broadcast(i, j).shape)
    if k == "random":
        r, b, seed = a
        return random_allowed(r, b, seed, i, j, n)
    if k == "rmod":
        l, c = a
        return np.broadcast_to(i % l >= l - c, np.broadcast(i, j).shape)
    if k == "trandom":
        r, b, seed = a
        return random_allowed(r, b, seed, j, i, n)
    if k == "true":
        return np.ones(np.broadcast(i, j).shape, dtype=bool)
    raise ValueError(k)


def random_picks(r: int, b: int, seed: int, n: int, qb):
    """Key blocks picked by query blocks `qb` (array) -> int64 array (len(qb), picks)."""
    from .semantics import random_pick

    nkb, picks = random_layout(r, b, n)
    qb = np.asarray(qb, dtype=np.int64)
    out = np.empty((qb.shape[0], picks), dtype=np.int64)
    for t in range(picks):
        start = t * nkb // picks
        length = (t + 1) * nkb // picks - start
        out[:, t] = start + random_pick(seed, qb, t) % length
    return out


def _ragged(starts, counts):
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


# ============================================================== the counting engine

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
            if v.kind == "rmod":  # rows p*l and p*l + l - c start and end the selected rows
                l, c = v.args
                for off in (0, l - c):
                    first = (s0 - off) // l + 1
                    cnt = np.maximum(0, (s1 - 1 - off) // l - (s0 - off) // l)
                    owner, k = _ragged(first, cnt)
                    pidx.append(owner)
                    ppos.append(k * l + off)
        for b in sorted({v.args[0] if v.kind == "block" else v.args[1] for v in self.steps}):
            first = s0 // b + 1
            cnt = np.maximum(0, (s1 - 1) // b - s0 // b)
            owner, k = _ragged(first, cnt)
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
                    l, c = v.args
                    env[v.node] = y % l >= l - c
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
        summary K (l, c): from the counts of D, K and D & K (a floor sum), by minterms."""
        dv = next(v for v in self.pvs if v.kind == "dmod")
        kv = next(v for v in self.pvs if v.kind == "kmod")
        m = dv.args[0]
        l, c = kv.args
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

        def K(x):
            return (x // l) * c + np.maximum(0, x % l - (l - c))

        cK = K(e) - K(s)
        j0 = s + (row - s) % m
        T = np.maximum(0, (e - j0 + m - 1) // m)
        cDK = floor_sum(T, l, m, j0 + c) - floor_sum(T, l, m, j0)
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
            own, rows = _ragged(s0, s1 - s0)
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
            from .semantics import allowed
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
            own, r_ = _ragged(s0, s1 - s0)
            s0, s1, rid = r_, r_ + 1, rid[own]
        BIG = np.int64(1) << 62
        for k in range(0, len(s0), 1 << 15):
            r0, r1, rs = s0[k:k + (1 << 15)], s1[k:k + (1 << 15)], rid[k:k + (1 << 15)]
            seg = self.segments(rs, r0, r1, B0, B1)
            live = seg["live"]
            own, t = _ragged(np.zeros(len(r0), np.int64), r1 - r0)
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
    from .semantics import allowed

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


# ============================================================== closed forms

class _NoForm(Exception):
    """No closed form for this (sub)pattern."""


MAX_MONOMIALS = 256
_INF = float("inf")


_ID_CACHE_LIMIT = 1 << 18


def _id_cached(fn):
    """Memoise on object identity (IntExpr hashing is recursive and uncached, so hash-keyed
    caches cost O(tree size) per lookup on large shared formulas)."""
    table: dict = {}

    def wrapper(e):
        got = table.get(id(e))
        if got is not None and got[0] is e:
            return got[1]
        if len(table) > _ID_CACHE_LIMIT:
            table.clear()
        v = fn(e)
        table[id(e)] = (e, v)
        return v

    wrapper.__doc__ = fn.__doc__
    return wrapper


@_id_cached
def _bounds(e) -> tuple:
    """Bounds of an integer expression over n >= 1 (floats, +-inf when unknown)."""
    if isinstance(e, Const):
        return (e.value, e.value)
    if isinstance(e, NVar):
        return (1, _INF)
    b = [_bounds(a) for a in e.args]
    op = e.op
    if op in ("+", "-", "neg"):
        return _linear_interval(op, b)
    if op == "min":
        return (min(x[0] for x in b), min(x[1] for x in b))
    if op == "max":
        return (max(x[0] for x in b), max(x[1] for x in b))
    if op == "*":
        if all(math.isfinite(v) for x in b for v in x):
            ps = [p * q for p in b[0] for q in b[1]]
            return (min(ps), max(ps))
        if b[0][0] >= 0 and b[1][0] >= 0:
            return (b[0][0] * b[1][0], _INF)
        return (-_INF, _INF)
    if op == "isqrt":
        lo, hi = b[0]
        return (math.isqrt(int(max(lo, 0))), _INF if hi == _INF else math.isqrt(int(max(hi, 0))))
    if op == "//" and b[1][0] >= 1:
        vals = [_floordiv_bound(x, d) for x in b[0] for d in b[1]]
        return (min(vals), max(vals))
    if op == "%" and b[1][0] >= 1:
        return (0, b[1][1] - 1)
    return (-_INF, _INF)


def _linear_interval(op: str, b: list) -> tuple:
    """Interval arithmetic for +, - and neg on (lo, hi) pairs."""
    if op == "+":
        return (b[0][0] + b[1][0], b[0][1] + b[1][1])
    if op == "-":
        return (b[0][0] - b[1][1], b[0][1] - b[1][0])
    return (-b[0][1], -b[0][0])


def _floordiv_bound(x, d):
    """floor(x / d) at a corner of the bounds box (d >= 1, possibly infinite)."""
    if not math.isfinite(x):
        return x
    if d == _INF:
        return 0 if x >= 0 else -1
    return x // d


def _k(v: int):
    return Const(int(v))


@_id_cached
def _lin(e) -> tuple:
    """e as (constant, [(term, coefficient), ...]) through +, -, neg and constant factors."""
    if isinstance(e, Const):
        return (e.value, ())
    if isinstance(e, Op):
        if e.op in ("+", "-"):
            c0, t0 = _lin(e.args[0])
            c1, t1 = _lin(e.args[1])
            sg = 1 if e.op == "+" else -1
            return _merge(c0 + sg * c1, list(t0) + [(t, sg * k) for t, k in t1])
        if e.op == "neg":
            c0, t0 = _lin(e.args[0])
            return (-c0, tuple((t, -k) for t, k in t0))
        if e.op == "*":
            for i in (0, 1):
                if isinstance(e.args[i], Const):
                    f = e.args[i].value
                    c0, t0 = _lin(e.args[1 - i])
                    return (f * c0, tuple((t, f * k) for t, k in t0 if f * k))
    return (0, ((e, 1),))


def _merge(c: int, terms: list) -> tuple:
    out: list = []
    for t, k in terms:
        for idx, (u, m) in enumerate(out):
            if u is t or u == t:
                out[idx] = (u, m + k)
                break
        else:
            out.append((t, k))
    return (c, tuple((t, k) for t, k in out if k))


def _build(c: int, terms: tuple):
    """Rebuild c + sum(k * t), positive terms first."""
    pos = [(t, k) for t, k in terms if k > 0]
    neg = [(t, -k) for t, k in terms if k < 0]
    out = None
    for t, k in pos:
        x = t if k == 1 else make("*", Const(k), t)
        out = x if out is None else make("+", out, x)
    for t, k in neg:
        x = t if k == 1 else make("*", Const(k), t)
        out = make("neg", x) if out is None else make("-", out, x)
    if out is None:
        return Const(c)
    if c > 0:
        return make("+", out, Const(c))
    if c < 0:
        return make("-", out, Const(-c))
    return out


def _add(a, b):
    c0, t0 = _lin(a)
    c1, t1 = _lin(b)
    return _build(*_merge(c0 + c1, list(t0) + list(t1)))


def _sub(a, b):
    if a is b or a == b:
        return Const(0)
    c0, t0 = _lin(a)
    c1, t1 = _lin(b)
    return _build(*_merge(c0 - c1, list(t0) + [(t, -k) for t, k in t1]))


def _mul(a, b):
    return make("*", a, b)


def _fdiv(a, b):
    if b == Const(1) or a == Const(0):
        return a
    return make("//", a, b)


def _mod(a, b):
    if b == Const(1) or a == Const(0):
        return Const(0)
    return make("%", a, b)


def _prune(op: str, args: list) -> list:
    """Drop arguments of min/max that can never be chosen (by bounds over n >= 1)."""
    flat: list = []
    for a in args:
        flat.extend(a.args if isinstance(a, Op) and a.op == op else (a,))
    uniq = list(dict.fromkeys(flat))
    bs = {a: _bounds(a) for a in uniq}
    keep = []
    for a in uniq:
        lo, hi = bs[a]
        if op == "max" and any(o is not a and bs[o][0] >= hi and not (bs[o][0] == hi and uniq.index(o) > uniq.index(a))
                               for o in uniq):
            continue
        if op == "min" and any(o is not a and bs[o][1] <= lo and not (bs[o][1] == lo and uniq.index(o) > uniq.index(a))
                               for o in uniq):
            continue
        keep.append(a)
    return keep or uniq[:1]


def _max(*args):
    keep = _prune("max", list(args))
    return keep[0] if len(keep) == 1 else make("max", *keep)


def _min(*args):
    keep = _prune("min", list(args))
    return keep[0] if len(keep) == 1 else make("min", *keep)


def _half_pairs(q):
    """q * (q - 1) // 2 (exact for every integer q)."""
    return _fdiv(_mul(q, _sub(q, _k(1))), _k(2))


def _periodic_sum(L, B, s, p, c, sigma):
    """sum of (t + s) over t in [L, B] with (t + sigma) % p >= p - c (0 <= c <= p)."""
    X0 = _add(L, sigma)
    X1 = _max(_add(_add(B, sigma), _k(1)), X0)

    def parts(x):
        q, rho = _fdiv(x, p), _mod(x, p)
        k = _max(_k(0), _sub(rho, _sub(p, c)))
        ks = _add(_mul(q, c), k)
        js = _mul(_mul(c, p), _half_pairs(q))
        js = _add(js, _mul(q, _add(_mul(c, _sub(p, c)), _half_pairs(c))))
        js = _add(js, _mul(k, _sub(_add(_mul(q, p), p), c)))
        js = _add(js, _half_pairs(k))
        return ks, js

    k1, j1 = parts(X1)
    k0, j0 = parts(X0)
    return _add(_sub(j1, j0), _mul(_sub(s, sigma), _sub(k1, k0)))


def _neg(a):
    return make("neg", a)


def _tri(x):
    """max(0, x) * (max(0, x) + 1) // 2: the sum of max(0, u) over u <= x."""
    X = _max(_k(0), x)
    return _fdiv(_mul(X, _add(X, _k(1))), _k(2))


def _ramp_sum(A, B, s):
    """sum of max(0, t + s) over t in [A, B] (0 when B < A)."""
    one = _k(1)
    return _sub(_tri(_add(_max(B, _sub(A, one)), s)), _tri(_add(_sub(A, one), s)))


def _ap_ramp_sum(A, B, s, m, tau):
    """sum of max(0, t + s) over t in [A, B] with t % m == tau."""
    L = _max(A, _sub(_k(1), s))
    first = _add(L, _mod(_sub(tau, L), m))
    K = _max(_k(0), _add(_fdiv(_sub(B, first), m), _k(1)))
    return _add(_mul(K, _add(first, s)), _mul(m, _half_pairs(K)))


def _rect(R0, R1, C0, C1, lo, hi, m, keymod):
    """Pairs (i, j) in [R0, R1) x [C0, C1) with lo <= i - j <= hi, (i - j) % m == 0 and,
    if keymod = (l, c), j % l >= l - c.

    Without a summary, the pairs on diagonal d form a trapezoid in d, a sum of four ramps
    max(0, d - delta + shift); summing ramps over an interval (or an arithmetic progression
    for a stride) is closed form.  With a summary the same trapezoid is summed over key
    columns instead, restricted to the summary residues."""
    one = _k(1)
    H = _max(_k(0), _sub(R1, R0))
    lo_e = _sub(_add(R0, one), C1)
    lo_e = lo_e if lo is None else _max(lo, lo_e)
    hi_e = _sub(_sub(R1, one), C0)
    hi_e = hi_e if hi is None else _min(hi, hi_e)
    total = _k(0)
    if keymod is None:
        W = _max(_k(0), _sub(C1, C0))
        delta = _sub(R0, C0)
        A, B = _sub(lo_e, delta), _sub(hi_e, delta)
        tau = _mod(_neg(delta), m)
        for sign, s in [(1, W), (-1, _k(0)), (-1, _sub(W, H)), (1, _neg(H))]:
            if m == one:
                term = _ramp_sum(A, B, s)
            else:
                term = _ap_ramp_sum(A, B, s, m, tau)
            total = _add(total, term) if sign > 0 else _sub(total, term)
        return total
    if m != one:
        raise _NoForm("stride and summary together")
    l, c = keymod
    w = _max(_k(0), _add(_sub(hi_e, lo_e), one))
    base = _sub(lo_e, R0)
    for sign, s0 in [(1, w), (-1, _k(0)), (-1, _sub(w, H)), (1, _neg(H))]:
        s = _add(base, s0)
        term = _periodic_sum(_max(C0, _sub(one, s)), _sub(C1, one), s, l, c, _k(0))
        total = _add(total, term) if sign > 0 else _sub(total, term)
    return total


def _divides(a, b) -> bool:
    if a == b:
        return True
    return isinstance(a, Const) and isinstance(b, Const) and a.value > 0 and b.value % a.value == 0


def _conj_count(atoms: frozenset):
    """Closed form (IntExpr over n) of the pairs satisfying every atom of a conjunction."""
    N = NVar()
    lo = hi = None
    r0, r1, c0, c1 = [_k(0)], [N], [_k(0)], [N]
    mods, blocks, keymods = [], [], []
    for a in atoms:
        if isinstance(a, ir.Band):
            if a.lo is not None:
                lo = a.lo if lo is None else _max(lo, a.lo)
            if a.hi is not None:
                hi = a.hi if hi is None else _min(hi, a.hi)
        elif isinstance(a, ir.Rows):
            r0.append(a.a)
            r1.append(a.b)
        elif isinstance(a, ir.Cols):
            c0.append(a.a)
            c1.append(a.b)
        elif isinstance(a, ir.DiagMod):
            mods.append(a.m)
        elif isinstance(a, ir.Block):
            blocks.append(a.b)
        elif isinstance(a, ir.KeyMod):
            keymods.append((a.l, a.c))
        else:
            raise _NoForm(type(a).__name__)
    R0, R1, C0, C1 = _max(*r0), _min(*r1), _max(*c0), _min(*c1)
    if not mods:
        m = _k(1)
    elif len(set(mods)) == 1:
        m = mods[0]
    elif all(isinstance(x, Const) for x in mods):
        m = _k(math.lcm(*(x.value for x in mods)))
    else:
        raise _NoForm("several symbolic strides")
    keymod = None
    if keymods:
        if len(set(keymods)) > 1:
            raise _NoForm("several summaries")
        keymod = keymods[0]
    if not blocks:
        return _rect(R0, R1, C0, C1, lo, hi, m, keymod)
    bs = sorted(set(blocks), key=lambda x: (not isinstance(x, Const), x.value if isinstance(x, Const) else 0))
    b = bs[0]
    if not all(_divides(b, x) for x in bs):
        raise _NoForm("blocks of unrelated sizes")
    if keymod is not None and not _divides(keymod[0], b):
        raise _NoForm("summary period does not divide the block")
    one = _k(1)
    ba = _max(_fdiv(R0, b), _fdiv(C0, b))
    bz = _min(_fdiv(_sub(R1, one), b), _fdiv(_sub(C1, one), b))

    def cnt(beta):
        s = _mul(beta, b)
        e = _add(s, b)
        return _rect(_max(R0, s), _min(R1, e), _max(C0, s), _min(C1, e), lo, hi, m, keymod)

    q = _rect(_k(0), b, _k(0), b, lo, hi, m, keymod)
    total = _add(cnt(ba), cnt(_max(bz, _add(ba, one))))
    return _add(total, _mul(_max(_k(0), _sub(_sub(bz, ba), one)), q))


def _poly(node) -> dict:
    """The indicator of `node` as a multilinear polynomial in its atoms:
    {frozenset(atoms): coefficient} (Union = 1 - prod(1 - x), Not = 1 - x)."""
    if isinstance(node, ir.All):
        return {frozenset(): 1}
    if isinstance(node, ir.Empty):
        return {}
    if isinstance(node, ir.ATOMS):
        return {frozenset([node]): 1}
    if isinstance(node, ir.Not):
        return _padd({frozenset(): 1}, _poly(node.x), -1)
    if isinstance(node, ir.Inter):
        out = {frozenset(): 1}
        for y in node.items:
            out = _pmul(out, _poly(y))
        return out
    if isinstance(node, ir.Union):
        comp = {frozenset(): 1}
        for y in node.items:
            comp = _pmul(comp, _padd({frozenset(): 1}, _poly(y), -1))
        return _padd({frozenset(): 1}, comp, -1)
    raise _NoForm(type(node).__name__)


def _padd(a: dict, b: dict, sign: int) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + sign * v
        if out[k] == 0:
            del out[k]
    return out


def _pmul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ka, va in a.items():
        for kb, vb in b.items():
            k = ka | kb
            out[k] = out.get(k, 0) + va * vb
            if out[k] == 0:
                del out[k]
    if len(out) > MAX_MONOMIALS:
        raise _NoForm("too many terms")
    return out


def eval_int(e, n: int, memo: Optional[dict] = None) -> int:
    """Exact value of an IntExpr at n, memoised on shared subtrees (formulas are DAGs)."""
    memo = {} if memo is None else memo
    stack = [e]
    while stack:
        x = stack[-1]
        if id(x) in memo:
            stack.pop()
            continue
        if isinstance(x, Const):
            memo[id(x)] = x.value
            stack.pop()
            continue
        if isinstance(x, NVar):
            memo[id(x)] = n
            stack.pop()
            continue
        todo = [a for a in x.args if id(a) not in memo]
        if todo:
            stack.extend(todo)
            continue
        memo[id(x)] = _apply(x.op, [memo[id(a)] for a in x.args])
        stack.pop()
    return memo[id(e)]


def _valid_at(expr, n: int) -> bool:
    """Whether every atom's arguments are meaningful at n (the front end's checks would pass)."""
    try:
        for node in ir.walk(expr):
            if not isinstance(node, ir.ATOMS):
                continue
            v = [evaluate(x, n) for x in ir.int_args(node)]
            if isinstance(node, (ir.DiagMod, ir.Block)) and v[0] < 1:
                return False
            if isinstance(node, ir.KeyMod) and (v[0] < 1 or not 0 <= v[1] <= v[0]):
                return False
            if isinstance(node, ir.Random) and (v[1] < 1 or v[0] < 0):
                return False
            if isinstance(node, (ir.Rows, ir.Cols)) and (v[0] < 0 or v[1] < v[0]):
                return False
            if isinstance(node, ir.Band) and node.lo is not None and node.hi is not None and v[0] > v[1]:
                return False
    except EvalError:
        return False
    return True


VALIDATION_NS = tuple(range(1, 41)) + (47, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 500, 1000, 1023,
                                        1024, 1025, 2047, 2048, 2049, 4095, 4097, 10007)


@lru_cache(maxsize=256)
def derive(expr):
    """The pair count as an IntExpr over n by inclusion-exclusion over atoms, unchecked; None
    when some term has no closed form.  Per-head patterns: the sum over heads."""
    if isinstance(expr, ir.Heads):
        parts = [derive(c.expr) for c in expr.cases]
        if any(p is None for p in parts):
            return None
        total = _k(0)
        for c, p in zip(expr.cases, parts):
            total = _add(total, _mul(_k(c.hi - c.lo + 1), p))
        return total
    try:
        poly = _poly(expr)
        total = _k(0)
        for mono, coef in sorted(poly.items(), key=lambda kv: (len(kv[0]), str(sorted(map(str, kv[0]))))):
            term = _conj_count(mono)
            total = _add(total, term if coef == 1 else _mul(_k(coef), term))
    except _NoForm:
        return None
    return total


@lru_cache(maxsize=256)
def closed_form(expr):
    """The pair count of a (not yet substituted) expression as an exact IntExpr over n, or None.

    The derivation is exact by construction; as a guard against bugs it is also compared with
    the exact counter at ~60 lengths (small ones, around powers of two, past every window)."""
    total = derive(expr)
    if total is None:
        return None
    if isinstance(expr, ir.Heads):
        return total if all(closed_form(c.expr) is not None for c in expr.cases) else None
    ns = [n for n in VALIDATION_NS if _valid_at(expr, n)]
    if not ns:
        return None
    with np.errstate(all="ignore"):
        vals = _np_eval(_topo(total), np.array(ns, np.int64))[id(total)]  # values < 2**40 here: exact
    for n, v in zip(ns, vals.tolist()):
        try:
            e_n = ir.substitute_n(expr, n)
        except EvalError:
            return None
        if v != Engine(e_n, n).total():  # uncached: do not evict the engines in use
            return None
    return total


def to_sympy_memo(e, nsym, memo: Optional[dict] = None, evaluate: bool = True):
    """intexpr.to_sympy for DAG-shaped expressions (each shared node converted once).
    With evaluate=False min/max/floor/mod are built unevaluated (fast for large forms)."""
    import sympy as sp

    memo = {} if memo is None else memo
    key = id(e)
    if key in memo:
        return memo[key]
    if not evaluate:
        with sp.evaluate(False):
            return _to_sympy_inner(e, nsym, memo, sp)
    return _to_sympy_inner(e, nsym, memo, sp)


def _to_sympy_inner(e, nsym, memo, sp):
    key = id(e)
    if key in memo:
        return memo[key]
    if isinstance(e, Const):
        out = sp.Integer(e.value)
    elif isinstance(e, NVar):
        out = nsym
    else:
        a = [_to_sympy_inner(x, nsym, memo, sp) for x in e.args]
        op = e.op
        if op == "+":
            out = a[0] + a[1]
        elif op == "-":
            out = a[0] - a[1]
        elif op == "*":
            out = a[0] * a[1]
        elif op == "//" and e.args[1] == Const(2) and _consecutive_product(e.args[0]):
            out = a[0] / 2  # x * (x + 1) is even: keep it a polynomial
        elif op == "//":
            out = sp.floor(a[0] / a[1])
        elif op == "%":
            out = sp.Mod(a[0], a[1])
        elif op == "neg":
            out = -a[0]
        elif op == "min":
            out = sp.Min(*a)
        elif op == "max":
            out = sp.Max(*a)
        elif op == "isqrt":
            out = sp.floor(sp.sqrt(a[0]))
        elif op == "cdiv":
            out = sp.ceiling(a[0] / a[1])
        else:
            raise ValueError(op)
    memo[key] = out
    return out


def _consecutive_product(e) -> bool:
    """Whether e is x * (x + 1) or x * (x - 1) (so e // 2 is exact)."""
    if not (isinstance(e, Op) and e.op == "*"):
        return False
    x, y = e.args
    c0, t0 = _lin(x)
    c1, t1 = _lin(y)
    c, t = _merge(c1 - c0, list(t1) + [(u, -k) for u, k in t0])
    return not t and abs(c) == 1


def n_symbol():
    import sympy as sp

    return sp.Symbol("n", integer=True, positive=True)


def nnz_formula(expr):
    """The exact number of allowed pairs as a sympy expression in n (valid for every n >= 1
    at which the pattern is valid), or None when no closed form is found.

    `expr` is the IR before substituting n (`Pattern.expr`); for per-head patterns the result
    is the total over all heads."""
    f = closed_form(expr)
    if f is None:
        return None
    return pretty_formula(f, lambda n: _valid_at(expr, n))


# ============================================================== readable formulas

def _topo(e) -> list:
    """Unique nodes of an IntExpr DAG, children first."""
    out, seen, stack = [], set(), [(e, False)]
    while stack:
        x, done = stack.pop()
        if id(x) in seen:
            continue
        if done or not isinstance(x, Op):
            seen.add(id(x))
            out.append(x)
            continue
        stack.append((x, True))
        stack.extend((a, False) for a in x.args)
    return out


def _np_isqrt(x):
    r = np.floor(np.sqrt(np.maximum(x, 0).astype(np.float64))).astype(np.int64)
    r = np.where(r * r > x, r - 1, r)
    return np.where((r + 1) * (r + 1) <= x, r + 1, r)


def _np_eval(nodes: list, ns) -> dict:
    """Values of every node at every n in `ns` (int64 arrays), exact for the values used here."""
    val: dict = {}
    for x in nodes:
        if isinstance(x, Const):
            val[id(x)] = np.full(ns.shape, x.value, np.int64)
        elif isinstance(x, NVar):
            val[id(x)] = ns
        else:
            a = [val[id(y)] for y in x.args]
            op = x.op
            with np.errstate(divide="ignore", invalid="ignore"):
                if op == "+":
                    v = a[0] + a[1]
                elif op == "-":
                    v = a[0] - a[1]
                elif op == "*":
                    v = a[0] * a[1]
                elif op in ("//", "%", "cdiv"):
                    d = np.where(a[1] == 0, 1, a[1])
                    v = a[0] // d if op == "//" else (a[0] % d if op == "%" else -(-a[0] // d))
                elif op == "neg":
                    v = -a[0]
                elif op == "min":
                    v = np.minimum.reduce(a)
                elif op == "max":
                    v = np.maximum.reduce(a)
                elif op == "isqrt":
                    v = _np_isqrt(a[0])
                else:
                    raise ValueError(op)
            val[id(x)] = v
    return val


@_id_cached
def _inc(e) -> tuple:
    """Bounds on e(n + 1) - e(n) over n >= 1 (floats, +-inf when unknown)."""
    if isinstance(e, Const):
        return (0, 0)
    if isinstance(e, NVar):
        return (1, 1)
    a = [_inc(x) for x in e.args]
    op = e.op
    if op in ("+", "-", "neg"):  # the increment of a sum is the sum of the increments
        return _linear_interval(op, a)
    if op in ("min", "max"):
        return (min(x[0] for x in a), max(x[1] for x in a))
    if op == "*":
        for k in (0, 1):
            if isinstance(e.args[k], Const):
                c = e.args[k].value
                lo, hi = a[1 - k]
                return (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
        if all(_bounds(x)[0] >= 0 and _inc(x)[0] >= 0 for x in e.args):
            return (0, _INF)
        return (-_INF, _INF)
    if op == "//" and isinstance(e.args[1], Const) and e.args[1].value > 0:
        c = e.args[1].value
        lo, hi = a[0]
        return (math.floor(lo / c) if math.isfinite(lo) else -_INF, math.ceil(hi / c) if math.isfinite(hi) else _INF)
    if op == "isqrt" and a[0][0] >= 0:
        return (0, a[0][1])
    return (-_INF, _INF)


def _quasi_period(e) -> Optional[int]:
    """P such that e(n + P) - e(n) is a constant, when e is built from n, constants, +, -,
    constant multiples, and // or % by positive constants; else None."""
    P = 1
    for x in _topo(e):
        if isinstance(x, Op):
            if x.op in ("//", "%"):
                if not (isinstance(x.args[1], Const) and x.args[1].value > 0):
                    return None
                P = math.lcm(P, x.args[1].value)
            elif x.op == "*":
                if not any(isinstance(a, Const) for a in x.args):
                    return None
            elif x.op not in ("+", "-", "neg"):
                return None
    return P


def _stays(op: str, chosen, other, n0: int) -> bool:
    """Whether `chosen` stays the min (or max) against `other` for every n >= n0.

    Proofs: the difference starts with the right sign and its per-step increment never has the
    wrong sign; or the difference is quasi-linear with period P, has the right sign on one full
    period and does not drift the wrong way from one period to the next."""
    d = _sub(chosen, other) if op == "max" else _sub(other, chosen)  # want d >= 0
    lo, _ = _inc(d)
    if eval_int(d, n0) >= 0 and lo >= 0:
        return True
    if _bounds(d)[0] >= 0:
        return True
    P = _quasi_period(d)
    if P is None or P > (1 << 16):
        return False
    ns = np.arange(n0, n0 + P + 1, dtype=np.int64)
    v = _np_eval(_topo(d), ns)[id(d)]
    return bool(v[:P].min() >= 0 and v[P] - v[0] >= 0)


def _resolve(e, choice: dict, memo: dict):
    """Rebuild e with the min/max nodes in `choice` (id -> argument index) replaced."""
    if id(e) in memo:
        return memo[id(e)]
    if not isinstance(e, Op):
        out = e
    else:
        args = [_resolve(a, choice, memo) for a in e.args]
        if e.op in ("min", "max") and id(e) in choice:
            out = args[choice[id(e)]]
        elif e.op == "min":
            out = _min(*args)
        elif e.op == "max":
            out = _max(*args)
        elif e.op == "+":
            out = _add(*args)
        elif e.op == "-":
            out = _sub(*args)
        elif e.op == "//":
            out = _fdiv(*args)
        elif e.op == "%":
            out = _mod(*args)
        else:
            out = make(e.op, *args)
    memo[id(e)] = out
    return out


def _constants(e) -> list:
    return [abs(x.value) for x in _topo(e) if isinstance(x, Const)]


MAX_PIECES = 4
SIMPLIFY_NODES = 600  # larger forms are printed as derived (sympy's simplification is too slow)


def regimes(f, valid=None) -> list:
    """Split n >= 1 into ranges where every min/max of the closed form `f` picks a fixed argument.

    Returns [(n_lo, n_hi or None, IntExpr)], each expression exact on its range.  Ranges up to a
    scan limit are found by exact evaluation at every n; the last, unbounded range keeps a choice
    only where `_stays` proves it for all larger n (the other min/max are kept as they are)."""
    nodes = _topo(f)
    mm = [x for x in nodes if isinstance(x, Op) and x.op in ("min", "max")]
    if not mm:
        return [(1, None, f)]
    limit = int(min(1 << 14, max(64, 2 * max(_constants(f) + [1]) + 16)))
    ns = np.arange(1, limit + 1, dtype=np.int64)
    val = _np_eval(nodes, ns)
    care = np.ones(limit, bool) if valid is None else np.array([valid(int(v)) for v in ns])
    # nxt[x][k][i]: first index >= i where argument k of node x is not optimal (limit if none)
    idx = np.arange(limit)
    nxt = {}
    for x in mm:
        v = val[id(x)]
        rows = []
        for a in x.args:
            bad = ~((val[id(a)] == v) | ~care)
            pos = np.where(bad, idx, limit)
            rows.append(np.minimum.accumulate(pos[::-1])[::-1])
        nxt[id(x)] = rows
    pieces = []
    start = 0
    while start < limit:
        choice, end = {}, limit
        for x in mm:
            runs = [int(r[start]) for r in nxt[id(x)]]
            k = int(np.argmax(runs))
            choice[id(x)] = k
            end = min(end, runs[k])
        end = max(end, start + 1)
        pieces.append((start + 1, end, choice))
        start = end
    if len(pieces) > MAX_PIECES:  # many small-n ranges: the general form below the last one
        pieces = [(1, pieces[-1][0] - 1, None), pieces[-1]]
    # the last piece runs to infinity: keep only choices proven to stay
    n0, _, choice = pieces[-1]
    memo: dict = {}
    proven = {}
    for x in mm:  # children first, so arguments are already resolved
        args = [_resolve(a, proven, memo) for a in x.args]
        k = choice[id(x)]
        if all(_stays(x.op, args[k], args[o], n0) for o in range(len(args)) if o != k):
            proven[id(x)] = k
    out = []
    for lo, hi, ch in pieces[:-1]:
        out.append((lo, hi, f if ch is None else _resolve(f, ch, {})))
    out.append((n0, None, _resolve(f, proven, {})))
    return out


def _simplifiable(e) -> bool:
    """Whether sympy can expand e quickly: not too large, and n only appears through constant
    divisions (floor(sqrt(n)) and divisions by it make sympy's assumption system crawl)."""
    nodes = _topo(e)
    if len(nodes) > SIMPLIFY_NODES:
        return False
    for x in nodes:
        if isinstance(x, Op) and (x.op == "isqrt" or (x.op in ("//", "%", "cdiv") and not isinstance(x.args[1], Const))):
            return False
    return True


def formula_text(e) -> str:
    """e as sympy-syntax text without building sympy objects (fast for large forms)."""
    memo: dict = {}

    def go(x) -> tuple:
        key = id(x)
        if key in memo:
            return memo[key]
        if isinstance(x, Const):
            out = (str(x.value), 4 if x.value >= 0 else 2)
        elif isinstance(x, NVar):
            out = ("n", 4)
        else:
            a = [go(y) for y in x.args]
            op = x.op

            def wrap(t, p):
                return t[0] if t[1] >= p else f"({t[0]})"

            if op == "+":
                out = (f"{wrap(a[0], 1)} + {wrap(a[1], 1)}", 1)
            elif op == "-":
                out = (f"{wrap(a[0], 1)} - {wrap(a[1], 2)}", 1)
            elif op == "*":
                out = (f"{wrap(a[0], 3)}*{wrap(a[1], 3)}", 3)
            elif op == "neg":
                out = (f"-{wrap(a[0], 3)}", 2)
            elif op == "//" and x.args[1] == Const(2) and _consecutive_product(x.args[0]):
                out = (f"{wrap(a[0], 3)}/2", 3)
            elif op == "//":
                out = (f"floor({wrap(a[0], 3)}/{wrap(a[1], 4)})", 4)
            elif op == "cdiv":
                out = (f"ceiling({wrap(a[0], 3)}/{wrap(a[1], 4)})", 4)
            elif op == "%":
                out = (f"Mod({a[0][0]}, {a[1][0]})", 4)
            elif op in ("min", "max"):
                out = (f"{op.capitalize()}({', '.join(t[0] for t in a)})", 4)
            elif op == "isqrt":
                out = (f"floor(sqrt({a[0][0]}))", 4)
            else:
                raise ValueError(op)
        memo[key] = out
        return out

    return go(e)[0]


def _pieces(f, valid):
    return regimes(f, valid)


def formula_string(f, valid=None) -> str:
    """The text of `pretty_formula` (sympy syntax), without sympy's slow printing of large forms."""
    import sympy as sp

    n = n_symbol()
    texts = []
    for lo, hi, e in _pieces(f, valid):
        texts.append((hi, str(sp.expand(to_sympy_memo(e, n))) if _simplifiable(e) else formula_text(e)))
    merged: list = []
    for hi, t in texts:
        if merged and merged[-1][1] == t:
            merged[-1] = (hi, t)
        else:
            merged.append((hi, t))
    if len(merged) == 1:
        return merged[0][1]
    parts = [f"({t}, n <= {hi})" for hi, t in merged[:-1]] + [f"({merged[-1][1]}, True)"]
    return "Piecewise(" + ", ".join(parts) + ")"


def pretty_formula(f, valid=None):
    """A readable sympy form of the closed form f: a Piecewise over n-ranges, each simplified."""
    import sympy as sp

    n = n_symbol()
    pieces = _pieces(f, valid)
    exprs = []
    for lo, hi, e in pieces:
        small = _simplifiable(e)
        s = to_sympy_memo(e, n, evaluate=small)
        if small:
            s = sp.expand(s)
        exprs.append((lo, hi, s))
    merged: list = []
    for lo, hi, s in exprs:  # neighbours with the same expression merge
        if merged and merged[-1][2] == s:
            merged[-1] = (merged[-1][0], hi, s)
        else:
            merged.append((lo, hi, s))
    if len(merged) == 1:
        return merged[0][2]
    args = [(s, n <= hi) for lo, hi, s in merged[:-1]] + [(merged[-1][2], True)]
    return sp.Piecewise(*args)


# ============================================================== flops and order

def flops(nnz: int, head_dim: int) -> tuple[int, int]:
    """(forward, backward) flops for `nnz` allowed pairs (summed over heads), per batch element:
    forward 4 * nnz * head_dim (QK^T and PV, 2 flops per multiply-add), backward 2.5x that."""
    fwd = 4 * int(nnz) * int(head_dim)
    return fwd, fwd * 5 // 2


_PROBES = (1 << 56, 1 << 60, 1 << 64)  # far enough that lower-order terms vanish


def _growth(values: list, ns: tuple) -> Optional[tuple]:
    """(exponent rounded to 1/2, coefficient at the largest n) of counts growing like C n^a."""
    if values[-1] <= 0:
        return (0.0, 0.0)
    if min(values) <= 0:
        return None
    a1 = math.log(values[1] / values[0]) / math.log(ns[1] / ns[0])
    a2 = math.log(values[2] / values[1]) / math.log(ns[2] / ns[1])
    a = round(2 * a2) / 2
    if abs(a2 - a) > 0.08 or abs(a1 - a2) > 0.15:
        return None
    return (a, values[-1] / float(ns[-1]) ** a)


def _power(a: float) -> str:
    if a == 0:
        return "1"
    if a == 1:
        return "n"
    return f"n^{int(a)}" if a == int(a) else f"n^{a:g}"


def asymptotic_order(pattern) -> str:
    """The growth of the pair count as n -> oo, e.g. "O(n·w)", "O(n^1.5)", "O(n^2)".

    Derived from the closed form evaluated exactly at n = 2^56..2^64 (every min/max has settled
    by then, and lower-order terms are negligible); a parameter whose value changes the leading coefficient is named in the order
    (probed by re-resolving the pattern with the parameter doubled).  Without a closed form the
    exact counter at n = 2^14..2^18 is used and no parameter is named."""
    f = derive(pattern.expr)
    if f is None:
        ns = (1 << 14, 1 << 16, 1 << 18)
        try:
            vals = [count_nnz(pattern.at(k), k) for k in ns]
        except Exception:  # noqa: BLE001 - a pattern invalid at these lengths has no order
            return "unknown"
        g = _growth(vals, ns)
        return "unknown" if g is None else f"O({_power(g[0])})"
    try:
        g = _growth([eval_int(f, k) for k in _PROBES], _PROBES)
    except (EvalError, ZeroDivisionError, OverflowError):
        return "unknown"
    if g is None:
        return "unknown"
    a, coef = g
    if coef == 0:
        return "O(1)"
    names = []
    for name, other in _param_variants(pattern):
        try:
            g2 = _growth([eval_int(other, k) for k in _PROBES], _PROBES)
        except (EvalError, ZeroDivisionError, OverflowError):
            continue
        if g2 is None or g2[0] != a or abs(g2[1] / coef - 1) < 1e-4:
            continue
        names.append(("·" if g2[1] > coef else "/") + name)
    base = _power(a)
    if names and base == "1":
        base = names.pop(0)[1:]
    return f"O({base}{''.join(names)})"


def _param_variants(pattern):
    """(name, closed form with that integer parameter doubled plus one) for each parameter."""
    from .errors import PatternError
    from .frontend import parse_program, resolve

    given = {}
    for name, value in pattern.params:
        try:
            given[name] = int(value)
        except ValueError:
            pass
    if not given:
        return
    try:
        prog = parse_program(pattern.source, pattern.filename)
    except PatternError:
        return
    for name, v in given.items():
        try:
            other = resolve(prog, pattern.name, dict(given, **{name: 2 * v + 1}))
        except PatternError:
            continue
        f = derive(other.expr)
        if f is not None:
            yield name, f
