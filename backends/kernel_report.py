"""Lowering's part of the analysis report: what the generated Triton kernels do at one length.

The analyses (patternc.analysis) work on the IR alone; the forward kernel's tile shape, its
passes, the pairs its tiles really compute and the backward's dq strategy are the Triton
backend's decisions (its schedule and the simulation of its walks), so they are asked here,
downstream of the analyses, and added to the result by the caller that composes the report
(`patternc.api.analyze`).
"""
from __future__ import annotations

from patternc import ir
from patternc.analysis import KernelReport
from patternc.frontend import Pattern
from patternc.limits import TILE_ROWS
from patternc.lower import plan as lower_plan

from .schedule import atomic_dq, choose_forward_tiles, describe_plan
from .walks import computed_pairs


def kernel_report(pattern: Pattern, n: int, heads: int) -> KernelReport:
    """The Triton kernels' plan and work for `pattern` at length n on `heads` heads (a pattern
    without `heads { ... }` runs the same kernel on each).  The simulation of the visited tiles
    is skipped beyond limits.TILE_ROWS query tiles; with `select(...)` it is the static part's
    (the selected tiles depend on the run-time selection)."""
    full = pattern.at(n)
    multi = isinstance(full, ir.Heads)
    cases = _cases(ir.static_part(full), heads)
    bm, bn = choose_forward_tiles(pattern)
    rows = -(-n // bm)
    if rows <= TILE_ROWS:
        computed = sum((hi - lo + 1) * computed_pairs(e, n, bm, bn) for (lo, hi), e in cases)
        why = ""
    else:
        computed = None
        why = f"{rows:,} query tiles of {bm} to simulate > {TILE_ROWS:,} (limits.TILE_ROWS)"
    plan = tuple((f"heads {lo}..{hi}: " if multi else "") + line for (lo, hi), e in _cases(full, heads)
                 for line in describe_plan(e, n))
    return KernelReport(tile=(bm, bn), computed_pairs=computed, plan=plan,
                        atomic_dq=any(atomic_dq(lower_plan(e)) for _, e in _cases(full, heads)), skipped=why)


def _cases(expr, heads: int) -> list:
    """[((first head, last head), expression)] of a pattern at a length."""
    return [((c.lo, c.hi), c.expr) for c in expr.cases] if isinstance(expr, ir.Heads) else [((0, heads - 1), expr)]


def computed_per_length(pattern: Pattern, lengths: list, heads: int) -> tuple:
    """((BM, BN), {length: pairs the forward computes for one sequence of it, all heads}): the kernel
    report at each length, for packed batches (patternc.packing), whose document-aware kernels tile
    each document like a sequence of its own; None where the simulation was skipped."""
    return choose_forward_tiles(pattern), {m: kernel_report(pattern, m, heads).computed_pairs for m in lengths}
