"""`patternc analyze --cp P`: what context parallelism over P ranks sends and computes, per rank.

The exchange plan is the runtime's own (patternc.runtime.cp_plan), computed from a compiled
module's walk functions, so the bytes printed here are the bytes the code sends (the tests
count them).  What the runtime would count with its walk, this module counts with the
analysis' exact counter (patternc.counting): the pairs each rank computes under the plan, and
the tile weights that cut the balanced layout, through the runtime's own `balanced_pieces`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import ir
from .counting import count_rect
from .frontend import Pattern
from .runtime.cp_layout import balanced_pieces, check_layout, check_world, cp_tile, heavy_rows
from .runtime.cp_plan import ExchangePlan, exchange_plan, plan_bytes, span_rows
from .runtime.spec import Spec

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class CPRankRow:
    rank: int
    tokens: int
    pieces: tuple  # (lo, hi) ranges of positions held
    pairs: int  # allowed pairs computed on this rank (over all heads)
    key_rows_in: int  # key rows pulled from other ranks
    global_rows_out: int  # global rows sent to be computed where their keys live (row x destination)
    bytes_forward: int
    bytes_backward: int
    bytes_total: int
    ring_bytes_total: int  # the ring exchange of whole shards, same rank


@dataclass(frozen=True)
class CPReport:
    world: int
    layout: str
    n: int
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    ranks: tuple

    @property
    def bytes_total(self) -> int:
        return sum(r.bytes_total for r in self.ranks)

    @property
    def ring_bytes_total(self) -> int:
        return sum(r.ring_bytes_total for r in self.ranks)

    @property
    def ring_ratio(self):
        """Planned bytes / ring bytes (None where the ring sends nothing: one rank)."""
        return self.bytes_total / self.ring_bytes_total if self.ring_bytes_total else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = [asdict(r) for r in self.ranks]
        d.update(bytes_total=self.bytes_total, ring_bytes_total=self.ring_bytes_total, ring_ratio=self.ring_ratio)
        return d

    def format_table(self) -> str:
        acc = "float64" if self.dtype == "float64" else "float32"
        lines = [f"context parallel: {self.world} ranks, {self.layout} layout, n = {self.n:,}; batch {self.batch}, "
                 f"{self.heads} heads ({self.kv_heads} k/v), head_dim {self.head_dim}, {self.dtype} "
                 f"(partials {acc}); bytes are what each rank sends, forward + backward"]
        hdr = ("rank", "tokens", "pairs computed", "key rows in", "global rows out", "bytes fwd", "bytes bwd",
               "bytes total", "ring bytes")
        table = [hdr] + [(str(r.rank), f"{r.tokens:,}", f"{r.pairs:,}", f"{r.key_rows_in:,}", f"{r.global_rows_out:,}",
                          f"{r.bytes_forward:,}", f"{r.bytes_backward:,}", f"{r.bytes_total:,}",
                          f"{r.ring_bytes_total:,}") for r in self.ranks]
        tot = ("all", f"{sum(r.tokens for r in self.ranks):,}", f"{sum(r.pairs for r in self.ranks):,}",
               f"{sum(r.key_rows_in for r in self.ranks):,}", f"{sum(r.global_rows_out for r in self.ranks):,}",
               f"{sum(r.bytes_forward for r in self.ranks):,}", f"{sum(r.bytes_backward for r in self.ranks):,}",
               f"{self.bytes_total:,}", f"{self.ring_bytes_total:,}")
        table.append(tot)
        widths = [max(len(row[c]) for row in table) for c in range(len(hdr))]
        lines += ["  " + "  ".join(row[c].rjust(widths[c]) for c in range(len(hdr))) for row in table]
        pairs = [r.pairs for r in self.ranks]
        if self.ring_ratio is not None:
            lines.append(f"planned / ring bytes: {self.ring_ratio:.4g} (1/{1 / self.ring_ratio:,.0f})"
                         if self.ring_ratio else "planned / ring bytes: 0")
        if max(pairs):
            lines.append(f"pairs: max / mean {max(pairs) / (sum(pairs) / len(pairs)):.4f}")
        return "\n".join(lines) + "\n"


def _cases(pattern: Pattern, n: int) -> list:
    """[(weight, IR at n)] per head case: a per-head pattern's cases weigh their head counts."""
    expr = pattern.at(n)
    if isinstance(expr, ir.Heads):
        return [(c.hi - c.lo + 1, c.expr) for c in expr.cases]
    return [(1, expr)]


def _count(cases: list, n: int, rects: list) -> np.ndarray:
    """Exact allowed pairs of each (a0, a1, b0, b1) rectangle, over the head cases."""
    if not rects:
        return np.zeros(0, np.int64)
    a0, a1, b0, b1 = (np.array(x, np.int64) for x in zip(*rects))
    return sum(w * count_rect(e, n, a0, a1, b0, b1) for w, e in cases)


def _light_runs(lo: int, hi: int, heavy: list) -> list:
    out, at = [], lo
    for a, b in heavy:
        a, b = max(a, lo), min(b, hi)
        if a < b:
            if a > at:
                out.append((at, a))
            at = b
    return out + ([(at, hi)] if at < hi else [])


def tile_weights(cases: list, n: int, tile: int, heavy: list) -> list:
    """The balanced layout's tile weights (runtime.cp_layout.tile_weights), by the exact counter."""
    T = -(-n // tile)
    rects, owner = [], []
    for t in range(T):
        lo, hi = t * tile, min((t + 1) * tile, n)
        for a, b in _light_runs(lo, hi, heavy):
            rects.append((a, b, 0, n))
            owner.append(t)
        for a, b in heavy:
            rects.append((a, b, lo, hi))
            owner.append(t)
    w = np.zeros(T, np.int64)
    np.add.at(w, np.array(owner, np.int64), _count(cases, n, rects))
    return [int(x) for x in w]


def rank_pairs(cases: list, plan: ExchangePlan) -> list:
    """Allowed pairs each rank computes under the plan: its light rows against every key, and every
    rank's global rows against its own keys (all heads of a per-head pattern; one head otherwise)."""
    n = plan.n
    heavy = [run for runs in plan.heavy for run in runs]
    out = []
    for r in range(plan.world):
        rects = [(a, b, 0, n) for a, b in plan.light[r]] + [(a, b, lo, hi) for a, b in heavy for lo, hi in plan.shards[r]]
        out.append(int(_count(cases, n, rects).sum()))
    return out


def cp_report(pattern: Pattern, spec: Spec, n: int, world: int, layout: str = "contiguous", heads: int = 1,
              kv_heads: int = 1, head_dim: int = 128, batch: int = 1, dtype: str = "bfloat16") -> CPReport:
    """The plan of `pattern` (compiled as `spec`) over `world` ranks at length n, counted."""
    check_world(world)
    check_layout(layout)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {tuple(DTYPE_BYTES)}, got {dtype!r}")
    cases = _cases(pattern, n)
    pieces = None
    if layout == "balanced":
        tile = cp_tile(n, world)
        pieces = balanced_pieces(tile_weights(cases, n, tile, heavy_rows(spec, n)), tile, n, world)
    plan = exchange_plan(spec, n, world, layout, pieces=pieces)
    ring = exchange_plan(spec, n, world, layout, ring=True, pieces=plan.shards)
    elem = DTYPE_BYTES[dtype]
    acc = 8 if dtype == "float64" else 4
    sent = plan_bytes(plan, batch, heads, kv_heads, head_dim, elem, acc)
    ring_sent = plan_bytes(ring, batch, heads, kv_heads, head_dim, elem, acc)
    per_head = 1 if isinstance(pattern.expr, ir.Heads) else heads
    pairs = rank_pairs(cases, plan)
    ranks = tuple(CPRankRow(r, span_rows(plan.shards[r]), plan.shards[r], pairs[r] * per_head,
                            sum(span_rows(plan.pull[r][s]) for s in range(world)),
                            sum(span_rows(plan.push[r][s]) for s in range(world)),
                            sent[r]["forward"], sent[r]["backward"], sent[r]["total"], ring_sent[r]["total"])
                  for r in range(world))
    return CPReport(world, layout, n, batch, heads, kv_heads, head_dim, dtype, ranks)
