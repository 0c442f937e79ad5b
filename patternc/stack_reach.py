"""Reachability through a stack of different layers: when does every token reach every other?

After layers 1..K (no residual connection) output i depends on input j iff there is a walk
i = v_K -> v_{K-1} -> ... -> v_0 = j with layer k allowing (v_k, v_{k-1}): the boolean product
A_K ... A_1 of the layers' masks.  Full reach is reach.py's: every pair, or every j <= i when
every layer is causal.  Two questions:

* `in_stack`: the fewest first layers of the stack that reach full reach (None: the stack's
  own layers never do);
* `repeated`: the fewest first layers of the stack repeated (layers 1..L, 1..L, ...) that do,
  i.e. the smallest stack built from these layers that reaches full reach (None: never).

Methods, tried in order; each is exact where it applies (reach.py's machinery, per layer):

* one distinct pattern: `reach.full_reach` of it;
* certificates of "never": the first layer leaves a key unattended; every layer keeps each
  position inside its residue class mod g, inside its block, or a closed prefix or suffix;
* a position every layer makes a hub (it attends, and is attended by, every position): two
  layers suffice;
* causal layers of i - j only: a walk is a sum of allowed differences, one per layer, so the
  reach after K layers is the sumset D_1 + ... + D_K (FFT convolutions; the repeated stack
  by repeated squaring of one period's sumset);
* interval layers (every row and column one interval, ends non-decreasing): the outputs that
  input 0 reaches, and the inputs output 0 reaches, stay intervals; their far ends are
  followed layer by layer from the layers' column tables;
* positions identical in every layer (block, global, random and summary structure) collapse
  into classes, and the small quotient is multiplied out;
* boolean matrix products for n <= reach.DENSE_N.

The repeated stack's answer comes from whole periods where reach can only grow (no layer
with an empty row, or for causal stacks every layer keeps the diagonal): the least number of
periods by repeated squaring, then the layers of the last period one at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import ir
from .atoms import atoms_of, view
from .counting import count_nnz, engine
from .intexpr import Const
from .reach import (ARRAY_N, DENSE_N, EXACT_N, QUOTIENT_MAX, RowFn, bool_mm, d_only, dense_mask, differences,
                    full_reach, image, is_causal, least_power, sumset, twin_classes, why_never)
from .semantics import allowed

STEP_LIMIT = 1 << 16  # layers followed one at a time (interval ends, sumsets, products)
DENSE_WORK = 1 << 37  # multiply-adds of boolean products in one analysis (n^3 each)
SUMSET_WORK = 1 << 30  # positions convolved in one analysis (n log n each)
WITNESS_WORK = 1 << 24  # positions times layers followed from a few outputs (reach.image)


@dataclass(frozen=True)
class StackReach:
    """Full reach of a stack at one length (see the module doc)."""

    in_stack: Optional[int]  # fewest first layers reaching full reach; None: never in the stack (or unknown)
    in_stack_decided: bool
    repeated: Optional[int]  # fewest layers of the repeated stack; None: never (or unknown)
    repeated_decided: bool
    method: str  # how it was decided, or why it was not, or why full reach never comes
    causal: bool  # every layer causal: the target is every j <= i


def _result(in_stack, repeated, method, causal, L: int) -> StackReach:
    """Both answers from the repeated stack's, which decides the stack's own (K <= L)."""
    if repeated is not None and repeated <= L:
        return StackReach(repeated, True, repeated, True, method, causal)
    return StackReach(in_stack, True, repeated, True, method, causal)


def _undecided(why: str, causal: bool, in_stack: Optional[int] = None, decided: bool = False) -> StackReach:
    return StackReach(in_stack, decided, None, False, why, causal)


# ---------------------------------------------------------------- certificates

def _never(layers: list, first, n: int, causal: bool) -> Optional[str]:
    """Why no number of layers reaches full reach, from invariants every layer keeps."""
    if engine(first, n, True).empty_rows(1)[0]:
        return "a key is attended by no query in the first layer, so no output ever depends on it"
    views = [view(a, n) for e in layers for a in atoms_of(e)]

    def kept_by_all(extra) -> bool:
        return all(count_nnz(ir.inter([e, extra]), n) == 0 for e in layers)

    mods = sorted({v.args[0] for v in views if v.kind == "dmod"})
    for g in sorted({m for m in mods} | ({math.gcd(*mods)} if mods else set())):
        if 2 <= g < n and kept_by_all(ir.neg(ir.diagmod(Const(g)))):
            return f"every layer keeps i = j (mod {g}): positions of different residues never meet"
    for b in sorted({v.args[0] for v in views if v.kind == "block"}):
        if b < n and kept_by_all(ir.neg(ir.block(Const(b)))):
            return f"every layer keeps each position inside its block of {b}"
    cuts = sorted({x for v in views if v.kind in ("rows", "cols") for x in v.args if 0 < x < n})
    for p in cuts:
        if kept_by_all(ir.inter([ir.rows(Const(p), Const(n)), ir.cols(Const(0), Const(p))])):
            return f"in every layer queries >= {p} never attend a key below {p}"
        if not causal and kept_by_all(ir.inter([ir.rows(Const(0), Const(p)), ir.cols(Const(p), Const(n))])):
            return f"in every layer queries < {p} never attend a key >= {p}"
    return None


def _grows(layers: list, n: int, causal: bool) -> bool:
    """Whether a full reach stays full through any further layer: no layer has an empty row
    (causal stacks: every layer keeps the diagonal)."""
    if causal:
        return all(count_nnz(ir.inter([e, ir.band(Const(0), Const(0))]), n) == n for e in layers)
    return not any(engine(e, n).empty_rows(1)[0] for e in layers)


def _hub_chain(distinct: list, index: list, n: int) -> Optional[tuple]:
    """(K, h): the fewest layers of the repeated stack that a hub position h certifies full.

    Every output reaches h in a layer a whose column h is full, h stays itself through the
    layers below while they allow (h, h), and h reaches every input in a layer b < a whose row
    h is full: so A_a ... A_b is full.  Below it, layers with no empty column keep the product
    full, and so do layers above it with no empty row (the caller's `_grows`).  Global tokens
    make such positions."""
    cands = {0, n - 1} | {x for e in distinct for a in atoms_of(e) for v in [view(a, n)]
                          if v.kind in ("rows", "cols") for x in v.args if 0 <= x < n}
    no_empty_cols = [not engine(e, n, True).empty_rows(1)[0] for e in distinct]
    L = len(index)
    best = None
    for h in sorted(cands):
        row = [engine(e, n).row_counts([h])[0] == n for e in distinct]
        col = [engine(e, n, True).row_counts([h])[0] == n for e in distinct]
        diag = [bool(np.asarray(allowed(e, np.int64(h), np.int64(h), n))) for e in distinct]
        start = None  # the lowest layer b of an unbroken chain h <- ... <- h whose row h is full
        below_ok = True  # layers below the chain's start have no empty column
        for K in range(1, 2 * L + 1):
            d = index[(K - 1) % L]
            if start is not None and col[d]:
                if best is None or K < best[0]:
                    best = (K, h)
                break
            if start is not None and not diag[d]:
                start = None
            if start is None and row[d] and below_ok:
                start = K
            below_ok = below_ok and no_empty_cols[d]
    return best


def _witness(distinct: list, index: list, K: int, n: int, causal: bool) -> Optional[str]:
    """A pair that layers 1..K of the repeated stack leave unjoined, among the outputs 0, n // 2
    and n - 1 (exact, one layer of reach at a time); None if those outputs reach every input."""
    for i in sorted({0, n // 2, n - 1}):
        S = np.zeros(n, bool)
        S[i] = True
        for k in range(K, 0, -1):
            S = image(distinct[index[(k - 1) % len(index)]], n, S)
        need = S[: i + 1] if causal else S
        if not need.all():
            j = int(np.argmin(need))
            return f"after {K} layers output {i} still does not depend on input {j}"
    return None


# ---------------------------------------------------------------- products of masks

def _power(C: np.ndarray, k: int, combine, unit: np.ndarray) -> np.ndarray:
    out, base = unit, C
    while k:
        if k & 1:
            out = combine(base, out)
        k >>= 1
        if k:
            base = combine(base, base)
    return out


def _periods(step, period: np.ndarray, first_layers, full, unit, limit: int, L: int, combine):
    """Least K of a repeated stack whose reach only grows: whole periods by repeated squaring
    (least_power), then the layers of the last one.  None when the reach stops growing."""
    c0 = least_power(period, combine, full, limit)
    if c0 is None:
        return None
    R = _power(period, c0 - 1, combine, unit)
    for r, A in enumerate(first_layers, 1):
        R = step(A, R)
        if full(R) or r == L:  # after the whole period, R is period^c0: full
            return (c0 - 1) * L + r


def _products(mats: list, index: list, causal: bool, what: str, union_why) -> StackReach:
    """Exact answers by boolean products of (quotient) masks, within DENSE_WORK."""
    m = mats[0].shape[0]
    L = len(index)
    tri = np.tril(np.ones((m, m), bool))
    full = (lambda R: bool(R[tri].all())) if causal else (lambda R: bool(R.all()))
    budget = max(1, DENSE_WORK // max(1, m ** 3))
    R = None
    for k, d in enumerate(index):
        if k >= budget:
            return _undecided(f"{what}: more than {budget:,} layers to multiply out", causal)
        R = mats[d] if R is None else bool_mm(mats[d], R)
        if full(R):
            return _result(k + 1, k + 1, what, causal, L)
    grows = all(np.diagonal(A).all() for A in mats) if causal else all(A.any(1).all() for A in mats)
    if grows:
        limit = (m - 1) ** 2 + 1 if not causal else m * m + 1  # Wielandt; a growing lower triangle
        got = _periods(bool_mm, R, [mats[d] for d in index], full, np.eye(m, dtype=bool), limit, L, bool_mm)
        if got is not None:
            return _result(None, got, what, causal, L)
        return _result(None, None, f"{what}: reach stops growing; {union_why()}", causal, L)
    # a layer with an empty row (or, causal, a missing diagonal entry) can undo full reach: follow
    # whole periods until the reach after a period repeats
    seen = {R.tobytes()}
    K = L
    while K < budget:
        for d in index:
            R = bool_mm(mats[d], R)
            K += 1
            if full(R):
                return _result(None, K, what, causal, L)
        key = R.tobytes()
        if key in seen:
            return _result(None, None, f"{what}: the reach after each repetition cycles without covering "
                                       "every target pair", causal, L)
        seen.add(key)
    return _undecided(f"{what}: more than {budget:,} layers to multiply out", causal, None, True)


# ---------------------------------------------------------------- sumsets

def _sumsets(diffs: list, index: list, n: int) -> StackReach:
    L = len(index)
    budget = max(1, SUMSET_WORK // max(1, n * max(1, n.bit_length())))
    full = (lambda S: bool(S.all()))
    what = "sumsets of the layers' allowed differences (every layer causal, of i - j only)"
    S = np.zeros(n, bool)
    S[0] = True
    for k, d in enumerate(index):
        if k >= budget:
            return _undecided(f"{what}: more than {budget:,} layers to convolve", True)
        S = sumset(S, diffs[d])
        if full(S):
            return _result(k + 1, k + 1, what, True, L)
    missing = [k for k, d in enumerate(index) if not diffs[d][0]]
    if missing:
        return _result(None, None, f"layer {missing[0]} leaves out the diagonal, so no later output depends on "
                                   "its own position", True, L)
    unit = np.zeros(n, bool)
    unit[0] = True
    got = _periods(sumset, S, [diffs[d] for d in index], full, unit, n, L, sumset)
    if got is None:
        return _result(None, None, f"{what}: reach stops growing", True, L)
    return _result(None, got, what, True, L)


# ---------------------------------------------------------------- interval layers

def _interval_tables(e, n: int, causal: bool) -> Optional[RowFn]:
    """The column table of a layer whose rows and columns are intervals with non-decreasing ends
    and no empty row or column (and, causal, the diagonal); None otherwise."""
    E, Et = engine(e, n), engine(e, n, True)
    if E.pvs or E.slow or Et.pvs or Et.slow:
        return None
    if E.empty_rows(1)[0] or Et.empty_rows(1)[0]:
        return None
    if causal and count_nnz(ir.inter([e, ir.band(Const(0), Const(0))]), n) != n:
        return None
    rows, cols = RowFn(E.range_table()), RowFn(Et.range_table())
    return cols if rows.interval_rows() and cols.interval_rows() else None


def _intervals(tabs: list, index: list, n: int, causal: bool) -> StackReach:
    """Follow the far ends: outputs input 0 reaches [., b], inputs output 0 reaches (as the
    outputs that input n-1 reaches, [a, .])."""
    L = len(index)
    what = "interval layers: the reach of each position stays an interval"
    b, a = 0, n - 1
    prev = None
    K = 0
    while K < STEP_LIMIT:
        for d in index:
            _, lo, hi = tabs[d].at([b, a])
            b, a = int(hi[0]), int(lo[1])
            K += 1
            if b == n - 1 and (causal or a == 0):
                return _result(None, K, what, causal, L)
        if (a, b) == prev:
            side = "input 0 never reaches output n-1" if b < n - 1 else "input n-1 never reaches output 0"
            return _result(None, None, f"{what}: reach stops growing ({side})", causal, L)
        prev = (a, b)
    return _undecided(f"{what}: more than {STEP_LIMIT:,} layers to follow", causal, None, K >= L)


# ---------------------------------------------------------------- quotient

def _common_classes(layers: list, n: int):
    """Classes of positions identical in every layer (rows and columns), or None."""
    tw = [twin_classes(e, n) for e in layers]
    if any(t is None for t in tw):
        return None
    _, first, cls = np.unique(np.stack([t[0] for t in tw], 1), axis=0, return_index=True, return_inverse=True)
    return cls.ravel(), first


# ---------------------------------------------------------------- the analysis

def stack_reach(distinct: list, index: list, n: int, structural_only: bool = False) -> StackReach:
    """Full reach of the stack whose layer k is distinct[index[k]] (concrete single-head
    expressions at length n; a per-head layer is the union of its heads)."""
    L = len(index)
    if n <= 0:
        return StackReach(None, True, None, True, "empty sequence", False)
    causal = all(is_causal(e, n) for e in distinct)
    if len(distinct) == 1:
        r = full_reach(distinct[0], n, structural_only)
        if not r.decided:
            return _undecided(r.method, r.causal)
        within = r.layers if r.layers is not None and r.layers <= L else None
        return StackReach(within, True, r.layers, True, r.method, r.causal)
    why = _never(distinct, distinct[index[0]], n, causal)
    if why is not None:
        return _result(None, None, why, causal, L)
    if count_nnz(distinct[index[0]], n) == (n * (n + 1) // 2 if causal else n * n):
        return _result(1, 1, "the first layer allows every target pair", causal, L)
    grows = _grows(distinct, n, causal)
    if not causal and grows:
        got = _hub_chain(distinct, index, n)
        if got is not None:
            K, h = got
            why = "" if K <= 2 else _witness(distinct, index, K - 1, n, causal) if n * K <= WITNESS_WORK else None
            if why is not None:
                return _result(None, K, f"position {h} is reached by every output and reaches every input "
                                        f"within {K} layers" + (f"; {why}" if why else ""), causal, L)
    if causal and n <= ARRAY_N and all(d_only(e, n) for e in distinct):
        return _sumsets([differences(e, n) for e in distinct], index, n)
    tabs = [_interval_tables(e, n, causal) for e in distinct]
    if all(t is not None for t in tabs):
        return _intervals(tabs, index, n, causal)
    tw = _common_classes(distinct, n) if not causal and n <= ARRAY_N else None
    if tw is not None and len(tw[1]) <= QUOTIENT_MAX:
        rep = tw[1]
        mats = [np.ascontiguousarray(np.broadcast_to(allowed(e, rep[:, None], rep[None, :], n), (len(rep), len(rep))))
                for e in distinct]
        return _products(mats, index, False, f"quotient of {len(rep)} classes of positions identical in every layer",
                         lambda: why_never(np.logical_or.reduce(mats), False))
    if n <= DENSE_N and not structural_only:
        mats = [dense_mask(e, n) for e in distinct]
        return _products(mats, index, causal, "boolean products of the layers' masks",
                         lambda: why_never(np.logical_or.reduce(mats), causal))
    why = "no rule for stacks applies" + (f" (n > {EXACT_N}: only structural rules run)" if structural_only else "")
    if n > DENSE_N and not structural_only:
        why += f"; boolean products run up to n = {DENSE_N:,}"
    if grows and n * L <= WITNESS_WORK:  # the stack's own layers, at least: not full after all of them
        short = _witness(distinct, index, L, n, causal)
        if short is not None:
            return StackReach(None, True, None, False, f"{short}; the repeated stack: {why}", causal)
    return _undecided(why, causal)
