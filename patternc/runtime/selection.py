"""Run-time block selection: the `blocks` input of a pattern with `select(k, block=b, qblock=qb)`.

`blocks` is an int32 tensor (B, Hs, ceil(n / qb), k): for each batch element, selection head and
query block, the k key blocks its queries may attend, -1 for an empty slot; a block listed twice
counts once.  Hs is 1 (every head shares it), Hkv (shared within a GQA group, as NSA does) or Hq;
query head h reads selection head h // (Hq / Hs).

A `Selection` holds such a tensor and what the backward derives from it once: the key-major
inverse (key block -> the query blocks that selected it), which the dk/dv kernel walks without
atomics.  Every layer handed the same Selection reuses it: the indexer and the inversion run once
for a group of layers (GLM-5.2's IndexShare).  The inversion is a sort on the tensor's device,
O(B * Hs * n/qb * k), never an (n/b) x (n/qb) table.

Checks are one clear error per bad input.  On CUDA the range of the entries is checked by
`torch._assert_async` (no host synchronisation: a violation is reported at a later CUDA call),
and a Selection checks its tensor once per length.
"""
from __future__ import annotations

from typing import Optional

import torch


class Selection:
    """A run-time block selection, shared by every layer that is handed it.

    blocks: int32 (B, Hs, ceil(n / qblock), k), -1 for an empty slot.  The selection gets no
    gradient: an indexer learns from `attention(..., return_block_mass=True)` instead."""

    def __init__(self, blocks: torch.Tensor):
        if not isinstance(blocks, torch.Tensor):
            raise TypeError(f"Selection(blocks): blocks must be an int32 torch.Tensor, got {type(blocks).__name__}")
        if blocks.dtype != torch.int32:
            raise TypeError(f"Selection(blocks): blocks must be int32, got {blocks.dtype}")
        if blocks.dim() != 4:
            raise ValueError(f"Selection(blocks): blocks must have 4 dimensions (B, Hs, query blocks, k), "
                             f"got shape {tuple(blocks.shape)}")
        self.blocks = blocks
        self.inverse_builds = 0  # how often the key-major inverse was built (once per key-block count)
        self._inverses: dict = {}
        self._checked: set = set()

    def __repr__(self) -> str:
        B, Hs, nqb, k = self.blocks.shape
        return f"Selection(B={B}, Hs={Hs}, query_blocks={nqb}, k={k}, device={self.blocks.device})"

    def inverse(self, nkb: int) -> tuple:
        """(offsets, query_blocks), built once: the query blocks that selected key block kb of
        selection row g = z * Hs + hs are query_blocks[offsets[g * nkb + kb] : offsets[g * nkb + kb + 1]],
        in increasing order, each once.  Both int32, on the tensor's device."""
        got = self._inverses.get(nkb)
        if got is None:
            got = selection_inverse(self.blocks, nkb)
            self._inverses[nkb] = got
            self.inverse_builds += 1
        return got

    def checked(self, key: tuple) -> bool:
        """Whether this selection was already checked for `key` (then: remember it)."""
        seen = key in self._checked
        self._checked.add(key)
        return seen


def selection_inverse(blocks: torch.Tensor, nkb: int) -> tuple:
    """The key-major inverse of `blocks` (see Selection.inverse): one sort of the (row, key block,
    query block) triples, duplicates and empty slots dropped, and a search for each key block's
    start.  No host synchronisation: unused entries past the last offset are never read."""
    B, Hs, nqb, k = blocks.shape
    G = B * Hs
    device = blocks.device
    srt = blocks.reshape(G, nqb, k).to(torch.int64).sort(-1).values
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    valid = (srt >= 0) & (srt < nkb) & ~dup
    row = torch.arange(G, device=device)[:, None, None]
    qb = torch.arange(nqb, device=device)[None, :, None]
    end = G * nkb * nqb  # past every real key: empty slots sort last
    code = torch.where(valid, (row * nkb + srt) * nqb + qb, end).flatten().sort().values
    starts = torch.arange(G * nkb + 1, device=device) * nqb
    offsets = torch.searchsorted(code, starts).to(torch.int32)
    return offsets, (code % nqb).to(torch.int32)


def check_blocks(blocks, q: torch.Tensor, k: torch.Tensor, select: tuple, name: str) -> Selection:
    """`blocks` (a tensor or a Selection) checked against q (B, Hq, n, D), k (B, Hkv, n, D) and the
    pattern's (k, block, qblock); the Selection to use.  One clear error per bad input."""
    K, block, qblock = select
    B, Hq, n, _ = q.shape
    Hkv = k.shape[1]
    nqb, nkb = -(-n // qblock), -(-n // block)
    sel = blocks if isinstance(blocks, Selection) else None
    t = sel.blocks if sel is not None else blocks
    want = f"an int32 tensor of shape ({B}, Hs, {nqb}, {K}) with Hs in {_heads_text(Hq, Hkv)}, or a Selection"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"blocks must be {want}, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"blocks must be int32 (pattern {name!r}: {want}), got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"blocks must be on q's device ({q.device}), got {t.device}")
    Hs_ok = t.dim() == 4 and t.shape[1] in (1, Hkv, Hq)
    if t.dim() != 4 or t.shape[0] != B or t.shape[2] != nqb or t.shape[3] != K or not Hs_ok:
        raise ValueError(f"blocks must have shape ({B}, Hs, {nqb}, {K}) with Hs in {_heads_text(Hq, Hkv)} "
                         f"(batch, selection heads, ceil(n / qblock) = ceil({n} / {qblock}) query blocks, k), "
                         f"got {tuple(t.shape)}")
    if sel is None:
        sel = Selection(t)
    if not sel.checked((n, block, str(q.device))):
        _check_range(t, nkb, n, block)
    return sel


def _heads_text(Hq: int, Hkv: int) -> str:
    return "(" + ", ".join(str(h) for h in dict.fromkeys((1, Hkv, Hq))) + ")"


def _check_range(t: torch.Tensor, nkb: int, n: int, block: int) -> None:
    """Every entry -1 or a key block 0 .. nkb-1: exactly on the CPU, asynchronously on CUDA."""
    what = f"blocks entries must be -1 (an empty slot) or a key block 0..{nkb - 1} (n={n}, block={block})"
    if t.numel() == 0:
        return
    if t.is_cuda:
        torch._assert_async(((t >= -1) & (t < nkb)).all(), what)
        return
    bad = ((t < -1) | (t >= nkb)).nonzero()
    if bad.shape[0]:
        z, h, qb, s = bad[0].tolist()
        raise ValueError(f"{what}; got {int(t[z, h, qb, s])} at [{z}, {h}, {qb}, {s}]")


def select_pairs(i, j, sel: Optional[torch.Tensor], qblock: int, block: int):
    """The `select` atom on the host: does `sel` (one batch element and head, (query blocks, k))
    list key block j // block for query block i // qblock?  i and j broadcast."""
    if sel is None:
        raise ValueError("this pattern has select(...): its pairs depend on the run-time selection; "
                         "pass blocks= (attention) or sel= (the mask functions)")
    qb = i // qblock
    inside = (qb >= 0) & (qb < sel.shape[0])
    rows = sel.to(torch.int64)[qb * inside]
    return (rows == (j // block)[..., None]).any(-1) & inside & (j >= 0)
