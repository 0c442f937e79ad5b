"""The exact sparse PyTorch path: the kernels' walk, one query tile at a time.

For each pass of a head case, each query tile of the pass's index space gathers the keys
that its terms' closed-form ranges allow (the module's `walk` functions, printed from the
same trees as the kernels' loop bounds), computes that block of scores, masks it with the
pass's pairs and folds it into the rows' softmax state by log-sum-exp.  Passes are disjoint
(each excludes the pairs of the ones before), so the result is exact.  Cost follows the
pattern: linear in n for windows, where the dense path is quadratic whatever the pattern.

It runs wherever torch does: the CPU, and CUDA inputs the kernels do not take (float64).
Packed documents and padded rows (runtime.varlen) are walked one sequence at a time, a host
loop over sequences whose positions are offset by each one's start.
The backward recomputes each tile's probabilities from the saved log-sum-exp and adds dk and
dv into their key rows with index_add_, in a fixed order (deterministic).

The walk also takes the query and key positions explicitly (`q_pos`, `k_pos`: sorted token
positions that q and k hold, the pattern at a length `n` of which they are a part): a context
parallel rank's queries against the key rows it holds or received.  Query tiles are then the
given positions' runs, cut into tiles, and each tile keeps the keys of its ranges that are present.

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


def index_runs(idx: torch.Tensor) -> list:
    """[(lo, hi), ...]: the runs of consecutive values of a sorted integer tensor."""
    if idx.numel() == 0:
        return []
    cut = (torch.nonzero(idx[1:] - idx[:-1] != 1).flatten() + 1).tolist()
    starts, ends = [0] + cut, cut + [idx.numel()]
    lo, hi = idx[starts].tolist(), idx[[e - 1 for e in ends]].tolist()
    return list(zip(lo, hi))


def _class_runs(p: Pass, q_pos: torch.Tensor, A: dict) -> Iterator[tuple]:
    """(r, runs of query indices of class r) for the given sorted query positions."""
    if p.space != "diag":
        yield 0, index_runs(q_pos)
        return
    m = p.value(p.m, A)
    cls = q_pos % m
    order = torch.sort(cls, stable=True).indices
    counts = torch.bincount(cls, minlength=1).tolist()
    idx = q_pos[order] // m
    start = 0
    for r, c in enumerate(counts):
        if c:
            yield r, index_runs(idx[start:start + c])
        start += c


def query_tiles(p: Pass, n: int, A: dict, tile: int, q_pos: Optional[torch.Tensor] = None) -> Iterator[tuple]:
    """(a0, a1, r, LQ, L) of every query tile of the pass, in its space's order; with q_pos (sorted
    token positions), the tiles of those positions only, cut at their gaps."""
    if q_pos is None:
        classes = [(r, None) for r in range(min(p.value(p.m, A), n))] if p.space == "diag" else [(0, None)]
    else:
        classes = list(_class_runs(p, q_pos, A))
    for r, runs in classes:
        lq, lk = space_sizes(p, n, r, A)
        for lo, hi in ([(0, lq - 1)] if runs is None else runs):
            for a0 in range(lo, hi + 1, tile):
                yield a0, min(a0 + tile - 1, hi), r, lq, lk


def tile_pairs(p: Pass, rows: torch.Tensor, keys: torch.Tensor, n: int, A: dict,
               sel: Optional[WalkSelection] = None) -> torch.Tensor:
    """(rows, keys) bool: the pass's mask on one tile (asking `sel` for a selected term)."""
    pairs = p.mask(rows[:, None], keys[None, :], n, A) if sel is None else \
        p.mask(rows[:, None], keys[None, :], n, A, sel.tensor)
    return torch.broadcast_to(pairs, (rows.numel(), keys.numel()))


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


def _present(k_pos: Optional[torch.Tensor], keys: torch.Tensor) -> tuple:
    """(keys, their indices in k_pos): the keys that k_pos holds (all of them when it is None)."""
    if k_pos is None:
        return keys, keys
    if k_pos.numel() == 0:
        return keys[:0], keys[:0]
    at = torch.searchsorted(k_pos, keys).clamp_(max=k_pos.numel() - 1)
    hit = k_pos[at] == keys
    return keys[hit], at[hit]


def _walk_steps(spec: Spec, n: int, H: int, device, tile: int, q_pos: Optional[torch.Tensor] = None,
                k_pos: Optional[torch.Tensor] = None, heads: Optional[tuple] = None,
                sel: Optional[WalkSelection] = None) -> Iterator[tuple]:
    """Every (heads h0..h1, query indices, key indices, keep) step of the walk: indices into q's and
    k's rows (token positions, or indices into q_pos and k_pos where given); keep is the tile's
    pairs, from the pass's printed mask at the token positions.  `heads`: only those heads (first,
    last); `sel`: their selection."""
    A = spec.length_args(n)
    for case in spec.cases:
        h0, h1 = _heads(case, H)
        if heads is not None:
            h0, h1 = max(h0, heads[0]), min(h1, heads[1])
            if h0 > h1:
                continue
        for p in case.passes:
            for a0, a1, r, lq, lk in query_tiles(p, n, A, tile, q_pos):
                keys, ki = _present(k_pos, tile_keys(p, a0, a1, r, n, lq, lk, A, device, sel))
                if keys.numel() == 0:
                    continue
                rows = positions(p, torch.arange(a0, a1 + 1, device=device), r, A, query=True)
                keep = tile_pairs(p, rows, keys, n, A, sel)
                live = keep.any(1)  # rows that take part (rows_mod keeps one row in r)
                if not live.all():
                    rows, keep = rows[live], keep[live]
                if rows.numel():
                    yield h0, h1, rows if q_pos is None else torch.searchsorted(q_pos, rows), ki, keep


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


def _parts(spec: Spec, B: int, H: int, n: int, spans, blocks) -> Iterator[tuple]:
    """(batch rows, first position, length, heads or None, selection or None) of each part the walk
    visits on its own: the whole call; each packed document or padded row (spans); or, with a
    selection, each batch element and selection head (blocks).  The module never passes both."""
    if blocks is not None:
        for zs, heads, sel in _groups(spec, B, H, blocks):
            yield zs, 0, n, heads, sel
        return
    for bs, start, length in _sequences(spans, n):
        yield bs, start, length, None, None


def _sequences(spans, n: int) -> tuple:
    """(batch rows, first position, length) of each sequence the walk visits: every batch row's
    whole length at once, or each packed document / padded row's span (runtime.varlen)."""
    if spans is None:
        return ((slice(None), 0, n),)
    return tuple((slice(b, b + 1), s, m) for b, s, m in spans if m > 0)


def _at(q_pos, k_pos, n, q) -> tuple:
    """(n, q_pos, k_pos on q's device): the length and positions a walk works at."""
    if q_pos is None:
        return q.shape[2], None, None
    return n, q_pos.to(q.device), k_pos.to(q.device)


def walk_forward(spec: Spec, q, k, v, scale: float, tile: int = TILE, spans=None, *, q_pos=None, k_pos=None,
                 n: Optional[int] = None, acc: bool = False, blocks: Optional[torch.Tensor] = None,
                 mass: bool = False):
    """(out, lse) of the pattern, exactly, visiting only the keys its closed forms allow.

    spans: ((batch row, start, length), ...) of packed or padded sequences, each walked as a
    sequence of its own (positions from its start); rows outside them give 0 and lse = -inf.
    q_pos and k_pos (sorted token positions of q's and k's rows, in a sequence of length n; not
    with spans): the part of the attention of those queries that falls on those keys, with its
    own lse (-inf and out 0 where a row meets none of them).  acc: out in the accumulation dtype
    (float32, or float64), for merging partial results without rounding.  blocks (B, Hs, query
    blocks, k): the run-time selection of a pattern with `select`; with `mass`, (out, lse, block
    mass (B, H, query blocks, k)) (module doc)."""
    B, H, m, D = q.shape
    group = H // k.shape[1]
    n, q_pos, k_pos = _at(q_pos, k_pos, n, q)
    if spans is None:
        spec.check_length(n)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros((B, H, m, D), dtype=ct, device=q.device)
    lse = torch.full((B, H, m), float("-inf"), dtype=ct, device=q.device)
    got = torch.zeros((B, H, m, blocks.shape[3]), dtype=ct, device=q.device) if mass else None
    for bs, start, length, heads, sel in _parts(spec, B, H, n, spans, blocks):
        for h0, h1, rows, keys, keep in _walk_steps(spec, length, H, q.device, tile, q_pos, k_pos, heads, sel):
            rows, keys = rows + start, keys + start
            kv = _kv_heads(h0, h1, group, q.device)
            qt = q[bs, h0:h1 + 1, rows].to(ct)
            kt = k[bs].index_select(2, keys)[:, kv].to(ct)  # (B, heads, keys, D): the tile's keys only
            vt = v[bs].index_select(2, keys)[:, kv].to(ct)
            old = out[bs, h0:h1 + 1, rows], lse[bs, h0:h1 + 1, rows]
            out[bs, h0:h1 + 1, rows], lse[bs, h0:h1 + 1, rows] = fold_tile(*old, qt, kt, vt, keep, scale)
            if got is not None:  # each slot's share of this tile, in the same running softmax
                new = lse[bs, h0:h1 + 1, rows]
                safe = torch.where(torch.isinf(new), 0.0, new)
                s = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale).masked_fill_(~keep, float("-inf"))
                p = torch.exp(s - safe[..., None])  # the tile's probabilities at the rows' new lse
                w_old = torch.exp(old[1] - safe)[..., None]
                t_mass = torch.einsum("bhrk,rks->bhrs", p, _slots(sel, rows, keys).to(ct))
                got[bs, h0:h1 + 1, rows] = got[bs, h0:h1 + 1, rows] * w_old + t_mass
    out, lse = (out if acc else out.to(q.dtype)), (lse.float() if ct != torch.float64 else lse)
    if got is None:
        return out, lse
    qblock = spec.select[2]
    nqb = blocks.shape[2]
    rows_mass = torch.zeros((B, H, nqb * qblock, got.shape[-1]), dtype=ct, device=q.device)
    rows_mass[:, :, :m] = got
    total = rows_mass.view(B, H, nqb, qblock, -1).sum(3)
    return out, lse, total.float() if ct != torch.float64 else total


def fold_tile(out, lse, qt, kt, vt, keep, scale: float) -> tuple:
    """(out, lse) of some rows after one more tile of keys: the tile's masked softmax, merged into
    the rows' state by log-sum-exp (rows the tile allows nothing keep their state).  Shared by the
    whole-sequence walk and the decode walk."""
    s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    t_lse = torch.logsumexp(s, -1)  # (..., rows): -inf where this tile allows a row nothing
    p = torch.exp(s - torch.where(torch.isinf(t_lse), 0.0, t_lse)[..., None])
    t_out = torch.matmul(p, vt)
    new = torch.logaddexp(lse, t_lse)
    safe = torch.where(torch.isinf(new), 0.0, new)
    w_old = torch.exp(lse - safe)[..., None]
    w_new = torch.exp(t_lse - safe)[..., None]
    return out * w_old + t_out * w_new, new


def walk_backward(spec: Spec, do, q, k, v, o, lse, scale: float, tile: int = TILE, spans=None, *, q_pos=None,
                  k_pos=None, n: Optional[int] = None, delta=None, acc: bool = False,
                  blocks: Optional[torch.Tensor] = None):
    """(dq, dk, dv) by the same walk: each tile's probabilities recomputed from the saved lse.

    spans as for walk_forward (padding rows and keys get zero gradients).  With q_pos, k_pos and
    n (as for walk_forward): the gradients of those queries' pairs with those keys, given the
    rows' final lse and delta = rowsum(do * out) (o may then be None).  acc: gradients in the
    accumulation dtype, for adding partial results without rounding.  blocks: the selection, as
    for walk_forward."""
    B, H, m, D = q.shape
    HK, nk = k.shape[1], k.shape[2]
    group = H // HK
    n, q_pos, k_pos = _at(q_pos, k_pos, n, q)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = (do.to(ct) * o.to(ct)).sum(-1) if delta is None else delta.to(ct)
    safe_lse = torch.where(torch.isinf(lse), float("inf"), lse.to(ct))  # exp(s - inf) = 0: empty rows
    dq = torch.zeros((B, H, m, D), dtype=ct, device=q.device)
    dk = torch.zeros((B, HK * nk, D), dtype=ct, device=q.device)
    dv = torch.zeros((B, HK * nk, D), dtype=ct, device=q.device)
    for bs, start, length, heads, sel in _parts(spec, B, H, n, spans, blocks):
        for h0, h1, rows, keys, keep in _walk_steps(spec, length, H, q.device, tile, q_pos, k_pos, heads, sel):
            rows, keys = rows + start, keys + start
            kv = _kv_heads(h0, h1, group, q.device)
            qt, dot = q[bs, h0:h1 + 1, rows].to(ct), do[bs, h0:h1 + 1, rows].to(ct)
            kt = k[bs].index_select(2, keys)[:, kv].to(ct)
            vt = v[bs].index_select(2, keys)[:, kv].to(ct)
            s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
            p = torch.exp(s - safe_lse[bs, h0:h1 + 1, rows, None]).masked_fill(~keep, 0.0)
            ds = p * (torch.matmul(dot, vt.transpose(-1, -2)) - delta[bs, h0:h1 + 1, rows, None])
            dq[bs, h0:h1 + 1, rows] += torch.matmul(ds, kt) * scale
            where = (kv[:, None] * nk + keys[None, :]).reshape(-1)  # (heads x keys) rows of dk and dv
            nb = qt.shape[0]
            dk[bs].index_add_(1, where, (torch.matmul(ds.transpose(-1, -2), qt) * scale).reshape(nb, -1, D))
            dv[bs].index_add_(1, where, torch.matmul(p.transpose(-1, -2), dot).reshape(nb, -1, D))
    dk, dv = dk.view(B, HK, nk, D), dv.view(B, HK, nk, D)
    if acc:
        return dq, dk, dv
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def pair_counts(spec: Spec, n: int, by_key: torch.Tensor, device=None, tile: int = TILE) -> tuple:
    """(per query row, per key column) allowed pairs of the pattern at length n, each head counted
    (a per-head pattern's cases weigh their head counts): the pairs of a row where by_key (a bool
    tensor of n rows) is False count on that row, those of a row where it is True on their key."""
    H = spec.num_heads or 1
    by_key = by_key.to(device)
    rows_w = torch.zeros(n, dtype=torch.int64, device=device)
    keys_w = torch.zeros(n, dtype=torch.int64, device=device)
    for h0, h1, rows, keys, keep in _walk_steps(spec, n, H, device, tile):
        heads = h1 - h0 + 1
        on_key = by_key[rows]
        rows_w.index_add_(0, rows, keep.sum(1) * ~on_key * heads)
        keys_w.index_add_(0, keys, keep[on_key].sum(0) * heads)
    return rows_w, keys_w
