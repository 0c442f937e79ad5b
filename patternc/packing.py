"""The cost of a packed batch: documents of different lengths, each its own sequence.

Packed training (runtime.varlen: `attention(q, k, v, cu_seqlens=...)`) applies the pattern
inside each document, positions from its start and n its length, and nothing across documents.
So a batch's allowed pairs, flops, tiles and rows with no key are sums over its documents of
the single-sequence counts at each document's length (computed once per distinct length, with
the analyses' own counter, closed form, tile map and empty rows), and its tile efficiency is
the ratio of the sums: the document-aware kernels tile every document from its own first row.

Conventions (as patternc.analysis, summed over documents):
* nnz, flops and tiles are totals over heads and documents; flops_fwd = 4 * nnz * head_dim,
  flops_bwd = 2.5 * flops_fwd;
* density = nnz / (heads * total^2): the share of the packed row's pairs that are computed, next
  to one unpacked sequence of the same total length; density_in_documents = nnz / (heads *
  sum of length^2), the pattern's own density within documents;
* tile_efficiency = allowed pairs / pairs inside non-empty tiles of each document;
  kernel_tile_efficiency (added by patternc.api.analyze) the same for the pairs the Triton
  forward really computes.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional, Union

from . import ir, limits, reach, tiles
from .algebra import eval_int
from .analysis import _integer, _tile_sizes, check_length, flops
from .closed_form import closed_form
from .counting import engine
from .errors import PatternError
from .frontend import Pattern

MAX_DOCS = 1 << 20  # documents in one packed batch (each distinct length is analysed once)


@dataclass(frozen=True)
class LengthCost:
    """One document length's share of a packed batch (every document of that length together)."""

    length: int
    documents: int
    nnz: Optional[int]  # all heads, all these documents
    visited: Optional[int]  # pairs inside non-empty tiles
    tiles: Optional[dict]
    empty_rows: Optional[int]
    computed: Optional[int] = None  # pairs the Triton forward computes (patternc.api adds it)


@dataclass(frozen=True)
class PackedAnalysis:
    """Cost of a packed batch of documents (see the module doc for conventions).  A field that is
    None was skipped for some length; `skipped` says why."""

    pattern: str
    params: dict
    ir_hash: str
    heads: int
    tile: tuple
    head_dim: int
    documents: int
    total: int  # tokens in the batch
    lengths: tuple  # LengthCost per distinct length, ascending
    skipped: tuple = ()
    kernel_tile: tuple = ()  # (BM, BN) of the Triton forward, where the kernel report was added

    @property
    def nnz(self) -> Optional[int]:
        return _sum(c.nnz for c in self.lengths)

    @property
    def density(self) -> Optional[float]:
        nnz = self.nnz
        return None if nnz is None or not self.total else nnz / (self.heads * self.total ** 2)

    @property
    def density_in_documents(self) -> Optional[float]:
        nnz, square = self.nnz, sum(c.documents * c.length ** 2 for c in self.lengths)
        return None if nnz is None or not square else nnz / (self.heads * square)

    @property
    def flops_fwd(self) -> Optional[int]:
        return None if self.nnz is None else flops(self.nnz, self.head_dim)[0]

    @property
    def flops_bwd(self) -> Optional[int]:
        return None if self.nnz is None else flops(self.nnz, self.head_dim)[1]

    @property
    def tiles(self) -> Optional[dict]:
        if any(c.tiles is None for c in self.lengths):
            return None
        out = {"empty": 0, "partial": 0, "full": 0, "total": 0}
        for c in self.lengths:
            for key in out:
                out[key] += c.tiles[key]
        return out

    @property
    def tile_efficiency(self) -> Optional[float]:
        return _ratio(self.nnz, _sum(c.visited for c in self.lengths))

    @property
    def kernel_tile_efficiency(self) -> Optional[float]:
        if not self.kernel_tile:
            return None
        return _ratio(self.nnz, _sum(c.computed for c in self.lengths))

    @property
    def empty_rows(self) -> Optional[int]:
        return _sum(c.empty_rows for c in self.lengths)

    def with_computed(self, tile: tuple, computed: dict) -> "PackedAnalysis":
        """This analysis with the Triton forward's computed pairs per length ({length: pairs} for
        one document of it, all heads) and its tile shape added (patternc.api.analyze)."""
        lengths = tuple(replace(c, computed=None if computed.get(c.length) is None else
                                c.documents * computed[c.length]) for c in self.lengths)
        return replace(self, lengths=lengths, kernel_tile=tuple(tile))

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "params": dict(self.params),
            "ir_hash": self.ir_hash,
            "heads": self.heads,
            "tile": self.tile[0] if self.tile[0] == self.tile[1] else list(self.tile),
            "head_dim": self.head_dim,
            "documents": self.documents,
            "total_tokens": self.total,
            "lengths": [{"length": c.length, "documents": c.documents, "nnz": c.nnz,
                         "tile_efficiency": _ratio(c.nnz, c.visited),
                         "kernel_tile_efficiency": _ratio(c.nnz, c.computed) if self.kernel_tile else None}
                        for c in self.lengths],
            "nnz": self.nnz,
            "density": self.density,
            "density_in_documents": self.density_in_documents,
            "flops_fwd": self.flops_fwd,
            "flops_bwd": self.flops_bwd,
            "flops_convention": "fwd = 4*nnz*head_dim (2 matmuls, 2 flops/MAC), bwd = 2.5*fwd; all heads, "
                                "summed over documents",
            "tiles": self.tiles,
            "tile_efficiency": self.tile_efficiency,
            "kernel_tile_efficiency": self.kernel_tile_efficiency,
            "kernel_tile": list(self.kernel_tile),
            "empty_rows": self.empty_rows,
            "skipped": list(self.skipped),
        }

    def format_table(self) -> str:
        """A readable, aligned text table."""
        skip = "skipped (see below)"
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        shortest, longest = self.lengths[0].length, self.lengths[-1].length
        bm, bn = self.tile
        t = self.tiles
        rows = [
            ("pattern", f"{self.pattern}({params})" if params else self.pattern),
            ("ir hash", self.ir_hash),
            ("documents", f"{self.documents:,} ({len(self.lengths):,} distinct "
                          f"length{'s' if len(self.lengths) != 1 else ''}, {shortest:,} to {longest:,})"),
            ("total tokens", f"{self.total:,}"),
            ("heads", str(self.heads)),
            ("allowed pairs (nnz)", skip if self.nnz is None else f"{self.nnz:,}  (sum over documents)"),
            ("density", skip if self.density is None else
             f"{self.density:.6g} of the packed row's pairs; {self.density_in_documents:.6g} within documents"),
            ("flops fwd", skip if self.flops_fwd is None else f"{self.flops_fwd:.4g} (head_dim {self.head_dim})"),
            ("flops bwd", skip if self.flops_bwd is None else f"{self.flops_bwd:.4g} (2.5x fwd)"),
            (f"tiles {bm}x{bn}", skip if t is None else f"{t['full']:,} full, {t['partial']:,} partial, "
                                                        f"{t['empty']:,} empty of {t['total']:,} (per document)"),
            ("tile efficiency", skip if self.tile_efficiency is None else f"{self.tile_efficiency:.4f}"),
        ]
        if self.kernel_tile:
            eff = self.kernel_tile_efficiency
            rows.append((f"kernel tile eff. {'x'.join(map(str, self.kernel_tile))}", skip if eff is None else
                         f"{eff:.4f}  (Triton forward: allowed / computed pairs, per document)"))
        rows.append(("empty query rows", skip if self.empty_rows is None else str(self.empty_rows)))
        for i, line in enumerate(self.skipped):
            rows.append(("skipped" if i == 0 else "", line))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows) + "\n"


def _sum(values) -> Optional[int]:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _ratio(a: Optional[int], b: Optional[int]) -> Optional[float]:
    return None if a is None or b is None else (a / b if b else 1.0)


def check_doc_lens(doc_lens) -> tuple:
    """Document lengths as a tuple of ints (0 allowed: an empty document costs nothing), or a
    PatternError naming what is wrong."""
    if isinstance(doc_lens, (str, bytes)) or not hasattr(doc_lens, "__iter__"):
        raise PatternError(f"doc_lens must be a list of document lengths, got {type(doc_lens).__name__}")
    out = []
    for i, m in enumerate(doc_lens):
        if isinstance(m, bool) or not hasattr(m, "__index__"):
            raise PatternError(f"doc_lens[{i}] must be an integer, got {m!r}")
        m = m.__index__()
        if m < 0:
            raise PatternError(f"doc_lens[{i}] must be >= 0, got {m}")
        if m:
            check_length(m)
        out.append(m)
    if not any(out):
        raise PatternError("doc_lens must hold at least one document of length >= 1")
    if len(out) > MAX_DOCS:
        raise PatternError(f"{len(out):,} documents is too many: the limit is {MAX_DOCS:,}")
    return tuple(out)


def parse_doc_lens(text: str, where: str) -> tuple:
    """Document lengths from text: integers separated by commas, spaces or newlines; `#` starts
    a comment.  `where` (an option or a file) names the source in errors."""
    values = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, 1):
        for item in re.split(r"[,\s]+", line.split("#", 1)[0].strip()):
            if not item:
                continue
            if not re.fullmatch(r"\d+", item):
                at = f"line {lineno}: " if len(lines) > 1 else ""
                raise PatternError(f"{at}expected a document length (a non-negative integer), got {item!r}",
                                   None, "", where)
            values.append(int(item))
    if not values:
        raise PatternError("no document lengths", None, "", where)
    try:
        return check_doc_lens(values)
    except PatternError as e:
        raise PatternError(e.message, None, "", where) from None


def _length_cost(pattern: Pattern, m: int, count: int, heads: Optional[int], bm: int, bn: int,
                 skip, forms: dict) -> LengthCost:
    """The counts of `count` documents of length m: per head case, exactly where the counter is
    cheap, else from the closed form; the tile map and empty rows where affordable (the limits of
    patternc.analysis)."""
    try:
        expr = pattern.at(m)
    except PatternError as e:
        raise PatternError(f"at document length {m}: {e.message}", e.span, e.source, e.filename) from None
    if isinstance(expr, ir.Heads):
        cases = [(c.hi - c.lo + 1, c.expr, sym.expr) for c, sym in zip(expr.cases, pattern.expr.cases)]
    else:
        cases = [(heads, expr, pattern.expr)]
    nnz: Optional[int] = 0
    visited: Optional[int] = 0
    counts: Optional[dict] = {"empty": 0, "partial": 0, "full": 0, "total": 0}
    empty: Optional[int] = 0
    for k, e, sym in cases:
        E = engine(e, m)
        if E.work <= limits.EXACT_WORK:
            c = E.total()
            er = reach.empty_rows(e, m)[0]
        else:
            if sym not in forms:
                forms[sym] = closed_form(sym)
            c = None if forms[sym] is None else eval_int(forms[sym], m)
            er = None
            skip(f"empty rows at length {m:,}", f"about {E.work:,} {E.work_unit} to visit > {limits.EXACT_WORK:,}")
            if c is None:
                skip(f"allowed pairs at length {m:,}", "no closed form, and the exact count is too costly")
        tm = None
        if -(-m // bm) > limits.TILE_ROWS:
            skip(f"tiles at length {m:,}", f"{-(-m // bm):,} query tiles > {limits.TILE_ROWS:,} (limits.TILE_ROWS)")
        elif E.slow and m > limits.DENSE_FALLBACK_N:
            skip(f"tiles at length {m:,}", "counted pair by pair, meant for n <= "
                                           f"{limits.DENSE_FALLBACK_N:,}")
        else:
            tm = tiles.tile_map(e, m, bm, bn)
        nnz = None if nnz is None or c is None else nnz + k * count * c
        visited = None if visited is None or tm is None else visited + k * count * tm.nonempty_pairs
        if tm is None or counts is None:
            counts = None
        else:
            for key, v in tm.counts.items():
                counts[key] += k * count * v
        empty = None if empty is None or er is None else empty + k * count * er
    return LengthCost(m, count, nnz, visited, counts, empty)


def analyze_packed(pattern: Pattern, doc_lens, heads: Optional[int] = None, tile: Union[int, tuple] = 128,
                   head_dim: int = 128) -> PackedAnalysis:
    """Cost of a packed batch of documents of lengths `doc_lens` (see the module doc)."""
    doc_lens = check_doc_lens(doc_lens)
    head_dim = _integer("head_dim", head_dim, 1, limits.MAX_HEAD_DIM)
    bm, bn = _tile_sizes(tile)
    H = pattern.num_heads
    if H and heads is not None and heads != H:
        raise PatternError(f"pattern '{pattern.name}' defines {H} heads (0..{H - 1}) but heads={heads} "
                           f"was requested; pass heads={H} or leave it out", None, pattern.source, pattern.filename)
    H = H or (1 if heads is None else _integer("heads", heads, 1, limits.MAX_HEADS))
    skipped: list = []

    def skip(what: str, why: str) -> None:
        if f"{what}: {why}" not in skipped:
            skipped.append(f"{what}: {why}")
    forms: dict = {}
    counts = Counter(m for m in doc_lens if m)
    lengths = tuple(_length_cost(pattern, m, counts[m], H, bm, bn, skip, forms) for m in sorted(counts))
    return PackedAnalysis(pattern=pattern.name, params=dict(pattern.params), ir_hash=pattern.hash, heads=H,
                          tile=(bm, bn), head_dim=head_dim, documents=len(doc_lens), total=sum(doc_lens),
                          lengths=lengths, skipped=tuple(skipped))
