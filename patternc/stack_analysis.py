"""`analyze` for a stack of layers: each layer's cost, the total, and reach through the stack.

Each distinct layer pattern is analysed once (patternc.analysis, the same report as for a
pattern on its own); a layer's cost is its pattern's, and the stack's totals add the layers.
Reach is the stack's own question (patternc.stack_reach): after how many of its layers does
every token reach every other, and how many layers of the stack repeated would it take.

Heads: a model's layers share one head count.  `heads` sets it; left out, it is the count of
the stack's per-head layers (which must agree), or 1.  A per-head layer contributes the union
of its heads to reach, as in a single pattern's analysis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from . import ir, limits, reach
from .analysis import Analysis, analyze, check_length
from .counting import engine
from .frontend import Pattern, Stack
from .stack_reach import StackReach, stack_reach

ROWS_SHOWN = 64  # layers listed one per line in the table; longer stacks list runs of equal layers


@dataclass(frozen=True)
class StackAnalysis:
    """Per-layer cost, totals and reach of a stack at length n (see the module doc)."""

    stack: str
    params: dict
    ir_hash: str
    n: int
    heads: int
    head_dim: int
    layer_index: tuple  # for each layer, its pattern's index in `patterns`
    patterns: tuple  # Analysis of each distinct layer pattern, in order of first use
    reach: Optional[StackReach]  # None: skipped (see `skipped`)
    skipped: tuple = ()

    # ---------------------------------------------------------- totals
    @property
    def num_layers(self) -> int:
        return len(self.layer_index)

    def _total(self, field: str) -> Optional[int]:
        values = [getattr(self.patterns[d], field) for d in self.layer_index]
        return None if any(v is None for v in values) else sum(values)

    @property
    def nnz(self) -> Optional[int]:
        return self._total("nnz")

    @property
    def flops_fwd(self) -> Optional[int]:
        return self._total("flops_fwd")

    @property
    def flops_bwd(self) -> Optional[int]:
        return self._total("flops_bwd")

    @property
    def causal(self) -> bool:
        return self.reach.causal if self.reach is not None else all(a.causal for a in self.patterns)

    @property
    def all_skipped(self) -> tuple:
        own = tuple(self.skipped)
        for k, a in enumerate(self.patterns):
            own += tuple(f"pattern {k} ({a.pattern}): {s}" for s in a.all_skipped)
        return own

    def layers_of(self, d: int) -> list:
        return [k for k, x in enumerate(self.layer_index) if x == d]

    # ---------------------------------------------------------- output
    def to_dict(self) -> dict:
        r = self.reach
        per_layer = []
        for k, d in enumerate(self.layer_index):
            a = self.patterns[d]
            per_layer.append({"layer": k, "pattern": a.pattern, "pattern_index": d, "ir_hash": a.ir_hash,
                              "nnz": a.nnz, "density": a.density, "flops_fwd": a.flops_fwd, "flops_bwd": a.flops_bwd,
                              "layers_to_full_reach": a.layers_to_full_reach})
        return {
            "stack": self.stack,
            "params": dict(self.params),
            "ir_hash": self.ir_hash,
            "n": self.n,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "layers": self.num_layers,
            "distinct_patterns": len(self.patterns),
            "per_layer": per_layer,
            "nnz": self.nnz,
            "flops_fwd": self.flops_fwd,
            "flops_bwd": self.flops_bwd,
            "flops_convention": "per layer fwd = 4*nnz*head_dim, bwd = 2.5*fwd; summed over the stack's layers, "
                                "all heads, batch 1",
            "causal": self.causal,
            "full_reach_in_stack": None if r is None else r.in_stack,
            "full_reach_in_stack_decided": r is not None and r.in_stack_decided,
            "layers_to_full_reach": None if r is None else r.repeated,
            "reach_decided": r is not None and r.repeated_decided,
            "reach_method": "skipped (see skipped)" if r is None else r.method,
            "patterns": [a.to_dict() for a in self.patterns],
            "skipped": list(self.all_skipped),
        }

    def _reach_lines(self) -> list:
        r = self.reach
        L = self.num_layers
        if r is None:
            return [("full reach in stack", "skipped (see below)"), ("layers to full reach", "skipped (see below)")]
        target = "every j <= i" if r.causal else "every (i, j)"
        if not r.in_stack_decided:
            inside = "unknown"
        elif r.in_stack is None:
            inside = f"never within its {L} layer{'s' if L != 1 else ''}"
        else:
            last = r.in_stack - 1
            inside = f"after {r.in_stack} of {L} layers (layers 0..{last})" if last else f"after layer 0 of {L}"
        if not r.repeated_decided:
            rep = "unknown"
        elif r.repeated is None:
            rep = "never, however often the layers repeat"
        else:
            periods = -(-r.repeated // L)
            rep = f"{r.repeated}" + (f" (the stack's {L} layers {periods} times, cut after layer "
                                     f"{(r.repeated - 1) % L})" if r.repeated > L else "")
        return [("full reach in stack", f"{inside}  ({target}; {r.method})"),
                ("layers to full reach", f"{rep}  (the smallest stack from these layers repeated)")]

    def format_table(self) -> str:
        """The text `patternc analyze` prints for a stack: summary, one line per layer, the
        patterns (their full reports are in `to_dict`)."""
        skip = "skipped (see below)"
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        rows = [
            ("stack", f"{self.stack}({params})" if params else self.stack),
            ("ir hash", self.ir_hash),
            ("n", f"{self.n:,}"),
            ("heads", str(self.heads)),
            ("layers", f"{self.num_layers} ({len(self.patterns)} distinct pattern{'s' if len(self.patterns) != 1 else ''})"),
            ("allowed pairs (nnz)", skip if self.nnz is None else f"{self.nnz:,} (all layers)"),
            ("flops fwd", skip if self.flops_fwd is None else f"{self.flops_fwd:.4g} (all layers, head_dim "
                                                              f"{self.head_dim})"),
            ("flops bwd", skip if self.flops_bwd is None else f"{self.flops_bwd:.4g} (2.5x fwd)"),
        ] + self._reach_lines()
        for i, line in enumerate(self.all_skipped):
            rows.append(("skipped" if i == 0 else "", line))
        w = max(len(k) for k, _ in rows)
        lines = [f"{k:<{w}}  {v}" for k, v in rows]
        lines += ["", "per layer:"]
        table = [("layer", "pattern", "nnz", "density", "flops fwd", "reach alone")]
        for first, last, d in self._runs():
            a = self.patterns[d]
            alone = ("never" if a.layers_to_full_reach is None else str(a.layers_to_full_reach)) \
                if a.reach_decided else "unknown"
            table.append((str(first) if first == last else f"{first}..{last}", f"{d}: {a.pattern}",
                          "-" if a.nnz is None else f"{a.nnz:,}", "-" if a.density is None else f"{a.density:.4g}",
                          "-" if a.flops_fwd is None else f"{a.flops_fwd:.4g}", alone))
        table.append(("total", "", "-" if self.nnz is None else f"{self.nnz:,}", "",
                      "-" if self.flops_fwd is None else f"{self.flops_fwd:.4g}", ""))
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            lines.append("  " + "  ".join(x.ljust(widths[c]) if c == 1 else x.rjust(widths[c])
                                          for c, x in enumerate(row)).rstrip())
        lines += ["", "patterns (`--json` has each one's full report):"]
        for d, a in enumerate(self.patterns):
            used = self.layers_of(d)
            shown = ", ".join(map(str, used[:8])) + (", ..." if len(used) > 8 else "")
            eff = "-" if a.tile_efficiency is None else f"{a.tile_efficiency:.4f}"
            lines.append(f"  {d}: {a.pattern}  ir hash {a.ir_hash}, {len(used)} layer{'s' if len(used) != 1 else ''} "
                         f"({shown}); order {a.order}; tile efficiency {eff}")
        return "\n".join(lines) + "\n"

    def _runs(self) -> list:
        """(first layer, last layer, pattern) per line: one line per layer, or runs of equal
        layers for stacks longer than ROWS_SHOWN."""
        idx = self.layer_index
        if len(idx) <= ROWS_SHOWN:
            return [(k, k, d) for k, d in enumerate(idx)]
        out = []
        for k, d in enumerate(idx):
            if out and out[-1][2] == d:
                out[-1] = (out[-1][0], k, d)
            else:
                out.append((k, k, d))
        return out


def _head_count(stack: Stack, heads: Optional[int]) -> Optional[int]:
    """The stack's head count: `heads`, or its per-head layers' (the front end makes them agree),
    or None (1)."""
    counts = [p.num_heads for p in stack.distinct if p.num_heads is not None]
    return heads if heads is not None else (counts[0] if counts else None)


def _union_of_heads(expr):
    return ir.union([c.expr for c in expr.cases]) if isinstance(expr, ir.Heads) else expr


def analyze_stack(stack: Stack, n: int, heads: Optional[int] = None, tile: Union[int, tuple] = 128,
                  head_dim: int = 128,
                  report: Optional[Callable[[Pattern, Analysis], Analysis]] = None) -> StackAnalysis:
    """Analyse every distinct layer pattern (`report(pattern, analysis)` adds to each what the
    caller wants, such as the kernel report), add the layers up, and decide reach through the
    stack."""
    n = check_length(n)
    H = _head_count(stack, heads)
    patterns = []
    for p in stack.distinct:
        a = analyze(p, n, heads=H, tile=tile, head_dim=head_dim)
        patterns.append(report(p, a) if report is not None else a)
    exprs = [_union_of_heads(p.at(n)) for p in stack.distinct]
    skipped: tuple = ()
    heavy = [k for k, e in enumerate(exprs) if engine(e, n).work > limits.EXACT_WORK]
    if heavy:
        r = None
        skipped = (f"reach through the stack: pattern {heavy[0]} has more than {limits.EXACT_WORK:,} row ranges "
                   "to visit (limits.EXACT_WORK)",)
    else:
        r = stack_reach(exprs, list(stack.layer_index), n, structural_only=n > reach.EXACT_N)
    return StackAnalysis(stack=stack.name, params=dict(stack.params), ir_hash=stack.hash, n=n,
                         heads=patterns[0].heads, head_dim=patterns[0].head_dim, layer_index=stack.layer_index,
                         patterns=tuple(patterns), reach=r, skipped=skipped)

