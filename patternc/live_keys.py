"""Live keys while decoding: which cached keys a pattern can still read, and how many.

Decoding appends one position at a time (or a chunk of t), and query i is computed once the
cache holds positions 0..i.  Key j is *dead* at step t (the cache holds 0..t, query t is the
newest) when no query i >= t may attend it, at any length (n grows while decoding, and a
pattern's arguments may follow n).  Dead keys can be evicted; the live ones are

    L(t) = { j <= t : some i >= t has allowed(i, j) }

and `kv_live_max(n)` = max over steps t < n of |L(t)|: the cache a decoder of n tokens needs.

The existential is eliminated in closed form, term by term.  A term (an intersection of atoms)
bounds i by intervals: i >= t, i >= j + lo, i >= a (rows), i >= the start of j's block; i <= j +
hi, i < b (rows), i <= the end of j's block.  Some i exists exactly when every lower bound is at
most every upper bound, and each such pair is itself an atom over (t, j): `t <= j + hi` is the
band t - j <= hi, `t < b` the rows t < b, `t <= end of j's block` (with j <= t) the block of
t.  So the live set is again a pattern, the *live relation* over (step t, key j), and the
counting and closed-form machinery counts it: its row t has |L(t)| keys.  A stride (i = j mod
m) is exact beside bands (the smallest such i above a bound is `x + (j - x) mod m`, and
`t + (j - t) mod m <= j + hi` is t - j <= m * floor(hi / m)); where it meets rows or blocks,
and for random blocks, row classes (rows_mod), run-time selections (select), negations, and arguments that depend on n, the atom is dropped, which
gives a superset (`exact` is False then): never too small for a cache.

The relation also gives the shape of a cache that holds every live key: each of its terms
keeps either a window of the newest keys (a band t - j <= hi, or t's block), or a fixed
prefix of positions (key columns j < b, or rows t < b), or everything (no such bound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from . import ir
from .algebra import eval_many, topo
from .closed_form import closed_form
from .counting import Engine
from .formula_text import formula_pieces, piecewise_text
from .intexpr import Const, IntExpr, NVar, Op, make

MAX_TERMS = 64  # relation terms at most; beyond, every key is taken to be live (inexact)
SCAN_FORMULA = 1 << 22  # steps scanned through the closed form (numpy, exact)
SCAN_COUNTER = 1 << 16  # steps scanned through the counter where there is no closed form


@dataclass
class _Term:
    """One intersection of atoms with constant arguments, as bounds (None: absent)."""

    lo: Optional[int] = None  # i - j >= lo
    hi: Optional[int] = None  # i - j <= hi
    ra: Optional[int] = None  # rows a <= i < rb
    rb: Optional[int] = None
    ca: Optional[int] = None  # key columns ca <= j < cb
    cb: Optional[int] = None
    blocks: tuple = ()
    m: Optional[int] = None  # i = j mod m
    keymods: tuple = ()  # ((l, c), ...): j % l >= l - c
    exact: bool = True
    empty: bool = False


def _const(e: Optional[IntExpr]) -> Optional[int]:
    return e.value if isinstance(e, Const) else None


def _atom(x) -> _Term:
    """One atom as a term; an argument that depends on n drops the atom (a superset)."""
    if isinstance(x, ir.Band):
        lo, hi = _const(x.lo), _const(x.hi)
        return _Term(lo=lo, hi=hi, exact=(lo is not None or x.lo is None) and (hi is not None or x.hi is None))
    args = [_const(a) for a in ir.int_args(x)]
    if isinstance(x, ir.Random) or any(a is None for a in args):
        return _Term(exact=False)
    if isinstance(x, ir.Rows):
        return _Term(ra=args[0], rb=args[1])
    if isinstance(x, ir.Cols):
        return _Term(ca=args[0], cb=args[1])
    if isinstance(x, ir.Block):
        return _Term(blocks=(args[0],))
    if isinstance(x, ir.DiagMod):
        return _Term(m=args[0])
    if isinstance(x, ir.KeyMod):
        return _Term(keymods=((args[0], args[1]),))
    if isinstance(x, (ir.RowMod, ir.Select)):  # a filter on queries; blocks chosen at run time: dropped
        return _Term(exact=False)
    raise TypeError(type(x).__name__)


def _pick(a: Optional[int], b: Optional[int], fn) -> Optional[int]:
    return b if a is None else a if b is None else fn(a, b)


def _meet(a: _Term, b: _Term) -> _Term:
    m = a.m if b.m is None else b.m if a.m is None else a.m * b.m // math.gcd(a.m, b.m)
    return _Term(_pick(a.lo, b.lo, max), _pick(a.hi, b.hi, min), _pick(a.ra, b.ra, max), _pick(a.rb, b.rb, min),
                 _pick(a.ca, b.ca, max), _pick(a.cb, b.cb, min), a.blocks + b.blocks, m, a.keymods + b.keymods,
                 a.exact and b.exact, a.empty or b.empty)


def _terms(x) -> Optional[list]:
    """Disjunctive normal form with constant bounds; negations drop (a superset); None when
    there would be more than MAX_TERMS terms."""
    if isinstance(x, ir.Empty):
        return []
    if isinstance(x, ir.All):
        return [_Term()]
    if isinstance(x, ir.Not):
        return [_Term(exact=False)]
    if isinstance(x, ir.Union):
        out: list = []
        for y in x.items:
            sub = _terms(y)
            if sub is None:
                return None
            out += sub
        return out if len(out) <= MAX_TERMS else None
    if isinstance(x, ir.Inter):
        acc = [_Term()]
        for y in x.items:
            sub = _terms(y)
            if sub is None:
                return None
            acc = [_meet(a, b) for a in acc for b in sub]
            if len(acc) > MAX_TERMS:
                return None
        return acc
    if isinstance(x, ir.Heads):
        out = []
        for c in x.cases:
            sub = _terms(c.expr)
            if sub is None:
                return None
            out += sub
        return out if len(out) <= MAX_TERMS else None
    return [_atom(x)]


def _c(v: int) -> Const:
    return Const(int(v))


@dataclass(frozen=True)
class _Live:
    """One term of the live relation: its IR over (step t, key j), and what a cache keeps for it."""

    expr: object
    exact: bool
    fixed: Optional[int]  # keys j < fixed only (a prefix of positions)
    window: Optional[int]  # keys t - window < j <= t only


def _eliminate(t: _Term) -> Optional[_Live]:
    """The term's live keys {(t, j): j <= t, some i >= t in the term}, as IR; None if it has none."""
    if t.empty:
        return None
    lo = t.lo
    exact = t.exact
    m = t.m if t.m is not None and t.m > 1 else None
    if m is not None and lo is not None:
        lo = m * -(-lo // m)  # the smallest i = j mod m with i >= j + lo is j + m*ceil(lo/m)
    if m is not None and (t.ra is not None or t.blocks):
        exact = False  # the residue condition is dropped beside rows and blocks (a superset)
    hi = t.hi if m is None or t.hi is None else m * (t.hi // m)
    atoms = [ir.band(_c(0), None if hi is None else _c(hi))]  # j <= t, and t <= j + hi
    if lo is not None and hi is not None and lo > hi:
        return None
    if t.ra is not None:
        if t.ra >= t.rb:
            return None
        atoms.append(ir.rows(_c(0), _c(t.rb)))  # t <= rb - 1
        if hi is not None and t.ra - hi > 0:  # ra <= j + hi
            atoms.append(ir.neg(ir.cols(_c(0), _c(t.ra - hi))))
        if lo is not None:  # j + lo <= rb - 1
            atoms.append(ir.cols(_c(0), _c(t.rb - lo)))
    if t.ca is not None:
        atoms.append(ir.cols(_c(t.ca), _c(t.cb)))
    for bs in t.blocks:
        atoms.append(ir.block(_c(bs)))  # t <= the end of j's block (j <= t: the same block)
        if lo is not None and lo > 0:  # j + lo <= the end of j's block
            atoms.append(ir.neg(ir.keymod(_c(bs), _c(lo))))
        if hi is not None and hi < 0:  # the start of j's block <= j + hi
            atoms.append(ir.keymod(_c(bs), _c(bs + hi)))
        if t.ra is not None and t.ra >= bs:  # ra <= the end of j's block
            atoms.append(ir.neg(ir.cols(_c(0), _c((t.ra // bs) * bs))))
        if t.ra is not None:  # the start of j's block <= rb - 1
            atoms.append(ir.cols(_c(0), _c(((t.rb - 1) // bs + 1) * bs)))
    atoms += [ir.keymod(_c(l), _c(c)) for l, c in t.keymods]
    expr = ir.inter(atoms)
    if isinstance(expr, ir.Empty):
        return None
    options = []
    if hi is not None:
        options.append((hi + 1, None, hi + 1))
    if t.blocks:
        options.append((min(t.blocks), None, min(t.blocks)))
    if t.rb is not None:
        options.append((t.rb, t.rb, None))
    if t.cb is not None:
        options.append((t.cb, t.cb, None))
    _, fixed, window = min(options, key=lambda o: o[0]) if options else (None, None, None)
    return _Live(expr, exact, fixed, window)


@dataclass(frozen=True)
class CacheLayout:
    """Where a bounded pattern's live keys sit: positions below `fixed` in fixed slots, and the
    newest `window` positions (at step t: t - window < j <= t) in a ring."""

    fixed: int
    window: int

    @property
    def slots(self) -> int:
        return self.fixed + self.window


@dataclass(frozen=True)
class LiveSet:
    """The live relation of a pattern, and what follows from it (see the module doc)."""

    relation: object  # IR over (step t, key j)
    exact: bool  # False: a superset (random blocks, negations, n-dependent arguments)
    layout: Optional[CacheLayout]  # None: unbounded (some term keeps every earlier key)
    everything: bool  # every earlier key stays live: |L(t)| = t + 1

    @property
    def bounded(self) -> bool:
        return self.layout is not None


@lru_cache(maxsize=64)
def live_set(expr) -> LiveSet:
    """The live relation of `expr` (the symbolic IR, `Pattern.expr`; per-head patterns: the union
    of the heads, what one cache for every head keeps)."""
    terms = _terms(expr)
    if terms is None:  # too many terms: keep everything
        return LiveSet(ir.band(_c(0), None), False, None, True)
    lives = [x for x in map(_eliminate, terms) if x is not None]
    relation = ir.union([x.expr for x in lives])
    causal = ir.band(_c(0), None)
    everything = relation == causal
    # every key live is exact as soon as one exact term keeps every key, whatever the others drop
    exact = all(x.exact for x in lives) or any(x.exact and x.expr == causal for x in lives)
    if any(x.fixed is None and x.window is None for x in lives):
        return LiveSet(relation, exact, None, everything)
    fixed = max([x.fixed for x in lives if x.fixed is not None], default=0)
    window = max([x.window for x in lives if x.window is not None], default=1)
    return LiveSet(relation, exact, CacheLayout(fixed, window), everything)


def cache_layout(expr) -> Optional[CacheLayout]:
    """Fixed slots and ring window of a cache that holds every live key of `expr`, or None when the
    live set is unbounded."""
    return live_set(expr).layout


def _constants(x) -> list:
    return [abs(v) for node in ir.walk(x) for v in (_const(e) for e in ir.int_args(node)) if v is not None]


def _period(x) -> int:
    """The least common multiple of the relation's block sizes, strides and summary periods."""
    P = 1
    for node in ir.walk(x):
        if isinstance(node, (ir.Block, ir.DiagMod, ir.KeyMod)):
            v = _const(ir.int_args(node)[0])
            P = P * v // math.gcd(P, v)
    return P


def _shift_down(e, memo: dict):
    """e with n replaced by n - 1 (shared subtrees stay shared)."""
    got = memo.get(id(e))
    if got is not None:
        return got
    if isinstance(e, NVar):
        out = make("-", e, Const(1))
    elif isinstance(e, Op):
        out = make(e.op, *[_shift_down(a, memo) for a in e.args])
    else:
        out = e
    memo[id(e)] = out
    return out


@dataclass(frozen=True)
class LiveReport:
    """`kv_live_max(n)` and its shape, for `patternc analyze` (None where skipped)."""

    kv_live_max: Optional[int]  # most live keys at any step t < n (per row and kv head)
    formula: Optional[str]  # kv_live_max as a formula in n, where there is one
    bounded: bool
    bound: Optional[int]  # the most at any length (bounded patterns)
    from_n: Optional[int]  # kv_live_max(n) = bound for every n >= from_n
    exact: bool  # False: counts of a superset of the live keys (an upper bound)
    layout: Optional[CacheLayout]
    skipped: str = ""

    def to_dict(self) -> dict:
        return {"kv_live_max": self.kv_live_max, "kv_live_max_formula": self.formula,
                "kv_live_bounded": self.bounded, "kv_live_bound": self.bound, "kv_live_exact": self.exact,
                "kv_cache_slots": None if self.layout is None else
                {"fixed": self.layout.fixed, "window": self.layout.window}}


class Counts:
    """|L(t)| for every step t, from the live relation: through its closed form (F(t + 1) - F(t),
    F the relation's pair count), else the exact counter row by row."""

    def __init__(self, ls: LiveSet):
        self.ls = ls
        self.f = closed_form(ls.relation)

    def upto(self, s: int) -> Optional[np.ndarray]:
        """|L(t)| for t = 0 .. s - 1, or None when that scan is too long."""
        if self.f is not None and s <= SCAN_FORMULA:
            ns = np.arange(0, s + 1, dtype=np.int64)
            v = eval_many(topo(self.f), ns)[id(self.f)]
            return np.diff(v)
        if s <= SCAN_COUNTER:
            return Engine(self.ls.relation, max(s, 1)).row_counts(np.arange(s))
        return None


def report(expr, n: int) -> LiveReport:
    """kv_live_max(n) of `expr` (symbolic IR), its closed form and whether it is bounded.

    Past every constant of the relation (C) its row counts repeat with the period P of its
    blocks and summaries, growing by a fixed step each period: |L(t + P)| - |L(t)| is constant
    for t >= 2C + 2P (checked on the scanned steps).  So scanning t < 2C + 4P decides the bound,
    and the largest count of any longer prefix is in its last period."""
    ls = live_set(expr)
    bounded = ls.bounded
    if ls.everything:
        return LiveReport(n, "n", False, None, None, ls.exact, None)
    P = _period(ls.relation)
    C = max(_constants(ls.relation), default=0)
    t0 = 2 * C + 2 * P
    counts = Counts(ls)
    c = counts.upto(t0 + 2 * P)
    step = None if c is None else c[t0 + P:t0 + 2 * P] - c[t0:t0 + P]
    if c is None or len(set(step.tolist())) != 1 or step[0] < 0:  # not decided by a scan: the count at n only
        c_n = counts.upto(n)
        value = None if c_n is None else int(c_n.max(initial=0))
        why = "" if value is not None else f"the live relation's period or constants ({P:,}, {C:,}) are too large " \
                                           "to scan"
        return LiveReport(value, None, bounded, None, None, ls.exact, ls.layout, why)
    delta = int(step[0])
    bounded = delta == 0
    if n <= len(c):
        value = int(c[:n].max(initial=0))
    elif delta == 0:
        value = int(c.max())
    else:  # the last period of t < n: c(t) = c(t0 + (t - t0) % P) + delta * ((t - t0) // P)
        ts = np.arange(n - P, n, dtype=np.int64)
        value = int((c[t0 + (ts - t0) % P] + delta * ((ts - t0) // P)).max())
    if bounded:
        bound = int(c.max())
        from_n = int(np.argmax(c)) + 1
        if bound == 0:  # no query ever reads a key at or before itself (band(-4, -2))
            formula = "0"
        elif c[bound - 1] == bound:  # every key live until the bound (|L(t)| grows by at most 1 a step)
            formula = f"min(n, {bound})"
        else:
            formula = f"{bound} for n >= {from_n}"
        return LiveReport(value, formula, True, bound, from_n, ls.exact, ls.layout)
    formula = None
    if counts.f is not None and np.all(np.diff(c) >= 0):  # never falls: kv_live_max(n) = |L(n - 1)|
        g = make("-", counts.f, _shift_down(counts.f, {}))
        formula = piecewise_text(formula_pieces(g))
    return LiveReport(value, formula, False, None, None, ls.exact, None)
