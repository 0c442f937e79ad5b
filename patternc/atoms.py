"""Atoms at a length: each atom of an expression with its arguments evaluated at n.

The counting engine, the tile classifier and the reach analysis all need the same
view of an atom once n is known: a band with numeric bounds, a key range, a block
size, a stride, ...  `view` gives it (rewriting moduli >= n as the intervals they
are inside the square), `tview` the same atom in the transposed mask (keys as rows),
and `atom_truth` its pointwise truth on index arrays.  `eval_formula` evaluates an
expression's boolean structure over precomputed atom truths, so callers choose how
each atom is evaluated (pointwise, per segment, per tile state).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ir
from .intexpr import evaluate
from .semantics import random_allowed, random_layout, random_pick


# ---------------------------------------------------------------- formula evaluation

def eval_formula(node, env: dict):
    """Evaluate the boolean structure of `node` with atoms looked up in `env`
    (numpy bool arrays or np.bool_ scalars, broadcast together)."""
    if isinstance(node, ir.All):
        return np.True_
    if isinstance(node, ir.Empty):
        return np.False_
    if isinstance(node, ir.Union):
        out = eval_formula(node.items[0], env)
        for y in node.items[1:]:
            out = out | eval_formula(y, env)
        return out
    if isinstance(node, ir.Inter):
        out = eval_formula(node.items[0], env)
        for y in node.items[1:]:
            out = out & eval_formula(y, env)
        return out
    if isinstance(node, ir.Not):
        return ~eval_formula(node.x, env)
    return env[node]


def atoms_of(expr) -> list:
    """The distinct atoms of an expression, in first-seen order."""
    seen: dict = {}
    for node in ir.walk(expr):
        if isinstance(node, ir.ATOMS) and node not in seen:
            seen[node] = None
    return list(seen)


# ---------------------------------------------------------------- atom views

@dataclass(frozen=True)
class AtomView:
    """An atom with its arguments evaluated at n, seen as one of:
    'band' (lo, hi; None = unbounded), 'cols' (a, b), 'rows' (a, b),
    'block' (b), 'random' (r, b, seed), 'dmod' (m; periodic in j - i),
    'kmod' (l, lo, hi: lo <= j % l < hi; periodic in j), 'rmod' (l, lo, hi: lo <= i % l < hi),
    'true' (always allowed inside the square).
    Moduli >= n are rewritten as intervals (they cannot wrap inside the square)."""

    node: object
    kind: str
    args: tuple

    @property
    def periodic(self) -> bool:
        return self.kind in ("dmod", "kmod")


def view(node, n: int) -> AtomView:
    ev = [None if e is None else evaluate(e, n) for e in ir.int_args(node)]
    if isinstance(node, ir.Band):
        lo = None if node.lo is None else evaluate(node.lo, n)
        hi = None if node.hi is None else evaluate(node.hi, n)
        return AtomView(node, "band", (lo, hi))
    if isinstance(node, ir.Rows):
        return AtomView(node, "rows", tuple(ev))
    if isinstance(node, ir.Cols):
        return AtomView(node, "cols", tuple(ev))
    if isinstance(node, ir.Block):
        (b,) = ev
        return AtomView(node, "true", ()) if b >= n else AtomView(node, "block", (b,))
    if isinstance(node, ir.DiagMod):
        (m,) = ev
        return AtomView(node, "band", (0, 0)) if m >= n else AtomView(node, "dmod", (m,))
    if isinstance(node, ir.KeyMod):
        l, c = ev
        if l >= n:  # j % l == j for every key
            return AtomView(node, "cols", (l - c, l))
        return AtomView(node, "kmod", (l, l - c, l))
    if isinstance(node, ir.RowMod):
        m, o = ev
        if m >= n:  # i % m == i for every query
            return AtomView(node, "rows", (o, o + 1))
        return AtomView(node, "rmod", (m, o, o + 1))
    if isinstance(node, ir.Random):
        r, b = ev
        return AtomView(node, "random", (r, b, node.seed))
    raise TypeError(f"not an atom: {node!r}")


def tview(node, n: int) -> AtomView:
    """The view of an atom in the transposed mask (rows are keys, columns are queries):
    bands mirror, rows and columns swap, a summary becomes a periodic row set ('rmod') and a
    row class a periodic key set ('kmod'), and random blocks are looked up from the keys' side
    ('trandom')."""
    v = view(node, n)
    k, a = v.kind, v.args
    if k == "band":
        lo, hi = a
        return AtomView(node, "band", (None if hi is None else -hi, None if lo is None else -lo))
    if k == "rows":
        return AtomView(node, "cols", a)
    if k == "cols":
        return AtomView(node, "rows", a)
    if k == "kmod":
        return AtomView(node, "rmod", a)
    if k == "rmod":
        return AtomView(node, "kmod", a)
    if k == "random":
        return AtomView(node, "trandom", a)
    return v


def atom_truth(v: AtomView, i, j, n: int):
    """Pointwise truth of one atom (numpy broadcasting), without the bounds checks."""
    k, a = v.kind, v.args
    if k == "band":
        d = i - j
        lo, hi = a
        out = np.ones(np.broadcast(i, j).shape, dtype=bool)
        if lo is not None:
            out &= d >= lo
        if hi is not None:
            out &= d <= hi
        return out
    if k == "cols":
        return np.broadcast_to((j >= a[0]) & (j < a[1]), np.broadcast(i, j).shape)
    if k == "rows":
        return np.broadcast_to((i >= a[0]) & (i < a[1]), np.broadcast(i, j).shape)
    if k == "block":
        return i // a[0] == j // a[0]
    if k == "dmod":
        return (i - j) % a[0] == 0
    if k == "kmod":
        return np.broadcast_to(residue_in(j, a), np.broadcast(i, j).shape)
    if k == "random":
        r, b, seed = a
        return random_allowed(r, b, seed, i, j, n)
    if k == "rmod":
        return np.broadcast_to(residue_in(i, a), np.broadcast(i, j).shape)
    if k == "trandom":
        r, b, seed = a
        return random_allowed(r, b, seed, j, i, n)
    if k == "true":
        return np.ones(np.broadcast(i, j).shape, dtype=bool)
    raise ValueError(k)


def residue_in(x, args: tuple):
    """lo <= x % l < hi for the args (l, lo, hi) of a 'kmod' or 'rmod' view."""
    l, lo, hi = args
    r = x % l
    return (r >= lo) & (r < hi)


def residues_below(x, args: tuple):
    """How many y in [0, x) have lo <= y % l < hi (x >= 0; numpy arrays or ints)."""
    l, lo, hi = args
    return (x // l) * (hi - lo) + np.clip(x % l - lo, 0, hi - lo)


def random_picks(r: int, b: int, seed: int, n: int, qb):
    """Key blocks picked by query blocks `qb` (array) -> int64 array (len(qb), picks)."""
    nkb, picks = random_layout(r, b, n)
    qb = np.asarray(qb, dtype=np.int64)
    out = np.empty((qb.shape[0], picks), dtype=np.int64)
    for t in range(picks):
        start = t * nkb // picks
        length = (t + 1) * nkb // picks - start
        out[:, t] = start + random_pick(seed, qb, t) % length
    return out
