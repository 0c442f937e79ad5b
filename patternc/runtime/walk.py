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
"""
from __future__ import annotations

from typing import Iterator

import torch

from .random_blocks import picked_blocks
from .spec import Pass, Spec

TILE = 64  # query rows per step: big enough for matrix products to dominate Python's per-tile cost


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


def tile_keys(p: Pass, a0: int, a1: int, r: int, n: int, lq: int, lk: int, A: dict, device) -> torch.Tensor:
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


def _walk_steps(spec: Spec, n: int, H: int, device, tile: int) -> Iterator[tuple]:
    """Every (heads h0..h1, pass, query positions, key positions) step of the walk."""
    A = spec.length_args(n)
    for case in spec.cases:
        h0, h1 = _heads(case, H)
        for p in case.passes:
            for a0, a1, r, lq, lk in query_tiles(p, n, A, tile):
                keys = tile_keys(p, a0, a1, r, n, lq, lk, A, device)
                if keys.numel() == 0:
                    continue
                rows = positions(p, torch.arange(a0, a1 + 1, device=device), r, A, query=True)
                keep = torch.broadcast_to(p.mask(rows[:, None], keys[None, :], n, A), (rows.numel(), keys.numel()))
                live = keep.any(1)  # rows that take part (rows_mod keeps one row in r)
                if not live.all():
                    rows, keep = rows[live], keep[live]
                if rows.numel():
                    yield h0, h1, rows, keys, keep


def _kv_heads(h0: int, h1: int, group: int, device) -> torch.Tensor:
    return torch.arange(h0, h1 + 1, device=device) // group


def _sequences(spans, n: int) -> tuple:
    """(batch rows, first position, length) of each sequence the walk visits: every batch row's
    whole length at once, or each packed document / padded row's span (runtime.varlen)."""
    if spans is None:
        return ((slice(None), 0, n),)
    return tuple((slice(b, b + 1), s, m) for b, s, m in spans if m > 0)


def walk_forward(spec: Spec, q, k, v, scale: float, tile: int = TILE, spans=None):
    """(out, lse) of the pattern, exactly, visiting only the keys its closed forms allow.  `spans`:
    ((batch row, start, length), ...) of packed or padded sequences, each walked as a sequence of
    its own (positions from its start); rows outside them give 0 and lse = -inf."""
    B, H, n, D = q.shape
    group = H // k.shape[1]
    if spans is None:
        spec.check_length(n)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros((B, H, n, D), dtype=ct, device=q.device)
    lse = torch.full((B, H, n), float("-inf"), dtype=ct, device=q.device)
    for bs, start, length in _sequences(spans, n):
        for h0, h1, rows, keys, keep in _walk_steps(spec, length, H, q.device, tile):
            rows, keys = rows + start, keys + start
            kv = _kv_heads(h0, h1, group, q.device)
            qt = q[bs, h0:h1 + 1, rows].to(ct)
            kt = k[bs].index_select(2, keys)[:, kv].to(ct)  # (B, heads, keys, D): the tile's keys only
            vt = v[bs].index_select(2, keys)[:, kv].to(ct)
            out[bs, h0:h1 + 1, rows], lse[bs, h0:h1 + 1, rows] = fold_tile(
                out[bs, h0:h1 + 1, rows], lse[bs, h0:h1 + 1, rows], qt, kt, vt, keep, scale)
    return out.to(q.dtype), lse.float() if ct != torch.float64 else lse


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


def walk_backward(spec: Spec, do, q, k, v, o, lse, scale: float, tile: int = TILE, spans=None):
    """(dq, dk, dv) by the same walk: each tile's probabilities recomputed from the saved lse;
    `spans` as for walk_forward (padding rows and keys get zero gradients)."""
    B, H, n, D = q.shape
    HK = k.shape[1]
    group = H // HK
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = (do.to(ct) * o.to(ct)).sum(-1)
    safe_lse = torch.where(torch.isinf(lse), float("inf"), lse.to(ct))  # exp(s - inf) = 0: empty rows
    dq = torch.zeros((B, H, n, D), dtype=ct, device=q.device)
    dk = torch.zeros((B, HK * n, D), dtype=ct, device=q.device)
    dv = torch.zeros((B, HK * n, D), dtype=ct, device=q.device)
    for bs, start, length in _sequences(spans, n):
        for h0, h1, rows, keys, keep in _walk_steps(spec, length, H, q.device, tile):
            rows, keys = rows + start, keys + start
            kv = _kv_heads(h0, h1, group, q.device)
            qt, dot = q[bs, h0:h1 + 1, rows].to(ct), do[bs, h0:h1 + 1, rows].to(ct)
            kt = k[bs].index_select(2, keys)[:, kv].to(ct)
            vt = v[bs].index_select(2, keys)[:, kv].to(ct)
            s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
            p = torch.exp(s - safe_lse[bs, h0:h1 + 1, rows, None]).masked_fill(~keep, 0.0)
            ds = p * (torch.matmul(dot, vt.transpose(-1, -2)) - delta[bs, h0:h1 + 1, rows, None])
            dq[bs, h0:h1 + 1, rows] += torch.matmul(ds, kt) * scale
            where = (kv[:, None] * n + keys[None, :]).reshape(-1)  # (heads x keys) rows of dk and dv
            nb = qt.shape[0]
            dk[bs].index_add_(1, where, (torch.matmul(ds.transpose(-1, -2), qt) * scale).reshape(nb, -1, D))
            dv[bs].index_add_(1, where, torch.matmul(p.transpose(-1, -2), dot).reshape(nb, -1, D))
    return dq.to(q.dtype), dk.view(B, HK, n, D).to(k.dtype), dv.view(B, HK, n, D).to(v.dtype)
