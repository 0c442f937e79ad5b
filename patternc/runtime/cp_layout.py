"""Context parallel layouts: which token positions each rank of a group holds.

- "contiguous": rank r holds [r*c, min((r+1)*c, n)) with c = ceil(n / P); the last ranks may
  hold fewer (or none, when n < P*c - c).  The least traffic for windows: a rank needs only
  the halos of its neighbours.
- "balanced": every rank computes the same number of allowed pairs, to within one layout tile's
  pairs.  The sequence is cut into tiles (`cp_tile`); a tile weighs the pairs the exchange plan
  computes on the rank that holds it: its light rows' allowed pairs, plus the pairs of global
  (heavy) rows with keys in it, which are computed where those keys live (runtime.cp_plan).
  Two cuts are tried.  Contiguous: ranks 0..P-2 take tiles from the front, a tile at a time,
  until their running total is nearest (r+1)/P of the whole.  Zigzag: each takes one piece from
  the front and one from the back of what is left, alternating sides (so its two pieces stay
  equal in tokens where the weights allow), likewise; the last rank takes the middle.  Either
  way each rank is within the largest tile's weight of total/P.  The contiguous cut is kept
  unless it leaves some rank more than a tile more tokens than the zigzag does: so windows
  (uniform weights) keep one halo per neighbour, and causal patterns, whose work grows along
  the sequence, get the zigzag, which holds both pairs and tokens equal.

The weights come from the exact sparse walk (runtime.walk.pair_counts), once per (pattern, n,
P); `patternc analyze --cp` counts the same weights with the analysis' exact counter and cuts
them with the same `balanced_pieces`, so the two agree exactly.
"""
from __future__ import annotations

from typing import Optional

import torch

from .spec import Spec
from .validate import check_length
from .walk import pair_counts

LAYOUTS = ("contiguous", "balanced")
CP_TILE = 64  # layout tile of long sequences: the walk's query tile


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_world(world_size, rank: Optional[int] = None) -> int:
    """world_size an int >= 1 (and rank, when given, in 0..world_size-1)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in 0..{world_size - 1}, got {rank!r}")
    return world_size


def cp_tile(n: int, world: int) -> int:
    """The balanced layout's tile: CP_TILE, halved until the sequence has 4 tiles per rank (short
    sequences in tests), at least 1."""
    tile = CP_TILE
    while tile > 1 and n < 4 * world * tile:
        tile //= 2
    return tile


def heavy_rows(spec: Spec, n: int) -> list:
    """[(lo, hi), ...] half-open, merged: the global rows of every pass at length n (rows that
    attend all keys; the plan computes them where the keys live)."""
    spans = sorted((max(a, 0), min(b, n)) for case in spec.cases for p in case.passes if p.heavy_q
                   for a, b in p.heavy_q(n))
    out: list = []
    for a, b in spans:
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def heavy_mask(spec: Spec, n: int) -> torch.Tensor:
    on = torch.zeros(n, dtype=torch.bool)
    for a, b in heavy_rows(spec, n):
        on[a:b] = True
    return on


def contiguous_pieces(n: int, world: int) -> tuple:
    c = -(-n // world)
    return tuple(((r * c, min((r + 1) * c, n)),) if r * c < n else () for r in range(world))


def tile_weights(spec: Spec, n: int, tile: int, device=None) -> list:
    """Pairs computed on the rank that holds each tile of `tile` rows (see the module's doc)."""
    rows_w, keys_w = pair_counts(spec, n, heavy_mask(spec, n), device)
    w = (rows_w + keys_w).cpu()
    T = -(-n // tile)
    return torch.nn.functional.pad(w, (0, T * tile - n)).view(T, tile).sum(1).tolist()


def _cut_by_weight(weights: list, world: int, zigzag: bool) -> list:
    """Per rank, its (first, last) tile ranges: ranks 0..P-2 take tiles from the front (and, with
    zigzag, alternately from the back) while their running total gets nearer (r+1)/P of the
    whole; the last rank takes what is left."""
    total = sum(weights)
    f, b, cum = 0, len(weights), 0
    ranks = []
    for r in range(world - 1):
        goal = (r + 1) * total / world
        f0, b0 = f, b
        while f < b:
            front = not zigzag or f - f0 <= b0 - b  # the side with fewer tiles taken goes next
            w = weights[f] if front else weights[b - 1]
            if abs(cum + w - goal) >= abs(cum - goal):
                break
            cum += w
            if front:
                f += 1
            else:
                b -= 1
        ranks.append([(f0, f), (b, b0)])
    ranks.append([(f, b)])
    return ranks


def balanced_pieces(weights: list, tile: int, n: int, world: int) -> tuple:
    """Per rank, its (lo, hi) pieces of the balanced layout, from the tiles' weights: contiguous
    ranges where those hold as few tokens per rank as the zigzag does (within a tile), since
    they halve the halos a window exchanges; the zigzag otherwise (causal patterns)."""
    if sum(weights) == 0 or world == 1:
        return contiguous_pieces(n, world)
    best = None
    for zigzag in (False, True):
        pieces = tuple(tuple((lo * tile, min(hi * tile, n)) for lo, hi in ranges if hi > lo)
                       for ranges in _cut_by_weight(weights, world, zigzag))
        most = max(sum(hi - lo for lo, hi in p) for p in pieces)
        if best is None or most < best[0] - tile:
            best = (most, pieces)
    return best[1]


_PIECES: dict = {}


def rank_pieces(spec: Spec, n: int, world: int, layout: str, device=None) -> tuple:
    """Per rank, the (lo, hi) pieces it holds, in order (cached per pattern, n, P and layout)."""
    check_layout(layout)
    if layout == "contiguous":
        return contiguous_pieces(n, world)
    key = (spec.namespace, n, world)
    if key not in _PIECES:
        tile = cp_tile(n, world)
        _PIECES[key] = balanced_pieces(tile_weights(spec, n, tile, device), tile, n, world)
        while len(_PIECES) > 32:
            _PIECES.pop(next(iter(_PIECES)))
    return _PIECES[key]


def pieces_positions(pieces) -> torch.Tensor:
    if not pieces:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.arange(lo, hi, dtype=torch.int64) for lo, hi in pieces])


def layout_positions(spec: Spec, n: int, world_size: int, rank: int, layout: str = "contiguous",
                 device=None) -> torch.Tensor:
    """The int64 token positions (on the CPU, ascending) that `rank` of `world_size` holds under
    `layout`; device: where the balanced layout's weights are counted (once per n and P)."""
    n = check_length(n, spec.check_length)
    check_world(world_size, rank)
    return pieces_positions(rank_pieces(spec, n, world_size, layout, device)[rank])
