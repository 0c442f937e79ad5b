"""Lowering: a pattern becomes a plan of passes, each a few terms over one index space.

A pattern is rewritten as a union of *terms* (intersections of atoms).  Each
term's tile ranges have a closed form (patternc.ranges): which key tiles a
query tile needs, which query tiles a key tile needs, and when a tile is full.

Terms are grouped into *passes*, each with its own index space:

- `identity`: tokens in order (bands, global rows/columns, blocks, random, select);
- `diag(m)`: tokens grouped by residue i % m, so `stride(m)` and dilation
  become contiguous bands (the Sparse Transformer's own trick);
- `keys(l, c)`: only the key columns with j % l >= l - c ("summary" columns),
  compressed into a dense range.

Pass p computes the pairs of its terms minus those of earlier passes; later
passes start from the earlier passes' softmax state, so the result is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from . import intexpr as ix
from . import ir

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
    rowmods: tuple = ()  # ((m, o), ...): query rows i % m == o
    selects: tuple = ()  # ir.Select atoms: the key blocks come from the run-time selection

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
        parts += [ir.rowmod(m, o) for m, o in self.rowmods]
        parts += list(self.selects)
        return ir.inter(parts)

    @property
    def picked(self) -> bool:
        """Visited block by block (random picks or selected blocks), not as closed-form ranges."""
        return bool(self.randoms or self.selects)


def _combine(a: Term, b: Term) -> Term:
    def bound(x, y, pick):
        if x is None:
            return y
        if y is None:
            return x
        return ix.make(pick, x, y)

    return Term(bound(a.lo, b.lo, "max"), bound(a.hi, b.hi, "min"), a.rows + b.rows, a.cols + b.cols,
                a.blocks + b.blocks, a.diag + b.diag, a.keymods + b.keymods, a.randoms + b.randoms,
                a.filters + b.filters, a.rowmods + b.rowmods, tuple(dict.fromkeys(a.selects + b.selects)))


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
    if isinstance(x, ir.RowMod):
        return [Term(rowmods=((x.m, x.o),))]
    if isinstance(x, ir.Random):
        return [Term(randoms=(x,))]
    if isinstance(x, ir.Select):
        return [Term(selects=(x,))]
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
    select: Optional[ir.Select] = None  # the pattern's run-time selection (query tiles divide qblock,
                                        # key tiles divide block)


TILE_QUANTUM = 16  # random blocks must be a constant multiple of this to be visited block by block


def _space_of(t: Term) -> tuple[Space, Term]:
    """Choose the index space where a term is dense, moving leftovers to filters.

    Row classes (`rows_mod`) stay in the term where the tile ranges use them: in `diag(m)` a
    class of the same modulus is one residue class (the others are skipped whole), and in
    token order a class skips the query tiles that hold none of its rows.  Elsewhere they
    are filters."""
    if t.selects:  # walked by its selected blocks, in token order; the rest is checked by the mask
        extra = tuple(ir.diagmod(m) for m in t.diag) + tuple(ir.keymod(a, b) for a, b in t.keymods) + t.randoms \
            + tuple(ir.rowmod(a, b) for a, b in t.rowmods)
        return Space("identity"), replace(t, diag=(), keymods=(), randoms=(), rowmods=(), filters=t.filters + extra)
    odd = tuple(x for x in t.randoms if not (isinstance(x.b, ix.Const) and x.b.value % TILE_QUANTUM == 0))
    if odd:  # visited through the mask only: correct, but every key tile of the row range is computed
        t = replace(t, randoms=tuple(x for x in t.randoms if x not in odd), filters=t.filters + odd)
    if t.diag and not t.keymods and not t.randoms:
        m, rest = t.diag[0], t.diag[1:]
        classes = tuple(x for x in t.rowmods if x[0] == m)
        extra = tuple(ir.diagmod(x) for x in rest) + tuple(ir.rowmod(a, b) for a, b in t.rowmods if (a, b)
                                                            not in classes)
        return Space("diag", m=m), replace(t, diag=(m,), filters=t.filters + extra, rowmods=classes)
    if t.keymods and not t.diag and not t.randoms:
        (l, c), rest = t.keymods[0], t.keymods[1:]
        extra = tuple(ir.keymod(a, b) for a, b in rest) + tuple(ir.rowmod(a, b) for a, b in t.rowmods)
        return Space("keys", l=l, c=c), replace(t, keymods=((l, c),), filters=t.filters + extra, rowmods=())
    extra = tuple(ir.diagmod(m) for m in t.diag) + tuple(ir.keymod(a, b) for a, b in t.keymods)
    if len(t.randoms) > 1:
        extra += t.randoms[1:]
        t = replace(t, randoms=t.randoms[:1])
    return Space("identity"), replace(t, diag=(), keymods=(), filters=t.filters + extra)


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
    found = ir.selects(expr)
    for s in order:
        ts = groups[s]
        # random terms, then selected ones, last: earlier terms never need to ask "was this tile
        # picked?", and a selected block that the static terms cover is skipped, not computed twice
        ts.sort(key=lambda t: (bool(t.selects), bool(t.randoms)))
        if len(ts) > MAX_TERMS:
            ts = [Term(filters=(ir.union([t.expr() for t in ts]),))]
        own = ir.union([t.expr() for t in ts])
        mask = ir.inter([own] + [ir.neg(e) for e in earlier]) if earlier else own
        passes.append(Pass(s, tuple(ts), mask, not earlier))
        earlier.append(own)
        for t in ts:
            for r in t.randoms:
                if isinstance(r.b, ix.Const):
                    rb = r.b.value if rb is None else math.gcd(rb, r.b.value)
    return Plan(tuple(passes), rb, found[0] if found else None)


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
        if own and not other and not two_sided and not (t.blocks or t.diag or t.keymods or t.picked or t.rowmods):
            spans.append((ix.make("max", *[a for a, _ in own]), ix.make("min", *[b for _, b in own])))
    return spans


NARROW_MAX = 32  # key columns at most, for a term of its own narrow step


def narrow_columns(t: Term, space: Space) -> Optional[int]:
    """Keys per step for a term that only ever needs a few fixed key columns (attention sinks,
    Longformer's global columns), or None.  Walked as one of the forward's BN-key tiles (64),
    4 sink columns cost a whole tile per query tile (StreamingLLM: 1 of 19); a step of its own
    loads 16 keys instead.  The bounds must be constants, so the width is the same at every n."""
    if space.kind != "identity" or not t.cols or t.blocks or t.diag or t.keymods or t.picked or t.rowmods:
        return None
    if not all(isinstance(a, ix.Const) and isinstance(b, ix.Const) for a, b in t.cols):
        return None
    width = min(b.value for _, b in t.cols) - max(a.value for a, _ in t.cols)
    if width > NARROW_MAX:
        return None
    return max(16, 1 << max(width - 1, 0).bit_length())  # a power of two >= 16 (tl.dot's least)


def is_causal(expr) -> bool:
    """Whether no query attends a later key, provably: every term bounds i - j from below by a
    constant >= 0 (a per-head pattern: every head).  Where that cannot be shown (a term with no
    such band, or an n-dependent bound), False: callers then treat the pattern as bidirectional."""
    if isinstance(expr, ir.Heads):
        return all(is_causal(c.expr) for c in expr.cases)
    return all(isinstance(t.lo, ix.Const) and t.lo.value >= 0 for t in to_terms(expr))
