"""Decode's inputs: their checks, and where a cached position lives.

A cache holds positions in *slots*.  A plain cache (what `decode` takes from a caller) keeps
position p in slot p.  A pattern-shaped cache (`KVCache`) keeps positions below `fixed` in
slots of their own and later ones in a ring of `window` slots, so that a bounded pattern's
cache stays at its bound however long the sequence grows (`Ring`).  A paged cache adds one
more step: slot s is row s % page_size of page page_table[b, s // page_size].

Every backend checks the same things here, so the same bad input gets the same error.  The
values of `cache_seqlens` live on the device: reading them would synchronise, which a
captured CUDA graph cannot do, so only the PyTorch paths check them (`check_lengths`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .validate import DTYPES

MAX_DECODE_T = 128  # new tokens per decode call at most: one tile holds a head's rows (decisions.md: decode-max-t)


@dataclass(frozen=True)
class Ring:
    """Positions below `fixed` in slot = position; later ones in a ring of `window` slots."""

    fixed: int
    window: int

    @property
    def slots(self) -> int:
        return self.fixed + self.window

    def slot(self, p: int) -> int:
        return p if p < self.fixed else self.fixed + (p - self.fixed) % self.window


def slots_of(pos: torch.Tensor, ring: Optional[Ring]) -> torch.Tensor:
    """The slots of positions `pos` (a tensor)."""
    if ring is None:
        return pos
    return torch.where(pos < ring.fixed, pos, ring.fixed + (pos - ring.fixed) % ring.window)


def gather_slots(cache: torch.Tensor, b: int, slots: torch.Tensor, page_table: Optional[torch.Tensor]):
    """(Hkv, len(slots), D): batch row b's cached rows at `slots`."""
    if page_table is None:
        return cache[b].index_select(1, slots)
    ps = cache.shape[2]
    pages = page_table[b].long()[slots // ps]
    return cache[pages, :, slots % ps].transpose(0, 1)  # advanced indices first: (len, Hkv, D)


def _is_int_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.int32, torch.int64)


def check_decode(q, k_cache, v_cache, cache_seqlens, page_table, num_heads: Optional[int], name: str) -> int:
    """Shapes, dtypes and devices of decode's arguments; returns how many slots the cache has."""
    for what, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{what} must have 4 dimensions, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{what} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache and v_cache must share one dtype, got {q.dtype}, {k_cache.dtype} and "
                        f"{v_cache.dtype}")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError(f"q, k_cache and v_cache must be on one device, got {q.device}, {k_cache.device} and "
                         f"{v_cache.device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    B, H, t, D = q.shape
    if B == 0 or D == 0 or H == 0:
        raise ValueError(f"q must have shape (B, Hq, t, D) with B, Hq and D >= 1, got {tuple(q.shape)}")
    if not 1 <= t <= MAX_DECODE_T:
        raise ValueError(f"q holds t = {t} new tokens per row; decode takes 1 to {MAX_DECODE_T} "
                         "(use attention() for longer prefills)")
    HK = k_cache.shape[1]
    if page_table is None:
        if k_cache.shape[0] != B or k_cache.shape[3] != D:
            raise ValueError(f"k_cache and v_cache must have shape ({B}, Hkv, L, {D}) to match q of shape "
                             f"{tuple(q.shape)}, got {tuple(k_cache.shape)}")
        capacity = k_cache.shape[2]
    else:
        if not _is_int_tensor(page_table) or page_table.dim() != 2 or page_table.shape[0] != B:
            raise ValueError(f"page_table must be an int32 tensor of shape ({B}, max_pages), got "
                             f"{_describe(page_table)}")
        if page_table.device != q.device:
            raise ValueError(f"page_table must be on q's device ({q.device}), got {page_table.device}")
        ps = k_cache.shape[2]
        if k_cache.shape[3] != D:
            raise ValueError(f"paged k_cache and v_cache must have shape (num_pages, Hkv, page_size, {D}) to match "
                             f"q of shape {tuple(q.shape)}, got {tuple(k_cache.shape)}")
        if ps < 16 or ps & (ps - 1):
            raise ValueError(f"page size (k_cache.shape[2]) must be a power of two >= 16, got {ps}")
        capacity = page_table.shape[1] * ps
    if HK == 0 or H % HK:
        raise ValueError(f"q heads ({H}) must be a positive multiple of the cache's kv heads ({HK}) for "
                         f"grouped-query attention")
    if num_heads is not None and H != num_heads:
        raise ValueError(f"pattern {name!r} defines {num_heads} heads, but q has {H} (shape {tuple(q.shape)})")
    if not _is_int_tensor(cache_seqlens) or tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens must be an int32 tensor of shape ({B},), got {_describe(cache_seqlens)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens must be on q's device ({q.device}), got {cache_seqlens.device}")
    return capacity


class DecodeChecks:
    """check_decode, once per kind of call: a step whose shapes, dtypes and devices were checked
    before is only looked up (a decode step's host time is the budget: decisions.md: decode-host)."""

    def __init__(self, num_heads: Optional[int], name: str):
        self.num_heads, self.name = num_heads, name
        self.seen: dict = {}

    def __call__(self, q, k_cache, v_cache, cache_seqlens, page_table) -> int:
        try:
            key = (q.shape, k_cache.shape, v_cache.shape, cache_seqlens.shape, q.dtype, k_cache.dtype, v_cache.dtype,
                   cache_seqlens.dtype, q.device, k_cache.device, v_cache.device, cache_seqlens.device,
                   None if page_table is None else (page_table.shape, page_table.dtype, page_table.device))
        except AttributeError:  # not tensors: check_decode says which
            key = None
        capacity = self.seen.get(key)
        if capacity is None:
            capacity = check_decode(q, k_cache, v_cache, cache_seqlens, page_table, self.num_heads, self.name)
            if key is not None:  # (check_decode passed: they are tensors)
                if len(self.seen) > 256:
                    self.seen.clear()
                self.seen[key] = capacity
        return capacity


def check_decode_blocks(select: Optional[tuple], blocks, q, k_cache, capacity: int, name: str):
    """A selection for decode (a pattern with select(k, block=b, qblock=qb)): an int32 tensor
    (B, Hs, query blocks, k) with Hs in (1, Hkv, Hq), or a Selection, covering the query blocks of
    every row's new tokens; entries -1 or a key block of the cache.  Returns the tensor."""
    if select is None:
        if blocks is not None:
            raise ValueError(f"pattern {name!r} has no select(...): blocks= is not taken")
        return None
    K, block, qblock = select
    if blocks is None:
        raise ValueError(f"pattern {name!r} has select({K}, block={block}, qblock={qblock}): decode needs blocks= "
                         "(an int32 tensor (B, Hs, query blocks, k) or a Selection), the selection of the query "
                         "blocks the new tokens fall in")
    t = getattr(blocks, "blocks", blocks)  # a Selection holds its tensor
    B, Hq = q.shape[:2]
    Hkv = k_cache.shape[1]
    heads = tuple(dict.fromkeys((1, Hkv, Hq)))
    want = f"an int32 tensor of shape ({B}, Hs, query blocks, {K}) with Hs in {heads}"
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
        raise TypeError(f"blocks must be {want}, got {_describe(t)}")
    if t.device != q.device:
        raise ValueError(f"blocks must be on q's device ({q.device}), got {t.device}")
    if t.dim() != 4 or t.shape[0] != B or t.shape[1] not in heads or t.shape[2] == 0 or t.shape[3] != K:
        raise ValueError(f"blocks must be {want}, got shape {tuple(t.shape)}")
    nkb = -(-capacity // block)
    bad = ((t < -1) | (t >= nkb)).nonzero()  # (decode with a selection walks on the host: no kernel to keep async)
    if bad.shape[0]:
        z, h, qb, s = bad[0].tolist()
        raise ValueError(f"blocks entries must be -1 (an empty slot) or a key block 0..{nkb - 1} of the cache "
                         f"({capacity} positions, block={block}); got {int(t[z, h, qb, s])} at [{z}, {h}, {qb}, {s}]")
    return t


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} of shape {tuple(t.shape)}"
    return type(t).__name__


def check_lengths(ns: list, t: int, capacity: int, ring: Optional[Ring]) -> None:
    """Each row's length holds its t new tokens and fits the cache (a ring holds any length)."""
    for b, n in enumerate(ns):
        if n < t:
            raise ValueError(f"cache_seqlens[{b}] = {n} is less than t = {t}: the cache must already hold the "
                             "new tokens (their positions are cache_seqlens - t ... cache_seqlens - 1)")
        if ring is None and n > capacity:
            raise ValueError(f"cache_seqlens[{b}] = {n} is more than the cache holds ({capacity} positions)")
