"""Tile classification: which (query tile, key tile) pairs a kernel must visit, and how.

For tile sizes (bm, bn), every tile pair is EMPTY (skipped), PARTIAL (masked) or
FULL (no mask arithmetic).  The map is computed analytically, never from the
n x n mask, and is returned as *runs*: "key tiles k0, k0 + step, ... < k1 of
query tile qt all have state s".  Work and output are proportional to the
number of runs, which is at most the number of non-empty tiles and usually far
fewer (a causal mask at n = 2**20 is 3 runs per query tile).

How: for each query tile, the key-tile axis is cut at every tile where some
interval atom (band edge, key range, block or random-block boundary) changes.
Between cuts each interval atom is EMPTY or FULL, or partial with the same
pattern on every tile (a row range, the query rows of one block), so all tiles
of a region are alike up to the stride/summary atoms, which repeat every
pi = period / gcd(period, bn) key tiles.  A region is therefore decided by at
most pi representative tiles.  A representative is decided from the atoms'
exact per-tile states: if the pattern is constant given them, or depends on a
single partial atom, the state follows directly; otherwise (two interacting
partial atoms, a negation of a combination, random blocks overlapping band
edges...) the tile's allowed pairs are counted exactly with the rectangle
counter of `patternc.counting` (closed-form sums over row ranges, not an evaluation
of the tile's pairs), and EMPTY/FULL/PARTIAL follow from the count.  The one
exception is the counter's own fallback: for several strides/summaries whose
combined period exceeds counting.PERIOD_LIMIT it evaluates just that tile with
`semantics.allowed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import ir
from .atoms import atoms_of, eval_formula, random_picks, residues_below, view
from .counting import count_nnz, engine, ragged

EMPTY, PARTIAL, FULL = 0, 1, 2
MAX_ENUM = 12  # partial atoms enumerated exhaustively when checking which ones matter


@dataclass(frozen=True)
class TileMap:
    """Non-empty tiles as runs: tiles (qt, k0 + t*step) for k0 + t*step < k1 have `state`."""

    n: int
    bm: int
    bn: int
    qt: np.ndarray
    k0: np.ndarray
    k1: np.ndarray
    step: np.ndarray
    state: np.ndarray

    @property
    def nqt(self) -> int:
        return -(-self.n // self.bm)

    @property
    def nkt(self) -> int:
        return -(-self.n // self.bn)

    @property
    def run_lengths(self) -> np.ndarray:
        return (self.k1 - self.k0 + self.step - 1) // self.step

    @property
    def n_tiles(self) -> int:
        return self.nqt * self.nkt

    @property
    def n_full(self) -> int:
        return int(self.run_lengths[self.state == FULL].sum())

    @property
    def n_partial(self) -> int:
        return int(self.run_lengths[self.state == PARTIAL].sum())

    @property
    def n_nonempty(self) -> int:
        return int(self.run_lengths.sum())

    @property
    def n_empty(self) -> int:
        return self.n_tiles - self.n_nonempty

    @property
    def counts(self) -> dict:
        return {"empty": self.n_empty, "partial": self.n_partial, "full": self.n_full, "total": self.n_tiles}

    @property
    def nonempty_pairs(self) -> int:
        """(i, j) pairs inside non-empty tiles, counting only 0 <= i, j < n (ragged edges)."""
        rows = np.minimum(self.n, (self.qt + 1) * self.bm) - self.qt * self.bm
        last = self.nkt - 1
        width = np.where(self.k0 == last, self.n - last * self.bn, self.bn)  # the ragged tile is its own run
        return int((self.run_lengths * rows * width).sum())

    def tiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every non-empty tile as arrays (qt, kt, state), sorted by (qt, kt)."""
        own, off = ragged(np.zeros(len(self.qt), np.int64), self.run_lengths)
        kt = self.k0[own] + off * self.step[own]
        qt, st = self.qt[own], self.state[own]
        order = np.lexsort((kt, qt))
        return qt[order], kt[order], st[order]

    def dense(self) -> np.ndarray:
        """The (nqt, nkt) state matrix (for small maps, tests and pictures)."""
        out = np.zeros((self.nqt, self.nkt), np.int8)
        qt, kt, st = self.tiles()
        out[qt, kt] = st
        return out


# ---------------------------------------------------------------- per-tile atom states

def _states(v, a0, a1, b0, b1, n: int):
    """(nonempty, full) of one atom on tiles [a0, a1) x [b0, b1) (exact, vectorised)."""
    k, a = v.kind, v.args
    if k == "band":
        lo, hi = a
        dmin, dmax = a0 - (b1 - 1), (a1 - 1) - b0
        ne = np.ones(a0.shape, bool)
        fu = np.ones(a0.shape, bool)
        if lo is not None:
            ne &= dmax >= lo
            fu &= dmin >= lo
        if hi is not None:
            ne &= dmin <= hi
            fu &= dmax <= hi
        return ne, fu
    if k == "cols":
        return np.maximum(a[0], b0) < np.minimum(a[1], b1), (a[0] <= b0) & (b1 <= a[1])
    if k == "rows":
        return np.maximum(a[0], a0) < np.minimum(a[1], a1), (a[0] <= a0) & (a1 <= a[1])
    if k == "true":
        return np.ones(a0.shape, bool), np.ones(a0.shape, bool)
    if k == "block":
        b = a[0]
        q0, q1, k0, k1 = a0 // b, (a1 - 1) // b, b0 // b, (b1 - 1) // b
        return np.maximum(q0, k0) <= np.minimum(q1, k1), (q0 == q1) & (k0 == k1) & (q0 == k0)
    if k == "dmod":
        m = a[0]
        dmin, dmax = a0 - (b1 - 1), (a1 - 1) - b0
        return (dmax // m) * m >= dmin, (dmin == dmax) & (dmin % m == 0)
    if k == "kmod":
        cnt = residues_below(b1, a) - residues_below(b0, a)
        return cnt > 0, cnt == b1 - b0
    if k == "rmod":  # a set of query rows, the same for every key tile of a query tile
        cnt = residues_below(a1, a) - residues_below(a0, a)
        return cnt > 0, cnt == a1 - a0
    if k == "random":
        r, b, seed = a
        q0, q1, k0, k1 = a0 // b, (a1 - 1) // b, b0 // b, (b1 - 1) // b
        nkb = k1 - k0 + 1
        ne = np.zeros(a0.shape, bool)
        fu = np.ones(a0.shape, bool)
        span = int((q1 - q0).max(initial=0)) + 1
        for o in range(span):
            qb = q0 + o
            live = qb <= q1
            picks = random_picks(r, b, seed, n, qb)
            hits = ((picks >= k0[:, None]) & (picks <= k1[:, None])).sum(axis=1)
            ne |= live & (hits > 0)
            fu &= ~live | (hits == nkb)
        return ne, fu
    raise ValueError(k)


def _period_tiles(v, bn: int) -> int:
    p = v.args[0]
    return p // math.gcd(p, bn)


# ---------------------------------------------------------------- breakpoints

def _breakpoints(views, n: int, bm: int, bn: int):
    """(qt, kt) pairs where a region may start: every tile where an interval atom changes."""
    nqt, nkt = -(-n // bm), -(-n // bn)
    qt = np.arange(nqt, dtype=np.int64)
    a0 = qt * bm
    a1 = np.minimum(n, a0 + bm)
    qs, ks = [qt, qt], [np.zeros(nqt, np.int64), np.full(nqt, nkt, np.int64)]
    if n % bn:
        qs.append(qt)
        ks.append(np.full(nqt, nkt - 1, np.int64))

    def span(x0, x1):  # every tile index touching keys [x0, x1], plus the one after
        t0 = np.clip(x0 // bn, 0, nkt)
        t1 = np.clip(x1 // bn + 1, 0, nkt)
        own, kt = ragged(t0, np.maximum(0, t1 - t0 + 1))
        qs.append(qt[own])
        ks.append(kt)

    def edge(x):  # a key boundary at position x (one per query tile): its tile and the next
        t = np.clip(x // bn, 0, nkt)
        qs.extend([qt, qt])
        ks.extend([t, np.minimum(t + 1, nkt)])

    for v in views:
        k, a = v.kind, v.args
        if k == "band":
            for side in a:
                if side is not None:
                    span(a0 - side, a1 - 1 - side)
        elif k == "cols":
            for x in a:
                edge(np.full(nqt, x, np.int64))
        elif k == "block":
            b = a[0]
            q0, q1 = a0 // b, (a1 - 1) // b
            own, beta = ragged(q0, q1 - q0 + 2)
            t = np.clip((beta * b) // bn, 0, nkt)
            qs.extend([qt[own], qt[own]])
            ks.extend([t, np.minimum(t + 1, nkt)])
        elif k == "random":
            r, b, seed = a
            q0, q1 = a0 // b, (a1 - 1) // b
            own, qb = ragged(q0, q1 - q0 + 1)
            picks = random_picks(r, b, seed, n, qb)
            for col in range(picks.shape[1]):
                for x in (picks[:, col] * b, picks[:, col] * b + b):
                    t = np.clip(x // bn, 0, nkt)
                    qs.extend([qt[own], qt[own]])
                    ks.extend([t, np.minimum(t + 1, nkt)])
    q = np.concatenate(qs)
    kk = np.concatenate(ks)
    key = np.unique(q * (nkt + 1) + kk)
    return key // (nkt + 1), key % (nkt + 1)


# ---------------------------------------------------------------- classification

class _Classifier:
    """Decides tile states from atom states, with exact counts where that is not enough."""

    def __init__(self, expr, n: int):
        self.expr, self.n = expr, n
        self.views = [view(a, n) for a in atoms_of(expr)]
        self.nodes = [v.node for v in self.views]
        self.cache: dict = {}

    def decide(self, sig: tuple):
        """Given per-atom states (EMPTY / PARTIAL / FULL; None = not known yet, treated as
        partial) -> ('const', state) or ('vary', indices of the partial atoms that matter)."""
        got = self.cache.get(sig)
        if got is not None:
            return got
        env = {}
        var = []
        for k, (node, s) in enumerate(zip(self.nodes, sig)):
            if s == EMPTY:
                env[node] = np.False_
            elif s == FULL:
                env[node] = np.True_
            else:
                var.append(k)
        if len(var) > MAX_ENUM:
            out = ("vary", tuple(var))
        else:
            idx = np.arange(1 << len(var))
            for b, k in enumerate(var):
                env[self.nodes[k]] = ((idx >> b) & 1).astype(bool)
            f = np.broadcast_to(eval_formula(self.expr, env), idx.shape)
            if f.all() or not f.any():
                out = ("const", FULL if f.all() else EMPTY)
            else:
                out = ("vary", tuple(k for b, k in enumerate(var) if (f != f[idx ^ (1 << b)]).any()))
        self.cache[sig] = out
        return out


def _decode(c: int, m: int) -> list:
    out = []
    for _ in range(m):
        out.append(c % 3)
        c //= 3
    return out[::-1]


def tile_map(expr_at_n, n: int, bm: int, bn: Optional[int] = None) -> TileMap:
    """Classify every tile of an n-substituted, single-head expression (see the module doc)."""
    if isinstance(expr_at_n, ir.Heads):
        raise TypeError("per-head pattern: classify each head's expression")
    bn = bm if bn is None else bn
    if bm < 1 or bn < 1:
        raise ValueError("tile sizes must be >= 1")
    z = np.zeros(0, np.int64)
    if n <= 0 or isinstance(expr_at_n, ir.Empty):
        return TileMap(max(n, 0), bm, bn, z, z, z, z, z.astype(np.int8))
    cl = _Classifier(expr_at_n, n)
    views = cl.views
    per = [k for k, v in enumerate(views) if v.periodic]
    bq, bk = _breakpoints(views, n, bm, bn)
    starts = np.zeros(len(bq), bool)
    starts[:-1] = bq[1:] == bq[:-1]  # the last breakpoint of a query tile is its end (nkt)
    nxt = np.empty_like(bk)
    nxt[:-1] = bk[1:]
    rq, rk0, rk1 = bq[starts], bk[starts], nxt[starts]

    def rect(q, k):
        a0, b0 = q * bm, k * bn
        return a0, np.minimum(n, a0 + bm), b0, np.minimum(n, b0 + bn)

    def state_code(idx, a0, a1, b0, b1):
        ne, fu = _states(views[idx], a0, a1, b0, b1, n)
        return np.where(fu, FULL, np.where(ne, PARTIAL, EMPTY)).astype(np.int64)

    a0, a1, b0, b1 = rect(rq, rk0)
    code = np.zeros(len(rq), np.int64)
    for k, v in enumerate(views):
        code = code * 3 + (PARTIAL if v.periodic else state_code(k, a0, a1, b0, b1))
    runs: list = []  # (qt, k0, k1, step, state) arrays
    counts: list = []  # runs whose state an exact count of their first tile decides

    def emit(q, k0, k1, step, d):
        if d[0] == "const":
            if d[1] != EMPTY:
                runs.append((q, k0, k1, step, np.full(len(q), d[1], np.int8)))
        elif len(d[1]) == 1:  # depends on one partial atom only: partial
            runs.append((q, k0, k1, step, np.full(len(q), PARTIAL, np.int8)))
        else:
            counts.append((q, k0, k1, step))

    ucode, inv = np.unique(code, return_inverse=True)
    for u, c in enumerate(ucode.tolist()):
        sel = np.nonzero(inv == u)[0]
        sig = tuple(None if views[k].periodic else s for k, s in enumerate(_decode(c, len(views))))
        d = cl.decide(sig)
        q, k0, k1 = rq[sel], rk0[sel], rk1[sel]
        if d[0] == "const" or not any(views[k].periodic for k in d[1]):
            emit(q, k0, k1, np.ones(len(q), np.int64), d)  # uniform region
            continue
        # stride/summary atoms matter: one representative per residue of the key tile
        pi = 1
        for k in per:
            pi = math.lcm(pi, _period_tiles(views[k], bn))
        own, rho = ragged(np.zeros(len(q), np.int64), np.minimum(pi, k1 - k0))
        tq, tk, tk1 = q[own], k0[own] + rho, k1[own]
        step = np.where(tk1 - k0[own] > pi, pi, tk1 - tk)
        ta0, ta1, tb0, tb1 = rect(tq, tk)
        pcode = np.zeros(len(tq), np.int64)
        for k in per:
            pcode = pcode * 3 + state_code(k, ta0, ta1, tb0, tb1)
        us, sinv = np.unique(pcode, return_inverse=True)
        for w, sc in enumerate(us.tolist()):
            ss = np.nonzero(sinv == w)[0]
            pv = dict(zip(per, _decode(sc, len(per))))
            sig2 = tuple(pv[k] if k in pv else sig[k] for k in range(len(views)))
            emit(tq[ss], tk[ss], tk1[ss], step[ss], cl.decide(sig2))
    if counts:
        q, k0, k1, st = (np.concatenate([c[i] for c in counts]) for i in range(4))
        a0_, a1_, b0_, b1_ = rect(q, k0)
        cnt = engine(expr_at_n, n).rect_counts(a0_, a1_, b0_, b1_)
        area = (a1_ - a0_) * (b1_ - b0_)
        s_ = np.where(cnt == 0, EMPTY, np.where(cnt == area, FULL, PARTIAL)).astype(np.int8)
        live = s_ != EMPTY
        runs.append((q[live], k0[live], k1[live], st[live], s_[live]))
    if not runs:
        return TileMap(n, bm, bn, z, z, z, z, z.astype(np.int8))
    qt_, k0_, k1_, step_ = (np.concatenate([r[i] for r in runs]).astype(np.int64) for i in range(4))
    s_ = np.concatenate([r[4] for r in runs]).astype(np.int8)
    order = np.lexsort((k0_, qt_))
    return TileMap(n, bm, bn, qt_[order], k0_[order], k1_[order], step_[order], s_[order])


def tile_efficiency(expr_at_n, n: int, bm: int, bn: Optional[int] = None, nnz: Optional[int] = None) -> float:
    """Allowed pairs / pairs inside non-empty tiles (pairs counted only inside 0..n-1).
    1.0 when no tile is visited."""
    if isinstance(expr_at_n, ir.Heads):
        tot = vis = 0
        for c in expr_at_n.cases:
            h = c.hi - c.lo + 1
            tot += h * count_nnz(c.expr, n)
            vis += h * tile_map(c.expr, n, bm, bn).nonempty_pairs
        return tot / vis if vis else 1.0
    tm = tile_map(expr_at_n, n, bm, bn)
    vis = tm.nonempty_pairs
    if vis == 0:
        return 1.0
    return (count_nnz(expr_at_n, n) if nnz is None else nnz) / vis
