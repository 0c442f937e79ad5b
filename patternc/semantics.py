"""What a pattern means: `allowed(expr, i, j, n)`, vectorised.

This is the single source of truth. Every analysis and every backend is
tested against it. It only uses Python operators (`<=`, `&`, `//`, `%`, ...)
so it runs unchanged on torch tensors and numpy arrays.
"""
from __future__ import annotations

from . import ir
from .intexpr import evaluate

MASK32 = 0xFFFFFFFF
# Multipliers stay below 2**31 so products of 32-bit values fit in int64.
HASH_SEED, HASH_QB, HASH_T, HASH_MUL = 0x27D4EB2F, 0x165667B1, 0x3C6EF372, 0x045D9F3B


def mix32(x):
    """A 32-bit integer hash (xorshift-multiply), exact in int64 and in uint32."""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL) & MASK32
    x = x ^ (x >> 16)
    x = (x * HASH_MUL) & MASK32
    return x ^ (x >> 16)


def random_pick(seed: int, qb, t):
    """The hash behind `random`: one value per (query block, pick index)."""
    return mix32((seed * HASH_SEED + qb * HASH_QB + t * HASH_T + 1) & MASK32)


def random_layout(r: int, b: int, n: int) -> tuple[int, int]:
    """(number of key blocks, number of picks): picks are capped by the block count."""
    nkb = -(-n // b)
    return nkb, min(r, nkb)


def random_allowed(r: int, b: int, seed: int, i, j, n: int):
    """Key blocks are split into `picks` equal segments; each query block picks
    one block per segment by hash.  So picks are distinct, stratified, and the
    inverse question "does query block qb pick key block kb" is closed form."""
    nkb, picks = random_layout(r, b, n)
    qb, kb = i // b, j // b
    t = ((kb + 1) * picks - 1) // nkb
    start = t * nkb // picks
    length = (t + 1) * nkb // picks - start
    return kb == start + random_pick(seed, qb, t) % length


def _ints(node, n):
    return [None if e is None else evaluate(e, n) for e in ir.int_args(node)]


class SelectionNeeded(ValueError):
    """A pattern with `select` was asked about a pair without a run-time selection."""


def selected(sel, qblock: int, block: int, i, j):
    """Does the selection list key block j // block for query block i // qblock?  `sel` is one
    (batch, head)'s blocks, an array of shape (query blocks, k) with -1 for an empty slot; i and j
    are index arrays that broadcast (numpy with numpy, torch with torch)."""
    qb = i // qblock
    inside = (qb >= 0) & (qb < sel.shape[0])
    rows = sel[qb * inside]  # (..., k): the listed key blocks of each row's query block
    return (rows == (j // block)[..., None]).any(-1) & inside


def allowed(expr, i, j, n: int, selection=None):
    """Boolean array: may query i attend key j?  i and j broadcast (e.g. (n,1) and (1,n)).

    `selection`: for a pattern with `select`, the run-time blocks of one (batch, head), an integer
    array or tensor of shape (ceil(n / qblock), k); without it such a pattern is an error."""
    if isinstance(expr, ir.Heads):
        raise TypeError("per-head pattern: pick a head with Heads.for_head(h) first")
    x = expr
    if isinstance(x, ir.All):
        return (i >= 0) | (j >= 0) | True
    if isinstance(x, ir.Empty):
        return (i < 0) & (j < 0) & False
    if isinstance(x, ir.Union):
        out = allowed(x.items[0], i, j, n, selection)
        for y in x.items[1:]:
            out = out | allowed(y, i, j, n, selection)
        return out
    if isinstance(x, ir.Inter):
        out = allowed(x.items[0], i, j, n, selection)
        for y in x.items[1:]:
            out = out & allowed(y, i, j, n, selection)
        return out
    if isinstance(x, ir.Not):
        return ~allowed(x.x, i, j, n, selection)
    if isinstance(x, ir.Band):
        d = i - j
        lo = None if x.lo is None else evaluate(x.lo, n)
        hi = None if x.hi is None else evaluate(x.hi, n)
        if lo is None:
            return d <= hi
        if hi is None:
            return d >= lo
        return (d >= lo) & (d <= hi)
    if isinstance(x, ir.DiagMod):
        (m,) = _ints(x, n)
        return (i - j) % m == 0
    if isinstance(x, ir.Rows):
        a, b = _ints(x, n)
        return (i >= a) & (i < b) & (j >= 0)
    if isinstance(x, ir.Cols):
        a, b = _ints(x, n)
        return (j >= a) & (j < b) & (i >= 0)
    if isinstance(x, ir.Block):
        (b,) = _ints(x, n)
        return i // b == j // b
    if isinstance(x, ir.KeyMod):
        l, c = _ints(x, n)
        return (j % l >= l - c) & (i >= 0)
    if isinstance(x, ir.RowMod):
        m, o = _ints(x, n)
        return (i % m == o) & (j >= 0)
    if isinstance(x, ir.Random):
        r, b = _ints(x, n)
        return random_allowed(r, b, x.seed, i, j, n)
    if isinstance(x, ir.Select):
        if selection is None:
            raise SelectionNeeded(f"{x} is chosen at run time: pass the selection (blocks of one batch element "
                                  "and head), or ask about ir.static_part / ir.outer_part of the pattern")
        k, b, qb = _ints(x, n)
        return selected(selection, qb, b, i, j) & (i >= 0) & (j >= 0)
    raise TypeError(f"unknown IR node {type(x).__name__}")


def dense_mask(expr, n: int, head: int = 0, selection=None):
    """The n x n boolean mask as a torch tensor (for tests, tooling and `patternc mask`);
    `selection` as for `allowed`."""
    import torch

    if isinstance(expr, ir.Heads):
        expr = expr.for_head(head)
    idx = torch.arange(n, dtype=torch.int64)
    m = allowed(expr, idx[:, None], idx[None, :], n, selection)
    return m.expand(n, n).clone() if m.shape != (n, n) else m


def dense_mask_numpy(expr, n: int, head: int = 0, selection=None):
    """The same mask with numpy only (no torch import), for the CLI."""
    import numpy as np

    if isinstance(expr, ir.Heads):
        expr = expr.for_head(head)
    idx = np.arange(n, dtype=np.int64)
    m = allowed(expr, idx[:, None], idx[None, :], n, selection)
    return np.broadcast_to(m, (n, n)).copy()
