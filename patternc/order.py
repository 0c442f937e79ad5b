"""Asymptotic order of the pair count: its leading term in n, and which parameters scale it.

Both come from closed forms (`closed_form.derive`), never from counting, so they cost a few
exact evaluations.  The leading term c * n^a is read off the closed form at n = 2^200, 2^220
and 2^240 (exact integers), far beyond every constant of the pattern, where every min/max
has settled and lower-order terms no longer matter: a is rounded to a multiple of 1/2
(n^1.5 for strides of isqrt(n)), and c is exact when it is a fraction with a small
denominator (these n are powers of 4, so n^a is an integer).

Parameters are named in the order when they scale the leading coefficient: each integer
parameter p is set to 2^12 and to 2^13 times the largest parameter (large, so that the effect
of p dominates the coefficient as it would for large p), and the ratio of the two
coefficients gives the exponent of p (1 for local(w): "n·w"; -1 for causal & stride(s):
"n^2/s"); where such values make the pattern invalid (a summary wider than its block), p is
doubled from its own value instead.  When several
parameters matter, scaling them together tells a product (exponents add: "n·w·g") from a
sum (the largest exponent wins: Longformer's 2w + 2g + 1 keys per row, "n·(w + g)").
The closed forms of the variants come from the caller (`variant(overrides)`), which owns
the front end: this module only sees formulas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional, Union

from .algebra import eval_int
from .intexpr import EvalError

PROBES = (1 << 200, 1 << 220, 1 << 240)  # far beyond any constant (|c| <= 2^62, so c^2 < 2^124)
LIFT = 12  # parameters are probed at 2^LIFT and 2^(LIFT+1) times the largest one
TOLERANCE = 0.05  # how far a measured exponent may be from a multiple of 1/2


@dataclass(frozen=True)
class Leading:
    """The leading term coefficient * n^exponent of a pair count."""

    exponent: Fraction  # a multiple of 1/2
    coefficient: Union[Fraction, float]

    def text(self) -> str:
        """Sympy syntax, e.g. "545*n", "n**2/2", "2*n**(3/2)"."""
        a, c = self.exponent, self.coefficient
        if c == 0:
            return "0"
        mono = "" if a == 0 else "n" if a == 1 else f"n**{a}" if a.denominator == 1 else f"n**({a})"
        if isinstance(c, float):
            return f"{c:.6g}*{mono}" if mono else f"{c:.6g}"
        p, q = abs(c.numerator), c.denominator
        if not mono:
            body = f"{p}/{q}" if q != 1 else str(p)
        else:
            body = (mono if p == 1 else f"{p}*{mono}") + (f"/{q}" if q != 1 else "")
        return ("-" if c < 0 else "") + body


def _values(f) -> Optional[list]:
    try:
        return [eval_int(f, k) for k in PROBES]
    except (EvalError, ZeroDivisionError, OverflowError):
        return None


def _exponent(values: list, ns: tuple = PROBES) -> Optional[Fraction]:
    """The growth exponent, a multiple of 1/2, of values at ns (None when not a power law)."""
    if values[-1] <= 0:
        return Fraction(0)
    if min(values) <= 0:
        return None
    a1 = math.log(values[1] / values[0]) / math.log(ns[1] / ns[0])
    a2 = math.log(values[2] / values[1]) / math.log(ns[2] / ns[1])
    a = Fraction(round(2 * a2), 2)
    if abs(a2 - a) > 0.08 or abs(a1 - a2) > 0.15:
        return None
    return a


def _power(N: int, a: Fraction) -> int:
    """N^a for N a power of 4 and a a multiple of 1/2 (exact)."""
    return math.isqrt(N) ** int(2 * a)


def leading_term(f) -> Optional[Leading]:
    """The leading term of the closed form f as n -> oo, or None when f does not grow like a
    power of n (or cannot be evaluated there)."""
    values = _values(f)
    if values is None:
        return None
    a = _exponent(values)
    if a is None:
        return None
    if values[-1] <= 0:
        return Leading(Fraction(0), Fraction(0))
    c1 = Fraction(values[1], _power(PROBES[1], a))
    c2 = Fraction(values[2], _power(PROBES[2], a))
    r = c2.limit_denominator(1 << 40)
    if abs(r - c2) <= abs(r) * 1e-12 and abs(r - c1) <= abs(r) * 1e-9:
        return Leading(a, r)
    return Leading(a, float(c2))


def _scaling(lo, hi, ratio: float, a: Fraction) -> Optional[float]:
    """The exponent of a parameter in the leading coefficient, from the closed forms with the
    parameter at two values `ratio` apart (None when either has no leading term like n^a)."""
    t_lo = None if lo is None else leading_term(lo)
    t_hi = None if hi is None else leading_term(hi)
    if t_lo is None or t_hi is None or t_lo.exponent != a or t_hi.exponent != a:
        return None
    if t_lo.coefficient <= 0 or t_hi.coefficient <= 0:
        return None
    e = math.log(float(t_hi.coefficient) / float(t_lo.coefficient)) / math.log(ratio)
    r = round(2 * e) / 2
    return r if abs(e - r) <= TOLERANCE else None


def _effect(f, params: dict, names: list, variant, a: Fraction) -> Optional[float]:
    """The exponent of the leading coefficient when the parameters `names` grow together: set
    to 2^12 and 2^13 times the largest parameter (so they dominate the others), or, where that
    makes the pattern invalid (a summary wider than its block), doubled from their values."""
    top = max([1] + [v for v in params.values() if v > 0]) << LIFT
    e = _scaling(variant({k: top for k in names}), variant({k: 2 * top for k in names}), 2, a)
    if e is None:
        e = _scaling(f, variant({k: 2 * params[k] for k in names}), 2, a)
    return e


def _power_text(a: Fraction) -> str:
    if a == 0:
        return "1"
    if a == 1:
        return "n"
    return f"n^{a.numerator}" if a.denominator == 1 else f"n^{float(a):g}"


def _name(name: str, e: float) -> str:
    e = abs(e)
    return name if e == 1 else f"{name}^{int(e)}" if e == int(e) else f"{name}^{e:g}"


def asymptotic_order(f, params: Optional[dict] = None,
                     variant: Optional[Callable[[dict], Optional[object]]] = None) -> str:
    """The growth of the closed form f, e.g. "O(n·w)", "O(n·(w + g))", "O(n^1.5)", "O(n^2/s)";
    "unknown" when it does not grow like a power of n.

    params: the pattern's integer parameters {name: value}; variant(overrides) returns the
    closed form with some of them changed (None when that pattern is invalid or has none)."""
    lead = None if f is None else leading_term(f)
    if lead is None:
        return "unknown"
    if lead.coefficient == 0:
        return "O(1)"
    a = lead.exponent
    base = _power_text(a)
    effects = []
    for name, v in (params or {}).items():
        if variant is None or v <= 0:
            continue
        e = _effect(f, params, [name], variant, a)
        if e:
            effects.append((name, e))
    if not effects:
        return f"O({base})"
    if len(effects) > 1:
        joint = _effect(f, params, [k for k, _ in effects], variant, a)
        pos = [(k, e) for k, e in effects if e > 0]
        if joint is not None and len(pos) == len(effects) and abs(joint - max(e for _, e in pos)) < 1e-9 \
                and abs(joint - sum(e for _, e in pos)) > 1e-9:
            words = " + ".join(_name(k, e) for k, e in pos)  # a sum: the largest exponent wins
            return f"O({base}·({words}))" if base != "1" else f"O({words})"
        if joint is None or abs(joint - sum(e for _, e in effects)) > 1e-9:
            return f"O({base})"  # neither a product nor a sum of the parameters' effects
    ups = [_name(k, e) for k, e in effects if e > 0]
    downs = [_name(k, e) for k, e in effects if e < 0]
    head = base if base != "1" or not ups else ups.pop(0)
    return f"O({head}{''.join('·' + u for u in ups)}{''.join('/' + d for d in downs)})"


def order_from_counts(values: list, ns: tuple) -> str:
    """The growth of exact counts at lengths ns (three, far apart), for a pattern without a
    closed form: the power of n only ("O(n)"), no parameter named."""
    if values[-1] <= 0:
        return "O(1)"
    a = _exponent(values, ns)
    return "unknown" if a is None else f"O({_power_text(a)})"
