"""Lowering: a pattern becomes a kernel plan of passes, terms and tile ranges.

A pattern is rewritten as a union of *terms* (intersections of atoms).  Each
term says, in closed form, which key tiles a query tile needs (and, transposed,
which query tiles a key tile needs), and when a tile is certainly full.

Terms are grouped into *passes*, each with its own index space:

- `identity`: tokens in order (bands, global rows/columns, blocks, random);
- `diag(m)`: tokens grouped by residue i % m, so `stride(m)` and dilation
  become contiguous bands (the Sparse Transformer's own trick);
- `keys(l, c)`: only the key columns with j % l >= l - c ("summary" columns),
  compressed into a dense range.

Pass p computes the pairs of its terms minus those of earlier passes; later
passes start from the earlier passes' softmax state, so the result is exact.

Range formulas are produced as code strings in a tiny expression language
(`E`) that prints both as Python (to simulate the kernel on the host, for tile
efficiency) and as Triton (the kernel's loop bounds): one formula, two uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import intexpr as ix
from . import ir
from .printer import ArgTable

MAX_TERMS = 8


# ---------------------------------------------------------------- terms

@dataclass(frozen=True)
class Term:
    """One intersection of atoms.  `filters` are checked only by the mask."""

    lo: Optional[ix.IntExpr] = None  # band on i - j
    hi: Optional[ix.IntExpr] = None
    rows: tuple = ()  # ((a, b), ...)
    cols: tuple = ()
    blocks: tuple = ()
    diag: tuple = ()  # stride moduli
    keymods: tuple = ()  # ((l, c), ...)
    randoms: tuple = ()  # ir.Random atoms
    filters: tuple = ()  # other IR nodes (negations, unions that could not be expanded)

    def expr(self):
        parts = []
        if self.lo is not None or self.hi is not None:
            parts.append(ir.band(self.lo, self.hi))
        parts += [ir.rows(a, b) for a, b in self.rows]
        parts += [ir.cols(a, b) for a, b in self.cols]
        parts += [ir.block(b) for b in self.blocks]
        parts += [ir.diagmod(m) for m in self.diag]
        parts += [ir.keymod(l, c) for l, c in self.keymods]
        parts += list(self.randoms) + list(self.filters)
        return ir.inter(parts)


def _combine(a: Term, b: Term) -> Term:
    def bound(x, y, pick):
        if x is None:
            return y
        if y is None:
            return x
        return ix.make(pick, x, y)

    return Term(bound(a.lo, b.lo, "max"), bound(a.hi, b.hi, "min"), a.rows + b.rows, a.cols + b.cols,
                a.blocks + b.blocks, a.diag + b.diag, a.keymods + b.keymods, a.randoms + b.randoms,
                a.filters + b.filters)


def to_terms(x) -> list:
    """Disjunctive normal form over atoms; negations stay whole as filters."""
    if isinstance(x, ir.Empty):
        return []
    if isinstance(x, ir.All):
        return [Term()]
    if isinstance(x, ir.Union):
        out = []
        for y in x.items:
            out += to_terms(y)
        return out
    if isinstance(x, ir.Inter):
        acc = [Term()]
        for y in x.items:
            acc = [_combine(a, b) for a in acc for b in to_terms(y)]
            if len(acc) > MAX_TERMS:
                return [Term(filters=(x,))]
        return acc
    if isinstance(x, ir.Not):
        return [Term(filters=(x,))]
    if isinstance(x, ir.Band):
        return [Term(lo=x.lo, hi=x.hi)]
    if isinstance(x, ir.Rows):
        return [Term(rows=((x.a, x.b),))]
    if isinstance(x, ir.Cols):
        return [Term(cols=((x.a, x.b),))]
    if isinstance(x, ir.Block):
        return [Term(blocks=(x.b,))]
    if isinstance(x, ir.DiagMod):
        return [Term(diag=(x.m,))]
    if isinstance(x, ir.KeyMod):
        return [Term(keymods=((x.l, x.c),))]
    if isinstance(x, ir.Random):
        return [Term(randoms=(x,))]
    raise TypeError(type(x).__name__)


# ---------------------------------------------------------------- passes

@dataclass(frozen=True)
class Space:
    kind: str  # "identity" | "diag" | "keys"
    m: Optional[ix.IntExpr] = None  # diag modulus
    l: Optional[ix.IntExpr] = None  # keys: period
    c: Optional[ix.IntExpr] = None  # keys: columns kept per period

    def describe(self) -> str:
        if self.kind == "diag":
            return f"tokens grouped by residue mod {self.m}: position = r + {self.m}*index"
        if self.kind == "keys":
            return f"keys restricted to columns j % {self.l} >= {self.l} - {self.c}"
        return "tokens in order"


@dataclass(frozen=True)
class Pass:
    space: Space
    terms: tuple
    mask: object  # IR: this pass's pairs (its terms minus earlier passes)
    first: bool  # no earlier pass: full tiles need no mask at all


@dataclass(frozen=True)
class Plan:
    passes: tuple
    random_block: Optional[int]  # tiles must divide this when the pattern has `random`


TILE_QUANTUM = 16  # random blocks must be a constant multiple of this to be visited block by block


def _space_of(t: Term) -> tuple[Space, Term]:
    """Choose the index space where a term is dense, moving leftovers to filters."""
    odd = tuple(x for x in t.randoms if not (isinstance(x.b, ix.Const) and x.b.value % TILE_QUANTUM == 0))
    if odd:  # visited through the mask only: correct, but every key tile of the row range is computed
        t = Term(t.lo, t.hi, t.rows, t.cols, t.blocks, t.diag, t.keymods,
                 tuple(x for x in t.randoms if x not in odd), t.filters + odd)
    if t.diag and not t.keymods and not t.randoms:
        m, rest = t.diag[0], t.diag[1:]
        extra = tuple(ir.diagmod(x) for x in rest)
        return Space("diag", m=m), Term(t.lo, t.hi, t.rows, t.cols, t.blocks, (m,), (), (), t.filters + extra)
    if t.keymods and not t.diag and not t.randoms:
        (l, c), rest = t.keymods[0], t.keymods[1:]
        extra = tuple(ir.keymod(a, b) for a, b in rest)
        return Space("keys", l=l, c=c), Term(t.lo, t.hi, t.rows, t.cols, t.blocks, (), ((l, c),), (),
                                              t.filters + extra)
    extra = tuple(ir.diagmod(m) for m in t.diag) + tuple(ir.keymod(a, b) for a, b in t.keymods)
    if len(t.randoms) > 1:
        extra += t.randoms[1:]
        t = Term(t.lo, t.hi, t.rows, t.cols, t.blocks, (), (), t.randoms[:1], t.filters)
    return Space("identity"), Term(t.lo, t.hi, t.rows, t.cols, t.blocks, (), (), t.randoms, t.filters + extra)


def plan(expr) -> Plan:
    """Lower one (non per-head) IR expression into passes."""
    terms = to_terms(expr)
    groups: dict = {}
    for t in terms:
        space, t2 = _space_of(t)
        groups.setdefault(space, []).append(t2)
    order = sorted(groups, key=lambda s: ({"identity": 0, "keys": 1, "diag": 2}[s.kind], str(s.m), str(s.l),
                                          str(s.c)))
    passes, earlier = [], []
    rb = None
    for s in order:
        ts = groups[s]
        # random terms last, so earlier terms never need to ask "was this tile picked?"
        ts.sort(key=lambda t: bool(t.randoms))
        if len(ts) > MAX_TERMS:
            ts = [Term(filters=(ir.union([t.expr() for t in ts]),))]
        own = ir.union([t.expr() for t in ts])
        mask = ir.inter([own] + [ir.neg(e) for e in earlier]) if earlier else own
        passes.append(Pass(s, tuple(ts), mask, not earlier))
        earlier.append(own)
        for t in ts:
            for r in t.randoms:
                if isinstance(r.b, ix.Const):
                    rb = r.b.value if rb is None else _gcd(rb, r.b.value)
    return Plan(tuple(passes), rb)


def heavy_spans(p: Pass, major: str) -> list:
    """[(a, b), ...]: the rows (major "q") or key columns ("k") of the pass's global terms.

    A global row attends every key, so its query tile walks all n/BN key tiles while a
    windowed tile walks a handful: one program would run ~n/BN times longer than the rest.
    The kernels split such tiles' walks into chunks (and the host merges them); this says
    which tiles.  A term qualifies when it bounds only the rows (or only the columns), up to
    a one-sided band; the host splits a walk when it is at least three chunks long."""
    if p.space.kind != "identity":
        return []
    spans = []
    for t in p.terms:
        own, other = (t.rows, t.cols) if major == "q" else (t.cols, t.rows)
        # a one-sided band (causal) still leaves a global row (column) at one end unbounded
        two_sided = t.lo is not None and t.hi is not None
        if own and not other and not two_sided and not (t.blocks or t.diag or t.keymods or t.randoms):
            spans.append((ix.make("max", *[a for a, _ in own]), ix.make("min", *[b for _, b in own])))
    return spans


NARROW_MAX = 32  # key columns at most, for a term of its own narrow step


def narrow_columns(t: Term, space: Space) -> Optional[int]:
    """Keys per step for a term that only ever needs a few fixed key columns (attention sinks,
    Longformer's global columns), or None.  Walked as one of the forward's BN-key tiles (64),
    4 sink columns cost a whole tile per query tile (StreamingLLM: 1 of 19); a step of its own
    loads 16 keys instead.  The bounds must be constants, so the width is the same at every n."""
    if space.kind != "identity" or not t.cols or t.blocks or t.diag or t.keymods or t.randoms:
        return None
    if not all(isinstance(a, ix.Const) and isinstance(b, ix.Const) for a, b in t.cols):
        return None
    width = min(b.value for _, b in t.cols) - max(a.value for a, _ in t.cols)
    if width > NARROW_MAX:
        return None
    return max(16, 1 << max(width - 1, 0).bit_length())  # a power of two >= 16 (tl.dot's least)


def atomic_dq(pl: Plan) -> bool:
    """Whether the Triton backward adds dq atomically from its dk/dv kernel instead of running a
    dq kernel.  Measured on an H200 (benchmarks/NOTES.md, v4), that is faster only where the dq
    kernel's own walk is the costly part: random blocks, and a residue-class pass beside another
    pass (Sparse Transformer strided); windows, causal and a lone residue-class pass are slower."""
    return any(any(t.randoms for t in p.terms) for p in pl.passes) or \
        (len(pl.passes) > 1 and any(p.space.kind == "diag" for p in pl.passes))


def fused_forward(pl: Plan) -> bool:
    """Whether one forward kernel walks every pass of the plan.  Passes whose query positions are
    tokens in order (identity and kept-key spaces) visit the same query tiles, so one program can
    continue its online softmax from one pass's key tiles to the next: no float32 output and
    log-sum-exp written by one launch and read back by the next, Q loaded once.  Not with split
    global rows (their chunks are separate launches) or residue classes (other query tiles)."""
    return len(pl.passes) > 1 and all(p.space.kind in ("identity", "keys") for p in pl.passes) \
        and not any(heavy_spans(p, "q") for p in pl.passes)


def describe_plan(expr, n: int) -> list:
    """One line per kernel pass: its index space, its terms, and the global rows/columns whose
    walks are split across programs (when a walk is at least three chunks long)."""
    lines, pl = [], plan(expr)
    for i, p in enumerate(pl.passes):
        s = f"pass {i}: {p.space.describe()}, {len(p.terms)} term{'s' if len(p.terms) > 1 else ''}"
        for major, what in (("q", "rows"), ("k", "key columns")):
            spans = [(max(ix.evaluate(a, n), 0), min(ix.evaluate(b, n), n)) for a, b in heavy_spans(p, major)]
            spans = sorted((a, b) for a, b in spans if b > a)
            if spans:
                s += f"; global {what} " + ", ".join(f"{a}..{b - 1}" for a, b in spans) + " split into chunks"
        lines.append(s)
    if fused_forward(pl):
        lines.append(f"forward: one kernel walks passes 0..{len(lines) - 1} (same query tiles, one online softmax)")
    return lines or ["no pass: the pattern is empty"]


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


# ---------------------------------------------------------------- range code

class Code:
    """Scalar code strings with constant folding; prints as Python or Triton."""

    def __init__(self, dialect: str, args: ArgTable):
        self.tl = dialect == "triton"
        self.np = dialect == "numpy"
        self.args = args

    def arg(self, e: ix.IntExpr) -> str:
        return self.args(e)

    @staticmethod
    def _int(s: str) -> Optional[int]:
        try:
            return int(s.strip("()"))
        except ValueError:
            return None

    def add(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(x + y)
        if y == 0:
            return a
        if x == 0:
            return b
        return f"({a} + {b})"

    def sub(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(x - y)
        if y == 0:
            return a
        return f"({a} - {b})"

    def mul(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(x * y)
        if y == 1:
            return a
        if x == 1:
            return b
        return f"({a} * {b})"

    def div(self, a: str, b: str) -> str:
        """Floor division of a non-negative value."""
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(x // y)
        if y == 1:
            return a
        return f"({a} // {b})"

    def mod(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(x % y)
        return f"({a} % {b})"

    def max(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(max(x, y))
        if self.np:
            return f"np.maximum({a}, {b})"
        return f"tl.maximum({a}, {b})" if self.tl else f"max({a}, {b})"

    def min(self, a: str, b: str) -> str:
        x, y = self._int(a), self._int(b)
        if x is not None and y is not None:
            return str(min(x, y))
        if self.np:
            return f"np.minimum({a}, {b})"
        return f"tl.minimum({a}, {b})" if self.tl else f"min({a}, {b})"

    def cdiv0(self, a: str, b: str) -> str:
        """ceil(max(a, 0) / b) for b >= 1."""
        return self.div(self.add(self.max(a, "0"), self.sub(b, "1")), b)

    def le(self, a: str, b: str) -> str:
        return f"({a} <= {b})"

    def lt(self, a: str, b: str) -> str:
        return f"({a} < {b})"

    def eq(self, a: str, b: str) -> str:
        return f"({a} == {b})"

    def all(self, conds: list) -> str:
        conds = [c for c in conds if c != "True"]
        if not conds:
            return "True"
        return " & ".join(conds) if len(conds) > 1 else conds[0]

    def any(self, conds: list) -> str:
        if not conds:
            return "False"
        return " | ".join(conds) if len(conds) > 1 else conds[0]


@dataclass
class TileRanges:
    """Code for one term: key index interval for a query tile, or query interval for a key tile."""

    lo: str  # first index (may be unclamped)
    hi: str  # last index, inclusive (may be unclamped)
    applies: str  # the term can contribute to this tile row at all
    full: str  # condition (given a concrete other-axis tile) that the tile is entirely allowed
    random: Optional[ir.Random] = None


def space_helpers(space: Space, c: Code) -> dict:
    """Derived host scalars for a space."""
    if space.kind == "diag":
        return {"m": c.arg(space.m)}
    if space.kind == "keys":
        return {"l": c.arg(space.l), "c": c.arg(space.c)}
    return {}


def key_position(space: Space, c: Code, u: str) -> str:
    """Token position of key index u in the space (scalar code)."""
    if space.kind == "diag":
        return c.add("r", c.mul(c.arg(space.m), u))
    if space.kind == "keys":
        l, cc = c.arg(space.l), c.arg(space.c)
        return c.add(c.mul(c.div(u, cc), l), c.add(c.sub(l, cc), c.mod(u, cc)))
    return u


def query_position(space: Space, c: Code, a: str) -> str:
    if space.kind == "diag":
        return c.add("r", c.mul(c.arg(space.m), a))
    return a


def count_keys_below(space: Space, c: Code, x: str) -> str:
    """keys space: number of kept columns j < x, for x >= 0."""
    l, cc = c.arg(space.l), c.arg(space.c)
    return c.add(c.mul(c.div(x, l), cc), c.max(c.sub(c.mod(x, l), c.sub(l, cc)), "0"))


def _floor_div_expr(a: ix.IntExpr, m: ix.IntExpr) -> ix.IntExpr:
    return ix.make("//", a, m)


def _ceil_div_expr(a: ix.IntExpr, m: ix.IntExpr) -> ix.IntExpr:
    return ix.make("neg", ix.make("//", ix.make("neg", a), m))


def query_major(t: Term, space: Space, c: Code) -> TileRanges:
    """Key index range [lo, hi] for query tile [a0, a1] (names a0, a1, and b0, b1 for `full`)."""
    lows, highs, applies, full = ["0"], ["L - 1"], [], []
    if space.kind == "identity":
        if t.lo is not None:
            highs.append(c.sub("a1", c.arg(t.lo)))
            full.append(c.le(c.arg(t.lo), c.sub("a0", "b1")))
        if t.hi is not None:
            lows.append(c.sub("a0", c.arg(t.hi)))
            full.append(c.le(c.sub("a1", "b0"), c.arg(t.hi)))
        for a, b in t.cols:
            lows.append(c.arg(a))
            highs.append(c.sub(c.arg(b), "1"))
            full += [c.le(c.arg(a), "b0"), c.lt("b1", c.arg(b))]
        for bs in t.blocks:
            bsa = c.arg(bs)
            lows.append(c.mul(c.div("a0", bsa), bsa))
            highs.append(c.sub(c.mul(c.add(c.div("a1", bsa), "1"), bsa), "1"))
            full += [c.eq(c.div("a0", bsa), c.div("a1", bsa)), c.eq(c.div("b0", bsa), c.div("a0", bsa)),
                     c.eq(c.div("b1", bsa), c.div("a0", bsa))]
        for a, b in t.rows:
            applies += [c.le(c.arg(a), "a1"), c.lt("a0", c.arg(b))]
            full += [c.le(c.arg(a), "a0"), c.lt("a1", c.arg(b))]
    elif space.kind == "diag":
        m = c.arg(space.m)
        if t.lo is not None:
            cl = c.arg(_ceil_div_expr(t.lo, space.m))
            highs.append(c.sub("a1", cl))
            full.append(c.le(cl, c.sub("a0", "b1")))
        if t.hi is not None:
            fh = c.arg(_floor_div_expr(t.hi, space.m))
            lows.append(c.sub("a0", fh))
            full.append(c.le(c.sub("a1", "b0"), fh))
        for a, b in t.cols:
            lows.append(c.cdiv0(c.sub(c.arg(a), "r"), m))
            highs.append(c.sub(c.cdiv0(c.sub(c.arg(b), "r"), m), "1"))
            full += [c.le(c.arg(a), key_position(space, c, "b0")), c.lt(key_position(space, c, "b1"), c.arg(b))]
        for a, b in t.rows:
            ra = c.cdiv0(c.sub(c.arg(a), "r"), m)
            rb = c.cdiv0(c.sub(c.arg(b), "r"), m)
            applies += [c.le(ra, "a1"), c.lt("a0", rb)]
            full += [c.le(ra, "a0"), c.lt("a1", rb)]
        for bs in t.blocks:  # exact only through the mask; the range is the tokens' block hull
            bsa = c.arg(bs)
            p0, p1 = query_position(space, c, "a0"), query_position(space, c, "a1")
            lo_pos = c.mul(c.div(p0, bsa), bsa)
            hi_pos = c.sub(c.mul(c.add(c.div(p1, bsa), "1"), bsa), "1")
            lows.append(c.cdiv0(c.sub(lo_pos, "r"), m))
            highs.append(c.div(c.sub(hi_pos, "r"), m))
            full.append("False")
    else:  # keys space
        for_pos_lo, for_pos_hi = [], []
        if t.lo is not None:
            for_pos_hi.append(c.sub("a1", c.arg(t.lo)))
            full.append(c.le(key_position(space, c, "b1"), c.sub("a0", c.arg(t.lo))))
        if t.hi is not None:
            for_pos_lo.append(c.sub("a0", c.arg(t.hi)))
            full.append(c.le(c.sub("a1", c.arg(t.hi)), key_position(space, c, "b0")))
        for a, b in t.cols:
            for_pos_lo.append(c.arg(a))
            for_pos_hi.append(c.sub(c.arg(b), "1"))
            full += [c.le(c.arg(a), key_position(space, c, "b0")), c.lt(key_position(space, c, "b1"), c.arg(b))]
        for bs in t.blocks:
            bsa = c.arg(bs)
            for_pos_lo.append(c.mul(c.div("a0", bsa), bsa))
            for_pos_hi.append(c.sub(c.mul(c.add(c.div("a1", bsa), "1"), bsa), "1"))
            kb0 = c.div(key_position(space, c, "b0"), bsa)
            kb1 = c.div(key_position(space, c, "b1"), bsa)
            full += [c.eq(c.div("a0", bsa), c.div("a1", bsa)), c.eq(kb0, c.div("a0", bsa)),
                     c.eq(kb1, c.div("a0", bsa))]
        for a, b in t.rows:
            applies += [c.le(c.arg(a), "a1"), c.lt("a0", c.arg(b))]
            full += [c.le(c.arg(a), "a0"), c.lt("a1", c.arg(b))]
        for x in for_pos_lo:
            lows.append(count_keys_below(space, c, c.max(x, "0")))
        for x in for_pos_hi:
            highs.append(c.sub(count_keys_below(space, c, c.max(c.add(x, "1"), "0")), "1"))
    if t.filters or len(t.diag) > 1 or len(t.keymods) > 1:
        full.append("False")
    if t.randoms:
        (rnd,) = t.randoms
        rb = c.arg(rnd.b)
        # BM and BN divide the random block: a query tile sits in one query block, and a visited
        # key tile lies entirely inside a picked key block.
        return TileRanges(_fold_max(c, lows), _fold_min(c, highs), c.all(applies), c.all(full), rnd)
    return TileRanges(_fold_max(c, lows), _fold_min(c, highs), c.all(applies), c.all(full))


def key_major(t: Term, space: Space, c: Code) -> TileRanges:
    """Query index range [lo, hi] for key tile [b0, b1] (the transpose of query_major)."""
    lows, highs, applies = ["0"], ["LQ - 1"], []
    if space.kind == "identity":
        if t.lo is not None:
            lows.append(c.add("b0", c.arg(t.lo)))
        if t.hi is not None:
            highs.append(c.add("b1", c.arg(t.hi)))
        for a, b in t.rows:
            lows.append(c.arg(a))
            highs.append(c.sub(c.arg(b), "1"))
        for a, b in t.cols:
            applies += [c.le(c.arg(a), "b1"), c.lt("b0", c.arg(b))]
        for bs in t.blocks:
            bsa = c.arg(bs)
            lows.append(c.mul(c.div("b0", bsa), bsa))
            highs.append(c.sub(c.mul(c.add(c.div("b1", bsa), "1"), bsa), "1"))
    elif space.kind == "diag":
        m = c.arg(space.m)
        if t.lo is not None:
            lows.append(c.add("b0", c.arg(_ceil_div_expr(t.lo, space.m))))
        if t.hi is not None:
            highs.append(c.add("b1", c.arg(_floor_div_expr(t.hi, space.m))))
        for a, b in t.rows:
            lows.append(c.cdiv0(c.sub(c.arg(a), "r"), m))
            highs.append(c.sub(c.cdiv0(c.sub(c.arg(b), "r"), m), "1"))
        for a, b in t.cols:
            ka = c.cdiv0(c.sub(c.arg(a), "r"), m)
            kb = c.cdiv0(c.sub(c.arg(b), "r"), m)
            applies += [c.le(ka, "b1"), c.lt("b0", kb)]
        for bs in t.blocks:
            bsa = c.arg(bs)
            p0, p1 = key_position(space, c, "b0"), key_position(space, c, "b1")
            lo_pos = c.mul(c.div(p0, bsa), bsa)
            hi_pos = c.sub(c.mul(c.add(c.div(p1, bsa), "1"), bsa), "1")
            lows.append(c.cdiv0(c.sub(lo_pos, "r"), m))
            highs.append(c.div(c.sub(hi_pos, "r"), m))
    else:
        j0, j1 = key_position(space, c, "b0"), key_position(space, c, "b1")
        if t.lo is not None:
            lows.append(c.add(j0, c.arg(t.lo)))
        if t.hi is not None:
            highs.append(c.add(j1, c.arg(t.hi)))
        for a, b in t.rows:
            lows.append(c.arg(a))
            highs.append(c.sub(c.arg(b), "1"))
        for a, b in t.cols:
            applies += [c.le(c.arg(a), j1), c.lt(j0, c.arg(b))]
        for bs in t.blocks:
            bsa = c.arg(bs)
            lows.append(c.mul(c.div(j0, bsa), bsa))
            highs.append(c.sub(c.mul(c.add(c.div(j1, bsa), "1"), bsa), "1"))
    rnd = t.randoms[0] if t.randoms else None
    return TileRanges(_fold_max(c, lows), _fold_min(c, highs), c.all(applies), "", rnd)


def _fold_max(c: Code, xs: list) -> str:
    out = xs[0]
    for x in xs[1:]:
        out = c.max(out, x)
    return out


def _fold_min(c: Code, xs: list) -> str:
    out = xs[0]
    for x in xs[1:]:
        out = c.min(out, x)
    return out


# ---------------------------------------------------------------- host simulation of the kernels

def visited_tiles(expr, n: int, bm: int, bn: int) -> int:
    """How many (query tile, key tile) pairs the forward kernel computes at length n.

    `expr` must be evaluated at n (Pattern.at).  This runs the very range formulas the
    kernel uses, printed for numpy instead of Triton and evaluated for all query tiles
    at once, so it reports what the kernel does in milliseconds even at n = 2**20."""
    return sum(int(walk.sum()) for walk, _ in tile_walks(expr, n, bm, bn))


def computed_pairs(expr, n: int, bm: int, bn: int) -> int:
    """(query, key) pairs the forward kernel computes at length n: its visited tiles x bm x bn,
    where a narrow-column term's own step (`narrow_columns`) counts bm x its keys."""
    return round(sum(float(walk.sum()) for walk, _ in tile_walks(expr, n, bm, bn, narrow=True)) * bm * bn)


def tile_walks(expr, n: int, bm: int, bn: int, narrow: bool = False) -> list:
    """Per pass of `plan(expr)`: (key tiles each query tile's forward program walks, that tile's
    index within its residue class), one entry per program in launch order (numpy arrays).
    With `narrow`, a narrow-column term's own step counts as its keys / bn of a tile (floats),
    where the kernel takes it instead of walking the term."""
    import numpy as np

    from .semantics import HASH_QB, HASH_SEED, HASH_T, mix32

    if isinstance(expr, ir.Heads):
        raise TypeError("tile_walks and visited_tiles work on one head's pattern (a case of heads { ... })")
    pl = plan(expr)
    args = ArgTable()
    c = Code("numpy", args)
    out = []
    for p in pl.passes:
        ranges = [query_major(t, p.space, c) for t in p.terms]
        env: dict = {"np": np, "n": n}
        for e, name in args.names.items():
            env[name] = ix.evaluate(e, n)
        if p.space.kind == "diag":
            m = ix.evaluate(p.space.m, n)
            r = np.arange(min(m, n), dtype=np.int64)
            lq = (n - r + m - 1) // m
            per = -(-lq // bm)
            rr = np.repeat(r, per)
            lqq = np.repeat(lq, per)
            a0 = (np.arange(int(per.sum()), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)) * bm
            env.update(r=rr, LQ=lqq, L=lqq)
        else:
            a0 = np.arange(-(-n // bm), dtype=np.int64) * bm
            env.update(r=0, LQ=n, L=n)
            if p.space.kind == "keys":
                env["L"] = int(eval(count_keys_below(p.space, c, "n"), env))
        env.update(a0=a0, a1=a0 + bm - 1)
        rows = a0.shape[0]
        walk = np.zeros(rows, dtype=np.float64 if narrow else np.int64)

        def ev(code: str):
            return np.broadcast_to(np.asarray(eval(code, env)), (rows,)).astype(np.int64)

        los, his = [], []
        randoms = []
        for tr in ranges:
            lo, hi = ev(tr.lo), ev(tr.hi)
            ok = ev(tr.applies).astype(bool) & (hi >= lo)
            if tr.random is None:
                los.append(np.where(ok, lo // bn, 0))
                his.append(np.where(ok, hi // bn + 1, 0))
            else:
                randoms.append((tr.random, lo, hi, ok))
        if narrow and p.space.kind == "identity" and len(los) > 1 and not randoms:
            # the kernel's own test (backends/triton.py, _narrow_steps): the term is nonempty and
            # every other term's key tiles are empty or clear of the term's columns
            for k, (t, tr) in enumerate(zip(p.terms, ranges)):
                nb = narrow_columns(t, p.space)
                if nb is None or nb >= bn:
                    continue
                lo_k, hi_k = ev(tr.lo), ev(tr.hi)
                apart = his[k] > los[k]
                for m in range(len(los)):
                    if m != k:
                        apart &= (his[m] <= los[m]) | (los[m] > hi_k // bn) | (his[m] <= lo_k // bn)
                his[k] = np.where(apart, los[k], his[k])
                walk += apart * (nb / bn)
        merged_lo = merged_hi = None
        if los:
            lo_m, hi_m = np.stack(los, 1), np.stack(his, 1)
            order = np.argsort(lo_m, 1, kind="stable")
            lo_m, hi_m = np.take_along_axis(lo_m, order, 1), np.take_along_axis(hi_m, order, 1)
            count = np.zeros(rows, dtype=np.int64)
            cur_lo, cur_hi = lo_m[:, 0].copy(), hi_m[:, 0].copy()
            for k in range(1, lo_m.shape[1]):  # sweep the sorted spans, merging overlaps
                gap = lo_m[:, k] > cur_hi
                count += np.where(gap, np.maximum(cur_hi - cur_lo, 0), 0)
                cur_lo = np.where(gap, lo_m[:, k], cur_lo)
                cur_hi = np.where(gap, hi_m[:, k], np.maximum(cur_hi, hi_m[:, k]))
            count += np.maximum(cur_hi - cur_lo, 0)
            walk += count
            merged_lo, merged_hi = lo_m, hi_m
        for rnd, lo, hi, ok in randoms:
            b, r_ = ix.evaluate(rnd.b, n), ix.evaluate(rnd.r, n)
            nkb = -(-n // b)
            picks = min(r_, nkb)
            key = (rnd.seed * HASH_SEED + 1) & 0xFFFFFFFF
            qb = a0 // b
            for t in range(picks):
                start = t * nkb // picks
                length = (t + 1) * nkb // picks - start
                kb = start + mix32((key + qb * HASH_QB + t * HASH_T) & 0xFFFFFFFF) % length
                klo, khi = np.maximum(kb * b, lo), np.minimum(kb * b + b - 1, hi)
                for off in range(-(-b // bn)):  # the key tiles of the picked block
                    kt = klo // bn + off
                    live = ok & (khi >= klo) & (kt <= khi // bn)
                    if merged_lo is not None:
                        live &= ~((merged_lo <= kt[:, None]) & (kt[:, None] < merged_hi)).any(1)
                    walk += live
        out.append((walk, a0 // bm))
    return out


def count_pairs(expr, n: int, chunk: int = 256) -> int:
    """Exact number of allowed pairs, by chunks of rows (numpy; for checks at moderate n)."""
    import numpy as np

    from .semantics import allowed

    j = np.arange(n, dtype=np.int64)[None, :]
    total = 0
    for s in range(0, n, chunk):
        i = np.arange(s, min(n, s + chunk), dtype=np.int64)[:, None]
        total += int(np.broadcast_to(allowed(expr, i, j, n), (i.shape[0], n)).sum())
    return total


def kernel_tile_efficiency(expr, n: int, bm: int = 128, bn: int = 64, nnz: Optional[int] = None) -> float:
    """Allowed pairs / pairs the kernel computes (`computed_pairs`)."""
    computed = computed_pairs(expr, n, bm, bn)
    if computed == 0:
        return 1.0
    if nnz is None:
        nnz = count_pairs(expr, n)
    return nnz / computed


# Forward tile shapes the GPU kernels may use (D <= 128, 16-bit inputs), largest first.  A bigger
# tile does more work per load, so it must keep most of the smaller tile's efficiency to win.
TILE_CHOICES = ((128, 64), (64, 64))
LONG_WALK = 16  # key tiles per 128-row query tile from which 128-row tiles pay (measured, NOTES.md)
MAX_EXTRA_WORK = 1.3  # ... unless they compute this much more than 64-row tiles
REFERENCE_LENGTH = 16384


def _head_exprs(pattern, n: int) -> Optional[list]:
    """Each head case's expression at length n (one for a pattern without `heads`), or None
    where the pattern is not valid at n: the compile-time choices then keep their defaults."""
    from .errors import PatternError

    try:
        exprs = pattern.at(n)
    except PatternError:
        return None
    return [c.expr for c in exprs.cases] if isinstance(exprs, ir.Heads) else [exprs]


def choose_forward_tiles(pattern, n: int = REFERENCE_LENGTH) -> tuple:
    """(BM, BN) for the forward kernel, decided once, at compile time, by the cost model.

    Measured on an H200 (benchmarks/NOTES.md): a program has a fixed cost (prologue, epilogue,
    pipeline fill) of about 3.6 tiles' work for 64x64 tiles (4 warps) and 6.8 for 128x64
    (8 warps), while a 128x64 tile step costs 0.9x two 64x64 steps.  So 128-row tiles win
    once a query tile walks many key tiles (causal, wide windows) and lose on short walks
    (local(256), strided): short walks take 64-row tiles."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:  # not valid at the reference length: keep the default shape
        return TILE_CHOICES[0]
    big = sum(visited_tiles(e, n, 128, 64) for e in exprs)
    small = sum(visited_tiles(e, n, 64, 64) for e in exprs)
    walk = big / (len(exprs) * -(-n // 128))
    if walk >= LONG_WALK and 2 * big <= MAX_EXTRA_WORK * small:
        return TILE_CHOICES[0]
    return TILE_CHOICES[1]


def choose_dkdv_tiles(pattern, n: int = REFERENCE_LENGTH, D: int = 128) -> tuple:
    """(query tile, key tile, warps) of the dk/dv kernel on the GPU for head dim `D`, decided at
    compile time.

    64-key tiles on 4 warps (2 programs per SM at D = 128: 97 KiB of shared memory) for plans of
    one pass over tokens in order, and for plans with block-diagonal or random terms. Measured on
    an H200 (D = 128, benchmarks/NOTES.md, v4, v5, v8): local -14%, causal window -15% at 65,536,
    causal -7%, Sparse Transformer fixed -9 to -12%; unions with sinks, global rows or a prefix
    block, once their walk had one tile loop (v7), -5 to -16% against 128 keys on 8 warps.
    Residue classes and several passes keep 128 keys on 8 warps: strided +30%, dilated +4%
    with 64. Random blocks take 32-query tiles at D > 64: the dk/dv kernel also adds dq
    atomically there (`atomic_dq`) and at 64 queries and D = 128 it spills registers; BigBird's
    backward -24% (v8), while the other plans measured 3-16% slower with 32 (dilated 2% faster:
    kept at 64). At D = 64 nothing spills and 64 queries win (BigBird -14%)."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return 64, 128, 8
    plans = [plan(e) for e in exprs]
    terms = [t for pl in plans for ps in pl.passes for t in ps.terms]
    if any(t.blocks or t.randoms for t in terms) and not any(t.diag for t in terms):
        return (32 if D > 64 and any(t.randoms for t in terms) else 64), 64, 4
    for pl in plans:
        if len(pl.passes) != 1 or pl.passes[0].space.kind != "identity":
            return 64, 128, 8
        if any(t.diag or t.keymods or t.filters for t in pl.passes[0].terms):
            return 64, 128, 8
    return 64, 64, 4


LONG_KEY_WALK = 64  # query tiles per 64-key tile from which the dk/dv kernel walks a union twice


def choose_union_walks(pattern, n: int = REFERENCE_LENGTH, fwd_tiles: Optional[tuple] = None) -> dict:
    """Per kernel ("fwd", "dq", "dkdv"): whether a union of interval terms is walked twice, its
    full runs with the mask-free tile body and then its partial tiles, rather than once with
    the mask opened on full runs (or, for 128-row forwards, a full and a partial loop inside
    one walk).  Measured on an H200 at n = 65,536, D = 128 (benchmarks/NOTES.md, v9), kernel
    times two walks / one walk: dq 0.83-0.87 (prefix-LM, StreamingLLM, Longformer); dk/dv 0.91
    on prefix-LM's long walks, 1.03-1.05 on the short ones (StreamingLLM, Longformer, BigBird);
    forward 0.92 (Longformer, 64-row tiles) but 1.04 (prefix-LM, StreamingLLM, 128-row)."""
    fwd64 = (fwd_tiles or choose_forward_tiles(pattern, n))[0] == 64
    return {"fwd": fwd64, "dq": True, "dkdv": long_key_walk(pattern, n)}


def long_key_walk(pattern, n: int = REFERENCE_LENGTH) -> bool:
    """Whether a 64-key tile meets, on average over the heads, at least LONG_KEY_WALK query
    tiles of 64 at the reference length: causal-like patterns (causal, prefix-LM), whose
    backward kernels are long pipelined loops, unlike windows, sinks and global rows."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return False
    return sum(visited_tiles(e, n, 64, 64) for e in exprs) / (len(exprs) * -(-n // 64)) >= LONG_KEY_WALK


LATE_GROWTH = 1.25  # a pass runs its query tiles last-first when late tiles walk this much more


def longest_walks_first(pattern, n: int = REFERENCE_LENGTH, tiles: tuple = (128, 64)) -> Optional[list]:
    """Per head case: (per pass, whether its query tiles run last-first; the same for a forward
    kernel that walks all of the case's passes), decided at compile time from the walk lengths
    at the reference length.

    The GPU starts programs in launch order.  Where a query tile's walk grows with its index
    (causal, prefix-LM, strided), tile order launches the longest programs last, and the SMs
    that drew them finish late while the rest idle; last-first puts the short programs at the
    end (a list-scheduling simulation of causal at n = 65,536: 1.6-3% of the kernel's time,
    6.6% at 16,384).  None where the pattern is not valid at n."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return None
    out = []
    for e in exprs:
        walks = tile_walks(e, n, *tiles)
        per_pass = [_grows(w, t) for w, t in walks]
        same = walks and all(w.shape == walks[0][0].shape for w, _ in walks)
        fused = _grows(sum(w for w, _ in walks), walks[0][1]) if same else bool(per_pass and per_pass[0])
        out.append((per_pass, fused))
    return out


def _grows(walk, t) -> bool:
    """Whether the tiles in the later half of their class walk LATE_GROWTH times more."""
    late = 2 * t >= t.max() + 1 if t.size else t
    if not late.any() or late.all():
        return False
    return float(walk[late].mean()) > LATE_GROWTH * max(float(walk[~late].mean()), 1.0)


def choose_bwd_settings(pattern, n: int = REFERENCE_LENGTH, D: int = 128) -> dict:
    """The backward's tiles, warps and the dk/dv kernel's pipeline stages on the GPU for head
    dim `D`, decided at compile time: the dk/dv tiles of `choose_dkdv_tiles`, 128x64 dq tiles
    on 8 warps.  At D = 64, long key walks take 128x128 dq tiles and 3 dk/dv stages: measured
    on an H200 at n = 65,536 (benchmarks/NOTES.md, v11), causal's backward 68.8 -> 61.6 ms,
    prefix-LM's 68.1 -> 61.7, while the short walks lost 1-8% with them (StreamingLLM,
    Longformer, the causal window; local even).  At D = 128 three dk/dv stages cost one program
    per SM: causal +14% (v9).  None for the dk/dv stages: the module's own default."""
    bm, bn, warps = choose_dkdv_tiles(pattern, n, D)
    wide = D <= 64 and long_key_walk(pattern, n)
    return dict(DQ_BM=128, DQ_BN=128 if wide else 64, dq_warps=8, DKV_BM=bm, DKV_BN=bn, dkv_warps=warps,
                dkv_stages=3 if wide else None)


# ---------------------------------------------------------------- full spans

@dataclass
class FullSpan:
    """Tiles that are entirely allowed, as a half-open range of tile indices along the loop
    axis (`lo`, `hi`), valid when the tile-level condition `cond` holds."""

    lo: str
    hi: str
    cond: str


def full_span(t: Term, space: Space, c: Code, major: str) -> Optional[FullSpan]:
    """Closed-form range of full tiles for one term: key tiles of query tile [a0, a1]
    (major 'q', tile size BN), or query tiles of key tile [b0, b1] (major 'k', size BM).
    None when the term's pairs are never certified full (filters, random, extra moduli)."""
    if t.filters or t.randoms or len(t.diag) > 1 or len(t.keymods) > 1:
        return None
    T = "BN" if major == "q" else "BM"
    los: list = []
    his: list = ["L // BN" if major == "q" else "LQ // BM"]
    conds: list = ["(a1 < LQ)" if major == "q" else "(b1 < L)"]

    def ceil_tiles(x: str) -> str:
        return c.cdiv0(x, T)

    def floor_tiles(x: str) -> str:  # tiles [.., x // T) end before index x
        return c.div(c.max(x, "0"), T)

    if space.kind == "identity" or space.kind == "keys":
        keys = space.kind == "keys"

        def kpos_count(x: str) -> str:  # index (along the key axis) of the first key at position >= x
            return count_keys_below(space, c, c.max(x, "0")) if keys else x

        j0 = key_position(space, c, "b0")
        j1 = key_position(space, c, "b1")
        if major == "q":
            if t.lo is not None:  # i - j >= lo for the tile's first row and last key
                his.append(floor_tiles(kpos_count(c.add(c.sub("a0", c.arg(t.lo)), "1"))))
            if t.hi is not None:
                los.append(ceil_tiles(kpos_count(c.sub("a1", c.arg(t.hi)))))
            for a, b in t.cols:
                los.append(ceil_tiles(kpos_count(c.arg(a))))
                his.append(floor_tiles(kpos_count(c.arg(b))))
            for a, b in t.rows:
                conds += [c.le(c.arg(a), "a0"), c.lt("a1", c.arg(b))]
            for bs in t.blocks:
                bsa = c.arg(bs)
                blk = c.mul(c.div("a0", bsa), bsa)
                conds.append(c.eq(c.div("a0", bsa), c.div("a1", bsa)))
                los.append(ceil_tiles(kpos_count(blk)))
                his.append(floor_tiles(kpos_count(c.add(blk, bsa))))
        else:
            if t.lo is not None:
                los.append(ceil_tiles(c.add(j1, c.arg(t.lo))))
            if t.hi is not None:
                his.append(floor_tiles(c.add(c.add(j0, c.arg(t.hi)), "1")))
            for a, b in t.rows:
                los.append(ceil_tiles(c.arg(a)))
                his.append(floor_tiles(c.arg(b)))
            for a, b in t.cols:
                conds += [c.le(c.arg(a), j0), c.lt(j1, c.arg(b))]
            for bs in t.blocks:
                bsa = c.arg(bs)
                blk = c.mul(c.div(j0, bsa), bsa)
                conds.append(c.eq(c.div(j0, bsa), c.div(j1, bsa)))
                los.append(ceil_tiles(blk))
                his.append(floor_tiles(c.add(blk, bsa)))
    else:  # diag space: indices a (queries) and b (keys) with positions r + m*index
        if t.blocks:
            return None
        m = c.arg(space.m)
        cl = c.arg(_ceil_div_expr(t.lo, space.m)) if t.lo is not None else None
        fh = c.arg(_floor_div_expr(t.hi, space.m)) if t.hi is not None else None
        if major == "q":
            if cl is not None:
                his.append(floor_tiles(c.add(c.sub("a0", cl), "1")))
            if fh is not None:
                los.append(ceil_tiles(c.sub("a1", fh)))
            for a, b in t.cols:
                los.append(ceil_tiles(c.cdiv0(c.sub(c.arg(a), "r"), m)))
                his.append(floor_tiles(c.cdiv0(c.sub(c.arg(b), "r"), m)))
            for a, b in t.rows:
                conds += [c.le(c.cdiv0(c.sub(c.arg(a), "r"), m), "a0"),
                          c.lt("a1", c.cdiv0(c.sub(c.arg(b), "r"), m))]
        else:
            if cl is not None:
                los.append(ceil_tiles(c.add("b1", cl)))
            if fh is not None:
                his.append(floor_tiles(c.add(c.add("b0", fh), "1")))
            for a, b in t.rows:
                los.append(ceil_tiles(c.cdiv0(c.sub(c.arg(a), "r"), m)))
                his.append(floor_tiles(c.cdiv0(c.sub(c.arg(b), "r"), m)))
            for a, b in t.cols:
                conds += [c.le(c.arg(a), key_position(space, c, "b0")),
                          c.lt(key_position(space, c, "b1"), c.arg(b))]
    lo = _fold_max(c, los) if los else "0"
    return FullSpan(lo, _fold_min(c, his), c.all(conds))
