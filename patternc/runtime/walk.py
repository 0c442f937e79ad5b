"""The exact sparse PyTorch path: the kernels' walk, one query tile at a time.

For each pass of a head case, each query tile of the pass's index space gathers the keys
that its terms' closed-form ranges allow (the module's `walk` functions, printed from the
same trees as the kernels' loop bounds), computes that block of scores, masks it with the
pass's pairs and folds it into the rows' softmax state by log-sum-exp.  Passes are disjoint
(each excludes the pairs of the ones before), so the result is exact.  Cost follows the
pattern: linear in n for windows, where the dense path is quadratic whatever the pattern.

It runs wherever torch does: the CPU, and CUDA inputs the kernels do not take (float64).
The backward recomputes each tile's probabilities from the saved log-sum-exp and adds dk and
dv into their key rows with index_add_, in a fixed order (deterministic).

A pattern with `select(...)` walks each batch element and selection head on its own: the walk
function returns the selected term's key range, and the runtime adds the selected blocks of
each query tile (duplicates once, -1 skipped) to the keys the static terms visit, so a block
they already cover is not computed twice.  `mass=True` also returns the attention probability
each selected block received, summed over its query block's rows, folded into the same online
softmax as the output.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch

from .random_blocks import picked_blocks
from .spec import Pass, Spec

TILE = 64  # query rows per step: big enough for matrix products to dominate Python's per-tile cost


class WalkSelection(NamedTuple):
    """One batch element's and selection head's blocks, as the walk reads them."""

    rows: list  # (query blocks) lists of k key blocks, -1 for an empty slot
    tensor: torch.Tensor  # the same (query blocks, k), for the pass masks
    block: int
    qblock: int


def selected_keys(sel: WalkSelection, a0: int, a1: int, n: int) -> list:
    """The distinct key blocks that the query blocks of positions a0..a1 list, in order."""
    nkb = -(-n // sel.block)
    last = min(a1 // sel.qblock, len(sel.rows) - 1)
    return sorted({kb for qb in range(a0 // sel.qblock, last + 1) for kb in sel.rows[qb] if 0 <= kb < nkb})


def _merge(intervals: list) -> list:
    """Sorted, disjoint [lo, hi] intervals covering the given ones."""
    out: list = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def space_sizes(p: Pass, n: int, r: int, A: dict) -> tuple:
    """(LQ, L): query and key indices of the pass's space (class r for residue classes)."""
    if p.space == "diag":
        m = p.value(p.m, A)
        lq = (n - r + m - 1) // m
        return lq, lq
    if p.space == "keys":
        l, c = p.value(p.l, A), p.value(p.c, A)
        return n, (n // l) * c + max(n % l - (l - c), 0)
    return n, n


def positions(p: Pass, idx: torch.Tensor, r: int, A: dict, query: bool) -> torch.Tensor:
    """Token positions of indices of the pass's space (kept key columns on the key side only)."""
    if p.space == "diag":
        return r + p.value(p.m, A) * idx
    if p.space == "keys" and not query:
        l, c = p.value(p.l, A), p.value(p.c, A)
        return (idx // c) * l + (l - c) + idx % c
    return idx


def query_tiles(p: Pass, n: int, A: dict, tile: int) -> Iterator[tuple]:
    """(a0, a1, r, LQ, L) of every query tile of the pass, in its space's order."""
    classes = range(min(p.value(p.m, A), n)) if p.space == "diag" else (0,)
    for r in classes:
        lq, lk = space_sizes(p, n, r, A)
        for a0 in range(0, lq, tile):
            yield a0, min(a0 + tile, lq) - 1, r, lq, lk


def tile_keys(p: Pass, a0: int, a1: int, r: int, n: int, lq: int, lk: int, A: dict, device,
              sel: Optional[WalkSelection] = None) -> torch.Tensor:
    """Positions of the keys the pass's terms allow query tile [a0, a1] to meet (a superset of its
    allowed pairs' keys, as in the kernels; the pass's mask makes it exact)."""
    spans = []
    for lo, hi, applies, rnd in p.walk(a0, a1, r, n, lk, lq, A):
        lo, hi = max(lo, 0), min(hi, lk - 1)
        if not applies or hi < lo:
            continue
        if rnd is None:
            spans.append((lo, hi))
            continue
        if rnd == "select":  # the selected blocks of the tile's query blocks, inside the term's range
            for kb in selected_keys(sel, a0, a1, n):
                klo, khi = max(kb * sel.block, lo), min(kb * sel.block + sel.block - 1, hi)
                if khi >= klo:
                    spans.append((klo, khi))
            continue
        picks, block, seed = rnd
        for qb in range(a0 // block, a1 // block + 1):
            for kb in picked_blocks(qb, picks, block, seed, n):
                klo, khi = max(kb * block, lo), min(kb * block + block - 1, hi)
                if khi >= klo:
                    spans.append((klo, khi))
    if not spans:
        return torch.empty(0, dtype=torch.int64, device=device)
    idx = torch.cat([torch.arange(lo, hi + 1, device=device) for lo, hi in _merge(spans)])
    return positions(p, idx, r, A, query=False)


def _heads(case, H: int) -> tuple:
    return case.first, (H - 1 if case.last is None else case.last)


def _walk_steps(spec: Spec, n: int, H: int, device, tile: int, heads: Optional[tuple] = None,
                sel: Optional[WalkSelection] = None) -> Iterator[tuple]:
    """Every (heads h0..h1, pass, query positions, key positions) step of the walk; `heads`: only
    those heads (first, last), `sel`: their selection."""
    A = spec.length_args(n)
    for case in spec.cases:
        h0, h1 = _heads(case, H)
        if heads is not None:
            h0, h1 = max(h0, heads[0]), min(h1, heads[1])
            if h0 > h1:
                continue
        for p in case.passes:
            for a0, a1, r, lq, lk in query_tiles(p, n, A, tile):
                keys = tile_keys(p, a0, a1, r, n, lq, lk, A, device, sel)
                if keys.numel() == 0:
                    continue
                rows = positions(p, torch.arange(a0, a1 + 1, device=device), r, A, query=True)
                pairs = p.mask(rows[:, None], keys[None, :], n, A) if sel is None else \
                    p.mask(rows[:, None], keys[None, :], n, A, sel.tensor)
                keep = torch.broadcast_to(pairs, (rows.numel(), keys.numel()))
                if keep.any():
                    yield h0, h1, rows, keys, keep


def _groups(spec: Spec, B: int, H: int, blocks) -> Iterator[tuple]:
    """(batch slice, heads or None, selection or None): the whole call at once, or with a
    selection one batch element and one selection head at a time."""
    if blocks is None:
        yield slice(None), None, None
        return
    _, block, qblock = spec.select
    Hs = blocks.shape[1]
    per = H // Hs
    for z in range(B):
        for s in range(Hs):
            t = blocks[z, s]
            yield slice(z, z + 1), (s * per, s * per + per - 1), WalkSelection(t.tolist(), t, block, qblock)


def _slots(sel: WalkSelection, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(rows, keys, k) bool: key j lies in slot s of its row's query block, counting a block listed
    twice in its first slot only (-1 slots never)."""
    listed = sel.tensor.to(torch.int64)[rows // sel.qblock]  # (rows, k)
    K = listed.shape[1]
    earlier = (listed[:, :, None] == listed[:, None, :]) & torch.ones(K, K, dtype=torch.bool,
                                                                       device=rows.device).tril(-1)
    first = (listed >= 0) & ~earlier.any(-1)
    return ((keys // sel.block)[None, :, None] == listed[:, None, :]) & first[:, None, :]


def _kv_heads(h0: int, h1: int, group: int, device) -> torch.Tensor:
    return torch.arange(h0, h1 + 1, device=device) // group


def walk_forward(spec: Spec, q, k, v, scale: float, tile: int = TILE, blocks: Optional[torch.Tensor] = None,
                 mass: bool = False):
    """(out, lse) of the pattern, exactly, visiting only the keys its closed forms allow.
    `blocks` (B, Hs, query blocks, k): the run-time selection of a pattern with `select`; with
    `mass`, (out, lse, block mass (B, H, query blocks, k)) (module doc)."""
    B, H, n, D = q.shape
    group = H // k.shape[1]
    spec.check_length(n)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros((B, H, n, D), dtype=ct, device=q.device)
    lse = torch.full((B, H, n), float("-inf"), dtype=ct, device=q.device)
    got = torch.zeros((B, H, n, blocks.shape[3]), dtype=ct, device=q.device) if mass else None
    for zs, heads, sel in _groups(spec, B, H, blocks):
        for h0, h1, rows, keys, keep in _walk_steps(spec, n, H, q.device, tile, heads, sel):
            kv = _kv_heads(h0, h1, group, q.device)
            qt = q[zs, h0:h1 + 1, rows].to(ct)
            kt = k[zs].index_select(2, keys)[:, kv].to(ct)  # (B, heads, keys, D): the tile's keys only
            vt = v[zs].index_select(2, keys)[:, kv].to(ct)
            s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
            s = s.masked_fill(~keep, float("-inf"))
            t_lse = torch.logsumexp(s, -1)  # (B, hc, rows): -inf where this tile allows a row nothing
            p = torch.exp(s - torch.where(torch.isinf(t_lse), 0.0, t_lse)[..., None])
            t_out = torch.matmul(p, vt)
            old_lse, old_out = lse[zs, h0:h1 + 1, rows], out[zs, h0:h1 + 1, rows]
            new = torch.logaddexp(old_lse, t_lse)
            safe = torch.where(torch.isinf(new), 0.0, new)
            w_old = torch.exp(old_lse - safe)[..., None]
            w_new = torch.exp(t_lse - safe)[..., None]
            out[zs, h0:h1 + 1, rows] = old_out * w_old + t_out * w_new
            lse[zs, h0:h1 + 1, rows] = new
            if got is not None:  # each slot's share of this tile, in the same running softmax
                t_mass = torch.einsum("bhrk,rks->bhrs", p, _slots(sel, rows, keys).to(ct))
                got[zs, h0:h1 + 1, rows] = got[zs, h0:h1 + 1, rows] * w_old + t_mass * w_new
    out, lse = out.to(q.dtype), lse.float() if ct != torch.float64 else lse
    if got is None:
        return out, lse
    qblock = spec.select[2]
    nqb = blocks.shape[2]
    rows_mass = torch.zeros((B, H, nqb * qblock, got.shape[-1]), dtype=ct, device=q.device)
    rows_mass[:, :, :n] = got
    return out, lse, rows_mass.view(B, H, nqb, qblock, -1).sum(3).float() if ct != torch.float64 else \
        rows_mass.view(B, H, nqb, qblock, -1).sum(3)


def walk_backward(spec: Spec, do, q, k, v, o, lse, scale: float, tile: int = TILE,
                  blocks: Optional[torch.Tensor] = None):
    """(dq, dk, dv) by the same walk: each tile's probabilities recomputed from the saved lse."""
    B, H, n, D = q.shape
    HK = k.shape[1]
    group = H // HK
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = (do.to(ct) * o.to(ct)).sum(-1)
    safe_lse = torch.where(torch.isinf(lse), float("inf"), lse.to(ct))  # exp(s - inf) = 0: empty rows
    dq = torch.zeros((B, H, n, D), dtype=ct, device=q.device)
    dk = torch.zeros((B, HK * n, D), dtype=ct, device=q.device)
    dv = torch.zeros((B, HK * n, D), dtype=ct, device=q.device)
    for zs, heads, sel in _groups(spec, B, H, blocks):
        for h0, h1, rows, keys, keep in _walk_steps(spec, n, H, q.device, tile, heads, sel):
            kv = _kv_heads(h0, h1, group, q.device)
            qt, dot = q[zs, h0:h1 + 1, rows].to(ct), do[zs, h0:h1 + 1, rows].to(ct)
            kt = k[zs].index_select(2, keys)[:, kv].to(ct)
            vt = v[zs].index_select(2, keys)[:, kv].to(ct)
            s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
            p = torch.exp(s - safe_lse[zs, h0:h1 + 1, rows, None]).masked_fill(~keep, 0.0)
            ds = p * (torch.matmul(dot, vt.transpose(-1, -2)) - delta[zs, h0:h1 + 1, rows, None])
            dq[zs, h0:h1 + 1, rows] += torch.matmul(ds, kt) * scale
            where = (kv[:, None] * n + keys[None, :]).reshape(-1)  # (heads x keys) rows of dk and dv
            Bz = qt.shape[0]
            dk[zs].index_add_(1, where, (torch.matmul(ds.transpose(-1, -2), qt) * scale).reshape(Bz, -1, D))
            dv[zs].index_add_(1, where, torch.matmul(p.transpose(-1, -2), dot).reshape(Bz, -1, D))
    return dq.to(q.dtype), dk.view(B, HK, n, D).to(k.dtype), dv.view(B, HK, n, D).to(v.dtype)
