"""`analyze`: everything the cost model knows about a pattern at one length, in one object.

Combines the exact pair count and its closed form (patternc.cost), the tile map
(patternc.tiles) and reachability (patternc.reach), per head for `heads { ... }`
patterns.  Nothing here builds the n x n mask, so n = 2**20 takes about a second
(most of it importing sympy).

Conventions:
* nnz, flops and tile counts are totals over all heads (batch 1); `density` is
  nnz / (heads * n^2).
* flops_fwd = 4 * nnz * head_dim (QK^T and PV, 2 flops per multiply-add);
  flops_bwd = 2.5 * flops_fwd (recompute S, dV, dP, dQ, dK).
* tile_efficiency = allowed pairs / pairs inside non-empty tiles (tile x tile,
  pairs outside 0..n-1 not counted); `kernel_tile_efficiency` is the same ratio for
  the pairs the generated Triton forward kernel really computes (lower.computed_pairs,
  at the tile shape its cost model picks), strides, summaries and narrow-column steps included.
* layers_to_full_reach: for a multi-head pattern a layer's output depends on an input
  when any head allows the pair, so reach is computed on the union of the heads
  (each head's own value is in `per_head`).  Above reach.EXACT_N only the structural
  reach rules run; when none applies the value is None with reach_decided = False.
* metadata_bytes: bytes of precomputed index tables the kernel needs.  Every atom of the
  IR has closed-form tile ranges (random picks are a hash), so it is 0; csr_layout_bytes
  is what a generic block-sparse layout (int32 offsets per query tile, int32 index and a
  state byte per non-empty tile) would need instead, for comparison.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Union

from . import ir
from .errors import PatternError
from .frontend import Pattern

FORMULA_WIDTH = 100  # characters of the formula shown in the table


@dataclass(frozen=True)
class HeadAnalysis:
    """Results for one range of heads that share an expression."""

    heads: tuple  # (first, last), inclusive
    expr: str
    nnz: int  # per head
    density: float
    tiles: dict
    tile_efficiency: float
    empty_rows: int
    empty_rows_first: list
    layers_to_full_reach: Optional[int]
    reach_decided: bool
    reach_method: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = list(self.heads)
        return d


@dataclass(frozen=True)
class Analysis:
    """Cost, tiles and reach of a pattern at length n (see the module doc for conventions)."""

    pattern: str
    params: dict
    ir_hash: str
    n: int
    heads: int
    tile: tuple  # (bm, bn)
    head_dim: int
    nnz: int
    density: float
    nnz_formula: Optional[str]
    order: str
    flops_fwd: int
    flops_bwd: int
    tiles: dict
    tile_efficiency: float
    empty_rows: int
    empty_rows_first: list  # rows, or [head, row] pairs for multi-head patterns
    layers_to_full_reach: Optional[int]
    reach_decided: bool
    reach_method: str
    causal: bool
    metadata_bytes: int = 0
    csr_layout_bytes: int = 0
    kernel_tile_efficiency: Optional[float] = None
    kernel_tile: tuple = ()
    kernel_plan: tuple = ()  # one line per kernel pass (lower.describe_plan)
    atomic_dq: bool = False  # the Triton backward adds dq atomically (lower.atomic_dq)
    per_head: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = {
            "pattern": self.pattern,
            "params": dict(self.params),
            "ir_hash": self.ir_hash,
            "n": self.n,
            "heads": self.heads,
            "tile": self.tile[0] if self.tile[0] == self.tile[1] else list(self.tile),
            "head_dim": self.head_dim,
            "nnz": self.nnz,
            "density": self.density,
            "nnz_formula": self.nnz_formula if self.nnz_formula is not None else "no closed form",
            "order": self.order,
            "flops_fwd": self.flops_fwd,
            "flops_bwd": self.flops_bwd,
            "flops_convention": "fwd = 4*nnz*head_dim (2 matmuls, 2 flops/MAC), bwd = 2.5*fwd; all heads, batch 1",
            "tiles": dict(self.tiles),
            "tile_efficiency": self.tile_efficiency,
            "kernel_tile_efficiency": self.kernel_tile_efficiency,
            "kernel_tile": list(self.kernel_tile),
            "kernel_plan": list(self.kernel_plan),
            "backward_dq": "atomic" if self.atomic_dq else "dq kernel",
            "bit_exact_gradients": "only with PATTERNC_DETERMINISTIC=1" if self.atomic_dq else "yes",
            "empty_rows": self.empty_rows,
            "empty_rows_first": list(self.empty_rows_first),
            "layers_to_full_reach": self.layers_to_full_reach,
            "reach_decided": self.reach_decided,
            "reach_method": self.reach_method,
            "causal": self.causal,
            "metadata_bytes": self.metadata_bytes,
            "csr_layout_bytes": self.csr_layout_bytes,
        }
        if self.per_head:
            d["per_head"] = [h.to_dict() for h in self.per_head]
        return d

    def format_table(self) -> str:
        """A readable, aligned text table (warnings first)."""
        lines = []
        if self.empty_rows:
            first = ", ".join(f"head {h} row {r}" if isinstance(h, int) and self.per_head else str(x)
                              for x in self.empty_rows_first for h, r in [x if isinstance(x, (list, tuple)) else (x, x)])
            more = ", ..." if self.empty_rows > len(self.empty_rows_first) else ""
            lines.append(f"WARNING: {self.empty_rows} query row{'s' if self.empty_rows != 1 else ''} "
                         f"{'have' if self.empty_rows != 1 else 'has'} no allowed key (first: {first}{more}); "
                         "their attention output is 0")
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        bm, bn = self.tile
        t = self.tiles
        formula = self.nnz_formula if self.nnz_formula is not None else "no closed form (exact count shown)"
        if len(formula) > FORMULA_WIDTH:
            formula = formula[:FORMULA_WIDTH - 1] + f"... ({len(self.nnz_formula)} chars; see --json)"
        if self.reach_decided:
            reach = "never" if self.layers_to_full_reach is None else str(self.layers_to_full_reach)
        else:
            reach = "unknown"
        target = "every j <= i" if self.causal else "every (i, j)"
        rows = [
            ("pattern", f"{self.pattern}({params})" if params else self.pattern),
            ("ir hash", self.ir_hash),
            ("n", f"{self.n:,}"),
            ("heads", str(self.heads)),
            ("allowed pairs (nnz)", f"{self.nnz:,}"),
            ("density", f"{self.density:.6g} ({self.density:.4%})"),
            ("nnz(n)", formula),
            ("order", self.order),
            ("flops fwd", f"{self.flops_fwd:.4g} (head_dim {self.head_dim})"),
            ("flops bwd", f"{self.flops_bwd:.4g} (2.5x fwd)"),
            (f"tiles {bm}x{bn}", f"{t['full']:,} full, {t['partial']:,} partial, {t['empty']:,} empty "
                                 f"of {t['total']:,}"),
            ("tile efficiency", f"{self.tile_efficiency:.4f}"),
            ("empty query rows", str(self.empty_rows)),
            ("layers to full reach", f"{reach}  ({target}; {self.reach_method})"),
            ("metadata bytes", f"{self.metadata_bytes} (a CSR tile layout would need {self.csr_layout_bytes:,})"),
        ]
        if self.kernel_tile_efficiency is not None:
            shape = "x".join(map(str, self.kernel_tile))
            rows.insert(12, (f"kernel tile eff. {shape}", f"{self.kernel_tile_efficiency:.4f}  (Triton forward: "
                                                         "allowed / computed pairs)"))
        for i, line in enumerate(self.kernel_plan):
            rows.append(("kernel plan" if i == 0 else "", line))
        if self.kernel_plan:
            rows.append(("backward dq", "added atomically by the dk/dv kernel (faster here; dq's last bits vary "
                                        "run to run: PATTERNC_DETERMINISTIC=1 for bit-exact)" if self.atomic_dq
                         else "dq kernel (bit-exact gradients run to run)"))
        w = max(len(k) for k, _ in rows)
        lines += [f"{k:<{w}}  {v}" for k, v in rows]
        if self.per_head:
            lines.append("")
            lines.append("per head:")
            hdr = ("heads", "nnz/head", "density", "tile eff", "empty rows", "reach", "pattern")
            table = [hdr]
            for h in self.per_head:
                r = ("never" if h.layers_to_full_reach is None else str(h.layers_to_full_reach)) \
                    if h.reach_decided else "unknown"
                table.append((f"{h.heads[0]}..{h.heads[1]}", f"{h.nnz:,}", f"{h.density:.4g}",
                              f"{h.tile_efficiency:.4f}", str(h.empty_rows), r, h.expr))
            widths = [max(len(row[c]) for row in table) for c in range(len(hdr))]
            for row in table:
                lines.append("  " + "  ".join(f"{x:<{widths[c]}}" if c == len(hdr) - 1 else f"{x:>{widths[c]}}"
                                              for c, x in enumerate(row)).rstrip())
        return "\n".join(lines) + "\n"


def _tile_sizes(tile) -> tuple:
    if isinstance(tile, int):
        bm = bn = tile
    else:
        bm, bn = tile
    if bm < 1 or bn < 1:
        raise PatternError(f"tile size must be >= 1, got {tile}")
    return int(bm), int(bn)


def analyze(pattern: Pattern, n: int, heads: Optional[int] = None, tile: Union[int, tuple] = 128,
            head_dim: int = 128) -> Analysis:
    """Analyse `pattern` at length n: counts, closed form, flops, order, tiles, empty rows, reach."""
    from . import cost, reach, tiles

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PatternError(f"sequence length must be a positive integer, got {n!r}")
    if head_dim < 1:
        raise PatternError(f"head_dim must be >= 1, got {head_dim}")
    bm, bn = _tile_sizes(tile)
    expr = pattern.at(n)  # runs the n-dependent checks (located errors)
    multi = isinstance(expr, ir.Heads)
    if multi:
        H = expr.num_heads
        if heads is not None and heads != H:
            raise PatternError(f"pattern '{pattern.name}' defines {H} heads (0..{H - 1}) but heads={heads} "
                               f"was requested; pass heads={H} or leave it out", None, pattern.source,
                               pattern.filename)
        cases = [((c.lo, c.hi), c.expr) for c in expr.cases]
    else:
        H = 1 if heads is None else heads
        if isinstance(H, bool) or not isinstance(H, int) or H < 1:
            raise PatternError(f"heads must be a positive integer, got {heads!r}")
        cases = [((0, H - 1), expr)]
    structural = n > reach.EXACT_N
    per = []
    nnz = visited = 0
    tcount = {"empty": 0, "partial": 0, "full": 0, "total": 0}
    empty_total, empty_first = 0, []
    csr = 0
    for (lo, hi), e in cases:
        k = hi - lo + 1
        c = cost.count_nnz(e, n)
        tm = tiles.tile_map(e, n, bm, bn)
        vis = tm.nonempty_pairs
        er, erf = reach.empty_rows(e, n)
        r = reach.full_reach(e, n, structural_only=structural) if multi else None
        per.append(HeadAnalysis((lo, hi), str(e), c, c / (n * n), dict(tm.counts),
                                c / vis if vis else 1.0, er, erf,
                                None if r is None else r.layers, True if r is None else r.decided,
                                "" if r is None else r.method))
        nnz += k * c
        visited += k * vis
        for key, v in tm.counts.items():
            tcount[key] += k * v
        empty_total += k * er
        if er and len(empty_first) < 5:
            empty_first += [[h, row] for h in range(lo, hi + 1) for row in erf][: 5 - len(empty_first)] if multi \
                else erf
        csr += k * (4 * (tm.nqt + 1) + 5 * tm.n_nonempty)
    reach_expr = ir.union([e for _, e in cases]) if multi else expr
    r = reach.full_reach(reach_expr, n, structural_only=structural)
    f = cost.closed_form(pattern.expr)
    formula = None
    if f is not None and cost.eval_int(f, n) == nnz:  # the exact count has the last word
        formula = cost.formula_string(f, lambda m: cost._valid_at(pattern.expr, m))
    fwd, bwd = cost.flops(nnz, head_dim)
    # What the generated Triton forward kernel computes: its own visited tiles, at its own tile shape.
    from . import lower
    from .backends import schedule, walks
    kbm, kbn = schedule.choose_forward_tiles(pattern)
    kcomputed = sum((hi - lo + 1) * walks.computed_pairs(e, n, kbm, kbn) for (lo, hi), e in cases)
    kernel_eff = nnz / kcomputed if kcomputed else 1.0
    kplan = [(f"heads {lo}..{hi}: " if multi else "") + line for (lo, hi), e in cases
             for line in schedule.describe_plan(e, n)]
    return Analysis(
        kernel_tile_efficiency=kernel_eff, kernel_tile=(kbm, kbn), kernel_plan=tuple(kplan),
        atomic_dq=any(schedule.atomic_dq(lower.plan(e)) for _, e in cases),
        pattern=pattern.name, params=dict(pattern.params), ir_hash=pattern.hash, n=n, heads=H, tile=(bm, bn),
        head_dim=head_dim, nnz=nnz, density=nnz / (H * n * n), nnz_formula=formula,
        order=cost.asymptotic_order(pattern), flops_fwd=fwd, flops_bwd=bwd, tiles=tcount,
        tile_efficiency=nnz / visited if visited else 1.0, empty_rows=empty_total,
        empty_rows_first=empty_first, layers_to_full_reach=r.layers, reach_decided=r.decided,
        reach_method=r.method, causal=r.causal, metadata_bytes=0, csr_layout_bytes=csr,
        per_head=tuple(per) if multi else (),
    )
