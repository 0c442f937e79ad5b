"""Readable closed forms: the pair count's formula split into ranges of n, each written simply.

A closed form from `closed_form.derive` is exact but written as derived: inclusion-exclusion
terms full of min, max and floor.  `regimes` cuts n >= 1 into ranges on which every min/max
picks a fixed argument (found by exact evaluation up to a scan limit; for the last,
unbounded range a choice is kept only where `_stays` proves it for all larger n).  On each
range the formula is then a quasi-polynomial in n: a polynomial whose coefficients repeat
with n mod P (a min/max whose arguments differ by a periodic amount, like
max(n % 128 - 120, 0), is part of one rather than a reason to cut the range).  `_fit`
recovers it exactly from values, degree and period being bounded from the formula's
structure: a polynomial in n, else coefficients that are polynomials in Mod(n + s, P), else
a combination of the moduli the formula divides by.  Every result is checked against the
formula on each n of a bounded range, or on degree + 1 values of every residue class of the
period bound for the last range, which decides it.  "1281*n - 755712" rather than five
thousand characters of Min and Max; ranges where no form is found (isqrt(n), a min/max
that does not settle) keep the derived text.

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
MAX_DEGREE = 4  # highest power of n fitted


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
    (binomial coefficients mod c), for d = 1 with P times c / gcd(c, q(n + P) - q(n)); a
    min/max whose arguments differ by periodic amounts is one of them plus a periodic
    correction."""
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
        c = x.args[1].value
        if x.op == "//" and c == 2 and is_consecutive_product(x.args[0]):
            s = (d, P)  # an exact halving
        elif d == 0:
            s = (0, P)
        elif d == 1:  # q(n + P) = q(n) + drift: floor(q / c) repeats once c divides the drift
            drift = eval_int(x.args[0], 1 + P) - eval_int(x.args[0], 1)
            s = (1, P * (c // math.gcd(c, drift)))
        else:
            s = (d, P * c * math.factorial(d))
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
    """sum of c * n^k * Mod(n + shift, period)^j over terms (c, k, shift, period, j); a term
    with j = 0 has no Mod factor (a polynomial when every term has j = 0)."""

    terms: tuple  # ((Fraction, k, shift, period, j), ...)

    @property
    def degree(self) -> int:
        return max((t[1] for t in self.terms), default=0)

    def text(self) -> str:
        live = sorted((t for t in self.terms if t[0] != 0), key=lambda t: (-t[1], -t[3] * (t[4] > 0), -t[4], t[2]))
        if not live:
            return "0"
        out = ""
        for i, (c, k, sh, P, j) in enumerate(live):
            mod = f"Mod(n + {sh}, {P})" if sh else f"Mod(n, {P})"
            parts = ([] if k == 0 else ["n" if k == 1 else f"n**{k}"]) + \
                    ([] if j == 0 else [mod if j == 1 else f"{mod}**{j}"])
            mono = "*".join(parts)
            p, q = abs(c.numerator), c.denominator
            if not mono:
                body = f"{p}/{q}" if q != 1 else str(p)
            else:
                body = (mono if p == 1 else f"{p}*{mono}") + (f"/{q}" if q != 1 else "")
            out += (("-" if c < 0 else "") if i == 0 else (" - " if c < 0 else " + ")) + body
        return out


def _single(rows: list, shift: int, period: int) -> QuasiPoly:
    """rows[k][j]: coefficient of n^k * Mod(n + shift, period)^j."""
    return QuasiPoly(tuple((c, k, shift, period, j) for k, row in enumerate(rows) for j, c in enumerate(row)
                           if c != 0))


def _per_class(e, lo: int, P: int, d: int) -> Optional[tuple]:
    """For each residue rho of n mod P, the polynomial of degree <= d through the values of e at
    n = x0, x0 + P, ..., x0 + d*P (x0 >= lo, x0 = rho mod P): (seqs, den) with seqs[k][rho] / den
    the coefficient of n^k.  Exact integers throughout (object arrays): the points are equally
    spaced, so den * (divided differences) = (d! / k!) * P^(d - k) * (k-th differences)."""
    x0 = np.array([lo + (rho - lo) % P for rho in range(P)], np.int64)
    ns = (x0[:, None] + P * np.arange(d + 1)[None, :]).ravel()
    if int(ns.max()) > (1 << 20):
        return None
    y = eval_many(topo(e), ns)[id(e)].reshape(P, d + 1).astype(object)
    den = math.factorial(d) * P ** d
    diffs = [y[:, 0]]
    cur = y
    for k in range(1, d + 1):
        cur = cur[:, 1:] - cur[:, :-1]
        diffs.append(cur[:, 0])
    x = x0.astype(object)
    coef = [np.zeros(P, dtype=object) for _ in range(d + 1)]  # Horner on the Newton basis
    for k in range(d, -1, -1):
        xk = x + k * P
        nxt = [np.zeros(P, dtype=object) for _ in range(d + 1)]
        for i in range(d, -1, -1):  # coef * (n - xk)
            nxt[i] = (coef[i - 1] if i > 0 else 0) - xk * coef[i]
        nxt[0] = nxt[0] + diffs[k] * (math.factorial(d) // math.factorial(k)) * P ** (d - k)
        coef = nxt
    return coef, den


def _min_period(seqs: list) -> int:
    """The smallest period p (dividing the sequences' length P) with which they all repeat."""
    P = len(seqs[0])
    for p in sorted(q for q in range(1, P + 1) if P % q == 0):
        if all((seq == np.tile(seq[:p], P // p)).all() for seq in seqs):
            return p
    return P


def _cyclic_differences(seq: np.ndarray, m: int) -> np.ndarray:
    """Order-m forward differences of a periodic sequence, at every start position."""
    out = np.zeros(len(seq), dtype=object)
    for i in range(m + 1):
        out = out + (-1) ** (m - i) * math.comb(m, i) * np.roll(seq, -i)
    return out


def _shifts(seq: np.ndarray, m: int) -> Optional[set]:
    """The shifts s for which t -> seq[(t - s) % P], t = 0..P-1, is a polynomial of degree < m
    (None: every shift).  Its differences of order m vanish except on the m windows that cross
    the wrap, so the nonzero cyclic differences must fit in those m positions."""
    P = len(seq)
    bad = [int(r) for r in np.nonzero(_cyclic_differences(seq, m) != 0)[0]]
    if not bad:
        return None
    out = set()
    for w0 in {(bad[0] - u) % P for u in range(m)}:  # window start w0 .. w0 + m - 1
        if all((z - w0) % P < m for z in bad):
            out.add((P - m - w0) % P)
    return out


def _in_shift(seqs: list, den: int, P: int) -> Optional[QuasiPoly]:
    """Write class polynomials (seqs[k][rho] / den: coefficient of n^k for n = rho mod P) with
    t = Mod(n + s, P): each coefficient as a polynomial in t of least degree (at most 2), with a
    shift s that makes all of them polynomials at once; the simplest such form."""
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
                ys = [Fraction(int(seq[(t - sh) % P]), den) for t in range(min(m, P))]
                rows.append(tuple(_newton(list(range(len(ys))), ys)))
            while len(rows) > 1 and all(c == 0 for c in rows[-1]):
                rows.pop()
            cost = (sum(1 for r in rows for c in r if c != 0), sh)
            if best is None or cost < best[0]:
                best = (cost, _single(rows, sh, P))
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
    poly = _single([(c,) for c in _newton(list(range(lo, lo + k + 1)), want[:k + 1].tolist())], 0, 1)
    if checked(poly) is not None or P == 1:
        return checked(poly)
    got = _per_class(e, lo, P, d)
    if got is None:
        return None
    seqs, den = got
    p = _min_period(seqs)
    if p == 1:
        return None
    return checked(_in_shift([seq[:p] for seq in seqs], den, p)) or checked(_several_moduli(e, ns, want, d, p))


def _several_moduli(e, ns: np.ndarray, want: np.ndarray, d: int, P: int) -> Optional[QuasiPoly]:
    """A quasi-polynomial built from the moduli the formula divides by: sum over k <= d of n^k
    times (a constant, and Mod(n, m) and Mod(n, m)^2 for each such m), solved exactly from a
    sample of values (block(s) | block(2s) & stride(2) | ...: one modulus per segment length)."""
    mods = sorted({x.args[1].value for x in topo(e) if isinstance(x, Op) and x.op in ("//", "%", "cdiv")
                   and isinstance(x.args[1], Const) and 1 < x.args[1].value and P % x.args[1].value == 0})
    basis = [(k, 1, 0) for k in range(d + 1)] + \
            [(k, m, j) for k in range(d + 1) for m in mods for j in ((1,) if m == 2 else (1, 2))]
    if not mods or len(basis) > 48:
        return None
    pick = sorted(set(np.linspace(0, len(ns) - 1, len(basis) + 8).astype(int).tolist()))
    rows = []
    for i in pick:
        n = int(ns[i])
        rows.append([Fraction(n ** k * (n % m) ** j) for k, m, j in basis] + [Fraction(int(want[i]))])
    sol = _solve(rows, len(basis))
    if sol is None:
        return None
    return QuasiPoly(tuple((c, k, 0, m, j) for c, (k, m, j) in zip(sol, basis) if c != 0))


def _solve(rows: list, u: int) -> Optional[list]:
    """A solution of the linear system (rows of u coefficients and a right side), exactly, with
    free unknowns 0; None when inconsistent."""
    rows = [r[:] for r in rows]
    where, r0 = [], 0
    for c in range(u):
        piv = next((i for i in range(r0, len(rows)) if rows[i][c] != 0), None)
        if piv is None:
            continue
        rows[r0], rows[piv] = rows[piv], rows[r0]
        inv = 1 / rows[r0][c]
        rows[r0] = [v * inv for v in rows[r0]]
        for i in range(len(rows)):
            if i != r0 and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r0])]
        where.append(c)
        r0 += 1
    if any(all(v == 0 for v in r[:u]) and r[u] != 0 for r in rows[r0:]):
        return None
    sol = [Fraction(0)] * u
    for i, c in enumerate(where):
        sol[c] = rows[i][u]
    return sol


def _eval_quasi(q: QuasiPoly, ns: np.ndarray) -> Optional[np.ndarray]:
    """Values at many n, exactly (integers over a common denominator: int64 where that cannot
    overflow, Python integers otherwise); None when some value is not an integer."""
    den = math.lcm(*(t[0].denominator for t in q.terms))
    nums = [(int(c * den), k, sh, P, j) for c, k, sh, P, j in q.terms]
    top = int(ns.max(initial=0)) + 1
    bound = sum(abs(c) * top ** k * P ** j for c, k, sh, P, j in nums)
    safe = bound < (1 << 62)
    n = ns if safe else ns.astype(object)
    acc = np.zeros(len(ns), dtype=np.int64 if safe else object)
    for c, k, sh, P, j in nums:
        acc = acc + c * n ** k * ((n + sh) % P) ** j
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
    """The closed form f as [Piece]; neighbouring ranges merge when one formula gives the values
    of both (a short range fits many formulas: n <= 2 is both 3*n - 2 and n**2)."""
    done: list = []  # (lo, hi, e of the first range, QuasiPoly or None, text)
    for lo, hi, e in regimes(f, valid):
        if done and done[-1][3] is not None and _same(done[-1][3], e, lo, hi):
            plo, _, pe, pq, pt = done.pop()
            done.append((plo, hi, pe, pq, pt))
            continue
        q = _fit(e, lo, hi)
        text = q.text() if q is not None else expr_text(e)
        while done and q is not None and done[-1][1] is not None and _same(q, done[-1][2], done[-1][0], done[-1][1]):
            lo = done.pop()[0]  # the new formula also covers the previous range
        if done and done[-1][4] == text:
            lo = done.pop()[0]
        done.append((lo, hi, e, q, text))
    return [Piece(lo, hi, text) for lo, hi, _, _, text in done]


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
