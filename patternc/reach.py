"""Reachability through stacked attention layers, exactly, without the n x n token graph.

After one layer output i depends on input j iff allowed(i, j); after L stacked layers
(no residual connection) iff there is a walk i = v0 -> v1 -> ... -> vL = j of exactly
L allowed steps, i.e. (A^L)[i, j] for the boolean mask A.

Full reach: every output depends on every input it could depend on.  For a causal
pattern (no allowed pair has j > i) that means every j <= i; for any other
pattern, every pair.  `layers_to_full_reach` is the smallest such L, or None when
no L works.  Once reached, full reach persists for all larger L (we check the
conditions that make this true: no empty row or column, and for causal patterns
an allowed diagonal), so "smallest L" is well defined.

Methods, tried in order; each is exact where it applies:

* certificates of "never": an empty row or column; a causal pattern missing a
  diagonal entry; every allowed pair inside one residue class mod g or one
  block; a closed prefix or suffix of positions that never attends outside;
* L = 1 by counting; L = 2 by a hub (a position whose row and column are full)
  or, for causal patterns, by "downward-full" columns (summary/sink columns that
  every later query attends) plus the pattern's own pairs;
* interval patterns (every row one interval, both ends non-decreasing,
  neighbouring rows touching): the L-layer reach of i is [l^L(i), h^L(i)], so L
  follows from iterating l and h from the two ends (local, causal, bands,
  blocks, ...).  For causal patterns a prefix of downward-full columns (sinks)
  is cut off first, since walks to a later key never enter it;
* causal patterns that depend on i - j only (bands, strides): a walk is a
  decomposition of i - j into L allowed differences, so L is the first L-fold
  sumset of the allowed differences covering [0, n) (FFT convolutions);
* twin quotient: positions whose rows and columns are identical (block, random,
  global and summary structure without bands) collapse into classes; the
  quotient's adjacency is exact and small;
* dense boolean matrix powers for n <= DENSE_N.

When none applies the result is undecided: `layers_to_full_reach` raises
ReachUndecided and `full_reach` reports decided=False (the analysis prints
"unknown").  `full_reach(..., structural_only=True)` skips the methods whose cost
grows with n^2 (the analysis uses it for n > EXACT_N); above ARRAY_N the methods that need
arrays of n positions (sumsets, twin classes) are skipped too, so that n = 2^30 costs what
the pattern's row ranges cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import ir
from .atoms import atom_truth, atoms_of, eval_formula, residue_in, view
from .counting import count_nnz, engine
from .intexpr import Const
from .semantics import allowed, dense_mask_numpy

DENSE_N = 1024  # dense boolean matrix powers up to this n
QUOTIENT_MAX = 2048  # largest twin quotient solved densely
EXACT_N = 65536  # above this, the analysis only runs the structural methods
ARRAY_N = 1 << 22  # above this, no method allocates arrays of n positions (sumsets, twin classes)


class ReachUndecided(ValueError):
    """No exact method applies to this pattern at this n."""


@dataclass(frozen=True)
class Reach:
    """Result of the full-reach analysis."""

    layers: Optional[int]  # None: never (when decided) or unknown (when not decided)
    decided: bool
    method: str
    causal: bool


# ---------------------------------------------------------------- small helpers

def _plain(expr) -> None:
    if isinstance(expr, ir.Heads):
        raise TypeError("per-head pattern: analyse each head's expression")


def empty_rows(expr_at_n, n: int, limit: int = 5) -> tuple[int, list]:
    """(number of query rows with no allowed key, the first `limit` of them)."""
    _plain(expr_at_n)
    if n <= 0:
        return 0, []
    return engine(expr_at_n, n).empty_rows(limit)


def empty_columns(expr_at_n, n: int, limit: int = 5) -> tuple[int, list]:
    """(number of keys no query attends, the first `limit` of them)."""
    _plain(expr_at_n)
    if n <= 0:
        return 0, []
    return engine(expr_at_n, n, True).empty_rows(limit)


def _count(expr, n: int) -> int:
    return count_nnz(expr, n)


def is_causal(expr_at_n, n: int) -> bool:
    """No allowed pair has j > i."""
    return _count(ir.inter([expr_at_n, ir.band(None, Const(-1))]), n) == 0


# ---------------------------------------------------------------- dense and quotient methods

def bool_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32) @ b.astype(np.float32)) > 0.5


def dense_layers(A: np.ndarray, causal: bool) -> Optional[int]:
    """Smallest L with A^L covering the target (lower triangle if causal, else everything), or
    None.  Assumes full reach is monotone in L (no empty row/column; causal: full diagonal)."""
    n = A.shape[0]
    full = (lambda R: bool(R[np.tril_indices(n)].all())) if causal else (lambda R: bool(R.all()))
    R = A
    for L in range(1, 9):  # most patterns are decided within a few layers
        if full(R):
            return L
        nxt = bool_mm(R, A)
        if np.array_equal(nxt, R):
            return None
        R = nxt
    return least_power(A, bool_mm, full, (n - 1) ** 2 + 1)  # Wielandt: primitive => full by then


def least_power(base: np.ndarray, combine, full, limit: int) -> Optional[int]:
    """Smallest L with full(base^L) under an associative, monotone `combine` (matrix product,
    sumset): square until full, then descend bit by bit.  None when the powers stop growing or
    2^k reaches `limit`."""
    powers = [base]
    while not full(powers[-1]):
        if 2 ** (len(powers) - 1) >= limit:
            return None
        nxt = combine(powers[-1], powers[-1])
        if np.array_equal(nxt, powers[-1]):
            return None
        powers.append(nxt)
    cur, L = None, 0
    for k in range(len(powers) - 2, -1, -1):
        cand = powers[k] if cur is None else combine(cur, powers[k])
        if not full(cand):
            cur, L = cand, L + 2 ** k
    return L + 1


def why_never(A: np.ndarray, causal: bool) -> str:
    """Why no number of layers reaches every target pair, for a graph that dense_layers gave up
    on: the attention graph (edge i -> j when i attends j) is split into components that never
    exchange information, or it is periodic (walks of a given length only join some pairs)."""
    import networkx as nx  # lazy: a third of a second of start-up that only this rare case needs

    G = nx.from_numpy_array(A.astype(np.int8), create_using=nx.DiGraph)
    comps = nx.number_strongly_connected_components(G)
    if comps > 1:
        if causal:  # a causal graph never has paths upward: its components are expected
            return f"{comps} groups of positions, and the causal target is not reached"
        return f"the attention graph has {comps} groups of positions with no path between some of them"
    if not nx.is_aperiodic(G):
        return "the attention graph is periodic: a given number of layers joins only some pairs"
    return "reach stalls before every pair is joined"


def dense_mask(expr, n: int) -> np.ndarray:
    return dense_mask_numpy(expr, n)


QUOTIENT_KINDS = ("rows", "cols", "block", "random", "kmod", "rmod", "true")


def twin_classes(expr_at_n, n: int):
    """Classes of positions with identical rows and identical columns (or None when the
    pattern has bands or strides, which make every row different).  Returns (class id per
    position, representative position per class)."""
    views = [view(a, n) for a in atoms_of(expr_at_n)]
    if any(v.kind not in QUOTIENT_KINDS for v in views):
        return None
    p = np.arange(n, dtype=np.int64)
    feats = [np.zeros(n, np.int64)]
    for v in views:
        k, a = v.kind, v.args
        if k in ("rows", "cols"):
            feats.append(((p >= a[0]) & (p < a[1])).astype(np.int64))
        elif k == "block":
            feats.append(p // a[0])
        elif k == "random":
            feats.append(p // a[1])
        elif k in ("kmod", "rmod"):
            feats.append(residue_in(p, a).astype(np.int64))
    _, first, cls = np.unique(np.stack(feats, 1), axis=0, return_index=True, return_inverse=True)
    return cls.ravel(), first


# ---------------------------------------------------------------- interval and sumset methods

def _interval_steps(lo: np.ndarray, hi: np.ndarray, need_low: bool, need_high: bool) -> Optional[int]:
    """Layers for [l^L(i), h^L(i)] to cover the target, given exact interval rows (indices
    relative to the sub-square).  None if a chain stalls."""
    m = len(lo)
    steps = 1
    if need_low:
        x, s = m - 1, 0
        while x > 0:
            y = int(lo[x])
            if y >= x:
                return None
            x, s = y, s + 1
        steps = max(steps, s)
    if need_high:
        x, s = 0, 0
        while x < m - 1:
            y = int(hi[x])
            if y <= x:
                return None
            x, s = y, s + 1
        steps = max(steps, s)
    return steps


def _is_interval(cnt, lo, hi) -> bool:
    if len(cnt) == 0 or (cnt == 0).any() or not (cnt == hi - lo + 1).all():
        return False
    return bool((np.diff(lo) >= 0).all() and (np.diff(hi) >= 0).all() and (hi[:-1] + 1 >= lo[1:]).all())


def d_only(expr_at_n, n: int) -> bool:
    return all(view(a, n).kind in ("band", "dmod", "true") for a in atoms_of(expr_at_n))


def differences(expr_at_n, n: int) -> np.ndarray:
    """Allowed differences d = i - j in [0, n) of a pattern that depends on i - j only."""
    d = np.arange(n, dtype=np.int64)
    z = np.zeros(n, np.int64)
    env = {a: atom_truth(view(a, n), d, z, n) for a in atoms_of(expr_at_n)}
    return np.broadcast_to(eval_formula(expr_at_n, env), (n,)).copy()


def sumset(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """{x + y} of two indicator arrays, truncated to their length (FFT, exact after rounding)."""
    n = len(a)
    size = 1 << (2 * n - 1).bit_length()
    fa = np.fft.rfft(a.astype(np.float64), size)
    fb = np.fft.rfft(b.astype(np.float64), size)
    return np.fft.irfft(fa * fb, size)[:n] > 0.5


def sumset_layers(D: np.ndarray) -> Optional[int]:
    """Smallest L whose L-fold sumset of D (with 0 in D) covers [0, len(D)), or None."""
    return least_power(D, sumset, lambda x: bool(x.all()), len(D))


def lfold(D: np.ndarray, L: int) -> np.ndarray:
    """The L-fold sumset of D (0 in D not required), truncated to len(D)."""
    out = np.zeros(len(D), bool)
    out[0] = True
    base, k = D.copy(), L
    while k:
        if k & 1:
            out = sumset(out, base)
        k >>= 1
        if k:
            base = sumset(base, base)
    return out


# ---------------------------------------------------------------- row functions from range tables

_BIG = np.int64(1) << 62


class RowFn:
    """Count, first and last allowed key of any row, from an engine range table (patterns
    without strides/summaries); all row-level questions cost O(ranges), not O(n)."""

    def __init__(self, tab: dict):
        self.t = tab
        self.r0, self.r1 = tab["r0"], tab["r1"]

    def at(self, rows):
        rows = np.asarray(rows, np.int64)
        t = self.t
        ri = np.searchsorted(self.r0, rows, "right") - 1
        tt = (rows - self.r0[ri])[:, None]
        st = t["vs"][ri] + t["ss"][ri] * tt
        en = t["ve"][ri] + t["se"][ri] * tt
        ok = t["val"][ri] & (en > st)
        cnt = np.where(ok, en - st, 0).sum(1)
        lo = np.where(ok, st, _BIG).min(1)
        hi = np.where(ok, en - 1, -1).max(1)
        return cnt, np.where(cnt > 0, lo, -1), hi

    def critical(self) -> np.ndarray:
        """Rows around which the set of non-empty segments can change (range ends, zero
        crossings of segment lengths); between consecutive ones, first/last keys are affine."""
        t = self.t
        N = (self.r1 - self.r0)[:, None]
        len0 = t["ve"] - t["vs"]
        dl = t["se"] - t["ss"]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(dl != 0, -len0 / np.where(dl == 0, 1, dl), -1.0)
        cand = [np.zeros_like(N), N - 1]
        for off in (-1, 0, 1, 2):
            cand.append(np.floor(z).astype(np.int64) + off)
        c = np.concatenate([np.broadcast_to(x, len0.shape) if x.shape[1] == 1 else x for x in cand], 1)
        c = np.clip(c, 0, N - 1) + self.r0[:, None]
        return np.unique(c)

    def full_rows(self, width: int, per_row: int = 0) -> np.ndarray:
        """Rows r whose count equals width + per_row * r (counts are affine inside a range)."""
        t = self.t
        N = self.r1 - self.r0
        L0 = np.where(t["val"], t["ve"] - t["vs"], 0).sum(1) - (width + per_row * self.r0)
        L1 = np.where(t["val"], t["se"] - t["ss"], 0).sum(1) - per_row  # count - target = L0 + L1*t
        out = []
        const = L1 == 0
        for r in np.nonzero(const & (L0 == 0))[0]:
            out.append(np.arange(self.r0[r], self.r1[r]))
        lin = ~const
        den = np.where(lin, L1, 1)
        tt = np.where(lin, -L0 // den, -1)
        hit = lin & (L0 % den == 0) & (tt >= 0) & (tt < N)
        out.append(self.r0[hit] + tt[hit])
        return np.unique(np.concatenate(out)).astype(np.int64)

    def interval_rows(self) -> bool:
        """Every row one non-empty interval, both ends non-decreasing, neighbours touching."""
        rows = self.critical()
        cnt, lo, hi = self.at(rows)
        if (cnt == 0).any() or not (cnt == hi - lo + 1).all():
            return False
        if not ((np.diff(lo) >= 0).all() and (np.diff(hi) >= 0).all()):
            return False
        adj = np.diff(rows) == 1
        return bool((hi[:-1][adj] + 1 >= lo[1:][adj]).all())

    def chain(self, start: int, target: int, low: bool) -> Optional[int]:
        """Steps of x -> first (low) or last key of row x from `start` until `target` is reached;
        None if it stalls.  Runs where the key moves by a constant are jumped over at once."""
        crit = self.critical()
        x, steps = start, 0
        while (x > target) if low else (x < target):
            _, lo, hi = self.at([x])
            y = int(lo[0] if low else hi[0])
            if (y >= x) if low else (y <= x):
                return None
            c = y - x
            k = 1
            if low:
                s = int(crit[np.searchsorted(crit, x, "right") - 1])
                if x > s and int(self.at([s])[1][0]) - s == c:
                    k = max(1, min((x - s) // -c + 1, (x - target) // -c + (1 if (x - target) % -c else 0)))
            else:
                ix = np.searchsorted(crit, x, "left")
                s = int(crit[ix]) if ix < len(crit) else x
                if s > x and int(self.at([s])[2][0]) - s == c:
                    k = max(1, min((s - x) // c + 1, (target - x) // c + (1 if (target - x) % c else 0)))
            x, steps = x + k * c, steps + k
        return steps


def _interval_layers(fn: RowFn, lo_end: int, hi_end: int, causal: bool) -> Optional[int]:
    """Layers for interval rows on the square [lo_end, hi_end]: the first-key chain from the last
    row must reach lo_end (and, unless causal, the last-key chain from the first row hi_end)."""
    a = fn.chain(hi_end, lo_end, True)
    if a is None:
        return None
    if causal:
        return max(1, a)
    b = fn.chain(lo_end, hi_end, False)
    return None if b is None else max(1, a, b)


# ---------------------------------------------------------------- the analysis

def full_reach(expr_at_n, n: int, structural_only: bool = False) -> Reach:
    """Layers to full reach with the method that decided it (see the module doc).

    structural_only: skip the methods whose cost grows with n (per-row scans, dense powers);
    what remains costs about the number of the pattern's row ranges (plus FFTs of length 2n)."""
    _plain(expr_at_n)
    if n <= 0:
        return Reach(None, True, "empty sequence", False)
    e = expr_at_n
    if n == 1:
        ok = _count(e, 1) == 1
        return Reach(1 if ok else None, True, "n = 1", True)
    causal = is_causal(e, n)

    def done(layers, method):
        return Reach(layers, True, method, causal)

    nnz = _count(e, n)
    if nnz == 0:
        return done(None, "no allowed pair")
    E = engine(e, n)
    if E.empty_rows(1)[0]:
        return done(None, "a query row attends nothing")
    Et = engine(e, n, True)
    if Et.empty_rows(1)[0]:
        return done(None, "a key is attended by no query")
    if causal and _count(ir.inter([e, ir.band(Const(0), Const(0))]), n) != n:
        return done(None, "causal pattern with a missing diagonal entry")
    if nnz == (n * (n + 1) // 2 if causal else n * n):
        return done(1, "every target pair is allowed")
    # invariants: residue classes, blocks
    views = [view(a, n) for a in atoms_of(e)]
    mods = sorted({v.args[0] for v in views if v.kind == "dmod"})
    cands = set(mods) | ({math.gcd(*mods)} if mods else set())
    for g in sorted(c for c in cands if 2 <= c < n):
        if _count(ir.inter([e, ir.neg(ir.diagmod(Const(g)))]), n) == 0:
            return done(None, f"every allowed pair has i = j (mod {g})")
    for b in sorted({v.args[0] for v in views if v.kind == "block"}):
        if _count(ir.inter([e, ir.neg(ir.block(Const(b)))]), n) == 0:
            return done(None, f"every allowed pair stays inside a block of {b}")
    # causal patterns of i - j only: sumsets of the allowed differences
    if causal and n <= ARRAY_N and d_only(e, n):
        D = differences(e, n)
        w = int(np.argmin(D)) - 1 if not D.all() else n - 1  # D starts with [0, w]
        if not D[w + 1:].any():
            L = None if w < 1 else -(-(n - 1) // w)
            return done(L, f"differences 0..{w} allowed: reach grows by {w} per layer")
        return done(sumset_layers(D), "sumset of allowed differences (pattern depends on i - j only)")
    tabE = RowFn(E.range_table()) if not E.pvs and not E.slow else None
    tabT = RowFn(Et.range_table()) if not Et.pvs and not Et.slow else None
    # closed prefix / suffix of positions: candidate cut points where the structure changes
    cps = np.array(sorted({x for v in views if v.kind in ("rows", "cols") for x in v.args}), np.int64)
    cps = cps[(cps > 0) & (cps < n)]
    if len(cps):
        zero = np.zeros(len(cps), np.int64)
        full_n = np.full(len(cps), n, np.int64)
        suf = E.rect_counts(cps, full_n, zero, cps) == 0
        if suf.any():
            p = int(cps[suf][0])
            return done(None, f"queries >= {p} never attend a key below {p}")
        if not causal:
            pre = E.rect_counts(zero, cps, cps, full_n) == 0
            if pre.any():
                p = int(cps[pre][0])
                return done(None, f"queries < {p} never attend a key >= {p}")
    scan = not structural_only
    if scan and not causal and tabE is None and d_only(e, n):
        # the row scans below (closed suffix, hub, interval rows) decided from the allowed
        # differences: O(n) arrays instead of every row's segments (dilated unions at 65536)
        got = _d_only_scan(e, n)
        if got is not None:
            layers, method = got
            if method:
                return done(layers, method)
            scan = False  # no hub, rows are not intervals: the scans cannot decide it
    spans = _spans(E) if scan else None
    if spans is not None:  # the same, complete: every cut point
        cnt, lo, hi = spans
        sufmin = np.minimum.accumulate(lo[::-1])[::-1]
        p = np.nonzero(sufmin[1:] >= np.arange(1, n))[0]
        if len(p):
            return done(None, f"queries >= {int(p[0]) + 1} never attend a key below {int(p[0]) + 1}")
        if not causal:
            premax = np.maximum.accumulate(hi)
            p = np.nonzero(premax[:-1] < np.arange(1, n))[0]
            if len(p):
                return done(None, f"queries < {int(p[0]) + 1} never attend a key >= {int(p[0]) + 1}")
    tspans = _spans(Et) if scan else None
    ccnt = None if tspans is None else tspans[0]
    if not causal:
        rows_full = tabE.full_rows(n) if tabE is not None else (None if spans is None else np.nonzero(spans[0] == n)[0])
        cols_full = tabT.full_rows(n) if tabT is not None else (None if ccnt is None else np.nonzero(ccnt == n)[0])
        if rows_full is not None and cols_full is not None:
            hub = np.intersect1d(rows_full, cols_full)
            if len(hub):
                return done(2, f"position {int(hub[0])} attends and is attended by every position")
        if tabE is not None:
            if tabE.interval_rows():
                return done(_interval_layers(tabE, 0, n - 1, False), "interval rows: reach [l^L(i), h^L(i)]")
        elif spans is not None and _is_interval(*spans):
            return done(_interval_steps(spans[1], spans[2], True, True), "interval rows: reach [l^L(i), h^L(i)]")
    else:
        # a prefix of downward-full columns (every later query attends them) can be cut off
        if tabT is not None:
            cut = _downward_prefix(tabT, n)
        elif ccnt is not None:
            down = ccnt == n - np.arange(n)
            cut = int(np.argmin(down)) if not down.all() else n
        else:
            cut = None
        for q in ([0] if cut is None else sorted({0, cut})):
            if q >= n:
                continue
            what = "interval rows" + (f" after cutting off the {q} downward-full leading columns" if q else "")
            if not E.pvs and not E.slow:
                fn = tabE if q == 0 else RowFn(E.range_table(q, n, q, n))
                if fn.interval_rows():
                    return done(_interval_layers(fn, q, n - 1, True), what + ": reach [l^L(i), i]")
            elif not structural_only:
                sp_ = spans if q == 0 else _spans(E, q, n, q, n)
                if sp_ is not None and _is_interval(*sp_):
                    c2, l2, h2 = sp_
                    L = _interval_steps(l2 - q, h2 - q, True, False)
                    return done(None if L is None else max(1, L), what + ": reach [l^L(i), i]")
        two = _two_hop_ranges(e, n, tabT) if tabT is not None else (
            ccnt is not None and _causal_two_hop(e, n, ccnt == n - np.arange(n)))
        if two:
            return done(2, "two hops through downward-full (summary/sink) columns")
    tw = twin_classes(e, n) if n <= ARRAY_N else None
    if tw is not None and not causal:
        cls, rep = tw
        if len(rep) <= QUOTIENT_MAX:
            Aq = np.ascontiguousarray(np.broadcast_to(allowed(e, rep[:, None], rep[None, :], n),
                                                      (len(rep), len(rep))))
            L = dense_layers(Aq, False)
            how = f"quotient of {len(rep)} classes of identical positions"
            return done(L, how if L is not None else f"{how}: {why_never(Aq, False)}")
    if n <= DENSE_N and not structural_only:
        A = dense_mask(e, n)
        L = dense_layers(A, causal)
        return done(L, "boolean matrix powers" if L is not None else f"boolean matrix powers: {why_never(A, causal)}")
    why = "no structural rule applies" + (f" (n > {EXACT_N}: only structural rules run)" if structural_only else "")
    if n > ARRAY_N:
        why += f"; rules that need arrays of n positions are skipped above n = {ARRAY_N:,}"
    return Reach(None, False, why, causal)


def _d_only_scan(e, n: int) -> Optional[tuple]:
    """For a non-causal pattern of i - j only, what the row scans of `full_reach` would find:
    (layers, method) for a closed suffix or a hub, (None, "") when they would find nothing
    (no hub, and some row is not an interval), None when unsure (then scan)."""
    d = np.arange(-(n - 1), n, dtype=np.int64)  # index k <-> difference d = k - (n - 1)
    i = np.maximum(d, 0)
    j = i - d
    env = {a: atom_truth(view(a, n), i, j, n) for a in atoms_of(e)}
    D = np.broadcast_to(eval_formula(e, env), d.shape)
    if not D[n:].any():  # no positive difference: rows i >= 1 never reach key 0
        return None, "queries >= 1 never attend a key below 1"
    S = np.concatenate([[0], np.cumsum(D, dtype=np.int64)])
    p = np.arange(n)
    row_full = S[p + n] - S[p] == n  # row p: differences p - n + 1 .. p
    col_full = S[2 * n - 1 - p] - S[n - 1 - p] == n  # column p: differences -p .. n - 1 - p
    hub = np.nonzero(row_full & col_full)[0]
    if len(hub):
        return 2, f"position {int(hub[0])} attends and is attended by every position"
    at = np.nonzero(D)[0]
    gaps = np.diff(at)
    if ((gaps >= 2) & (gaps <= n - 1)).any():  # a row sees both ends of a gap: not an interval
        return None, ""
    return None


def _spans(E, *args):
    """E.row_spans(*args), or None when this engine cannot give first/last keys cheaply."""
    try:
        return E.row_spans(*args)
    except NotImplementedError:
        return None


def _two_hop_ranges(e, n: int, tabT: RowFn) -> bool:
    """`_causal_two_hop` at range cost: g (next downward-full column, constant between them) and
    z (first query >= j not attending j, non-decreasing between critical rows) are compared at
    the points where either can change."""
    D = tabT.full_rows(n, -1)  # columns j attended by all n - j queries i >= j
    if len(D) == 0:
        return False
    E = engine(e, n)
    prev = np.concatenate([[-1], D[:-1]])
    # the downward-full column D[k] must attend every key of its run (D[k-1], D[k]]
    if not (E.rect_counts(D, D + 1, prev + 1, D + 1) == D - prev).all():
        return False
    comp = engine(ir.inter([ir.neg(e), ir.band(Const(0), None)]), n, True)
    if comp.pvs or comp.slow:
        return False
    zf = RowFn(comp.range_table())
    pts = np.unique(np.concatenate([[0], zf.critical(), D + 1]))
    pts = pts[(pts >= 0) & (pts < n)]
    k = np.searchsorted(D, pts, "left")
    g = np.where(k < len(D), D[np.minimum(k, len(D) - 1)], n)
    cnt, lo, _ = zf.at(pts)
    z = np.where(cnt > 0, lo, n)
    return bool((z >= g).all())


def _downward_prefix(tabT: RowFn, n: int) -> int:
    """Length of the prefix of keys that every later query attends (column j: n - j queries)."""
    t = tabT.t
    N = tabT.r1 - tabT.r0
    L0 = np.where(t["val"], t["ve"] - t["vs"], 0).sum(1)
    L1 = np.where(t["val"], t["se"] - t["ss"], 0).sum(1)
    d0 = L0 - (n - tabT.r0)  # count - (n - j) at t = 0 ...
    d1 = L1 + 1  # ... and its slope
    for r in range(len(N)):
        if d0[r] == 0 and (d1[r] == 0 or N[r] == 1):
            continue
        return int(tabT.r0[r] + (1 if d0[r] == 0 else 0))
    return n


def _causal_two_hop(e, n: int, down: np.ndarray) -> bool:
    """Certificate for A^2 covering j <= i: for each key j, the first downward-full column
    k >= j that attends j covers every i >= k; rows j..k-1 must attend j directly."""
    cols = np.nonzero(down)[0]
    j = np.arange(n, dtype=np.int64)
    g = np.full(n, n, np.int64)
    pos = np.searchsorted(cols, j)
    todo = np.arange(n)
    for _ in range(4):
        live = pos[todo] < len(cols)
        todo = todo[live]
        if len(todo) == 0:
            break
        k = cols[pos[todo]]
        ok = np.broadcast_to(allowed(e, k, j[todo], n), k.shape)
        g[todo[ok]] = k[ok]
        todo = todo[~ok]
        pos[todo] += 1
    # first row >= j that does not attend j (n if none)
    comp = engine(ir.inter([ir.neg(e), ir.band(Const(0), None)]), n, True)
    got = _spans(comp)
    if got is None:
        return False
    ccnt, first_gap, _ = got
    z = np.where(ccnt > 0, first_gap, n)
    return bool((z >= g).all())


def layers_to_full_reach(expr_at_n, n: int) -> Optional[int]:
    """Smallest L such that after L stacked layers every output depends on every input it can
    (j <= i for causal patterns, all j otherwise); None if no L does.
    Raises ReachUndecided when no exact method applies (see the module doc)."""
    r = full_reach(expr_at_n, n)
    if not r.decided:
        raise ReachUndecided(f"reachability of this pattern at n={n}: {r.method}")
    return r.layers


# ---------------------------------------------------------------- single queries

def image(expr_at_n, n: int, S: np.ndarray) -> np.ndarray:
    """Keys attended by at least one query in the set S (bool array): one layer of reach.
    Exact, from each query row's segments (no n x n mask)."""
    E = engine(expr_at_n, n)
    out = np.zeros(n, bool)
    rows = np.nonzero(S)[0].astype(np.int64)
    if len(rows) == 0:
        return out
    if E.slow or E.fsum:
        j = np.arange(n, dtype=np.int64)[None, :]
        for k in range(0, len(rows), 256):
            r = rows[k:k + 256, None]
            out |= np.broadcast_to(allowed(expr_at_n, r, j, n), (len(r), n)).any(0)
        return out
    B0, B1 = np.zeros(1, np.int64), np.full(1, n, np.int64)
    diff = np.zeros(n + 1, np.int64)
    groups: dict = {}
    for k in range(0, len(rows), 1 << 15):
        r = rows[k:k + (1 << 15)]
        seg = E.segments(np.zeros(len(r), np.int64), r, r + 1, B0, B1)
        live = seg["live"]
        if not E.pvs:
            val = np.broadcast_to(eval_formula(expr_at_n, seg["env"]), live.shape) & live
            np.add.at(diff, seg["vs"][val], 1)
            np.add.at(diff, seg["ve"][val], -1)
            continue
        code = E._codes(seg)
        rr, kk = np.nonzero(live)
        if E.mixed:
            shift = np.zeros(len(rr), np.int64)
            key = code[rr, kk] * (E.Pd + 1) + r[rr] % E.Pd
        else:
            shift = (E.phase * r[rr]) % E.P
            key = code[rr, kk] * (E.Pd + 1)
        for (kk_, sh), idx in _group(np.stack([key, shift], 1)).items():
            lst = groups.setdefault((kk_, sh), [])
            lst.append((seg["vs"][rr[idx], kk[idx]], seg["ve"][rr[idx], kk[idx]]))
    if diff.any():
        out |= np.cumsum(diff[:-1]) > 0
    jj = np.arange(n, dtype=np.int64)
    for (key, sh), parts in groups.items():
        d = np.zeros(n + 1, np.int64)
        for vs, ve in parts:
            np.add.at(d, vs, 1)
            np.add.at(d, ve, -1)
        cover = np.cumsum(d[:-1]) > 0
        T, _ = E._table(int(key) // (E.Pd + 1), int(key) % (E.Pd + 1))
        h = np.diff(T) > 0
        out |= cover & h[(jj - sh) % E.P]
    return out


def _group(keys: np.ndarray) -> dict:
    uk, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    return {tuple(int(x) for x in uk[u]): np.nonzero(inv == u)[0] for u in range(len(uk))}


def reaches(expr_at_n, n: int, a: int, b: int, L: int) -> bool:
    """Whether output a depends on input b after exactly L stacked layers ((A^L)[a, b])."""
    _plain(expr_at_n)
    if not (0 <= a < n and 0 <= b < n) or L < 0:
        raise ValueError(f"need 0 <= a, b < n={n} and L >= 0")
    if L == 0:
        return a == b
    e = expr_at_n
    tw = twin_classes(e, n)
    if tw is not None and len(tw[1]) <= QUOTIENT_MAX:
        cls, rep = tw
        Aq = np.ascontiguousarray(np.broadcast_to(allowed(e, rep[:, None], rep[None, :], n), (len(rep), len(rep))))
        S = np.zeros(len(rep), bool)
        S[cls[a]] = True
        for _ in range(L):
            S = Aq[S].any(0)
        return bool(S[cls[b]])
    if d_only(e, n) and is_causal(e, n):
        return b <= a and bool(lfold(differences(e, n), L)[a - b])
    S = np.zeros(n, bool)
    S[a] = True
    for _ in range(L):
        S = image(e, n, S)
        if not S.any():
            return False
    return bool(S[b])
