"""Integer expressions over literals and the runtime length `n`.

Pattern arguments such as `isqrt(n)` or `s - 1` stay symbolic until `n` is
known, so the same expression can be evaluated on the host, printed into a
kernel as a runtime argument, or turned into sympy for closed forms.
Parameters are substituted away by the front end: only `n` remains free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

IntExpr = Union["Const", "NVar", "Op"]

FUNCS = {"min": (2, None), "max": (2, None), "isqrt": (1, 1), "cdiv": (2, 2)}
BINOPS = ("+", "-", "*", "//", "%")


@dataclass(frozen=True, order=True)
class Const:
    value: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, order=True)
class NVar:
    """The runtime sequence length."""

    def __str__(self) -> str:
        return "n"


@dataclass(frozen=True, order=True)
class Op:
    """A binary operator or a call (`min`, `max`, `isqrt`, `cdiv`, `neg`)."""

    op: str
    args: tuple

    def __str__(self) -> str:
        if self.op in BINOPS:
            a, b = self.args
            return f"({a} {self.op} {b})"
        if self.op == "neg":
            return f"(-{self.args[0]})"
        return f"{self.op}({', '.join(map(str, self.args))})"


class EvalError(ValueError):
    """Raised when an expression has no value (division by zero, isqrt of a negative)."""


def apply_op(op: str, vals: list[int]) -> int:
    """The value of one operator on integer arguments (Python floor semantics)."""
    if op == "+":
        return vals[0] + vals[1]
    if op == "-":
        return vals[0] - vals[1]
    if op == "*":
        return vals[0] * vals[1]
    if op in ("//", "%", "cdiv"):
        if vals[1] == 0:
            raise EvalError("division by zero")
        if op == "//":
            return vals[0] // vals[1]
        if op == "%":
            return vals[0] % vals[1]
        return -(-vals[0] // vals[1])
    if op == "neg":
        return -vals[0]
    if op == "min":
        return min(vals)
    if op == "max":
        return max(vals)
    if op == "isqrt":
        if vals[0] < 0:
            raise EvalError("isqrt of a negative number")
        return math.isqrt(vals[0])
    raise ValueError(f"unknown operator {op}")


MAX_ABS = 1 << 62


def make(op: str, *args: IntExpr) -> IntExpr:
    """Build an operator node, folding constants and trivial identities."""
    if all(isinstance(a, Const) for a in args):
        v = apply_op(op, [a.value for a in args])
        if abs(v) > MAX_ABS:
            raise EvalError(f"integer {v} is too large")
        return Const(v)
    if op in ("min", "max"):
        flat: list[IntExpr] = []
        for a in args:
            flat.extend(a.args if isinstance(a, Op) and a.op == op else (a,))
        consts = [a.value for a in flat if isinstance(a, Const)]
        rest = sorted(set(a for a in flat if not isinstance(a, Const)), key=str)
        if consts:
            rest.append(Const(min(consts) if op == "min" else max(consts)))
        return rest[0] if len(rest) == 1 else Op(op, tuple(rest))
    if op == "+":
        a, b = args
        if a == Const(0):
            return b
        if b == Const(0):
            return a
    if op == "-" and args[1] == Const(0):
        return args[0]
    if op == "*":
        a, b = args
        if Const(1) in (a, b):
            return b if a == Const(1) else a
        if Const(0) in (a, b):
            return Const(0)
    if op == "//" and args[1] == Const(1):
        return args[0]
    return Op(op, tuple(args))


def const(v: int) -> Const:
    return Const(int(v))


def evaluate(e: IntExpr, n: int) -> int:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, NVar):
        return n
    return apply_op(e.op, [evaluate(a, n) for a in e.args])


def depends_on_n(e: IntExpr) -> bool:
    if isinstance(e, NVar):
        return True
    if isinstance(e, Op):
        return any(depends_on_n(a) for a in e.args)
    return False


def to_python(e: IntExpr, n: str = "n", calls: dict = None) -> str:
    """Python source for e, with the length named `n` (used by generated host code); `calls` renames
    the functions min, max and isqrt (e.g. to ones that also take tensors of lengths)."""
    calls = calls or {}
    if isinstance(e, Const):
        return str(e.value)
    if isinstance(e, NVar):
        return n
    args = [to_python(a, n, calls) for a in e.args]
    if e.op in BINOPS:
        return f"({args[0]} {e.op} {args[1]})"
    if e.op == "neg":
        return f"(-{args[0]})"
    if e.op == "isqrt":
        return f"{calls.get('isqrt', '_isqrt')}({args[0]})"
    if e.op == "cdiv":
        return f"(-(-{args[0]} // {args[1]}))"
    fn = calls.get(e.op, e.op)
    if fn != e.op and len(args) > 2:  # the renamed functions take two arguments
        out = args[0]
        for a in args[1:]:
            out = f"{fn}({out}, {a})"
        return out
    return f"{fn}({', '.join(args)})"


# Integer operators in Triton: C division truncates, so `//` and `%` go through floor helpers
# (runtime.seq_bodies); values are int32 like the kernel arguments they stand for.
TRITON_CALLS = {"min": "tl.minimum", "max": "tl.maximum"}


def to_triton(e: IntExpr, n: str = "n") -> str:
    """Triton source for e, with the length named `n` (an int32 scalar of the kernel): the
    document-aware kernels compute their length-dependent arguments per sequence with it, and the
    decode kernels per cache row.  Arithmetic is 64-bit, the value clamped to int32 by the caller
    (runtime.seq_bodies.as_i32)."""
    if isinstance(e, Const):
        return str(e.value) if e.value >= 0 else f"({e.value})"
    if isinstance(e, NVar):
        return f"{n}.to(tl.int64)"
    args = [to_triton(a, n) for a in e.args]
    if e.op in ("+", "-", "*"):
        return f"({args[0]} {e.op} {args[1]})"
    if e.op == "//":
        return f"floor_div({args[0]}, {args[1]})"
    if e.op == "%":
        return f"floor_mod({args[0]}, {args[1]})"
    if e.op == "cdiv":
        return f"(-floor_div(-{args[0]}, {args[1]}))"
    if e.op == "neg":
        return f"(-{args[0]})"
    if e.op == "isqrt":
        return f"int_sqrt({args[0]})"
    out = args[0]
    for a in args[1:]:
        out = f"{TRITON_CALLS[e.op]}({out}, {a})"
    return out


def to_sympy(e: IntExpr, nsym):
    """A sympy expression for e, with `nsym` for n (floor semantics kept exact)."""
    import sympy as sp

    if isinstance(e, Const):
        return sp.Integer(e.value)
    if isinstance(e, NVar):
        return nsym
    a = [to_sympy(x, nsym) for x in e.args]
    if e.op == "+":
        return a[0] + a[1]
    if e.op == "-":
        return a[0] - a[1]
    if e.op == "*":
        return a[0] * a[1]
    if e.op == "//":
        return sp.floor(a[0] / a[1])
    if e.op == "%":
        return sp.Mod(a[0], a[1])
    if e.op == "neg":
        return -a[0]
    if e.op == "min":
        return sp.Min(*a)
    if e.op == "max":
        return sp.Max(*a)
    if e.op == "isqrt":
        return sp.floor(sp.sqrt(a[0]))
    if e.op == "cdiv":
        return sp.ceiling(a[0] / a[1])
    raise ValueError(e.op)
