"""Query rows with no allowed key, at one length or over every length.

Such a row has nothing to attend: its attention output is 0, which is almost always a
mistake in the pattern (`queries(0, 10)` alone, `causal - local(0)` at row 0).  `analyze`
reports them at its length; `check` and `compile` have no length, so `find` looks at
every length n = 1 .. MAX_LENGTH the generated modules accept.  Each length is decided
by the exact counter that `analyze` uses (reach.empty_rows: it never builds the n x n
mask), or by the mask oracle in row chunks where that counter would be slow.

`find` first looks for a proof that no row is ever empty: the pattern allows the diagonal
(i, i), or the first key (i, 0), for every i and every n, decided on the atoms with
three-valued logic (`causal`, `local`, `block`, `stride` hold on the diagonal; `sink` and
`global` on the first key; anything that depends on i or n is "unknown").  That covers
most patterns at no cost.  Failing that, it is exact when every argument is a constant and there is no `random` (the usual
case, once -D values are in).  Then allowed(i, j) does not depend on n, and keys only get
added as n grows, so row i is empty at some length iff it has no allowed key j <= i: the
rows to look for are the empty rows of `pattern & causal`, at one length N.  N is small:
when i is far from the diagonal and from the constant row and column bounds, every atom
depends on i and j only through i mod P and j mod P (P: the lcm of the block, stride and
summary and row-class periods), so whether row i >= T has a key j <= i depends on i mod P only, with
T = R + C + D + P (R, C: the largest row and column bounds, D: the largest band bound or
block size).  The rows below N = T + P decide every length.

Otherwise (an argument depends on n, or `random`, whose blocks depend on n) `find`
samples: n = 1..64, 2^k - 1, 2^k and 2^k + 1 up to MAX_LENGTH, and c - 1 .. c + 2 for
each constant c in the pattern, skipping lengths at which the pattern is invalid and
lengths too costly to decide quickly (see `_rows_at`).  `EmptyRows.exhaustive` says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from . import intexpr as ix
from . import ir
from .errors import PatternError
from .frontend import MAX_LENGTH, Pattern

TYPICAL_N = 4096  # a length also reported, when it has empty rows too
MAX_RANGES = 1 << 12  # row ranges the counter may cut one length into (one per block or random block)
MAX_PERIOD = 1 << 16  # combined stride/summary period the counter may tabulate
DENSE_N = 2048  # strides mixed with summaries: scanned with the mask oracle up to this length
SMALL_N = 64  # every length up to this one is sampled


@dataclass(frozen=True)
class EmptyRows:
    """Where a pattern leaves query rows with no allowed key."""

    n: int  # the shortest length found with such rows
    count: int  # rows with no key at n, over all heads
    first: tuple  # the first few of them: rows, or (head, row) pairs for per-head patterns
    complete: bool  # count covers every head (False: some head was too costly to count at n)
    exhaustive: bool  # every length was decided (False: the lengths above were sampled)
    typical: Optional[int] = None  # rows with no key at TYPICAL_N, when there are any

    def message(self, pattern: Pattern, what: Optional[str] = None) -> str:
        """The warning text; `what` names the pattern (default "pattern 'NAME'")."""
        rows = f"{'at least ' if not self.complete else ''}{self.count} query row{'s' if self.count != 1 else ''}"
        heads = pattern.num_heads is not None
        listed = ", ".join(f"head {h} row {r}" if heads else str(r)
                           for r in self.first for h, r in [r if heads else (0, r)])
        more = ", ..." if self.count > len(self.first) else ""
        what = what or f"pattern '{pattern.name}'"
        text = (f"{what} leaves query rows with no allowed key (their attention output is 0): "
                f"{rows} at n = {self.n} (first: {listed}{more})")
        if self.typical and self.n != TYPICAL_N:
            text += f", {self.typical} at n = {TYPICAL_N}"
        return text


# ---------------------------------------------------------------- one length

def _rows_at(expr_at_n, n: int, limit: int) -> Optional[tuple]:
    """(count, first rows) for one head's concrete expression, or None where deciding them
    would take more than a few tens of milliseconds (the counter cuts rows into one range
    per block, and tabulates stride and summary periods; both together are slow)."""
    atoms = [x for x in ir.walk(expr_at_n) if isinstance(x, ir.ATOMS)]
    blocks = [ix.evaluate(x.b, n) for x in atoms if isinstance(x, (ir.Block, ir.Random))]
    blocks += [ix.evaluate(x.m, n) for x in atoms if isinstance(x, ir.RowMod)]  # two ranges a period
    strides = [ix.evaluate(x.m, n) for x in atoms if isinstance(x, ir.DiagMod)]
    periods = [ix.evaluate(x.l, n) for x in atoms if isinstance(x, ir.KeyMod)]
    strides = [m for m in strides if m < n]
    periods = [p for p in periods if p < n]
    if strides and periods:
        if n > DENSE_N:
            return None
        from .show import first_empty_rows

        count, first, _ = first_empty_rows(expr_at_n, n, limit)
        return count, first
    if sum(n // b + 1 for b in blocks if b < n) > MAX_RANGES or math.lcm(*strides, *periods) > MAX_PERIOD:
        return None
    from .reach import empty_rows

    return empty_rows(expr_at_n, n, limit)


def _cases(expr) -> list:
    """[(first head, last head, expression)]; one case for a single-head pattern."""
    if isinstance(expr, ir.Heads):
        return [(c.lo, c.hi, c.expr) for c in expr.cases]
    return [(0, 0, expr)]


def at_length(pattern: Pattern, n: int, limit: int = 5) -> tuple:
    """(rows with no key over all heads, the first `limit` of them, whether every head was
    counted) at length n.  Runs the pattern's n-dependent checks (PatternError).  With
    `select(...)`: the rows that no selection can give a key (of the outer pattern)."""
    expr = ir.outer_part(pattern.at(n))
    heads = isinstance(expr, ir.Heads)
    total, first, complete = 0, [], True
    for lo, hi, e in _cases(expr):
        got = _rows_at(e, n, limit)
        if got is None:
            complete = False
            continue
        count, rows = got
        total += (hi - lo + 1) * count
        first += [(h, r) for h in range(lo, hi + 1) for r in rows] if heads else list(rows)
    if heads:
        first.sort()
    return total, first[:limit], complete


# ---------------------------------------------------------------- every length

def _truth(x, on: str) -> Optional[bool]:
    """Is x true at (i, i) (on="diagonal") or at (i, 0) (on="first key") for every i >= 0 and
    every length?  True / False when that is the same everywhere and decidable from constant
    arguments alone, None when unknown."""
    if isinstance(x, ir.All):
        return True
    if isinstance(x, ir.Empty):
        return False
    if isinstance(x, ir.Not):
        t = _truth(x.x, on)
        return None if t is None else not t
    if isinstance(x, (ir.Union, ir.Inter)):
        ts = [_truth(y, on) for y in x.items]
        if isinstance(x, ir.Union):
            return True if True in ts else (False if all(t is False for t in ts) else None)
        return False if False in ts else (True if all(t is True for t in ts) else None)
    args = [e.value if isinstance(e, ix.Const) else None for e in ir.int_args(x)] if not isinstance(x, ir.Band) \
        else [None if e is None else (e.value if isinstance(e, ix.Const) else "?") for e in (x.lo, x.hi)]
    if on == "diagonal":  # d = i - j = 0
        if isinstance(x, ir.Band):
            lo, hi = args
            if "?" in (lo, hi):
                return None
            return (lo is None or lo <= 0) and (hi is None or hi >= 0)
        return True if isinstance(x, (ir.DiagMod, ir.Block)) else None
    # the first key, j = 0 (and d = i >= 0)
    if isinstance(x, ir.Band):
        lo, hi = args
        return True if hi is None and lo is not None and lo != "?" and lo <= 0 else None
    if isinstance(x, ir.Cols) and None not in args:
        return args[0] <= 0 < args[1]
    if isinstance(x, ir.KeyMod) and None not in args:
        return args[1] >= args[0]  # 0 % l >= l - c
    return None


def never_empty(expr) -> bool:
    """A proof that no query row is empty at any length: every row allows its own position, or
    every row allows key 0, in every head."""
    return all(_truth(e, "diagonal") or _truth(e, "first key") for _, _, e in _cases(expr))


def _constant(expr) -> bool:
    return not any(isinstance(x, ir.Random) or any(map(ix.depends_on_n, ir.int_args(x)))
                   for x in ir.walk(expr) if isinstance(x, ir.ATOMS))


def _decisive_length(expr) -> int:
    """N = T + P of the module doc for a constant expression (may exceed MAX_LENGTH)."""
    R = C = D = 0
    periods = []
    for x in ir.walk(expr):
        if not isinstance(x, ir.ATOMS):
            continue
        vals = [abs(ix.evaluate(e, 1)) for e in ir.int_args(x)]  # constants: any n gives the value
        if isinstance(x, ir.Rows):
            R = max(R, *vals)
        elif isinstance(x, ir.Cols):
            C = max(C, *vals)
        elif isinstance(x, ir.Band):
            D = max(D, *vals)
        elif isinstance(x, ir.Block):
            D = max(D, vals[0])
            periods.append(vals[0])
        elif isinstance(x, ir.DiagMod):
            periods.append(vals[0])
        elif isinstance(x, (ir.KeyMod, ir.RowMod)):
            periods.append(vals[0])
    P = math.lcm(*periods) if periods else 1
    return R + C + D + 1 + 2 * P


def _shortest_exact(expr) -> tuple:
    """(shortest length with an empty row or None, decided) for a constant expression."""
    N = min(_decisive_length(expr), MAX_LENGTH)
    got = _rows_at(ir.substitute_n(ir.inter([expr, ir.band(ix.Const(0), None)]), N), N, 1)
    if got is None:
        return None, False
    count, first = got
    return (first[0] + 1 if count else None), True


def sample_lengths(pattern: Pattern) -> list:
    """The lengths `find` samples for patterns that depend on n (module doc)."""
    out = set(range(1, SMALL_N + 1))
    k = 6
    while (1 << k) - 1 <= MAX_LENGTH:
        out.update(((1 << k) - 1, 1 << k, (1 << k) + 1))
        k += 1

    def consts(e):
        if isinstance(e, ix.Const):
            yield abs(e.value)
        elif isinstance(e, ix.Op):
            for a in e.args:
                yield from consts(a)

    for x in ir.walk(pattern.expr):
        if isinstance(x, ir.ATOMS):
            for e in ir.int_args(x):
                for c in consts(e):
                    out.update(range(c - 1, c + 3))
    return sorted(v for v in out if 1 <= v <= MAX_LENGTH)


def find(pattern: Pattern, limit: int = 5) -> Optional[EmptyRows]:
    """The shortest length at which some query row has no allowed key, with those rows;
    None when there is no such length (among the sampled ones, for patterns that depend on n).
    With `select(...)`: rows that no selection can give a key (a selection may leave any row of
    the static part empty: that is the caller's choice, not a mistake in the pattern)."""
    if ir.has_select(pattern.expr):
        pattern = replace(pattern, expr=ir.outer_part(pattern.expr))
    if never_empty(pattern.expr):
        return None
    cases = _cases(pattern.expr)
    shortest: Optional[int] = None
    exhaustive = True
    sampled = []  # indices of the cases decided by sampling
    for k, (_, _, e) in enumerate(cases):
        if _constant(e):
            n0, decided = _shortest_exact(e)
            if decided:
                if n0 is not None and (shortest is None or n0 < shortest):
                    shortest = n0
                continue
        sampled.append(k)
    if sampled:
        exhaustive = False
        for n in sample_lengths(pattern):
            if shortest is not None and n >= shortest:
                break
            try:
                at_n = _cases(pattern.at(n))
            except PatternError:
                continue  # not a valid length for this pattern: the module refuses it
            if any((got := _rows_at(at_n[k][2], n, 1)) is not None and got[0] for k in sampled):
                shortest = n
                break
    if shortest is None:
        return None
    count, first, complete = at_length(pattern, shortest, limit)
    typical = None
    if shortest != TYPICAL_N:
        try:
            t_count, _, _ = at_length(pattern, TYPICAL_N, 1)
            typical = t_count or None
        except PatternError:
            pass
    return EmptyRows(shortest, count, tuple(first), complete, exhaustive, typical)
