"""The Triton backend's schedule: tile shapes, warps, stages and kernel choices per pattern.

Every rule here is decided at compile time from the pattern's plan and a simulation of
the kernels' walks (backends.walks) at a reference length, and each cites the
measurement that decided it in docs/decisions.md (by the entry's name).
"""
from __future__ import annotations

from typing import Optional

from patternc import intexpr as ix
from patternc import ir
from patternc.errors import PatternError
from patternc.lower import Plan, heavy_spans, plan

from .walks import tile_walks, visited_tiles


def atomic_dq(pl: Plan) -> bool:
    """Whether the Triton backward adds dq atomically from its dk/dv kernel instead of running a
    dq kernel.  Measured on an H200 (docs/decisions.md: atomic-dq), that is faster only where the dq
    kernel's own walk is the costly part: random blocks, and a residue-class pass beside another
    pass (Sparse Transformer strided); windows, causal and a lone residue-class pass are slower.
    Never with `select(...)`: its backward is promised deterministic (docs/decisions.md: select-backward)."""
    if pl.select is not None:
        return False
    return any(any(t.randoms for t in p.terms) for p in pl.passes) or \
        (len(pl.passes) > 1 and any(p.space.kind == "diag" for p in pl.passes))


def fused_forward(pl: Plan) -> bool:
    """Whether one forward kernel walks every pass of the plan.  Passes whose query positions are
    tokens in order (identity and kept-key spaces) visit the same query tiles, so one program can
    continue its online softmax from one pass's key tiles to the next: no float32 output and
    log-sum-exp written by one launch and read back by the next, Q loaded once.  Not with split
    global rows (their chunks are separate launches) or residue classes (other query tiles)."""
    return len(pl.passes) > 1 and all(p.space.kind in ("identity", "keys") for p in pl.passes) \
        and not any(heavy_spans(p, "q") for p in pl.passes)


def describe_plan(expr, n: int) -> list:
    """One line per kernel pass: its index space, its terms, and the global rows/columns whose
    walks are split across programs (when a walk is at least three chunks long)."""
    lines, pl = [], plan(expr)
    for i, p in enumerate(pl.passes):
        s = f"pass {i}: {p.space.describe()}, {len(p.terms)} term{'s' if len(p.terms) > 1 else ''}"
        for major, what in (("q", "rows"), ("k", "key columns")):
            spans = [(max(ix.evaluate(a, n), 0), min(ix.evaluate(b, n), n)) for a, b in heavy_spans(p, major)]
            spans = sorted((a, b) for a, b in spans if b > a)
            if spans:
                s += f"; global {what} " + ", ".join(f"{a}..{b - 1}" for a, b in spans) + " split into chunks"
        lines.append(s)
    if fused_forward(pl):
        lines.append(f"forward: one kernel walks passes 0..{len(lines) - 1} (same query tiles, one online softmax)")
    return lines or ["no pass: the pattern is empty"]


# Forward tile shapes the GPU kernels may use (D <= 128, 16-bit inputs), largest first.  A bigger
# tile does more work per load, so it must keep most of the smaller tile's efficiency to win.
TILE_CHOICES = ((128, 64), (64, 64))
LONG_WALK = 16  # key tiles per 128-row query tile from which 128-row tiles pay (docs/decisions.md: fwd-tiles-long-walk)
MAX_EXTRA_WORK = 1.3  # ... unless they compute this much more than 64-row tiles
REFERENCE_LENGTH = 16384


def _head_exprs(pattern, n: int) -> Optional[list]:
    """Each head case's expression at length n (one for a pattern without `heads`), or None
    where the pattern is not valid at n: the compile-time choices then keep their defaults."""
    try:
        exprs = pattern.at(n)
    except PatternError:
        return None
    return [c.expr for c in exprs.cases] if isinstance(exprs, ir.Heads) else [exprs]


def choose_forward_tiles(pattern, n: int = REFERENCE_LENGTH) -> tuple:
    """(BM, BN) for the forward kernel, decided once, at compile time, by the cost model.

    Measured on an H200 (docs/decisions.md: fwd-tiles-long-walk): a program has a fixed cost (prologue, epilogue,
    pipeline fill) of about 3.6 tiles' work for 64x64 tiles (4 warps) and 6.8 for 128x64
    (8 warps), while a 128x64 tile step costs 0.9x two 64x64 steps.  So 128-row tiles win
    once a query tile walks many key tiles (causal, wide windows) and lose on short walks
    (local(256), strided): short walks take 64-row tiles."""
    found = ir.selects(pattern.expr)
    if found and found[0].qb.value < 128:  # decisions.md: select-tiles (a query tile in one query block)
        return 64, min(64, found[0].b.value)
    exprs = _head_exprs(pattern, n)
    if exprs is None:  # not valid at the reference length: keep the default shape
        return TILE_CHOICES[0]
    big = sum(visited_tiles(e, n, 128, 64) for e in exprs)
    small = sum(visited_tiles(e, n, 64, 64) for e in exprs)
    walk = big / (len(exprs) * -(-n // 128))
    if walk >= LONG_WALK and 2 * big <= MAX_EXTRA_WORK * small:
        return TILE_CHOICES[0]
    return TILE_CHOICES[1]


def choose_dkdv_tiles(pattern, n: int = REFERENCE_LENGTH, D: int = 128) -> tuple:
    """(query tile, key tile, warps) of the dk/dv kernel on the GPU for head dim `D`, decided at
    compile time.

    64-key tiles on 4 warps (2 programs per SM at D = 128: 97 KiB of shared memory) for plans of
    one pass over tokens in order, and for plans with block-diagonal or random terms. Measured on
    an H200 (D = 128, docs/decisions.md: dkdv-tiles, dkdv-32-queries-random): local -14%, causal window -15% at 65,536,
    causal -7%, Sparse Transformer fixed -9 to -12%; unions with sinks, global rows or a prefix
    block, once their walk had one tile loop (v7), -5 to -16% against 128 keys on 8 warps.
    Residue classes and several passes keep 128 keys on 8 warps: strided +30%, dilated +4%
    with 64. Random blocks take 32-query tiles at D > 64: the dk/dv kernel also adds dq
    atomically there (`atomic_dq`) and at 64 queries and D = 128 it spills registers; BigBird's
    backward -24% (v8), while the other plans measured 3-16% slower with 32 (dilated 2% faster:
    kept at 64). At D = 64 nothing spills and 64 queries win (BigBird -14%)."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return 64, 128, 8
    plans = [plan(e) for e in exprs]
    terms = [t for pl in plans for ps in pl.passes for t in ps.terms]
    if any(t.blocks or t.picked for t in terms) and not any(t.diag for t in terms):
        return (32 if D > 64 and any(t.randoms for t in terms) else 64), 64, 4
    for pl in plans:
        if len(pl.passes) != 1 or pl.passes[0].space.kind != "identity":
            return 64, 128, 8
        if any(t.diag or t.keymods or t.filters for t in pl.passes[0].terms):
            return 64, 128, 8
    return 64, 64, 4


LONG_KEY_WALK = 64  # query tiles per 64-key tile from which the dk/dv kernel walks a union twice


def choose_union_walks(pattern, n: int = REFERENCE_LENGTH, fwd_tiles: Optional[tuple] = None) -> dict:
    """Per kernel ("fwd", "dq", "dkdv"): whether a union of interval terms is walked twice, its
    full runs with the mask-free tile body and then its partial tiles, rather than once with
    the mask opened on full runs (or, for 128-row forwards, a full and a partial loop inside
    one walk).  Measured on an H200 at n = 65,536, D = 128 (docs/decisions.md: union-two-walks), kernel
    times two walks / one walk: dq 0.83-0.87 (prefix-LM, StreamingLLM, Longformer); dk/dv 0.91
    on prefix-LM's long walks, 1.03-1.05 on the short ones (StreamingLLM, Longformer, BigBird);
    forward 0.92 (Longformer, 64-row tiles) but 1.04 (prefix-LM, StreamingLLM, 128-row)."""
    fwd64 = (fwd_tiles or choose_forward_tiles(pattern, n))[0] == 64
    return {"fwd": fwd64, "dq": True, "dkdv": long_key_walk(pattern, n)}


def long_key_walk(pattern, n: int = REFERENCE_LENGTH) -> bool:
    """Whether a 64-key tile meets, on average over the heads, at least LONG_KEY_WALK query
    tiles of 64 at the reference length: causal-like patterns (causal, prefix-LM), whose
    backward kernels are long pipelined loops, unlike windows, sinks and global rows."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return False
    return sum(visited_tiles(e, n, 64, 64) for e in exprs) / (len(exprs) * -(-n // 64)) >= LONG_KEY_WALK


LATE_GROWTH = 1.25  # a pass runs its query tiles last-first when late tiles walk this much more


def longest_walks_first(pattern, n: int = REFERENCE_LENGTH, tiles: tuple = (128, 64)) -> Optional[list]:
    """Per head case: (per pass, whether its query tiles run last-first; the same for a forward
    kernel that walks all of the case's passes), decided at compile time from the walk lengths
    at the reference length.

    The GPU starts programs in launch order.  Where a query tile's walk grows with its index
    (causal, prefix-LM, strided), tile order launches the longest programs last, and the SMs
    that drew them finish late while the rest idle; last-first puts the short programs at the
    end (a list-scheduling simulation of causal at n = 65,536: 1.6-3% of the kernel's time,
    6.6% at 16,384).  None where the pattern is not valid at n."""
    exprs = _head_exprs(pattern, n)
    if exprs is None:
        return None
    out = []
    for e in exprs:
        walks = tile_walks(e, n, *tiles)
        per_pass = [_grows(w, t) for w, t in walks]
        same = walks and all(w.shape == walks[0][0].shape for w, _ in walks)
        fused = _grows(sum(w for w, _ in walks), walks[0][1]) if same else bool(per_pass and per_pass[0])
        out.append((per_pass, fused))
    return out


def _grows(walk, t) -> bool:
    """Whether the tiles in the later half of their class walk LATE_GROWTH times more."""
    late = 2 * t >= t.max() + 1 if t.size else t
    if not late.any() or late.all():
        return False
    return float(walk[late].mean()) > LATE_GROWTH * max(float(walk[~late].mean()), 1.0)


def choose_bwd_settings(pattern, n: int = REFERENCE_LENGTH, D: int = 128) -> dict:
    """The backward's tiles, warps and the dk/dv kernel's pipeline stages on the GPU for head
    dim `D`, decided at compile time: the dk/dv tiles of `choose_dkdv_tiles`, 128x64 dq tiles
    on 8 warps.  At D = 64, long key walks take 128x128 dq tiles and 3 dk/dv stages: measured
    on an H200 at n = 65,536 (docs/decisions.md: d64-long-key-walk-bwd), causal's backward 68.8 -> 61.6 ms,
    prefix-LM's 68.1 -> 61.7, while the short walks lost 1-8% with them (StreamingLLM,
    Longformer, the causal window; local even).  At D = 128 three dk/dv stages cost one program
    per SM: causal +14% (v9).  None for the dk/dv stages: the module's own default."""
    bm, bn, warps = choose_dkdv_tiles(pattern, n, D)
    wide = D <= 64 and long_key_walk(pattern, n)
    return dict(DQ_BM=128, DQ_BN=128 if wide else 64, dq_warps=8, DKV_BM=bm, DKV_BN=bn, dkv_warps=warps,
                dkv_stages=3 if wide else None)
