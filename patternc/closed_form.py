"""Closed forms of pair counts: the number of allowed pairs as an exact formula in n.

`derive(pattern.expr)` writes the indicator of the expression as a multilinear polynomial
in its atoms (inclusion-exclusion: a union is 1 - prod(1 - x), a negation 1 - x) and
counts each conjunction of atoms in closed form: a conjunction is a rectangle of rows and
keys, a band of diagonals, possibly a stride, a block size, a summary and a class of rows, and
its pairs are sums of ramps max(0, d - delta + shift) over diagonals (or over key columns for a
summary), which have closed forms with floor, min and max.  The result is an `IntExpr`
over n, exact for every n >= 1 at which the pattern is valid (Min/Max/floor keep small n
exact); None when some conjunction has no closed form (random blocks, unrelated moduli,
symbolic strides of different sizes, more than MAX_MONOMIALS terms).

`closed_form` is `derive` checked against the exact counter (`counting.Engine`) at ~60
lengths, as a guard against bugs in the derivation.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from . import ir
from .algebra import (add, const, eval_many, fdiv, maximum, minimum, mod, mul, neg, sub, topo,
                      total)
from .counting import Engine
from .intexpr import Const, EvalError, NVar, evaluate


class _NoForm(Exception):
    """No closed form for this (sub)pattern."""


MAX_MONOMIALS = 256


# ---------------------------------------------------------------- one conjunction of atoms

def _half_pairs(q):
    """q * (q - 1) // 2 (exact for every integer q)."""
    return fdiv(mul(q, sub(q, const(1))), const(2))


def _periodic_sum(L, B, s, p, c, sigma):
    """sum of (t + s) over t in [L, B] with (t + sigma) % p >= p - c (0 <= c <= p)."""
    X0 = add(L, sigma)
    X1 = maximum(add(add(B, sigma), const(1)), X0)

    def parts(x):
        q, rho = fdiv(x, p), mod(x, p)
        k = maximum(const(0), sub(rho, sub(p, c)))
        ks = add(mul(q, c), k)
        js = mul(mul(c, p), _half_pairs(q))
        js = add(js, mul(q, add(mul(c, sub(p, c)), _half_pairs(c))))
        js = add(js, mul(k, sub(add(mul(q, p), p), c)))
        js = add(js, _half_pairs(k))
        return ks, js

    k1, j1 = parts(X1)
    k0, j0 = parts(X0)
    return add(sub(j1, j0), mul(sub(s, sigma), sub(k1, k0)))


def _tri(x):
    """max(0, x) * (max(0, x) + 1) // 2: the sum of max(0, u) over u <= x."""
    X = maximum(const(0), x)
    return fdiv(mul(X, add(X, const(1))), const(2))


def _ramp_sum(A, B, s):
    """sum of max(0, t + s) over t in [A, B] (0 when B < A)."""
    one = const(1)
    return sub(_tri(add(maximum(B, sub(A, one)), s)), _tri(add(sub(A, one), s)))


def _ap_ramp_sum(A, B, s, m, tau):
    """sum of max(0, t + s) over t in [A, B] with t % m == tau."""
    L = maximum(A, sub(const(1), s))
    first = add(L, mod(sub(tau, L), m))
    K = maximum(const(0), add(fdiv(sub(B, first), m), const(1)))
    return add(mul(K, add(first, s)), mul(m, _half_pairs(K)))


def _rect(R0, R1, C0, C1, lo, hi, m, keymod):
    """Pairs (i, j) in [R0, R1) x [C0, C1) with lo <= i - j <= hi, (i - j) % m == 0 and,
    if keymod = (l, c), j % l >= l - c.

    Without a summary, the pairs on diagonal d form a trapezoid in d, a sum of four ramps
    max(0, d - delta + shift); summing ramps over an interval (or an arithmetic progression
    for a stride) is closed form.  With a summary the same trapezoid is summed over key
    columns instead, restricted to the summary residues."""
    one = const(1)
    H = maximum(const(0), sub(R1, R0))
    lo_e = sub(add(R0, one), C1)
    lo_e = lo_e if lo is None else maximum(lo, lo_e)
    hi_e = sub(sub(R1, one), C0)
    hi_e = hi_e if hi is None else minimum(hi, hi_e)
    total = const(0)
    if keymod is None:
        W = maximum(const(0), sub(C1, C0))
        delta = sub(R0, C0)
        A, B = sub(lo_e, delta), sub(hi_e, delta)
        tau = mod(neg(delta), m)
        for sign, s in [(1, W), (-1, const(0)), (-1, sub(W, H)), (1, neg(H))]:
            if m == one:
                term = _ramp_sum(A, B, s)
            else:
                term = _ap_ramp_sum(A, B, s, m, tau)
            total = add(total, term) if sign > 0 else sub(total, term)
        return total
    if m != one:
        raise _NoForm("stride and summary together")
    l, c = keymod
    w = maximum(const(0), add(sub(hi_e, lo_e), one))
    base = sub(lo_e, R0)
    for sign, s0 in [(1, w), (-1, const(0)), (-1, sub(w, H)), (1, neg(H))]:
        s = add(base, s0)
        term = _periodic_sum(maximum(C0, sub(one, s)), sub(C1, one), s, l, c, const(0))
        total = add(total, term) if sign > 0 else sub(total, term)
    return total


def _rowmod_rect(R0, R1, C0, C1, lo, hi, m, o):
    """Pairs (i, j) in [R0, R1) x [C0, C1) with lo <= i - j <= hi and i % m == o.

    Row i's keys are [i - hi, i - lo] cut to [C0, C1 - 1]: the overlap of two intervals, a sum
    of four ramps in i; summed over the rows of one residue class, each ramp is an arithmetic
    progression of ramps (_ap_ramp_sum)."""
    one = const(1)
    C1 = maximum(C1, C0)
    lo_e = sub(add(R0, one), C1)  # bounds the rectangle implies anyway
    lo_e = lo_e if lo is None else maximum(lo, lo_e)
    hi_e = sub(sub(R1, one), C0)
    hi_e = hi_e if hi is None else minimum(hi, hi_e)
    hi_e = maximum(hi_e, sub(lo_e, one))  # an empty band: a window of width 0
    total = const(0)
    for sign, s in [(1, sub(sub(one, lo_e), C0)), (-1, neg(add(hi_e, C0))), (-1, sub(sub(one, lo_e), C1)),
                    (1, neg(add(hi_e, C1)))]:
        term = _ap_ramp_sum(R0, sub(R1, one), s, m, o)
        total = add(total, term) if sign > 0 else sub(total, term)
    return total


def _cdiv(a, m):
    """ceil(a / m) for m >= 1: one floor of a + m - 1 (which the formula text reads as a
    quasi-polynomial in n)."""
    return fdiv(add(a, sub(m, const(1))), m)


def _same(a, b) -> bool:
    return a == b or (isinstance(a, Const) and isinstance(b, Const) and a.value == b.value)


def _one_rowmod(rowmods: list) -> tuple:
    """One (m, o) equivalent to all the row classes of a conjunction (constants: by the Chinese
    remainder theorem), or None when they share no row."""
    uniq = list(dict.fromkeys(rowmods))
    if len(uniq) == 1:
        return uniq[0]
    if not all(isinstance(m, Const) and isinstance(o, Const) for m, o in uniq):
        raise _NoForm("row classes of symbolic moduli")
    m, o = 1, 0
    for mm, oo in ((x.value, y.value) for x, y in uniq):
        g = math.gcd(m, mm)
        if (oo - o) % g:
            return None
        t = (oo - o) // g * pow(m // g, -1, mm // g) % (mm // g)  # x = o + m*t solves both
        o, m = o + m * t, m * mm // g
    return const(m), const(o % m)


def _divides(a, b) -> bool:
    if a == b:
        return True
    return isinstance(a, Const) and isinstance(b, Const) and a.value > 0 and b.value % a.value == 0


def _conj_count(atoms: frozenset):
    """Closed form (IntExpr over n) of the pairs satisfying every atom of a conjunction."""
    N = NVar()
    lo = hi = None
    r0, r1, c0, c1 = [const(0)], [N], [const(0)], [N]
    mods, blocks, keymods, rowmods = [], [], [], []
    for a in atoms:
        if isinstance(a, ir.Band):
            if a.lo is not None:
                lo = a.lo if lo is None else maximum(lo, a.lo)
            if a.hi is not None:
                hi = a.hi if hi is None else minimum(hi, a.hi)
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
        elif isinstance(a, ir.RowMod):
            rowmods.append((a.m, a.o))
        else:
            raise _NoForm(type(a).__name__)
    R0, R1, C0, C1 = maximum(*r0), minimum(*r1), maximum(*c0), minimum(*c1)
    if not mods:
        m = const(1)
    elif len(set(mods)) == 1:
        m = mods[0]
    elif all(isinstance(x, Const) for x in mods):
        m = const(math.lcm(*(x.value for x in mods)))
    else:
        raise _NoForm("several symbolic strides")
    keymod = None
    if keymods:
        if len(set(keymods)) > 1:
            raise _NoForm("several summaries")
        keymod = keymods[0]
    if rowmods:
        got = _one_rowmod(rowmods)
        if got is None:
            return const(0)
        rm, ro = got
        if keymod is not None:
            raise _NoForm("row class and summary together")
        if m == const(1):
            if blocks:
                raise _NoForm("row class and blocks without a stride")
            return _rowmod_rect(R0, R1, C0, C1, lo, hi, rm, ro)
        if not _same(rm, m):
            raise _NoForm("row class and stride of different moduli")
        # every pair lies in residue class ro (i = j mod m, i = ro mod m): count it in the class's
        # own indices a = (i - ro) / m, where the stride is gone and a band or block shrinks by m
        R0, R1, C0, C1 = (_cdiv(sub(x, ro), m) for x in (R0, R1, C0, C1))
        lo = None if lo is None else _cdiv(lo, m)
        hi = None if hi is None else fdiv(hi, m)
        if not all(_divides(m, b) for b in blocks):
            raise _NoForm("row class with blocks its stride does not divide")
        blocks = [const(1) if _same(b, m) else const(b.value // m.value) for b in blocks]
        m = const(1)
    if not blocks:
        return _rect(R0, R1, C0, C1, lo, hi, m, keymod)
    bs = sorted(set(blocks), key=lambda x: (not isinstance(x, Const), x.value if isinstance(x, Const) else 0))
    b = bs[0]
    if not all(_divides(b, x) for x in bs):
        raise _NoForm("blocks of unrelated sizes")
    if keymod is not None and not _divides(keymod[0], b):
        raise _NoForm("summary period does not divide the block")
    one = const(1)
    ba = maximum(fdiv(R0, b), fdiv(C0, b))
    bz = minimum(fdiv(sub(R1, one), b), fdiv(sub(C1, one), b))

    def cnt(beta):
        s = mul(beta, b)
        e = add(s, b)
        return _rect(maximum(R0, s), minimum(R1, e), maximum(C0, s), minimum(C1, e), lo, hi, m, keymod)

    q = _rect(const(0), b, const(0), b, lo, hi, m, keymod)
    total = add(cnt(ba), cnt(maximum(bz, add(ba, one))))
    return add(total, mul(maximum(const(0), sub(sub(bz, ba), one)), q))


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


# ---------------------------------------------------------------- validity and the whole pattern

def valid_at(expr, n: int) -> bool:
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
            if isinstance(node, ir.RowMod) and (v[0] < 1 or not 0 <= v[1] < v[0]):
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


def validity(expr):
    """`valid_at` as a predicate on n, constant when no atom argument depends on n (the regime
    scan asks it for thousands of lengths)."""
    if not ir.depends_on_length(expr):
        ok = valid_at(expr, 1)
        return lambda n: ok
    return lambda n: valid_at(expr, n)


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
        return total([(p, c.hi - c.lo + 1) for c, p in zip(expr.cases, parts)])
    try:
        poly = _poly(expr)
        monos = sorted(poly.items(), key=lambda kv: (len(kv[0]), str(sorted(map(str, kv[0])))))
        return total([(_conj_count(mono), coef) for mono, coef in monos])
    except (_NoForm, EvalError):  # EvalError: a constant beyond intexpr.MAX_ABS
        return None


@lru_cache(maxsize=256)
def closed_form(expr):
    """The pair count of a (not yet substituted) expression as an exact IntExpr over n, or None.

    The derivation is exact by construction; as a guard against bugs it is also compared with
    the exact counter at ~60 lengths (small ones, around powers of two, past every window)."""
    f = derive(expr)
    if f is None:
        return None
    if isinstance(expr, ir.Heads):
        return f if all(closed_form(c.expr) is not None for c in expr.cases) else None
    ns = [n for n in VALIDATION_NS if valid_at(expr, n)]
    if not ns:
        return None
    with np.errstate(all="ignore"):
        vals = eval_many(topo(f), np.array(ns, np.int64))[id(f)]  # values < 2**40 here: exact
    for n, v in zip(ns, vals.tolist()):
        try:
            e_n = ir.substitute_n(expr, n)
        except EvalError:
            return None
        if v != Engine(e_n, n).total():  # uncached: do not evict the engines in use
            return None
    return f
