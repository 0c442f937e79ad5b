"""Decoding: the newest rows of a sequence against a KV cache, on the PyTorch paths.

`decode(q, k_cache, v_cache, cache_seqlens)` gives, for each batch row b with
n = cache_seqlens[b], the last t rows of `attention(q_full, k[:, :, :n], v[:, :, :n])`: the
pattern evaluated at length n (its n-dependent arguments included), query positions
n - t .. n - 1, keys 0 .. n - 1.  For a causal pattern that is ordinary decoding.  For a
bidirectional one it is what that definition says: a new row sees the keys that exist so far
(a Longformer window's right half is cut off at n - 1), and a global row of a prefix sees
everything cached.

Two exact paths live here; the Triton kernels are the runtime's decode launcher
(decode_launch):

- `walk_decode`: the sparse walk (runtime.walk) with the new rows as its query tile: one tile
  per pass in token order, one per residue class of the new rows in a residue-class pass.  The
  tile's closed-form key ranges give the positions to gather from the cache, the pass's mask
  makes them exact, and `fold_tile` merges passes by log-sum-exp, as in `walk_forward`.
  Cost: the allowed keys of t rows.  The triton backend's path where its kernels do not run,
  and the flex backend's (FlexAttention has no decode path that reads a cache by position).
- `dense_decode`: the reference backend's: every cached key, the mask printed from the IR.

Both read `cache_seqlens` on the host (a synchronisation on CUDA); the caller has checked that
each row's length holds its new tokens and fits the cache (decode_inputs.check_lengths).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from .decode_inputs import Ring, gather_slots, slots_of
from .spec import Pass, Spec
from .walk import WalkSelection, fold_tile, positions, space_sizes, tile_keys, tile_pairs


def decode_tiles(p: Pass, n: int, t: int, A: dict) -> Iterator[tuple]:
    """(a0, a1, r, LQ, L) of the query tiles holding the new rows n - t .. n - 1 in the pass's space:
    one in token order, one per residue class that has new rows."""
    if p.space != "diag":
        lq, lk = space_sizes(p, n, 0, A)
        yield n - t, n - 1, 0, lq, lk
        return
    m = p.value(p.m, A)
    for r in sorted({x % m for x in range(n - t, n)}):
        lq, lk = space_sizes(p, n, r, A)
        yield -(-(n - t - r) // m), (n - 1 - r) // m, r, lq, lk


def _empty_state(q) -> tuple:
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (torch.zeros(q.shape, dtype=ct, device=q.device),
            torch.full(q.shape[:3], float("-inf"), dtype=ct, device=q.device))


def _finish(q, out, lse) -> tuple:
    return out.to(q.dtype), lse if lse.dtype == torch.float64 else lse.float()


def _selections(spec: Spec, blocks: Optional[torch.Tensor], b: int, n: int, t: int, H: int) -> list:
    """(first head, last head, WalkSelection or None) of batch row b: all heads at once, or with a
    run-time selection each selection head's query heads with its blocks."""
    if blocks is None:
        return [(0, H - 1, None)]
    _, block, qblock = spec.select
    need = -(-n // qblock)  # the query blocks of the pattern at length n (the new rows' are the last)
    if blocks.shape[2] < need:
        raise ValueError(f"blocks cover {blocks.shape[2]} query blocks, but row {b} holds {n} positions: its new "
                         f"tokens lie in query block {(n - 1) // qblock} (qblock={qblock})")
    Hs = blocks.shape[1]
    per = H // Hs
    return [(s * per, s * per + per - 1, WalkSelection(blocks[b, s, :need].tolist(), blocks[b, s, :need], block,
                                                       qblock)) for s in range(Hs)]


def walk_decode(spec: Spec, q, k_cache, v_cache, cache_seqlens, scale: float, page_table=None,
                ring: Optional[Ring] = None, blocks: Optional[torch.Tensor] = None) -> tuple:
    """(out, lse) of the new rows, exactly, gathering only the keys the pattern's closed forms (and
    a run-time selection's blocks) allow."""
    B, H, t, D = q.shape
    group = H // k_cache.shape[1]
    out, lse = _empty_state(q)
    ct = out.dtype
    dev = q.device
    for b, n in enumerate(cache_seqlens.tolist()):
        spec.check_length(n)
        A = spec.length_args(n)
        groups = _selections(spec, blocks, b, n, t, H)
        for case in spec.cases:
            c0, c1 = case.first, H - 1 if case.last is None else case.last
            for s0, s1, sel in groups:
                h0, h1 = max(c0, s0), min(c1, s1)
                if h0 > h1:
                    continue
                kv = torch.arange(h0, h1 + 1, device=dev) // group
                for p in case.passes:
                    for a0, a1, r, lq, lk in decode_tiles(p, n, t, A):
                        keys = tile_keys(p, a0, a1, r, n, lq, lk, A, dev, sel)
                        if keys.numel() == 0:
                            continue
                        rows = positions(p, torch.arange(a0, a1 + 1, device=dev), r, A, query=True)
                        keep = tile_pairs(p, rows, keys, n, A, sel)
                        if not keep.any():
                            continue
                        at = rows - (n - t)  # rows of q
                        slots = slots_of(keys, ring)
                        kt = gather_slots(k_cache, b, slots, page_table)[kv].to(ct)
                        vt = gather_slots(v_cache, b, slots, page_table)[kv].to(ct)
                        out[b, h0:h1 + 1, at], lse[b, h0:h1 + 1, at] = fold_tile(
                            out[b, h0:h1 + 1, at], lse[b, h0:h1 + 1, at], q[b, h0:h1 + 1, at].to(ct), kt, vt, keep,
                            scale)
    return _finish(q, out, lse)


def dense_decode(spec: Spec, q, k_cache, v_cache, cache_seqlens, scale: float, page_table=None,
                 ring: Optional[Ring] = None, blocks: Optional[torch.Tensor] = None) -> tuple:
    """(out, lse) of the new rows by the definition: every cached key, masked by the whole pattern
    (with a selection: head h asks blocks[b, h // (H / Hs)])."""
    B, H, t, D = q.shape
    group = H // k_cache.shape[1]
    out, lse = _empty_state(q)
    ct = out.dtype
    dev = q.device
    for b, n in enumerate(cache_seqlens.tolist()):
        spec.check_length(n)
        keys = torch.arange(n, device=dev)
        rows = keys[n - t:]
        sels = None if blocks is None else [x.tensor for _, _, x in _selections(spec, blocks, b, n, t, H)]
        heads = range(H) if spec.num_heads is not None or sels else range(1)
        keep = torch.stack([torch.broadcast_to(
            spec.mask_head(h, rows[:, None], keys[None, :], n, **({"sel": sels[h * len(sels) // H]} if sels else {})),
            (t, n)) for h in heads])  # (H or 1, t, n)
        slots = slots_of(keys, ring)
        kv = torch.arange(H, device=dev) // group
        kt = gather_slots(k_cache, b, slots, page_table)[kv].to(ct)
        vt = gather_slots(v_cache, b, slots, page_table)[kv].to(ct)
        out[b], lse[b] = fold_tile(out[b], lse[b], q[b].to(ct), kt, vt, keep, scale)
    return _finish(q, out, lse)
