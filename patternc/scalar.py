"""Scalar expression trees: the index arithmetic of kernels, as data.

Lowering describes a tile's key range, its full run and its conditions as trees
of these nodes.  The same tree is

- printed as Triton (a kernel's loop bounds), as Python (the host's launch
  arithmetic and the CPU path's walk), and
- evaluated directly on numpy arrays (the analysis's simulation of every
  program's walk),

so the formula in a kernel and the formula in the analysis are one object.
Builders fold constants as trees are built (`add(Lit(2), Lit(3))` is `Lit(5)`,
`all_of([TRUE, x])` is `x`), so a kernel contains only what the pattern uses.

Only non-negative values are divided, so C-style (Triton) and floor (Python)
division agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Expr = Union["Lit", "Name", "Bin", "Call"]


@dataclass(frozen=True)
class Lit:
    """An integer or boolean constant."""

    value: Union[int, bool]


@dataclass(frozen=True)
class Name:
    """A value known only when the kernel runs: a tile bound (a0, b1), n, a tile size, a pattern argument."""

    name: str


@dataclass(frozen=True)
class Bin:
    """A binary operator: + - * // % (integers), <= < == (comparisons), & | (booleans)."""

    op: str
    a: "Expr"
    b: "Expr"


@dataclass(frozen=True)
class Call:
    """max or min of two values."""

    fn: str
    a: "Expr"
    b: "Expr"


TRUE, FALSE, ZERO = Lit(True), Lit(False), Lit(0)


def lit(v) -> Expr:
    return v if isinstance(v, (Lit, Name, Bin, Call)) else Lit(v)


def name(s: str) -> Name:
    return Name(s)


def _int(e: Expr):
    return e.value if isinstance(e, Lit) and not isinstance(e.value, bool) else None


# ---------------------------------------------------------------- builders (folding)

def add(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(x + y)
    if y == 0:
        return a
    if x == 0:
        return b
    if y is not None and y < 0:  # a + (-3) reads better as a - 3
        return Bin("-", a, Lit(-y))
    return Bin("+", a, b)


def sub(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(x - y)
    if y == 0:
        return a
    if y is not None and y < 0:  # a - (-3) reads better as a + 3
        return Bin("+", a, Lit(-y))
    return Bin("-", a, b)


def mul(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(x * y)
    if y == 1:
        return a
    if x == 1:
        return b
    if x == 0 or y == 0:
        return ZERO
    return Bin("*", a, b)


def div(a, b) -> Expr:
    """Floor division of a non-negative value."""
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(x // y)
    if y == 1:
        return a
    return Bin("//", a, b)


def mod(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(x % y)
    return Bin("%", a, b)


def maximum(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(max(x, y))
    if a == b:
        return a
    return Call("max", a, b)


def minimum(a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit(min(x, y))
    if a == b:
        return a
    return Call("min", a, b)


def max_of(xs: list) -> Expr:
    out = lit(xs[0])
    for x in xs[1:]:
        out = maximum(out, x)
    return out


def min_of(xs: list) -> Expr:
    out = lit(xs[0])
    for x in xs[1:]:
        out = minimum(out, x)
    return out


def cdiv0(a, b) -> Expr:
    """ceil(max(a, 0) / b) for b >= 1."""
    return div(add(maximum(a, 0), sub(b, 1)), b)


def _cmp(op: str, a, b) -> Expr:
    a, b = lit(a), lit(b)
    x, y = _int(a), _int(b)
    if x is not None and y is not None:
        return Lit({"<=": x <= y, "<": x < y, "==": x == y}[op])
    return Bin(op, a, b)


def le(a, b) -> Expr:
    return _cmp("<=", a, b)


def lt(a, b) -> Expr:
    return _cmp("<", a, b)


def eq(a, b) -> Expr:
    return _cmp("==", a, b)


def all_of(conds: list) -> Expr:
    """The conjunction, without the conditions that are always true."""
    kept = []
    for c in map(lit, conds):
        if c == FALSE:
            return FALSE
        if c != TRUE and c not in kept:
            kept.append(c)
    if not kept:
        return TRUE
    out = kept[0]
    for c in kept[1:]:
        out = Bin("&", out, c)
    return out


def any_of(conds: list) -> Expr:
    kept = []
    for c in map(lit, conds):
        if c == TRUE:
            return TRUE
        if c != FALSE and c not in kept:
            kept.append(c)
    if not kept:
        return FALSE
    out = kept[0]
    for c in kept[1:]:
        out = Bin("|", out, c)
    return out


# ---------------------------------------------------------------- printing

# Python's binding strengths: comparisons bind looser than | and &, so `(a <= b) & (c < d)`
# needs its parentheses.
_PREC = {"|": 1, "&": 3, "<=": 0, "<": 0, "==": 0, "+": 5, "-": 5, "*": 6, "//": 6, "%": 6}
_CALLS = {"triton": {"max": "tl.maximum", "min": "tl.minimum"},
          "python": {"max": "max", "min": "min"}}


def render(e: Expr, dialect: str = "triton") -> str:
    """Source text of e in `dialect` ("triton" or "python"), with only the parentheses it needs."""
    return _render(lit(e), dialect, -1)


def _render(e: Expr, dialect: str, outer: int, right: bool = False) -> str:
    if isinstance(e, Lit):
        v = e.value
        if isinstance(v, bool):
            return "True" if v else "False"
        return str(v) if v >= 0 else (f"({v})" if outer >= 0 else str(v))
    if isinstance(e, Name):
        return e.name
    if isinstance(e, Call):
        fn = _CALLS[dialect][e.fn]
        return f"{fn}({_render(e.a, dialect, -1)}, {_render(e.b, dialect, -1)})"
    p = _PREC[e.op]
    cmp = p == 0
    # a comparison inside a comparison, or any operand of a comparison chain, gets parentheses;
    # the right operand of - // % (not associative) gets them at equal strength
    text = f"{_render(e.a, dialect, p + cmp)} {e.op} {_render(e.b, dialect, p + cmp, True)}"
    need = p < outer or (right and p == outer and e.op in ("-", "//", "%", "+", "*")) or (cmp and outer > 0)
    return f"({text})" if need else text


def triton(e: Expr) -> str:
    return render(e, "triton")


def python(e: Expr) -> str:
    return render(e, "python")


# ---------------------------------------------------------------- evaluation

def names_in(e: Expr) -> set:
    """Every Name the tree refers to."""
    e = lit(e)
    if isinstance(e, Name):
        return {e.name}
    if isinstance(e, (Bin, Call)):
        return names_in(e.a) | names_in(e.b)
    return set()


def evaluate(e: Expr, env: dict, xp=None):
    """The value of e with names bound by env; with `xp` (numpy), names may be arrays and the
    result is computed elementwise (max/min become xp.maximum/xp.minimum)."""
    e = lit(e)
    if isinstance(e, Lit):
        return e.value
    if isinstance(e, Name):
        try:
            return env[e.name]
        except KeyError:
            raise KeyError(f"no value for {e.name!r} in a scalar expression") from None
    a, b = evaluate(e.a, env, xp), evaluate(e.b, env, xp)
    if isinstance(e, Call):
        if xp is not None:
            return (xp.maximum if e.fn == "max" else xp.minimum)(a, b)
        return max(a, b) if e.fn == "max" else min(a, b)
    op = e.op
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "//":
        return a // b
    if op == "%":
        return a % b
    if op == "<=":
        return a <= b
    if op == "<":
        return a < b
    if op == "==":
        return a == b
    if op == "&":
        return a & b
    return a | b
