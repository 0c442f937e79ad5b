"""`analyze`: everything the cost model knows about a pattern at one length, in one object.

Combines the pair count and its closed form (patternc.counting, patternc.closed_form,
patternc.formula_text), the asymptotic order (patternc.order), the tile map
(patternc.tiles) and reachability (patternc.reach), per head for `heads { ... }` patterns.
Nothing here builds the n x n mask, and nothing here knows how kernels are generated: what
the generated kernels compute (their tile shape, passes, visited tiles) is lowering's
answer, which the caller adds as a `KernelReport` (`patternc.api.analyze` does, through
patternc.backends.kernel_report), so the analyses never depend on the code generator.

Conventions:
* nnz, flops and tile counts are totals over all heads (batch 1); `density` is
  nnz / (heads * n^2).  The closed form is the total too (heads x the shared form when one
  pattern serves every head).
* flops_fwd = 4 * nnz * head_dim (QK^T and PV, 2 flops per multiply-add);
  flops_bwd = 2.5 * flops_fwd (recompute S, dV, dP, dQ, dK).
* tile_efficiency = allowed pairs / pairs inside non-empty tiles (tile x tile,
  pairs outside 0..n-1 not counted); `kernel_tile_efficiency` is the same ratio for
  the pairs the generated Triton forward kernel really computes.
* layers_to_full_reach: for a multi-head pattern a layer's output depends on an input
  when any head allows the pair, so reach is computed on the union of the heads
  (each head's own value is in `per_head`).  Above reach.EXACT_N only the structural
  reach rules run; when none applies the value is None with reach_decided = False.
* metadata_bytes: bytes of precomputed index tables the kernel needs.  Every atom of the
  IR has closed-form tile ranges (random picks are a hash), so it is 0; csr_layout_bytes
  is what a generic block-sparse layout (int32 offsets per query tile, int32 index and a
  state byte per non-empty tile) would need instead, for comparison.
* kv_live_max: the most keys a decoder must keep cached at any step up to n, per batch row
  and kv head (patternc.live_keys): a key is dead once no later query may attend it.  For a
  per-head pattern, the union of the heads (one cache serves them all).
* Run-time selection (`select(k, block=b)`): the pattern is a bounded term.  Every count
  is of the *static part* (no block selected, `ir.static_part`): nnz, flops, tiles, tile
  efficiency, reach (a lower bound on what the pattern reaches: selected blocks only add
  paths).  `selection` adds the upper ends: nnz_max = min(static + k·b per row, the *outer*
  pattern's count) where the outer pattern (`ir.outer_part`) allows every block that a
  selection may list, i.e. the static part plus the region where selected blocks may fall,
  clipped by the outer terms (`causal & ...`).  Empty rows are those of the outer pattern:
  rows that no selection can give a key.
* Long sequences (patternc.limits): n is at most MAX_N.  The closed form gives nnz at any
  such n in microseconds; parts whose cost grows with n (the exact count without a closed
  form, empty rows and reach when the pattern has very many row ranges, the tile map with
  more than TILE_ROWS query tiles) are skipped, and `skipped` says which and why.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Union

from . import ir, limits, live_keys, reach, tiles
from .algebra import const, eval_int, mul
from .closed_form import closed_form, derive, validity
from .counting import PERIOD_LIMIT, count_nnz, engine
from .errors import PatternError
from .formula_text import formula_pieces, piecewise_text
from .frontend import Pattern, parse_program, resolve
from .order import asymptotic_order, leading_term, order_from_counts

FORMULA_WIDTH = 100  # characters of the formula shown in the table
ORDER_NS = (1 << 14, 1 << 16, 1 << 18)  # exact counts for the order of a pattern without a closed form


@dataclass(frozen=True)
class KernelReport:
    """What the generated Triton kernels do at this length (lowering's part of the report)."""

    tile: tuple  # (BM, BN) of the forward kernel
    computed_pairs: Optional[int]  # pairs the forward kernel computes, all heads; None: skipped
    plan: tuple  # one line per kernel pass
    atomic_dq: bool  # the backward adds dq atomically
    skipped: str = ""  # why computed_pairs is None


@dataclass(frozen=True)
class SelectionBounds:
    """The upper ends of a pattern with `select`: what a run-time selection may add (module doc)."""

    atom: str  # the select(...) term
    k: int
    block: int
    qblock: int
    nnz_max: Optional[int]  # all heads; None: skipped
    outer_nnz: Optional[int]  # pairs of the outer pattern (static part + where selected blocks may fall)
    nnz_max_formula: Optional[str]
    head_dim: int

    @property
    def flops_max(self) -> tuple:
        return (None, None) if self.nnz_max is None else flops(self.nnz_max, self.head_dim)

    def to_dict(self, nnz_min: Optional[int], formula_min: Optional[str]) -> dict:
        fwd, bwd = self.flops_max
        lo_fwd, lo_bwd = (None, None) if nnz_min is None else flops(nnz_min, self.head_dim)
        return {
            "atom": self.atom, "k": self.k, "block": self.block, "qblock": self.qblock,
            "nnz_range": [nnz_min, self.nnz_max],
            "nnz_formula_range": [formula_min if formula_min is not None else "no closed form",
                                  self.nnz_max_formula if self.nnz_max_formula is not None else "no closed form"],
            "flops_fwd_range": [lo_fwd, fwd], "flops_bwd_range": [lo_bwd, bwd],
            "outer_nnz": self.outer_nnz,
            "bound": "nnz_max = min(static part + k*block per row, outer pattern), summed over heads",
            "static_part": "nnz, density, nnz_formula, order, tiles, tile_efficiency and reach are of the static "
                           "part (no block selected); layers_to_full_reach is an upper bound on the layers the "
                           "pattern needs (selected blocks only add paths)",
            "empty_rows": "of the outer pattern: rows no selection can give a key",
        }


@dataclass(frozen=True)
class HeadAnalysis:
    """Results for one range of heads that share an expression."""

    heads: tuple  # (first, last), inclusive
    expr: str
    nnz: Optional[int]  # per head; None: skipped
    density: Optional[float]
    tiles: Optional[dict]
    tile_efficiency: Optional[float]
    empty_rows: Optional[int]
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
    """Cost, tiles and reach of a pattern at length n (see the module doc for conventions).
    A field that is None was skipped; `skipped` says why."""

    pattern: str
    params: dict
    ir_hash: str
    n: int
    heads: int
    tile: tuple  # (bm, bn)
    head_dim: int
    nnz: Optional[int]
    density: Optional[float]
    nnz_formula: Optional[str]
    order: str
    flops_fwd: Optional[int]
    flops_bwd: Optional[int]
    tiles: Optional[dict]
    tile_efficiency: Optional[float]
    empty_rows: Optional[int]
    empty_rows_first: list  # rows, or [head, row] pairs for multi-head patterns
    layers_to_full_reach: Optional[int]
    reach_decided: bool
    reach_method: str
    causal: bool
    metadata_bytes: int = 0
    csr_layout_bytes: Optional[int] = 0
    leading_term: Optional[str] = None  # of nnz(n), e.g. "545*n"
    nnz_formula_large_n: Optional[tuple] = None  # (from n, formula) of the last range of nnz(n)
    skipped: tuple = ()  # "what: why" for each part not computed
    kernel: Optional[KernelReport] = None
    per_head: tuple = field(default_factory=tuple)
    live: Optional[live_keys.LiveReport] = None  # keys a decoder keeps (patternc.live_keys)
    selection: Optional[SelectionBounds] = None  # patterns with select(...): the upper ends

    # ---------------------------------------------------------- the kernel's part
    def with_kernel(self, kernel: KernelReport) -> "Analysis":
        """This analysis with lowering's report added (see the module doc)."""
        return replace(self, kernel=kernel)

    @property
    def kernel_tile_efficiency(self) -> Optional[float]:
        k = self.kernel
        if k is None or k.computed_pairs is None or self.nnz is None:
            return None
        return self.nnz / k.computed_pairs if k.computed_pairs else 1.0

    @property
    def kernel_tile(self) -> tuple:
        return () if self.kernel is None else tuple(self.kernel.tile)

    @property
    def kernel_plan(self) -> tuple:
        return () if self.kernel is None else tuple(self.kernel.plan)

    @property
    def atomic_dq(self) -> bool:
        return self.kernel is not None and self.kernel.atomic_dq

    @property
    def all_skipped(self) -> tuple:
        extra = (f"kernel tile efficiency: {self.kernel.skipped}",) if self.kernel and self.kernel.skipped else ()
        return tuple(self.skipped) + extra

    # ---------------------------------------------------------- output
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
            "nnz_formula_large_n": None if self.nnz_formula_large_n is None else
            {"from_n": self.nnz_formula_large_n[0], "formula": self.nnz_formula_large_n[1]},
            "order": self.order,
            "leading_term": self.leading_term,
            "flops_fwd": self.flops_fwd,
            "flops_bwd": self.flops_bwd,
            "flops_convention": "fwd = 4*nnz*head_dim (2 matmuls, 2 flops/MAC), bwd = 2.5*fwd; all heads, batch 1",
            "tiles": None if self.tiles is None else dict(self.tiles),
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
            "skipped": list(self.all_skipped),
        }
        if self.live is not None:
            d.update(self.live.to_dict())
        if self.per_head:
            d["per_head"] = [h.to_dict() for h in self.per_head]
        if self.selection is not None:
            d["select"] = self.selection.to_dict(self.nnz, self.nnz_formula)
        return d

    def _formula_cell(self) -> str:
        f = self.nnz_formula
        if f is None:
            return "no closed form" + (" (exact count shown)" if self.nnz is not None else "")
        if len(f) <= FORMULA_WIDTH:
            return f
        if self.nnz_formula_large_n is not None:  # the range that matters at long lengths
            lo, text = self.nnz_formula_large_n
            cell = f"{text} for n >= {lo:,} (smaller n: see --json)"
            if len(cell) <= FORMULA_WIDTH + 20:
                return cell
        return f[:FORMULA_WIDTH - 1] + f"... ({len(f)} chars; see --json)"

    def _live_cell(self) -> str:
        """kv_live_max(n) with its closed form and what bounds it."""
        v = self.live
        if v is None or v.kv_live_max is None:
            return "skipped (see below)"
        parts = [f"{v.kv_live_max:,}"]
        if v.formula is not None:
            parts.append(f"kv_live_max(n) = {v.formula}")
        if v.bounded and v.bound is not None:
            parts.append(f"bounded: at most {v.bound:,} keys per row and kv head")
        elif not v.bounded:
            parts.append("unbounded")
        if not v.exact:
            parts.append("an upper bound")
        return parts[0] + "  (" + "; ".join(parts[1:]) + ")"

    def _selection_rows(self, rows: list) -> list:
        """The table's rows for a pattern with select(...): ranges, and which rows are the static part's."""
        sb = self.selection
        skip = "skipped (see below)"
        hi = sb.nnz_max
        fwd, bwd = sb.flops_max
        per_row = f"{sb.k}x{sb.block} selected keys per row"
        out = []
        for key, value in rows:
            if key == "allowed pairs (nnz)" and self.nnz is not None:
                value = f"{self.nnz:,} ... {skip if hi is None else f'{hi:,}'}  (static part ... + {per_row}, " \
                        "clipped by the outer terms)"
            elif key == "density" and self.density is not None and hi is not None:
                value = f"{self.density:.4%} ... {hi / (self.heads * self.n * self.n):.4%}"
            elif key == "nnz(n)":
                value = f"static part: {value}"
            elif key == "flops fwd" and self.flops_fwd is not None:
                value = f"{self.flops_fwd:.4g} ... {'?' if fwd is None else f'{fwd:.4g}'} (head_dim {self.head_dim})"
            elif key == "flops bwd" and self.flops_bwd is not None:
                value = f"{self.flops_bwd:.4g} ... {'?' if bwd is None else f'{bwd:.4g}'} (2.5x fwd)"
            elif key.startswith("tiles ") or key in ("tile efficiency", "order") or key.startswith("kernel tile eff"):
                value = f"{value}  (static part)"
            elif key == "empty query rows":
                value = f"{value}  (rows no selection can fill)"
            elif key == "layers to full reach":
                value = f"at most {value}  (the static part's reach: selected blocks only add paths)"
            out.append((key, value))
            if key == "nnz(n)":
                f = sb.nnz_max_formula
                if f is not None and len(f) > FORMULA_WIDTH:
                    f = f[:FORMULA_WIDTH - 1] + f"... ({len(f)} chars; see --json)"
                out.append(("nnz(n) at most", "no closed form" if f is None else f))
        out.insert(1, ("select", f"{sb.atom}: {sb.k} key blocks of {sb.block} per query block of {sb.qblock}, "
                                 "chosen at run time (blocks=)"))
        return out

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
        if self.reach_decided:
            reach_text = "never" if self.layers_to_full_reach is None else str(self.layers_to_full_reach)
        else:
            reach_text = "unknown"
        target = "every j <= i" if self.causal else "every (i, j)"
        skip = "skipped (see below)"
        rows = [
            ("pattern", f"{self.pattern}({params})" if params else self.pattern),
            ("ir hash", self.ir_hash),
            ("n", f"{self.n:,}"),
            ("heads", str(self.heads)),
            ("allowed pairs (nnz)", skip if self.nnz is None else f"{self.nnz:,}"),
            ("density", skip if self.density is None else f"{self.density:.6g} ({self.density:.4%})"),
            ("nnz(n)", self._formula_cell()),
            ("order", self.order + (f"  (leading term {self.leading_term})" if self.leading_term else "")),
            ("flops fwd", skip if self.flops_fwd is None else f"{self.flops_fwd:.4g} (head_dim {self.head_dim})"),
            ("flops bwd", skip if self.flops_bwd is None else f"{self.flops_bwd:.4g} (2.5x fwd)"),
            (f"tiles {bm}x{bn}", skip if t is None else f"{t['full']:,} full, {t['partial']:,} partial, "
                                                        f"{t['empty']:,} empty of {t['total']:,}"),
            ("tile efficiency", skip if self.tile_efficiency is None else f"{self.tile_efficiency:.4f}"),
            ("empty query rows", skip if self.empty_rows is None else str(self.empty_rows)),
            ("layers to full reach", f"{reach_text}  ({target}; {self.reach_method})"),
            ("kv live max", self._live_cell()),
            ("metadata bytes", f"{self.metadata_bytes}" + ("" if self.csr_layout_bytes is None else
                                                           f" (a CSR tile layout would need {self.csr_layout_bytes:,})")),
        ]
        if self.kernel is not None:
            shape = "x".join(map(str, self.kernel_tile))
            eff = self.kernel_tile_efficiency
            rows.insert(12, (f"kernel tile eff. {shape}", skip if eff is None else
                             f"{eff:.4f}  (Triton forward: allowed / computed pairs)"))
        if self.selection is not None:
            rows = self._selection_rows(rows)
        for i, line in enumerate(self.kernel_plan):
            rows.append(("kernel plan" if i == 0 else "", line))
        if self.kernel_plan:
            rows.append(("backward dq", "added atomically by the dk/dv kernel (faster here; dq's last bits vary "
                                        "run to run: PATTERNC_DETERMINISTIC=1 for bit-exact)" if self.atomic_dq
                         else "dq kernel (bit-exact gradients run to run)"))
        for i, line in enumerate(self.all_skipped):
            rows.append(("skipped" if i == 0 else "", line))
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
                table.append((f"{h.heads[0]}..{h.heads[1]}", "-" if h.nnz is None else f"{h.nnz:,}",
                              "-" if h.density is None else f"{h.density:.4g}",
                              "-" if h.tile_efficiency is None else f"{h.tile_efficiency:.4f}",
                              "-" if h.empty_rows is None else str(h.empty_rows), r, h.expr))
            widths = [max(len(row[c]) for row in table) for c in range(len(hdr))]
            for row in table:
                lines.append("  " + "  ".join(f"{x:<{widths[c]}}" if c == len(hdr) - 1 else f"{x:>{widths[c]}}"
                                              for c, x in enumerate(row)).rstrip())
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- arguments

def flops(nnz: int, head_dim: int) -> tuple[int, int]:
    """(forward, backward) flops for `nnz` allowed pairs (summed over heads), per batch element:
    forward 4 * nnz * head_dim (QK^T and PV, 2 flops per multiply-add), backward 2.5x that."""
    fwd = 4 * int(nnz) * int(head_dim)
    return fwd, fwd * 5 // 2


def _integer(what: str, v, lo: int, hi: int, hint: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise PatternError(f"{what} must be {'a positive' if lo == 1 else 'an'} integer, got {v!r}")
    if v > hi:
        raise PatternError(f"{what} = {v} is too large: the limit is {hi:,}{hint}")
    return int(v)


def _tile_sizes(tile) -> tuple:
    if isinstance(tile, int) and not isinstance(tile, bool):
        bm = bn = tile
    else:
        try:
            bm, bn = tile
        except (TypeError, ValueError):
            raise PatternError(f"tile must be an integer or a pair (bm, bn), got {tile!r}") from None
    if isinstance(bm, bool) or isinstance(bn, bool) or not isinstance(bm, int) or not isinstance(bn, int) \
            or bm < 1 or bn < 1:
        raise PatternError(f"tile size must be >= 1, got {tile!r}")
    for v in (bm, bn):
        _integer("tile size", v, 1, limits.MAX_TILE)
    return int(bm), int(bn)


def check_length(n) -> int:
    """n as a length the analysis accepts (a PatternError naming the limit otherwise)."""
    return _integer("sequence length", n, 1, limits.MAX_N, " (2^30); the closed form, where the pattern "
                                                           "has one, holds for every n: see nnz_formula")


# ---------------------------------------------------------------- parameters, for the order

def _variant_forms(pattern: Pattern) -> tuple[dict, Optional[Callable[[dict], object]]]:
    """The pattern's integer parameters, and a function giving the closed form (unchecked) of the
    same pattern with some of them changed: the order's evidence for naming them."""
    given = {}
    for name, value in pattern.params:
        try:
            given[name] = int(value)
        except ValueError:
            pass  # a default that depends on n, e.g. s = isqrt(n): stays as it is
    if not given:
        return {}, None
    try:
        prog = parse_program(pattern.source, pattern.filename)
    except PatternError:
        return {}, None

    def variant(overrides: dict):
        try:
            other = resolve(prog, pattern.name, dict(given, **overrides))
        except PatternError:
            return None
        return derive(other.expr)

    return given, variant


def order_of(pattern: Pattern) -> tuple[str, Optional[str]]:
    """(order, leading term) of the pattern's pair count (all heads), e.g. ("O(n·(w + g))",
    "545*n"): from the closed form, else the power of n from exact counts (no leading term)."""
    f = derive(pattern.expr)
    if f is None:
        values = [_count_at(pattern, k) for k in ORDER_NS]
        return ("unknown" if any(v is None for v in values) else order_from_counts(values, ORDER_NS)), None
    params, variant = _variant_forms(pattern)
    lead = leading_term(f)
    return asymptotic_order(f, params, variant), None if lead is None else lead.text()


# ---------------------------------------------------------------- the analysis

def analyze(pattern: Pattern, n: int, heads: Optional[int] = None, tile: Union[int, tuple] = 128,
            head_dim: int = 128) -> Analysis:
    """Analyse `pattern` at length n: counts, closed form, flops, order, tiles, empty rows, reach.
    Lowering's part (kernel tile efficiency, plan) is added by the caller (`with_kernel`).
    A pattern with `select(...)` is analysed as its static part plus `selection` (module doc)."""
    found = ir.selects(pattern.expr)
    if found:
        return _with_selection(pattern, found[0], n, heads, tile, head_dim)
    n = check_length(n)
    head_dim = _integer("head_dim", head_dim, 1, limits.MAX_HEAD_DIM)
    bm, bn = _tile_sizes(tile)
    expr = pattern.at(n)  # runs the n-dependent checks (located errors)
    multi = isinstance(expr, ir.Heads)
    if multi:
        H = expr.num_heads
        if heads is not None and heads != H:
            raise PatternError(f"pattern '{pattern.name}' defines {H} heads (0..{H - 1}) but heads={heads} "
                               f"was requested; pass heads={H} or leave it out", None, pattern.source,
                               pattern.filename)
        cases = [((c.lo, c.hi), c.expr, sym.expr) for c, sym in zip(expr.cases, pattern.expr.cases)]
    else:
        H = 1 if heads is None else _integer("heads", heads, 1, limits.MAX_HEADS)
        cases = [((0, H - 1), expr, pattern.expr)]
    skipped: list = []

    def skip(what: str, why: str) -> None:
        if f"{what}: {why}" not in skipped:
            skipped.append(f"{what}: {why}")

    structural = n > reach.EXACT_N
    per = []
    nnz: Optional[int] = 0
    visited: Optional[int] = 0
    tcount: Optional[dict] = {"empty": 0, "partial": 0, "full": 0, "total": 0}
    empty_total: Optional[int] = 0
    empty_first: list = []
    csr: Optional[int] = 0
    exact_ok = True  # every head counted exactly (not only from its closed form)
    tiles_ok = -(-n // bm) <= limits.TILE_ROWS
    if not tiles_ok:
        skip("tiles", f"{-(-n // bm):,} query tiles of {bm} > {limits.TILE_ROWS:,} (limits.TILE_ROWS); "
                      "use a larger --tile or a smaller --n")
    for (lo, hi), e, sym in cases:
        k = hi - lo + 1
        E = engine(e, n)
        cheap = E.work <= limits.EXACT_WORK
        why = f"about {E.work:,} {E.work_unit} to visit > {limits.EXACT_WORK:,} (limits.EXACT_WORK)"
        dense_tiles = E.slow and n > limits.DENSE_FALLBACK_N
        if dense_tiles and tiles_ok:
            skip("tiles", f"strides/summaries with a combined period > {PERIOD_LIMIT:,} are counted pair by pair, "
                          f"which is meant for n <= {limits.DENSE_FALLBACK_N:,}")
        c: Optional[int] = None
        if cheap:
            c = E.total()
        else:
            exact_ok = False
            fc = closed_form(sym)
            if fc is not None:
                c = eval_int(fc, n)
            else:
                skip("allowed pairs", f"no closed form, and the exact count needs {why}")
        tm = tiles.tile_map(e, n, bm, bn) if tiles_ok and not dense_tiles else None
        if cheap:
            er, erf = reach.empty_rows(e, n)
            r = reach.full_reach(e, n, structural_only=structural) if multi else None
        else:
            er, erf, r = None, [], None
            skip("empty rows and reach", why)
        vis = None if tm is None else tm.nonempty_pairs
        per.append(HeadAnalysis((lo, hi), str(e), c, None if c is None else c / (n * n),
                                None if tm is None else dict(tm.counts),
                                None if c is None or vis is None else (c / vis if vis else 1.0), er, erf,
                                None if r is None else r.layers, r is not None and r.decided,
                                "skipped" if r is None else r.method))
        nnz = None if nnz is None or c is None else nnz + k * c
        visited = None if visited is None or vis is None else visited + k * vis
        if tm is None:
            tcount = csr = None
        elif tcount is not None:
            for key, v in tm.counts.items():
                tcount[key] += k * v
            csr += k * (4 * (tm.nqt + 1) + 5 * tm.n_nonempty)
        empty_total = None if empty_total is None or er is None else empty_total + k * er
        if er and len(empty_first) < 5:
            empty_first += [[h, row] for h in range(lo, hi + 1) for row in erf][: 5 - len(empty_first)] if multi \
                else erf
    reach_expr = ir.union([e for _, e, _ in cases]) if multi else expr
    if engine(reach_expr, n).work <= limits.EXACT_WORK:
        r = reach.full_reach(reach_expr, n, structural_only=structural)
        layers, decided, method, causal = r.layers, r.decided, r.method, r.causal
    else:
        layers, decided, method = None, False, "skipped (see below)"
        causal = _causal_by_formula(pattern.expr, n)
    f = closed_form(pattern.expr)
    if f is not None and not multi and H > 1:
        f = mul(const(H), f)  # one pattern on every head: the total is H times its count
    formula, tail = None, None
    if f is not None and nnz is not None and (not exact_ok or eval_int(f, n) == nnz):
        pieces = formula_pieces(f, validity(pattern.expr))
        formula = piecewise_text(pieces)
        tail = (pieces[-1].lo, pieces[-1].text) if len(pieces) > 1 else None
    order_text, lead = order_of(pattern)
    live = live_keys.report(pattern.expr, n)
    if live.skipped:
        skip("kv live max", live.skipped)
    fwd, bwd = (None, None) if nnz is None else flops(nnz, head_dim)
    return Analysis(
        pattern=pattern.name, params=dict(pattern.params), ir_hash=pattern.hash, n=n, heads=H, tile=(bm, bn),
        head_dim=head_dim, nnz=nnz, density=None if nnz is None else nnz / (H * n * n), nnz_formula=formula,
        order=order_text, leading_term=lead, nnz_formula_large_n=tail, flops_fwd=fwd, flops_bwd=bwd,
        tiles=tcount, tile_efficiency=None if nnz is None or visited is None else (nnz / visited if visited else 1.0),
        empty_rows=empty_total, empty_rows_first=empty_first, layers_to_full_reach=layers, reach_decided=decided,
        reach_method=method, causal=causal, metadata_bytes=0, csr_layout_bytes=csr, skipped=tuple(skipped),
        per_head=tuple(per) if multi else (), live=live,
    )


def _part(pattern: Pattern, expr) -> Pattern:
    """`pattern` with another expression (its static or outer part); same name, checks and source."""
    return replace(pattern, expr=expr)


def _with_selection(pattern: Pattern, atom, n: int, heads, tile, head_dim) -> Analysis:
    """The analysis of a pattern with `select`: the static part's, its empty rows from the outer
    pattern, and the upper ends (SelectionBounds)."""
    static = analyze(_part(pattern, ir.static_part(pattern.expr)), n, heads, tile, head_dim)
    outer_pattern = _part(pattern, ir.outer_part(pattern.expr))
    outer_at = outer_pattern.at(n)
    k, b, qb = (ix_value(e) for e in ir.int_args(atom))
    cases = [(c.hi - c.lo + 1, c.expr) for c in outer_at.cases] if isinstance(outer_at, ir.Heads) \
        else [(static.heads, outer_at)]
    static_at = ir.static_part(pattern.at(n))
    static_cases = [c.expr for c in static_at.cases] if isinstance(static_at, ir.Heads) else [static_at]
    skipped = list(static.skipped)
    outer_nnz: Optional[int] = 0
    nnz_max: Optional[int] = 0
    empty_total: Optional[int] = 0
    empty_first: list = []
    multi = isinstance(outer_at, ir.Heads)
    lo_head = 0
    sym_cases = [c.expr for c in outer_pattern.expr.cases] if multi else [outer_pattern.expr]
    for (count, e), e_static, sym in zip(cases, static_cases, sym_cases):
        E = engine(e, n)
        if E.work <= limits.EXACT_WORK:
            o = E.total()
            er, erf = reach.empty_rows(e, n)
        else:
            fo = closed_form(sym)
            o = None if fo is None else eval_int(fo, n)
            er, erf = None, []
            skipped.append(f"outer pattern's count and empty rows: about {E.work:,} {E.work_unit} to visit > "
                           f"{limits.EXACT_WORK:,} (limits.EXACT_WORK)")
        s_count = count_nnz(e_static, n) if engine(e_static, n).work <= limits.EXACT_WORK else None
        if s_count is None:
            fs = closed_form(ir.static_part(sym))
            s_count = None if fs is None else eval_int(fs, n)
        if o is None or s_count is None:
            nnz_max = outer_nnz = None
        elif nnz_max is not None:
            nnz_max += count * min(s_count + k * b * n, o)
            outer_nnz += count * o
        empty_total = None if empty_total is None or er is None else empty_total + count * er
        if er and len(empty_first) < 5:
            empty_first += [[h, row] for h in range(lo_head, lo_head + count) for row in erf][: 5 - len(empty_first)] \
                if multi else erf
        lo_head += count
    formula = _max_formula(pattern, k * b, 1 if multi else static.heads)
    bounds = SelectionBounds(str(atom), k, b, qb, nnz_max, outer_nnz, formula, static.head_dim)
    return replace(static, ir_hash=pattern.hash, selection=bounds, empty_rows=empty_total,
                   empty_rows_first=empty_first, skipped=tuple(dict.fromkeys(skipped)))


def ix_value(e) -> int:
    """A constant argument's value (select's arguments are constants)."""
    return e.value


def _max_formula(pattern: Pattern, per_row: int, heads: int) -> Optional[str]:
    """nnz_max(n) = sum over head cases of min(static(n) + per_row * n, outer(n)) (`heads` copies
    for a pattern that serves every head), as sympy text: Min(<static> + c*n, <outer>), each part
    written as its own readable pieces (the min's switch lies far beyond the scanned lengths)."""
    expr = pattern.expr
    cases = [(c.hi - c.lo + 1, c.expr) for c in expr.cases] if isinstance(expr, ir.Heads) else [(1, expr)]
    parts = []
    for count, e in cases:
        fs, fo = closed_form(ir.static_part(e)), closed_form(ir.outer_part(e))
        if fs is None or fo is None:
            return None
        scale = const(count * heads)
        valid = validity(ir.static_part(e))
        outer = piecewise_text(formula_pieces(mul(scale, fo), valid))
        if not ir.has_select(e):
            parts.append(outer)
            continue
        static = piecewise_text(formula_pieces(mul(scale, fs), valid))
        parts.append(f"Min({static} + {per_row * count * heads}*n, {outer})")
    return " + ".join(parts)


def _causal_by_formula(expr, n: int) -> bool:
    """Whether no allowed pair has j > i, from the closed form of those pairs (for lengths where
    counting them is too costly); False when there is none."""
    cases = [c.expr for c in expr.cases] if isinstance(expr, ir.Heads) else [expr]
    for e in cases:
        f = closed_form(ir.inter([e, ir.band(None, const(-1))]))
        if f is None or eval_int(f, n) != 0:
            return False
    return True


def _count_at(pattern: Pattern, m: int) -> Optional[int]:
    """The exact pair count at length m (all heads), or None where the pattern is invalid or the
    count too costly."""
    try:
        e = pattern.at(m)
    except PatternError:
        return None
    heads = e.cases if isinstance(e, ir.Heads) else None
    exprs = [(c.hi - c.lo + 1, c.expr) for c in heads] if heads else [(1, e)]
    if any(engine(x, m).work > limits.EXACT_WORK for _, x in exprs):
        return None
    return sum(k * count_nnz(x, m) for k, x in exprs)
