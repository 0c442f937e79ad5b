"""Integer-expression algebra for formulas in n: building, simplifying and evaluating them.

The closed forms of pair counts are `IntExpr` DAGs (shared subtrees) with thousands of
nodes.  The builders here (`add`, `sub`, `maximum`, ...) keep them small as they grow:
linear combinations are merged term by term (`linear_form`), arguments of min/max that can
never be chosen for n >= 1 are dropped (`bounds`), and equal subtrees are recognised by a
canonical key instead of recursive equality.  `eval_int` (one n, exact) and `eval_many`
(many n at once, numpy) evaluate a DAG visiting each shared node once; `increment_bounds`
and `quasi_period` describe how a formula changes with n, for the regime analysis of
`formula_text` and the growth of `order`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .intexpr import BINOPS, Const, NVar, Op, apply_op, make

INF = float("inf")
_ID_CACHE_LIMIT = 1 << 18


# ---------------------------------------------------------------- memoisation by identity



def id_cached(fn):
    """Memoise on object identity (IntExpr hashing is recursive and uncached, so hash-keyed
    caches cost O(tree size) per lookup on large shared formulas)."""
    table: dict = {}

    def wrapper(e):
        got = table.get(id(e))
        if got is not None and got[0] is e:
            return got[1]
        if len(table) > _ID_CACHE_LIMIT:
            table.clear()
        v = fn(e)
        table[id(e)] = (e, v)
        return v

    wrapper.__doc__ = fn.__doc__
    return wrapper


_CANON: dict = {}  # structural signature -> canonical key, shared by every formula built here


@id_cached
def _canon(e) -> int:
    """A small integer that is equal for structurally equal expressions (hash-consing): equal
    subtrees of a formula DAG are recognised in O(1) after their children."""
    if isinstance(e, Const):
        sig: tuple = ("c", e.value)
    elif isinstance(e, NVar):
        sig = ("n",)
    else:
        sig = (e.op,) + tuple(_canon(a) for a in e.args)
    return _CANON.setdefault(sig, len(_CANON))


@id_cached
def _text(e) -> str:
    """str(e), from the children's cached texts (the dataclasses' own __str__ recurses)."""
    if not isinstance(e, Op):
        return str(e)
    a = [_text(x) for x in e.args]
    if e.op in BINOPS:
        return f"({a[0]} {e.op} {a[1]})"
    if e.op == "neg":
        return f"(-{a[0]})"
    return f"{e.op}({', '.join(a)})"


# ---------------------------------------------------------------- bounds over n >= 1

@id_cached
def bounds(e) -> tuple:
    """Bounds of an integer expression over n >= 1 (floats, +-inf when unknown)."""
    if isinstance(e, Const):
        return (e.value, e.value)
    if isinstance(e, NVar):
        return (1, INF)
    b = [bounds(a) for a in e.args]
    op = e.op
    if op in ("+", "-", "neg"):
        return _linear_interval(op, b)
    if op == "min":
        return (min(x[0] for x in b), min(x[1] for x in b))
    if op == "max":
        return (max(x[0] for x in b), max(x[1] for x in b))
    if op == "*":
        if all(math.isfinite(v) for x in b for v in x):
            ps = [p * q for p in b[0] for q in b[1]]
            return (min(ps), max(ps))
        if b[0][0] >= 0 and b[1][0] >= 0:
            return (b[0][0] * b[1][0], INF)
        return (-INF, INF)
    if op == "isqrt":
        lo, hi = b[0]
        return (math.isqrt(int(max(lo, 0))), INF if hi == INF else math.isqrt(int(max(hi, 0))))
    if op == "//" and b[1][0] >= 1:
        vals = [_floordiv_bound(x, d) for x in b[0] for d in b[1]]
        return (min(vals), max(vals))
    if op == "%" and b[1][0] >= 1:
        return (0, b[1][1] - 1)
    return (-INF, INF)


def _linear_interval(op: str, b: list) -> tuple:
    """Interval arithmetic for +, - and neg on (lo, hi) pairs."""
    if op == "+":
        return (b[0][0] + b[1][0], b[0][1] + b[1][1])
    if op == "-":
        return (b[0][0] - b[1][1], b[0][1] - b[1][0])
    return (-b[0][1], -b[0][0])


def _floordiv_bound(x, d):
    """floor(x / d) at a corner of the bounds box (d >= 1, possibly infinite)."""
    if not math.isfinite(x):
        return x
    if d == INF:
        return 0 if x >= 0 else -1
    return x // d


def const(v: int):
    return Const(int(v))


@id_cached
def linear_form(e) -> tuple:
    """e as (constant, [(term, coefficient), ...]) through +, -, neg and constant factors."""
    if isinstance(e, Const):
        return (e.value, ())
    if isinstance(e, Op):
        if e.op in ("+", "-"):
            c0, t0 = linear_form(e.args[0])
            c1, t1 = linear_form(e.args[1])
            sg = 1 if e.op == "+" else -1
            return _merge(c0 + sg * c1, list(t0) + [(t, sg * k) for t, k in t1])
        if e.op == "neg":
            c0, t0 = linear_form(e.args[0])
            return (-c0, tuple((t, -k) for t, k in t0))
        if e.op == "*":
            for i in (0, 1):
                if isinstance(e.args[i], Const):
                    f = e.args[i].value
                    c0, t0 = linear_form(e.args[1 - i])
                    return (f * c0, tuple((t, f * k) for t, k in t0 if f * k))
    return (0, ((e, 1),))


def _merge(c: int, terms: list) -> tuple:
    """Collect equal terms (compared by canonical key, not by recursive equality)."""
    acc: dict = {}
    for t, k in terms:
        key = _canon(t)
        got = acc.get(key)
        acc[key] = (t, k) if got is None else (got[0], got[1] + k)
    return (c, tuple((t, k) for t, k in acc.values() if k))


def _build(c: int, terms: tuple):
    """Rebuild c + sum(k * t), positive terms first."""
    pos = [(t, k) for t, k in terms if k > 0]
    neg = [(t, -k) for t, k in terms if k < 0]
    out = None
    for t, k in pos:
        x = t if k == 1 else make("*", Const(k), t)
        out = x if out is None else make("+", out, x)
    for t, k in neg:
        x = t if k == 1 else make("*", Const(k), t)
        out = make("neg", x) if out is None else make("-", out, x)
    if out is None:
        return Const(c)
    if c > 0:
        return make("+", out, Const(c))
    if c < 0:
        return make("-", out, Const(-c))
    return out


def add(a, b):
    c0, t0 = linear_form(a)
    c1, t1 = linear_form(b)
    return _build(*_merge(c0 + c1, list(t0) + list(t1)))


def sub(a, b):
    if a is b or a == b:
        return Const(0)
    c0, t0 = linear_form(a)
    c1, t1 = linear_form(b)
    return _build(*_merge(c0 - c1, list(t0) + [(t, -k) for t, k in t1]))


def mul(a, b):
    return make("*", a, b)


def fdiv(a, b):
    if b == Const(1) or a == Const(0):
        return a
    return make("//", a, b)


def mod(a, b):
    if b == Const(1) or a == Const(0):
        return Const(0)
    return make("%", a, b)


def _prune(op: str, args: list) -> list:
    """Flatten, deduplicate (by canonical key) and drop arguments of min/max that can never be
    chosen (by bounds over n >= 1)."""
    seen: dict = {}
    for a in args:
        for x in (a.args if isinstance(a, Op) and a.op == op else (a,)):
            seen.setdefault(_canon(x), x)
    uniq = list(seen.values())
    bs = [bounds(a) for a in uniq]
    keep = []
    for i, a in enumerate(uniq):
        lo, hi = bs[i]
        if op == "max" and any(o != i and bs[o][0] >= hi and not (bs[o][0] == hi and o > i) for o in range(len(uniq))):
            continue
        if op == "min" and any(o != i and bs[o][1] <= lo and not (bs[o][1] == lo and o > i) for o in range(len(uniq))):
            continue
        keep.append(a)
    return keep or uniq[:1]


def _minmax(op: str, args: tuple):
    """min/max of the arguments, built as `intexpr.make` would (constants folded and last, the
    rest sorted by printed form) without its recursive hashing and printing."""
    keep = _prune(op, list(args))
    if len(keep) == 1:
        return keep[0]
    consts = [a.value for a in keep if isinstance(a, Const)]
    rest = sorted((a for a in keep if not isinstance(a, Const)), key=_text)
    if consts:
        rest.append(Const(min(consts) if op == "min" else max(consts)))
    return rest[0] if len(rest) == 1 else Op(op, tuple(rest))


def maximum(*args):
    return _minmax("max", args)


def minimum(*args):
    return _minmax("min", args)


def total(terms) -> object:
    """sum(coefficient * term) over (term, coefficient) pairs, merged once (a long sum built by
    repeated `add` would re-read its growing left side every time)."""
    c, acc = 0, []
    for t, k in terms:
        c0, t0 = linear_form(t)
        c += k * c0
        acc.extend((u, k * m) for u, m in t0)
    return _build(*_merge(c, acc))


def neg(a):
    return make("neg", a)


# ---------------------------------------------------------------- evaluation

def eval_int(e, n: int, memo: Optional[dict] = None) -> int:
    """Exact value of an IntExpr at n, memoised on shared subtrees (formulas are DAGs)."""
    memo = {} if memo is None else memo
    stack = [e]
    while stack:
        x = stack[-1]
        if id(x) in memo:
            stack.pop()
            continue
        if isinstance(x, Const):
            memo[id(x)] = x.value
            stack.pop()
            continue
        if isinstance(x, NVar):
            memo[id(x)] = n
            stack.pop()
            continue
        todo = [a for a in x.args if id(a) not in memo]
        if todo:
            stack.extend(todo)
            continue
        memo[id(x)] = apply_op(x.op, [memo[id(a)] for a in x.args])
        stack.pop()
    return memo[id(e)]


def topo(e) -> list:
    """Unique nodes of an IntExpr DAG, children first."""
    out, seen, stack = [], set(), [(e, False)]
    while stack:
        x, done = stack.pop()
        if id(x) in seen:
            continue
        if done or not isinstance(x, Op):
            seen.add(id(x))
            out.append(x)
            continue
        stack.append((x, True))
        stack.extend((a, False) for a in x.args)
    return out


def _np_isqrt(x):
    r = np.floor(np.sqrt(np.maximum(x, 0).astype(np.float64))).astype(np.int64)
    r = np.where(r * r > x, r - 1, r)
    return np.where((r + 1) * (r + 1) <= x, r + 1, r)


def eval_many(nodes: list, ns) -> dict:
    """Values of every node at every n in `ns` (int64 arrays), exact for the values used here."""
    val: dict = {}
    for x in nodes:
        if isinstance(x, Const):
            val[id(x)] = np.full(ns.shape, x.value, np.int64)
        elif isinstance(x, NVar):
            val[id(x)] = ns
        else:
            a = [val[id(y)] for y in x.args]
            op = x.op
            with np.errstate(divide="ignore", invalid="ignore"):
                if op == "+":
                    v = a[0] + a[1]
                elif op == "-":
                    v = a[0] - a[1]
                elif op == "*":
                    v = a[0] * a[1]
                elif op in ("//", "%", "cdiv"):
                    d = np.where(a[1] == 0, 1, a[1])
                    v = a[0] // d if op == "//" else (a[0] % d if op == "%" else -(-a[0] // d))
                elif op == "neg":
                    v = -a[0]
                elif op == "min":
                    v = np.minimum.reduce(a)
                elif op == "max":
                    v = np.maximum.reduce(a)
                elif op == "isqrt":
                    v = _np_isqrt(a[0])
                else:
                    raise ValueError(op)
            val[id(x)] = v
    return val


@id_cached
def increment_bounds(e) -> tuple:
    """Bounds on e(n + 1) - e(n) over n >= 1 (floats, +-inf when unknown)."""
    if isinstance(e, Const):
        return (0, 0)
    if isinstance(e, NVar):
        return (1, 1)
    a = [increment_bounds(x) for x in e.args]
    op = e.op
    if op in ("+", "-", "neg"):  # the increment of a sum is the sum of the increments
        return _linear_interval(op, a)
    if op in ("min", "max"):
        return (min(x[0] for x in a), max(x[1] for x in a))
    if op == "*":
        for k in (0, 1):
            if isinstance(e.args[k], Const):
                c = e.args[k].value
                lo, hi = a[1 - k]
                return (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
        if all(bounds(x)[0] >= 0 and increment_bounds(x)[0] >= 0 for x in e.args):
            return (0, INF)
        return (-INF, INF)
    if op == "//" and isinstance(e.args[1], Const) and e.args[1].value > 0:
        c = e.args[1].value
        lo, hi = a[0]
        return (math.floor(lo / c) if math.isfinite(lo) else -INF, math.ceil(hi / c) if math.isfinite(hi) else INF)
    if op == "isqrt" and a[0][0] >= 0:
        return (0, a[0][1])
    return (-INF, INF)


def quasi_period(e) -> Optional[int]:
    """P such that e(n + P) - e(n) is a constant, when e is built from n, constants, +, -,
    constant multiples, and // or % by positive constants; else None."""
    P = 1
    for x in topo(e):
        if isinstance(x, Op):
            if x.op in ("//", "%"):
                if not (isinstance(x.args[1], Const) and x.args[1].value > 0):
                    return None
                P = math.lcm(P, x.args[1].value)
            elif x.op == "*":
                if not any(isinstance(a, Const) for a in x.args):
                    return None
            elif x.op not in ("+", "-", "neg"):
                return None
    return P


def is_consecutive_product(e) -> bool:
    """Whether e is x * (x + 1) or x * (x - 1) (so e // 2 is exact)."""
    if not (isinstance(e, Op) and e.op == "*"):
        return False
    x, y = e.args
    c0, t0 = linear_form(x)
    c1, t1 = linear_form(y)
    c, t = _merge(c1 - c0, list(t1) + [(u, -k) for u, k in t0])
    return not t and abs(c) == 1
