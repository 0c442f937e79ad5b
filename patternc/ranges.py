"""Closed-form tile ranges: which key tiles a query tile needs, and which of them are full.

For one term of a pass (an intersection of atoms, `lower.Term`) and one tile
of the pass's index space, interval arithmetic gives

- `lo`, `hi`: the first and last index on the other axis that can meet the tile
  (key indices for a query tile [a0, a1], query indices for a key tile [b0, b1]);
- `applies`: whether the term can meet the tile at all (its row or column bounds);
- `full` (query-major) and `full_span`: when a tile pair is entirely allowed,
  so the kernel skips the mask's arithmetic there.

Everything is a `scalar` expression tree over the names below, so one formula
is printed into the Triton kernels, printed into the CPU path's walk, and
evaluated on numpy arrays by the analysis's simulation of the kernels:

    a0, a1   first and last index of the query tile (in the pass's space)
    b0, b1   first and last index of the key tile
    r        the residue class (diag space), else 0
    n        the sequence length
    L, LQ    key and query indices in the space (kept key columns, class lengths)
    BM, BN   query and key tile sizes

Index spaces (see lower.Space): `identity` is tokens in order; `diag(m)` is
the tokens of residue class r, position = r + m * index; `keys(l, c)` is the
kept key columns j % l >= l - c, compressed into a dense range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import intexpr as ix
from . import ir
from . import scalar as S
from .lower import Space, Term
from .printer import ArgTable

A0, A1, B0, B1 = S.name("a0"), S.name("a1"), S.name("b0"), S.name("b1")
R, N, L, LQ, BM, BN = S.name("r"), S.name("n"), S.name("L"), S.name("LQ"), S.name("BM"), S.name("BN")


class Args:
    """Pattern arguments as tree leaves: constants inline, n-dependent ones as named runtime scalars
    (`_a0`, ...), named by the module's shared ArgTable so kernels and host agree."""

    def __init__(self, table: Optional[ArgTable] = None):
        self.table = table if table is not None else ArgTable()

    def __call__(self, e: ix.IntExpr) -> S.Expr:
        if isinstance(e, ix.Const):
            return S.Lit(e.value)
        return S.Name(self.table(e))

    def env(self, n: int) -> dict:
        """The named arguments' values at length n."""
        return {name: ix.evaluate(e, n) for e, name in self.table.names.items()}


@dataclass(frozen=True)
class TileRanges:
    """One term's index interval for a tile, and when the tile is entirely allowed."""

    lo: S.Expr  # first index on the other axis (may be unclamped)
    hi: S.Expr  # last index, inclusive (may be unclamped)
    applies: S.Expr  # the term can contribute to this tile at all
    full: S.Expr  # (query-major) given key tile [b0, b1] too: every pair is allowed
    random: Optional[ir.Random] = None
    select: Optional[ir.Select] = None  # the term's key blocks come from the run-time selection


@dataclass(frozen=True)
class FullSpan:
    """Tiles that are entirely allowed, as a half-open range [lo, hi) of tile indices along the
    loop axis, valid when `cond` holds."""

    lo: S.Expr
    hi: S.Expr
    cond: S.Expr


def key_position(space: Space, arg: Args, u: S.Expr) -> S.Expr:
    """Token position of key index u in the space."""
    if space.kind == "diag":
        return S.add(R, S.mul(arg(space.m), u))
    if space.kind == "keys":
        l, c = arg(space.l), arg(space.c)
        return S.add(S.mul(S.div(u, c), l), S.add(S.sub(l, c), S.mod(u, c)))
    return u


def query_position(space: Space, arg: Args, a: S.Expr) -> S.Expr:
    if space.kind == "diag":
        return S.add(R, S.mul(arg(space.m), a))
    return a


def first_in_class(m: S.Expr, o: S.Expr, a: S.Expr) -> S.Expr:
    """How far past position a >= 0 the first row of the class i % m == o lies (0 .. m-1);
    every operand of % is non-negative, so Triton and Python agree."""
    return S.mod(S.add(S.sub(o, S.mod(a, m)), m), m)


def count_keys_below(space: Space, arg: Args, x: S.Expr) -> S.Expr:
    """keys space: the number of kept columns j < x, for x >= 0."""
    l, c = arg(space.l), arg(space.c)
    return S.add(S.mul(S.div(x, l), c), S.maximum(S.sub(S.mod(x, l), S.sub(l, c)), 0))


def space_lengths(space: Space, arg: Args) -> tuple:
    """(LQ, L): query and key indices in the space, for residue class r."""
    if space.kind == "diag":
        m = arg(space.m)
        lq = S.div(S.add(S.sub(N, R), S.sub(m, 1)), m)
        return lq, lq
    if space.kind == "keys":
        return N, count_keys_below(space, arg, N)
    return N, N


def _floor_div_expr(a: ix.IntExpr, m: ix.IntExpr) -> ix.IntExpr:
    return ix.make("//", a, m)


def _ceil_div_expr(a: ix.IntExpr, m: ix.IntExpr) -> ix.IntExpr:
    return ix.make("neg", ix.make("//", ix.make("neg", a), m))


def _block_hull_hi(x: S.Expr, bs: S.Expr) -> S.Expr:
    """The last position of x's block."""
    return S.sub(S.mul(S.add(S.div(x, bs), 1), bs), 1)


def query_major(t: Term, space: Space, arg: Args) -> TileRanges:
    """Key index range [lo, hi] for query tile [a0, a1]; `full` also names key tile [b0, b1]."""
    lows, highs, applies, full = [S.ZERO], [S.sub(L, 1)], [], []
    if space.kind == "identity":
        if t.lo is not None:
            highs.append(S.sub(A1, arg(t.lo)))
            full.append(S.le(arg(t.lo), S.sub(A0, B1)))
        if t.hi is not None:
            lows.append(S.sub(A0, arg(t.hi)))
            full.append(S.le(S.sub(A1, B0), arg(t.hi)))
        for a, b in t.cols:
            lows.append(arg(a))
            highs.append(S.sub(arg(b), 1))
            full += [S.le(arg(a), B0), S.lt(B1, arg(b))]
        for bs in t.blocks:
            bsa = arg(bs)
            lows.append(S.mul(S.div(A0, bsa), bsa))
            highs.append(_block_hull_hi(A1, bsa))
            full += [S.eq(S.div(A0, bsa), S.div(A1, bsa)), S.eq(S.div(B0, bsa), S.div(A0, bsa)),
                     S.eq(S.div(B1, bsa), S.div(A0, bsa))]
        for a, b in t.rows:
            applies += [S.le(arg(a), A1), S.lt(A0, arg(b))]
            full += [S.le(arg(a), A0), S.lt(A1, arg(b))]
        for m, o in t.rowmods:  # the tile holds a row of the class: skip the others whole
            applies.append(S.le(S.add(A0, first_in_class(arg(m), arg(o), A0)), A1))
            full.append(S.FALSE)
    elif space.kind == "diag":
        m = arg(space.m)
        applies += [S.eq(R, arg(o)) for _, o in t.rowmods]  # one residue class takes part
        if t.lo is not None:
            cl = arg(_ceil_div_expr(t.lo, space.m))
            highs.append(S.sub(A1, cl))
            full.append(S.le(cl, S.sub(A0, B1)))
        if t.hi is not None:
            fh = arg(_floor_div_expr(t.hi, space.m))
            lows.append(S.sub(A0, fh))
            full.append(S.le(S.sub(A1, B0), fh))
        for a, b in t.cols:
            lows.append(S.cdiv0(S.sub(arg(a), R), m))
            highs.append(S.sub(S.cdiv0(S.sub(arg(b), R), m), 1))
            full += [S.le(arg(a), key_position(space, arg, B0)), S.lt(key_position(space, arg, B1), arg(b))]
        for a, b in t.rows:
            ra = S.cdiv0(S.sub(arg(a), R), m)
            rb = S.cdiv0(S.sub(arg(b), R), m)
            applies += [S.le(ra, A1), S.lt(A0, rb)]
            full += [S.le(ra, A0), S.lt(A1, rb)]
        for bs in t.blocks:  # exact only through the mask; the range is the tokens' block hull
            bsa = arg(bs)
            p0, p1 = query_position(space, arg, A0), query_position(space, arg, A1)
            lows.append(S.cdiv0(S.sub(S.mul(S.div(p0, bsa), bsa), R), m))
            highs.append(S.div(S.sub(_block_hull_hi(p1, bsa), R), m))
            full.append(S.FALSE)
    else:  # keys space: bounds on key positions, then counted in kept columns
        pos_lo, pos_hi = [], []
        if t.lo is not None:
            pos_hi.append(S.sub(A1, arg(t.lo)))
            full.append(S.le(key_position(space, arg, B1), S.sub(A0, arg(t.lo))))
        if t.hi is not None:
            pos_lo.append(S.sub(A0, arg(t.hi)))
            full.append(S.le(S.sub(A1, arg(t.hi)), key_position(space, arg, B0)))
        for a, b in t.cols:
            pos_lo.append(arg(a))
            pos_hi.append(S.sub(arg(b), 1))
            full += [S.le(arg(a), key_position(space, arg, B0)), S.lt(key_position(space, arg, B1), arg(b))]
        for bs in t.blocks:
            bsa = arg(bs)
            pos_lo.append(S.mul(S.div(A0, bsa), bsa))
            pos_hi.append(_block_hull_hi(A1, bsa))
            kb0 = S.div(key_position(space, arg, B0), bsa)
            kb1 = S.div(key_position(space, arg, B1), bsa)
            full += [S.eq(S.div(A0, bsa), S.div(A1, bsa)), S.eq(kb0, S.div(A0, bsa)), S.eq(kb1, S.div(A0, bsa))]
        for a, b in t.rows:
            applies += [S.le(arg(a), A1), S.lt(A0, arg(b))]
            full += [S.le(arg(a), A0), S.lt(A1, arg(b))]
        lows += [count_keys_below(space, arg, S.maximum(x, 0)) for x in pos_lo]
        highs += [S.sub(count_keys_below(space, arg, S.maximum(S.add(x, 1), 0)), 1) for x in pos_hi]
    if t.filters or len(t.diag) > 1 or len(t.keymods) > 1:
        full.append(S.FALSE)
    rnd = t.randoms[0] if t.randoms else None
    sel = t.selects[0] if t.selects else None
    # a random term: BM and BN divide its block, so a query tile sits in one query block and a
    # visited key tile lies inside a picked key block (likewise a selected term: BM divides qblock,
    # BN divides block)
    return TileRanges(S.max_of(lows), S.min_of(highs), S.all_of(applies), S.all_of(full), rnd, sel)


def key_major(t: Term, space: Space, arg: Args) -> TileRanges:
    """Query index range [lo, hi] for key tile [b0, b1] (the transpose of query_major)."""
    lows, highs, applies = [S.ZERO], [S.sub(LQ, 1)], []
    if space.kind == "identity":
        if t.lo is not None:
            lows.append(S.add(B0, arg(t.lo)))
        if t.hi is not None:
            highs.append(S.add(B1, arg(t.hi)))
        for a, b in t.rows:
            lows.append(arg(a))
            highs.append(S.sub(arg(b), 1))
        for a, b in t.cols:
            applies += [S.le(arg(a), B1), S.lt(B0, arg(b))]
        for bs in t.blocks:
            bsa = arg(bs)
            lows.append(S.mul(S.div(B0, bsa), bsa))
            highs.append(_block_hull_hi(B1, bsa))
    elif space.kind == "diag":
        m = arg(space.m)
        applies += [S.eq(R, arg(o)) for _, o in t.rowmods]
        if t.lo is not None:
            lows.append(S.add(B0, arg(_ceil_div_expr(t.lo, space.m))))
        if t.hi is not None:
            highs.append(S.add(B1, arg(_floor_div_expr(t.hi, space.m))))
        for a, b in t.rows:
            lows.append(S.cdiv0(S.sub(arg(a), R), m))
            highs.append(S.sub(S.cdiv0(S.sub(arg(b), R), m), 1))
        for a, b in t.cols:
            applies += [S.le(S.cdiv0(S.sub(arg(a), R), m), B1), S.lt(B0, S.cdiv0(S.sub(arg(b), R), m))]
        for bs in t.blocks:
            bsa = arg(bs)
            p0, p1 = key_position(space, arg, B0), key_position(space, arg, B1)
            lows.append(S.cdiv0(S.sub(S.mul(S.div(p0, bsa), bsa), R), m))
            highs.append(S.div(S.sub(_block_hull_hi(p1, bsa), R), m))
    else:
        j0, j1 = key_position(space, arg, B0), key_position(space, arg, B1)
        if t.lo is not None:
            lows.append(S.add(j0, arg(t.lo)))
        if t.hi is not None:
            highs.append(S.add(j1, arg(t.hi)))
        for a, b in t.rows:
            lows.append(arg(a))
            highs.append(S.sub(arg(b), 1))
        for a, b in t.cols:
            applies += [S.le(arg(a), j1), S.lt(j0, arg(b))]
        for bs in t.blocks:
            bsa = arg(bs)
            lows.append(S.mul(S.div(j0, bsa), bsa))
            highs.append(_block_hull_hi(j1, bsa))
    rnd = t.randoms[0] if t.randoms else None
    sel = t.selects[0] if t.selects else None
    return TileRanges(S.max_of(lows), S.min_of(highs), S.all_of(applies), S.FALSE, rnd, sel)


def full_span(t: Term, space: Space, arg: Args, major: str) -> Optional[FullSpan]:
    """Closed-form range of full tiles for one term: key tiles of query tile [a0, a1] (major 'q',
    tile size BN), or query tiles of key tile [b0, b1] (major 'k', size BM).  None when the
    term's pairs are never certified full (filters, random, selected, extra moduli, blocks in classes)."""
    if t.filters or t.picked or len(t.diag) > 1 or len(t.keymods) > 1 or (t.rowmods and space.kind != "diag"):
        return None
    q = major == "q"
    T = BN if q else BM
    los: list = []
    his: list = [S.div(L, BN) if q else S.div(LQ, BM)]
    conds: list = [S.lt(A1, LQ) if q else S.lt(B1, L)]

    def ceil_tiles(x):
        return S.cdiv0(x, T)

    def floor_tiles(x):  # tiles [.., x // T) end before index x
        return S.div(S.maximum(x, 0), T)

    if space.kind in ("identity", "keys"):
        keys = space.kind == "keys"

        def kpos_count(x):  # index (along the key axis) of the first key at position >= x
            return count_keys_below(space, arg, S.maximum(x, 0)) if keys else x

        j0, j1 = key_position(space, arg, B0), key_position(space, arg, B1)
        if q:
            if t.lo is not None:  # i - j >= lo for the tile's first row and last key
                his.append(floor_tiles(kpos_count(S.add(S.sub(A0, arg(t.lo)), 1))))
            if t.hi is not None:
                los.append(ceil_tiles(kpos_count(S.sub(A1, arg(t.hi)))))
            for a, b in t.cols:
                los.append(ceil_tiles(kpos_count(arg(a))))
                his.append(floor_tiles(kpos_count(arg(b))))
            for a, b in t.rows:
                conds += [S.le(arg(a), A0), S.lt(A1, arg(b))]
            for bs in t.blocks:
                bsa = arg(bs)
                blk = S.mul(S.div(A0, bsa), bsa)
                conds.append(S.eq(S.div(A0, bsa), S.div(A1, bsa)))
                los.append(ceil_tiles(kpos_count(blk)))
                his.append(floor_tiles(kpos_count(S.add(blk, bsa))))
        else:
            if t.lo is not None:
                los.append(ceil_tiles(S.add(j1, arg(t.lo))))
            if t.hi is not None:
                his.append(floor_tiles(S.add(S.add(j0, arg(t.hi)), 1)))
            for a, b in t.rows:
                los.append(ceil_tiles(arg(a)))
                his.append(floor_tiles(arg(b)))
            for a, b in t.cols:
                conds += [S.le(arg(a), j0), S.lt(j1, arg(b))]
            for bs in t.blocks:
                bsa = arg(bs)
                blk = S.mul(S.div(j0, bsa), bsa)
                conds.append(S.eq(S.div(j0, bsa), S.div(j1, bsa)))
                los.append(ceil_tiles(blk))
                his.append(floor_tiles(S.add(blk, bsa)))
    else:  # diag space: indices a (queries) and b (keys) with positions r + m*index
        if t.blocks:
            return None
        m = arg(space.m)
        conds += [S.eq(R, arg(o)) for _, o in t.rowmods]
        cl = arg(_ceil_div_expr(t.lo, space.m)) if t.lo is not None else None
        fh = arg(_floor_div_expr(t.hi, space.m)) if t.hi is not None else None
        if q:
            if cl is not None:
                his.append(floor_tiles(S.add(S.sub(A0, cl), 1)))
            if fh is not None:
                los.append(ceil_tiles(S.sub(A1, fh)))
            for a, b in t.cols:
                los.append(ceil_tiles(S.cdiv0(S.sub(arg(a), R), m)))
                his.append(floor_tiles(S.cdiv0(S.sub(arg(b), R), m)))
            for a, b in t.rows:
                conds += [S.le(S.cdiv0(S.sub(arg(a), R), m), A0), S.lt(A1, S.cdiv0(S.sub(arg(b), R), m))]
        else:
            if cl is not None:
                los.append(ceil_tiles(S.add(B1, cl)))
            if fh is not None:
                his.append(floor_tiles(S.add(S.add(B0, fh), 1)))
            for a, b in t.rows:
                los.append(ceil_tiles(S.cdiv0(S.sub(arg(a), R), m)))
                his.append(floor_tiles(S.cdiv0(S.sub(arg(b), R), m)))
            for a, b in t.cols:
                conds += [S.le(arg(a), key_position(space, arg, B0)), S.lt(key_position(space, arg, B1), arg(b))]
    lo = S.max_of(los) if los else S.ZERO
    return FullSpan(lo, S.min_of(his), S.all_of(conds))


# ---------------------------------------------------------------- the indexer's candidates

def _meets(t: Term, arg: Args) -> S.Expr:
    """Term t may have a pair in the rectangle [a0, a1] x [b0, b1] of token positions (True where
    its other atoms are not looked at)."""
    conds = []
    if t.lo is not None:
        conds.append(S.le(arg(t.lo), S.sub(A1, B0)))
    if t.hi is not None:
        conds.append(S.le(S.sub(A0, B1), arg(t.hi)))
    for a, b in t.rows:
        conds += [S.le(arg(a), A1), S.lt(A0, arg(b))]
    for a, b in t.cols:
        conds += [S.le(arg(a), B1), S.lt(B0, arg(b))]
    return S.all_of(conds)


def _covers(static: Term, sel: Term, arg: Args) -> S.Expr:
    """Every pair of `sel` in the rectangle is a pair of `static` (provably; False where unsure):
    the differences i - j that sel's band leaves in the rectangle lie in static's band, static's
    row and key ranges hold the whole rectangle, and its blocks hold it in one block."""
    if static.filters or static.diag or static.keymods or static.picked:
        return S.FALSE
    conds = []
    for bs in static.blocks:  # the rectangle's rows and keys all in one block of bs
        blk = arg(bs)
        qa, qb, ka, kb = (S.div(x, blk) for x in (A0, A1, B0, B1))
        conds += [S.le(qb, qa), S.le(kb, ka), S.le(qa, ka), S.le(ka, qa)]
    if static.lo is not None:  # lo_s <= max(a0 - b1, lo_t)
        lo_s = arg(static.lo)
        conds.append(S.any_of([S.le(lo_s, S.sub(A0, B1))] + ([S.le(lo_s, arg(sel.lo))] if sel.lo is not None else [])))
    if static.hi is not None:  # min(a1 - b0, hi_t) <= hi_s
        hi_s = arg(static.hi)
        conds.append(S.any_of([S.le(S.sub(A1, B0), hi_s)] + ([S.le(arg(sel.hi), hi_s)] if sel.hi is not None else [])))
    for a, b in static.rows:
        conds += [S.le(arg(a), A0), S.lt(A1, arg(b))]
    for a, b in static.cols:
        conds += [S.le(arg(a), B0), S.lt(B1, arg(b))]
    return S.all_of(conds)


def select_candidates(terms: list, arg: Args) -> S.Expr:
    """Whether selecting key block [b0, b1] for query block [a0, a1] can add a pair: some selected
    term meets the rectangle and no static term provably covers it there.  The indexer
    (select_blocks) keeps its budget for these blocks: never the window, the sinks, or blocks
    after a causal query block.  Conservative: a block two static terms cover together stays a
    candidate (selecting it is harmless, it adds nothing)."""
    static = [t for t in terms if not t.selects]
    return S.any_of([S.all_of([_meets(t, arg)] + [_not(_covers(s, t, arg)) for s in static])
                     for t in terms if t.selects])


def _not(c: S.Expr) -> S.Expr:
    """The negation of a condition (comparisons flipped, so no boolean `not` is printed)."""
    c = S.lit(c)
    if c == S.TRUE:
        return S.FALSE
    if c == S.FALSE:
        return S.TRUE
    if isinstance(c, S.Bin):
        if c.op == "&":
            return S.any_of([_not(c.a), _not(c.b)])
        if c.op == "|":
            return S.all_of([_not(c.a), _not(c.b)])
        if c.op == "<=":
            return S.lt(c.b, c.a)
        if c.op == "<":
            return S.le(c.b, c.a)
    raise ValueError(f"cannot negate {c}")
