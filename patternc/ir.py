"""The mask IR: frozen dataclasses with a normal form and a stable hash.

Every surface primitive lowers to a handful of atoms, each a predicate on a
query index i and key index j:

    Band(lo, hi)    lo <= i - j <= hi        (None = unbounded)   causal, local, band
    DiagMod(m)      (i - j) % m == 0                              stride, dilation
    Rows(a, b)      a <= i < b                                    queries, global
    Cols(a, b)      a <= j < b                                    keys, sink, global
    Block(b)        i // b == j // b                              block, fixed
    KeyMod(l, c)    j % l >= l - c                                summary, fixed
    RowMod(m, o)    i % m == o                                    rows_mod
    Random(r, b, s) key block of j is one of the r picks of i's query block
    Select(k, b, qb) key block j // b is one of the k blocks that the run-time   select
                    selection lists for query block i // qb

combined with Union, Inter and Not.  Few atoms means few cases in every
analysis and code generator; the normal form makes equal patterns hash equal.
`str(node)` prints valid .attn source, so the IR round-trips through the parser.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Union as TUnion

from .intexpr import Const, IntExpr, depends_on_n, evaluate, make

Node = TUnion["All", "Empty", "Band", "DiagMod", "Rows", "Cols", "Block", "KeyMod",
              "RowMod", "Random", "Select", "Not", "Union", "Inter"]


def _s(e: Optional[IntExpr]) -> str:
    return str(e)


@dataclass(frozen=True)
class All:
    def __str__(self) -> str:
        return "all"


@dataclass(frozen=True)
class Empty:
    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class Band:
    lo: Optional[IntExpr]
    hi: Optional[IntExpr]

    def __str__(self) -> str:
        if self.lo == Const(0) and self.hi is None:
            return "causal"
        if self.hi is None:
            return f"band(lo={self.lo})"
        if self.lo is None:
            return f"band(hi={self.hi})"
        if isinstance(self.hi, Const) and isinstance(self.lo, Const) and self.lo.value == -self.hi.value:
            return f"local({self.hi})"
        return f"band({self.lo}, {self.hi})"


@dataclass(frozen=True)
class DiagMod:
    m: IntExpr

    def __str__(self) -> str:
        return f"stride({self.m})"


@dataclass(frozen=True)
class Rows:
    a: IntExpr
    b: IntExpr

    def __str__(self) -> str:
        return f"queries({self.a}, {self.b})"


@dataclass(frozen=True)
class Cols:
    a: IntExpr
    b: IntExpr

    def __str__(self) -> str:
        return f"keys({self.a}, {self.b})"


@dataclass(frozen=True)
class Block:
    b: IntExpr

    def __str__(self) -> str:
        return f"block({self.b})"


@dataclass(frozen=True)
class KeyMod:
    l: IntExpr
    c: IntExpr

    def __str__(self) -> str:
        return f"summary({self.l}, {self.c})"


@dataclass(frozen=True)
class RowMod:
    """Query rows of one residue class: i % m == o (LongNet's row subsampling)."""

    m: IntExpr
    o: IntExpr

    def __str__(self) -> str:
        return f"rows_mod({self.m}, {self.o})"


@dataclass(frozen=True)
class Random:
    r: IntExpr
    b: IntExpr
    seed: int

    def __str__(self) -> str:
        return f"random({self.r}, block={self.b}, seed={self.seed})"


@dataclass(frozen=True)
class Select:
    """Run-time block selection: the only atom whose pairs are not a function of (i, j, n).

    Query block i // qb may attend the k key blocks (of b keys) that the caller's `blocks`
    tensor lists for it.  Every analysis sees it through `static_part` (no block selected) and
    `outer_part` (every block selected), which bound the pattern whatever the selection."""

    k: IntExpr
    b: IntExpr
    qb: IntExpr

    def __str__(self) -> str:
        if self.qb == self.b:
            return f"select({self.k}, block={self.b})"
        return f"select({self.k}, block={self.b}, qblock={self.qb})"


@dataclass(frozen=True)
class Not:
    x: "Node"

    def __str__(self) -> str:
        return f"(all - {self.x})"


@dataclass(frozen=True)
class Union:
    items: tuple

    def __str__(self) -> str:
        return "(" + " | ".join(map(str, self.items)) + ")"


@dataclass(frozen=True)
class Inter:
    items: tuple

    def __str__(self) -> str:
        pos = [x for x in self.items if not isinstance(x, Not)]
        neg = [x.x for x in self.items if isinstance(x, Not)]
        s = " & ".join(map(str, pos)) if pos else "all"
        if neg:
            s = "(" + s + ")" if len(pos) > 1 else s
            s += "".join(f" - {x}" for x in neg)
        return "(" + s + ")"


@dataclass(frozen=True)
class HeadCase:
    lo: int
    hi: int
    expr: "Node"


@dataclass(frozen=True)
class Heads:
    """Per-head patterns: head h uses the case whose inclusive range holds h."""

    cases: tuple

    def __str__(self) -> str:
        return "heads { " + ", ".join(f"{c.lo}..{c.hi}: {c.expr}" for c in self.cases) + " }"

    @property
    def num_heads(self) -> int:
        return self.cases[-1].hi + 1

    def for_head(self, h: int) -> "Node":
        for c in self.cases:
            if c.lo <= h <= c.hi:
                return c.expr
        raise ValueError(f"head {h} is outside 0..{self.num_heads - 1}")


ATOMS = (Band, DiagMod, Rows, Cols, Block, KeyMod, RowMod, Random, Select)


# ---------------------------------------------------------------- normal form

def _key(x) -> str:
    return f"{type(x).__name__}:{x}"


def _cval(e: Optional[IntExpr]) -> Optional[int]:
    return e.value if isinstance(e, Const) else None


def band(lo: Optional[IntExpr], hi: Optional[IntExpr]) -> "Node":
    if lo is None and hi is None:
        return All()
    a, b = _cval(lo), _cval(hi)
    if a is not None and b is not None and a > b:
        return Empty()
    return Band(lo, hi)


def diagmod(m: IntExpr) -> "Node":
    return All() if m == Const(1) else DiagMod(m)


def rows(a: IntExpr, b: IntExpr) -> "Node":
    x, y = _cval(a), _cval(b)
    if x is not None and y is not None and x >= y:
        return Empty()
    if y is not None and y <= 0:
        return Empty()
    return Rows(a, b)


def cols(a: IntExpr, b: IntExpr) -> "Node":
    x, y = _cval(a), _cval(b)
    if x is not None and y is not None and x >= y:
        return Empty()
    if y is not None and y <= 0:
        return Empty()
    return Cols(a, b)


def block(b: IntExpr) -> "Node":
    return Band(Const(0), Const(0)) if b == Const(1) else Block(b)


def keymod(l: IntExpr, c: IntExpr) -> "Node":
    lv, cv = _cval(l), _cval(c)
    if cv is not None and cv <= 0:
        return Empty()
    if lv is not None and cv is not None and cv >= lv:
        return All()
    return KeyMod(l, c)


def rowmod(m: IntExpr, o: IntExpr) -> "Node":
    """`i % m == o`; every row for m = 1 (the front end keeps 0 <= o < m)."""
    return All() if m == Const(1) else RowMod(m, o)


def random(r: IntExpr, b: IntExpr, seed: int) -> "Node":
    if r == Const(0):
        return Empty()
    return Random(r, b, seed)


def select(k: IntExpr, b: IntExpr, qb: IntExpr) -> "Node":
    return Select(k, b, qb)


def neg(x: "Node") -> "Node":
    if isinstance(x, Heads):
        return Heads(tuple(HeadCase(c.lo, c.hi, neg(c.expr)) for c in x.cases))
    if isinstance(x, Not):
        return x.x
    if isinstance(x, All):
        return Empty()
    if isinstance(x, Empty):
        return All()
    return Not(x)


class HeadsMismatch(ValueError):
    """Two per-head operands cover different numbers of heads."""


def _lift_heads(op, items: list) -> "Node":
    """Push an operator through per-head cases, refining the head ranges."""
    counts = sorted({x.num_heads for x in items if isinstance(x, Heads)})
    if len(counts) > 1:
        raise HeadsMismatch(f"per-head operands cover different head counts ({' vs '.join(map(str, counts))}); "
                            "combine heads { } blocks over the same heads")
    cuts = sorted({c.lo for x in items if isinstance(x, Heads) for c in x.cases}
                  | {c.hi + 1 for x in items if isinstance(x, Heads) for c in x.cases})
    cases = []
    for lo, nxt in zip(cuts, cuts[1:]):
        parts = [x.for_head(lo) if isinstance(x, Heads) else x for x in items]
        cases.append(HeadCase(lo, nxt - 1, op(parts)))
    return Heads(tuple(cases))


def _merge_intervals(items: list, cls) -> list:
    """Merge constant, overlapping or touching Rows/Cols intervals in a union."""
    def is_const(x) -> bool:
        return isinstance(x, cls) and _cval(x.a) is not None and _cval(x.b) is not None

    const = sorted((x for x in items if is_const(x)), key=lambda x: (x.a.value, x.b.value))
    rest = [x for x in items if not is_const(x)]  # not `x not in const`: quadratic on long unions
    merged: list = []
    for x in const:
        if merged and x.a.value <= merged[-1].b.value:
            last = merged.pop()
            x = cls(last.a, Const(max(last.b.value, x.b.value)))
        merged.append(x)
    return rest + merged


def _merge_bands_union(items: list) -> list:
    def lo_v(x):
        return float("-inf") if x.lo is None else x.lo.value

    def hi_v(x):
        return float("inf") if x.hi is None else x.hi.value

    def is_const(x) -> bool:
        return isinstance(x, Band) and (x.lo is None or _cval(x.lo) is not None) \
            and (x.hi is None or _cval(x.hi) is not None)

    ok = [x for x in items if is_const(x)]
    rest = [x for x in items if not is_const(x)]  # not `x not in ok`: quadratic on long unions
    ok.sort(key=lo_v)
    merged: list = []
    for x in ok:
        if merged and lo_v(x) <= hi_v(merged[-1]) + 1:
            last = merged.pop()
            hi = None if (last.hi is None or x.hi is None) else Const(max(last.hi.value, x.hi.value))
            x = band(last.lo, hi)  # both ends open (e.g. causal | band(hi=0)) is All, not Band(None, None)
            if isinstance(x, All):
                return [x]  # union() turns any All into All
        merged.append(x)
    return rest + merged


def union(items) -> "Node":
    items = list(items)
    if any(isinstance(x, Heads) for x in items):
        return _lift_heads(union, items)
    flat: list = []
    for x in items:
        flat.extend(x.items if isinstance(x, Union) else (x,))
    flat = [x for x in flat if not isinstance(x, Empty)]
    if any(isinstance(x, All) for x in flat):
        return All()
    flat = _merge_bands_union(flat)
    flat = _merge_intervals(flat, Rows)
    flat = _merge_intervals(flat, Cols)
    uniq = sorted(set(flat), key=_key)
    present = set(uniq)  # a set: `in uniq` is quadratic on long unions/intersections
    if any(isinstance(x, Not) and x.x in present for x in uniq):
        return All()
    if not uniq:
        return Empty()
    if len(uniq) == 1:
        return uniq[0]
    if any(isinstance(x, All) for x in uniq):
        return All()
    return Union(tuple(uniq))


def _bound(values: list, pick: str) -> Optional[IntExpr]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return make(pick, *vals) if len(vals) > 1 else vals[0]


def _disjoint_rowmods(items: list) -> bool:
    """Two row classes of one modulus with different constant offsets share no row."""
    seen: dict = {}
    for x in items:
        if isinstance(x, RowMod) and isinstance(x.o, Const):
            if seen.setdefault(x.m, x.o.value) != x.o.value:
                return True
    return False


def inter(items) -> "Node":
    items = list(items)
    if any(isinstance(x, Heads) for x in items):
        return _lift_heads(inter, items)
    flat: list = []
    for x in items:
        flat.extend(x.items if isinstance(x, Inter) else (x,))
    flat = [x for x in flat if not isinstance(x, All)]
    if any(isinstance(x, Empty) for x in flat):
        return Empty()
    out: list = []
    bands = [x for x in flat if isinstance(x, Band)]
    if bands:
        out.append(band(_bound([b.lo for b in bands], "max"), _bound([b.hi for b in bands], "min")))
    for cls, mk in ((Rows, rows), (Cols, cols)):
        xs = [x for x in flat if isinstance(x, cls)]
        if xs:
            out.append(mk(_bound([x.a for x in xs], "max"), _bound([x.b for x in xs], "min")))
    out += [x for x in flat if not isinstance(x, (Band, Rows, Cols))]
    if any(isinstance(x, Empty) for x in out) or _disjoint_rowmods(out):
        return Empty()
    uniq = sorted(set(x for x in out if not isinstance(x, All)), key=_key)
    present = set(uniq)  # a set: `in uniq` is quadratic on long unions/intersections
    if any(isinstance(x, Not) and x.x in present for x in uniq):
        return Empty()
    if not uniq:
        return All()
    if len(uniq) == 1:
        return uniq[0]
    return Inter(tuple(uniq))


def diff(a: "Node", b: "Node") -> "Node":
    return inter([a, neg(b)])


# ---------------------------------------------------------------- utilities

def ir_hash(x) -> str:
    """A stable hash of the normal form, for caches and generated headers."""
    return hashlib.sha256(f"{type(x).__name__}:{x}".encode()).hexdigest()[:16]


def walk(x):
    """Yield every node of an expression, parents first."""
    yield x
    if isinstance(x, (Union, Inter)):
        for y in x.items:
            yield from walk(y)
    elif isinstance(x, Not):
        yield from walk(x.x)
    elif isinstance(x, Heads):
        for c in x.cases:
            yield from walk(c.expr)


def int_args(x) -> list:
    """The integer expressions held by an atom."""
    if isinstance(x, Band):
        return [e for e in (x.lo, x.hi) if e is not None]
    if isinstance(x, DiagMod):
        return [x.m]
    if isinstance(x, (Rows, Cols)):
        return [x.a, x.b]
    if isinstance(x, Block):
        return [x.b]
    if isinstance(x, KeyMod):
        return [x.l, x.c]
    if isinstance(x, RowMod):
        return [x.m, x.o]
    if isinstance(x, Random):
        return [x.r, x.b]
    if isinstance(x, Select):
        return [x.k, x.b, x.qb]
    return []


def depends_on_length(x) -> bool:
    return any(depends_on_n(e) for node in walk(x) for e in int_args(node))


def substitute_n(x, n: int):
    """The same expression with every integer argument evaluated at length n."""
    def c(e):
        return None if e is None else Const(evaluate(e, n))

    if isinstance(x, Heads):
        return Heads(tuple(HeadCase(k.lo, k.hi, substitute_n(k.expr, n)) for k in x.cases))
    if isinstance(x, Union):
        return union(substitute_n(y, n) for y in x.items)
    if isinstance(x, Inter):
        return inter(substitute_n(y, n) for y in x.items)
    if isinstance(x, Not):
        return neg(substitute_n(x.x, n))
    if isinstance(x, Band):
        return band(c(x.lo), c(x.hi))
    if isinstance(x, DiagMod):
        return diagmod(c(x.m))
    if isinstance(x, Rows):
        return rows(c(x.a), c(x.b))
    if isinstance(x, Cols):
        return cols(c(x.a), c(x.b))
    if isinstance(x, Block):
        return block(c(x.b))
    if isinstance(x, KeyMod):
        return keymod(c(x.l), c(x.c))
    if isinstance(x, RowMod):
        return rowmod(c(x.m), c(x.o))
    if isinstance(x, Random):
        return random(c(x.r), c(x.b), x.seed)
    if isinstance(x, Select):
        return select(c(x.k), c(x.b), c(x.qb))
    return x


# ---------------------------------------------------------------- run-time selection

def selects(x) -> list:
    """The distinct `select` atoms of an expression (every head), in first-seen order."""
    return list(dict.fromkeys(node for node in walk(x) if isinstance(node, Select)))


def has_select(x) -> bool:
    return any(isinstance(node, Select) for node in walk(x))


def replace_select(x, by: "Node"):
    """The same expression with every `select` atom replaced by `by` (normal form rebuilt)."""
    if isinstance(x, Heads):
        return Heads(tuple(HeadCase(k.lo, k.hi, replace_select(k.expr, by)) for k in x.cases))
    if isinstance(x, Union):
        return union(replace_select(y, by) for y in x.items)
    if isinstance(x, Inter):
        return inter(replace_select(y, by) for y in x.items)
    if isinstance(x, Not):
        return neg(replace_select(x.x, by))
    if isinstance(x, Select):
        return by
    return x


def static_part(x):
    """The pairs every selection allows: `select` as `none`.  A lower bound of the pattern because
    `select` occurs only positively (the front end refuses it under a difference)."""
    return replace_select(x, Empty())


def outer_part(x):
    """The pairs some selection may allow: `select` as `all` (the static part plus the region where
    selected blocks may fall, clipped by the outer terms)."""
    return replace_select(x, All())
