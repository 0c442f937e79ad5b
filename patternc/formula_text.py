"""Readable closed forms: the pair count's formula split into ranges of n, each written simply.

A closed form from `closed_form.derive` is exact but written as derived: inclusion-exclusion
terms full of min, max and floor.  `regimes` cuts n >= 1 into ranges on which every min/max
picks a fixed argument (found by exact evaluation up to a scan limit; for the last,
unbounded range a choice is kept only where `_stays` proves it for all larger n).  On each
range the formula is then a quasi-polynomial in n: a polynomial whose coefficients repeat
with n mod P.  `_fit` recovers it exactly from values (degree and period are bounded from
the formula's structure, and the fit is checked on the whole range, or on several periods
and at very large n for the last range) and writes it as a polynomial in n and
Mod(n + s, P): "1281*n - 755712" rather than five thousand characters of Min and Max.
Ranges where that fails (isqrt(n), an unresolved min/max) keep the derived text.

The output is sympy syntax (Piecewise((expr, n <= hi), ..., (expr, True))), but nothing
here imports sympy: `patternc analyze` does not pay for it.  `nnz_formula` builds the sympy
object for API users.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

import numpy as np

from .algebra import (add, bounds, eval_int, eval_many, fdiv, id_cached, increment_bounds,
                      is_consecutive_product, maximum, minimum, mod, quasi_period, sub, topo)
from .closed_form import closed_form, validity
from .intexpr import Const, NVar, Op, make

MAX_PIECES = 8  # ranges of n shown; more, and the smallest ranges share the derived form
MAX_PERIOD = 1 << 15  # largest period bound of a quasi-polynomial fitted
MAX_DEGREE = 4


# ---------------------------------------------------------------- ranges of n

def _stays(op: str, chosen, other, n0: int) -> bool:
    """Whether `chosen` stays the min (or max) against `other` for every n >= n0.

    Proofs: the difference starts with the right sign and its per-step increment never has the
    wrong sign; or the difference is quasi-linear with period P, has the right sign on one full
    period and does not drift the wrong way from one period to the next."""
    d = sub(chosen, other) if op == "max" else sub(other, chosen)  # want d >= 0
    lo, _ = increment_bounds(d)
    if eval_int(d, n0) >= 0 and lo >= 0:
        return True
    if bounds(d)[0] >= 0:
        return True
    P = quasi_period(d)
    if P is None or P > (1 << 16):
        return False
    ns = np.arange(n0, n0 + P + 1, dtype=np.int64)
    v = eval_many(topo(d), ns)[id(d)]
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
            out = minimum(*args)
        elif e.op == "max":
            out = maximum(*args)
        elif e.op == "+":
            out = add(*args)
        elif e.op == "-":
            out = sub(*args)
        elif e.op == "//":
            out = fdiv(*args)
        elif e.op == "%":
            out = mod(*args)
        else:
            out = make(e.op, *args)
    memo[id(e)] = out
    return out


def _constants(e) -> list:
    return [abs(x.value) for x in topo(e) if isinstance(x, Const)]


def _switches(rows: list, limit: int) -> int:
    """How many ranges one min/max node alone cuts 1..limit into (longest runs first)."""
    start, count = 0, 0
    while start < limit and count <= MAX_PIECES:
        start = max(start + 1, max(int(r[start]) for r in rows))
        count += 1
    return count


def regimes(f, valid=None) -> list:
    """Split n >= 1 into ranges where every min/max of the closed form `f` picks a fixed argument.

    Returns [(n_lo, n_hi or None, IntExpr)], each expression exact on its range.  Ranges up to a
    scan limit are found by exact evaluation at every n; the last, unbounded range keeps a choice
    only where `_stays` proves it for all larger n (the other min/max are kept as they are)."""
    nodes = topo(f)
    mm = [x for x in nodes if isinstance(x, Op) and x.op in ("min", "max") and not periodic_choice(x)]
    if not mm:
        return [(1, None, f)]
    limit = int(min(1 << 14, max(64, 2 * max(_constants(f) + [1]) + 16)))
    ns = np.arange(1, limit + 1, dtype=np.int64)
    val = eval_many(nodes, ns)
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
    # a min/max whose choice keeps switching (max(n % 128 - 120, 0)) is left in place: it would
    # cut n into hundreds of ranges, and once the others are fixed it is part of a quasi-polynomial
    mm = [x for x in mm if _switches(nxt[id(x)], limit) <= MAX_PIECES]
    if not mm:
        return [(1, None, f)]
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


def expr_text(e) -> str:
    """e as sympy-syntax text, written out as derived (each shared node printed once)."""
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
            elif op == "//" and x.args[1] == Const(2) and is_consecutive_product(x.args[0]):
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


# ---------------------------------------------------------------- quasi-polynomials

@id_cached
def _shape(x) -> Optional[tuple]:
    """(degree bound, period bound) of x as a quasi-polynomial in n, or None (isqrt, division by
    an expression of n, a min/max whose choice does not repeat).  floor(q / c) of an integer-
    valued quasi-polynomial q of degree d and period P repeats with period P * c * d!
    (binomial coefficients mod c); a min/max whose arguments differ by periodic amounts is
    one of them plus a periodic correction."""
    if isinstance(x, Const):
        return (0, 1)
    if isinstance(x, NVar):
        return (1, 1)
    a = [_shape(y) for y in x.args]
    if any(t is None for t in a):
        return None
    if x.op in ("+", "-", "neg"):
        s = (max(t[0] for t in a), math.lcm(*(t[1] for t in a)))
    elif x.op == "*":
        s = (a[0][0] + a[1][0], math.lcm(a[0][1], a[1][1]))
    elif x.op in ("//", "%", "cdiv") and isinstance(x.args[1], Const) and x.args[1].value > 0:
        d, P = a[0]
        if x.op == "//" and x.args[1].value == 2 and is_consecutive_product(x.args[0]):
            s = (d, P)  # an exact halving
        else:
            s = (d, P * x.args[1].value * math.factorial(max(d, 1)))
    elif x.op in ("min", "max"):
        periods = [t[1] for t in a]
        for y in x.args[1:]:
            p = _periodic(sub(y, x.args[0]))
            if p is None:
                return None
            periods.append(p)
        s = (max(t[0] for t in a), math.lcm(*periods))
    else:
        return None
    return s if s[0] <= MAX_DEGREE and s[1] <= MAX_PERIOD * MAX_PERIOD else None


def _periodic(d) -> Optional[int]:
    """A period of d when d is a periodic function of n (a bounded quasi-polynomial), else None:
    on each residue class its polynomial (degree <= the bound) must take one value."""
    shape = _shape(d)
    if shape is None:
        return None
    deg, P = shape
    if deg == 0:
        return P
    if P > MAX_PERIOD:
        return None
    ns = np.array([r + P * k for r in range(1, P + 1) for k in range(deg + 1)], np.int64)
    v = eval_many(topo(d), ns)[id(d)].reshape(P, deg + 1)
    return P if bool((v == v[:, :1]).all()) else None


def periodic_choice(x) -> bool:
    """Whether a min/max node's arguments differ by periodic amounts (its choice repeats with n,
    so it stays in a quasi-polynomial instead of splitting the range of n)."""
    return _shape(x) is not None


def _newton(xs: list, ys: list) -> list:
    """Monomial coefficients (Fractions, lowest degree first) of the polynomial through the points."""
    m = len(xs)
    dd = [Fraction(y) for y in ys]
    for k in range(1, m):
        for i in range(m - 1, k - 1, -1):
            dd[i] = (dd[i] - dd[i - 1]) / (xs[i] - xs[i - k])
    coef = [Fraction(0)] * m
    for k in range(m - 1, -1, -1):  # Horner on the Newton basis
        coef = [Fraction(0)] + coef[:-1]  # multiply by x ...
        for i in range(m - 1):
            coef[i] -= xs[k] * coef[i + 1]  # ... minus xs[k]
        coef[0] += dd[k]
    while len(coef) > 1 and coef[-1] == 0:
        coef.pop()
    return coef


@dataclass(frozen=True)
class QuasiPoly:
    """sum of coef[k][j] * n^k * t^j with t = Mod(n + shift, period) (period 1: a polynomial)."""

    coef: tuple  # coef[k] = (c_k0, c_k1, ...) as Fractions
    shift: int
    period: int

    @property
    def degree(self) -> int:
        return len(self.coef) - 1

    def text(self) -> str:
        t = f"Mod(n + {self.shift}, {self.period})" if self.shift else f"Mod(n, {self.period})"
        terms = []
        for k in range(len(self.coef) - 1, -1, -1):
            for j in range(len(self.coef[k]) - 1, -1, -1):
                c = self.coef[k][j]
                if c == 0:
                    continue
                parts = ([] if k == 0 else ["n" if k == 1 else f"n**{k}"]) + \
                        ([] if j == 0 else [t if j == 1 else f"{t}**{j}"])
                terms.append((c, "*".join(parts)))
        if not terms:
            return "0"
        out = ""
        for i, (c, mono) in enumerate(terms):
            p, q = abs(c.numerator), c.denominator
            if not mono:
                body = f"{p}/{q}" if q != 1 else str(p)
            else:
                body = (mono if p == 1 else f"{p}*{mono}") + (f"/{q}" if q != 1 else "")
            out += (("-" if c < 0 else "") if i == 0 else (" - " if c < 0 else " + ")) + body
        return out


def _per_class(e, lo: int, P: int, d: int) -> Optional[list]:
    """For each residue rho of n mod P: coefficients of the polynomial through d + 1 values of e
    at n = first, first + P, ... (first >= lo, n = rho mod P)."""
    first = [lo + (rho - lo) % P for rho in range(P)]
    ns = np.array([f + P * k for f in first for k in range(d + 1)], np.int64)
    if int(ns.max()) > (1 << 20):
        return None
    vals = eval_many(topo(e), ns)[id(e)].tolist()
    out = []
    for r in range(P):
        xs = [first[r] + P * k for k in range(d + 1)]
        out.append(_newton(xs, vals[r * (d + 1):(r + 1) * (d + 1)]))
    return out


def _min_period(cls: list) -> int:
    """The smallest period P' (dividing len(cls)) with which the class polynomials repeat."""
    P = len(cls)
    for p in sorted(q for q in range(1, P + 1) if P % q == 0):
        if all(cls[r] == cls[r % p] for r in range(P)):
            return p
    return P


def _cyclic_differences(seq: list, m: int) -> list:
    """Order-m forward differences of a periodic sequence, at every start position."""
    P = len(seq)
    w = [(-1) ** (m - i) * math.comb(m, i) for i in range(m + 1)]
    return [sum(w[i] * seq[(r + i) % P] for i in range(m + 1)) for r in range(P)]


def _shifts(seq: list, m: int) -> Optional[set]:
    """The shifts s for which t -> seq[(t - s) % P], t = 0..P-1, is a polynomial of degree < m
    (None: every shift).  Its differences of order m vanish except on the m windows that cross
    the wrap, so the nonzero cyclic differences must fit in those m positions."""
    P = len(seq)
    bad = [r for r, v in enumerate(_cyclic_differences(seq, m)) if v != 0]
    if not bad:
        return None
    out = set()
    for w0 in {(z - u) % P for z in bad[:1] for u in range(m)}:  # window start w0 .. w0 + m - 1
        if all((z - w0) % P < m for z in bad):
            out.add((P - m - w0) % P)
    return out


def _in_shift(cls: list, P: int) -> Optional[QuasiPoly]:
    """Write class polynomials (index = n mod P) with t = Mod(n + s, P): for each power of n,
    its coefficient as a polynomial in t of least degree (at most 2), with a shift s that makes
    all of them polynomials at once; the simplest such form."""
    deg = max(len(c) for c in cls) - 1
    seqs = [[cls[r][k] if k < len(cls[r]) else Fraction(0) for r in range(P)] for k in range(deg + 1)]
    for m in range(1, 4):  # degree m - 1 in t
        allowed: Optional[set] = None
        for seq in seqs:
            got = _shifts(seq, m)
            if got is not None:
                allowed = got if allowed is None else allowed & got
        if allowed is not None and not allowed:
            continue
        best = None
        for sh in sorted(allowed if allowed is not None else {0}):
            rows = []
            for seq in seqs:
                ys = [seq[(t - sh) % P] for t in range(min(m, P))]
                rows.append(tuple(_newton(list(range(len(ys))), ys)))
            while len(rows) > 1 and all(c == 0 for c in rows[-1]):
                rows.pop()
            cost = (sum(1 for r in rows for c in r if c != 0), sh)
            if best is None or cost < best[0]:
                best = (cost, QuasiPoly(tuple(rows), sh, P))
        return best[1]
    return None


def _fit(e, lo: int, hi: Optional[int]) -> Optional[QuasiPoly]:
    """e on lo <= n <= hi (hi None: unbounded) as a quasi-polynomial, or None.

    The result is checked against e on every n of a bounded range; on the unbounded range, on
    d + 1 values of each residue class of the period bound, which decides it (both sides are
    quasi-polynomials of degree <= d with that period)."""
    shape = _shape(e)
    if shape is None:
        return None
    d, P = shape
    if P > MAX_PERIOD:
        return None
    top = hi if hi is not None else lo + P * (d + 1) - 1
    ns = np.arange(lo, top + 1, dtype=np.int64)
    want = eval_many(topo(e), ns)[id(e)]

    def checked(q: Optional[QuasiPoly]) -> Optional[QuasiPoly]:
        if q is None:
            return None
        got = _eval_quasi(q, ns)
        return q if got is not None and np.array_equal(want, got) else None

    # a polynomial first: a short range often is one even where the formula's period is long
    k = d if hi is None else min(d, hi - lo)
    poly = QuasiPoly(tuple((c,) for c in _newton(list(range(lo, lo + k + 1)), want[:k + 1].tolist())), 0, 1)
    if checked(poly) is not None or P == 1:
        return checked(poly)
    cls = _per_class(e, lo, P, d)
    if cls is None:
        return None
    p = _min_period(cls)
    return checked(_in_shift(cls[:p], p)) if p > 1 else None


def _eval_quasi_int(q: QuasiPoly, n: int) -> Fraction:
    t = (n + q.shift) % q.period
    return sum(c * n ** k * t ** j for k, row in enumerate(q.coef) for j, c in enumerate(row))


def _eval_quasi(q: QuasiPoly, ns: np.ndarray) -> Optional[np.ndarray]:
    """Values at many n, exactly (integers over a common denominator: int64 where that cannot
    overflow, Python integers otherwise); None when some value is not an integer."""
    den = math.lcm(*(c.denominator for row in q.coef for c in row))
    nums = [[int(c * den) for c in row] for row in q.coef]
    big = max((abs(c) for row in nums for c in row), default=0) * len(ns) * 8
    top = int(ns.max(initial=0)) + 1
    safe = big * top ** q.degree * q.period ** max(len(row) - 1 for row in nums) < (1 << 62)
    n = ns if safe else ns.astype(object)
    t = (n + q.shift) % q.period
    acc = np.zeros(len(ns), dtype=np.int64 if safe else object)
    for k, row in enumerate(nums):
        for j, c in enumerate(row):
            if c:
                acc = acc + c * n ** k * t ** j
    out = acc // den
    if not (out * den == acc).all():
        return None
    return out.astype(np.int64)


# ---------------------------------------------------------------- text

@dataclass(frozen=True)
class Piece:
    """The pair count for lo <= n <= hi (hi None: every larger n), as sympy-syntax text."""

    lo: int
    hi: Optional[int]
    text: str


def formula_pieces(f, valid: Optional[Callable[[int], bool]] = None) -> list:
    """The closed form f as [Piece]; a range whose values the previous range's formula also
    gives joins it."""
    out: list = []
    prev: Optional[QuasiPoly] = None
    for lo, hi, e in regimes(f, valid):
        if prev is not None and _same(prev, e, lo, hi):
            out[-1] = Piece(out[-1].lo, hi, out[-1].text)
            continue
        q = _fit(e, lo, hi)
        text = q.text() if q is not None else expr_text(e)
        if out and out[-1].text == text:
            out[-1] = Piece(out[-1].lo, hi, text)
        else:
            out.append(Piece(lo, hi, text))
        prev = q
    return out


def _same(q: QuasiPoly, e, lo: int, hi: Optional[int]) -> bool:
    """Whether q gives e's values on lo..hi (bounded ranges only: a short check)."""
    if hi is None or hi - lo > (1 << 14):
        return False
    ns = np.arange(lo, hi + 1, dtype=np.int64)
    got = _eval_quasi(q, ns)
    return got is not None and np.array_equal(got, eval_many(topo(e), ns)[id(e)])


def piecewise_text(pieces: list) -> str:
    """Pieces as one sympy-syntax expression (a Piecewise when there are several)."""
    if len(pieces) == 1:
        return pieces[0].text
    parts = [f"({p.text}, n <= {p.hi})" for p in pieces[:-1]] + [f"({pieces[-1].text}, True)"]
    return "Piecewise(" + ", ".join(parts) + ")"


def formula_string(f, valid: Optional[Callable[[int], bool]] = None) -> str:
    """The closed form f as readable sympy-syntax text (see the module doc)."""
    return piecewise_text(formula_pieces(f, valid))


def n_symbol():
    """The symbol n of the sympy forms (a positive integer)."""
    import sympy as sp  # lazy: only API users who ask for a sympy object pay for the import

    return sp.Symbol("n", integer=True, positive=True)


def nnz_formula(expr):
    """The exact number of allowed pairs as a sympy expression in n (valid for every n >= 1
    at which the pattern is valid), or None when no closed form is found.

    `expr` is the IR before substituting n (`Pattern.expr`); for per-head patterns the result
    is the total over all heads."""
    import sympy as sp  # lazy, as in n_symbol

    f = closed_form(expr)
    if f is None:
        return None
    n = n_symbol()
    names = {"n": n, "Mod": sp.Mod, "Min": sp.Min, "Max": sp.Max, "floor": sp.floor, "ceiling": sp.ceiling,
             "sqrt": sp.sqrt, "Piecewise": sp.Piecewise}
    return sp.sympify(formula_string(f, validity(expr)), locals=names)
