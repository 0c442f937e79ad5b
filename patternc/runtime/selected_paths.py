"""Dense and FlexAttention computations of a pattern with `select(...)`, for its run-time selection.

The reference backend's dense masked attention, with one mask per batch element and head (the
pattern's printed mask, asked with that head's selection), and the block mass from the dense
probabilities: the executable specification the walk and the kernels are tested against.  The
flex backend builds a BlockMask per call from the selection (a selection changes every step, so
there is nothing to cache).
"""
from __future__ import annotations

import torch

from .flex_path import flex_call, require_flex
from .spec import Spec


def selected_masks(spec: Spec, n: int, H: int, blocks: torch.Tensor) -> torch.Tensor:
    """(B, H, n, n) boolean masks: head h of batch element z asked with blocks[z, h // (H / Hs)]."""
    B, Hs = blocks.shape[:2]
    per = H // Hs
    idx = torch.arange(n, device=blocks.device)
    i, j = idx[:, None], idx[None, :]
    return torch.stack([torch.stack([torch.broadcast_to(spec.mask_head(h, i, j, n, sel=blocks[z, h // per]), (n, n))
                                     for h in range(H)]) for z in range(B)])


def first_slots(blocks: torch.Tensor) -> torch.Tensor:
    """(..., k) bool: a slot that holds a key block listed in no earlier slot of its row."""
    K = blocks.shape[-1]
    earlier = (blocks[..., :, None] == blocks[..., None, :]) & torch.ones(K, K, dtype=torch.bool,
                                                                          device=blocks.device).tril(-1)
    return (blocks >= 0) & ~earlier.any(-1)


def block_mass(p: torch.Tensor, blocks: torch.Tensor, block: int, qblock: int) -> torch.Tensor:
    """(B, H, query blocks, k): the probability p (B, H, n, n) that each listed key block received,
    summed over its query block's rows; 0 in empty slots and in repeats of a block."""
    B, H, n, _ = p.shape
    Hs, nqb, K = blocks.shape[1:]
    nkb = -(-n // block)
    padded = p.new_zeros((B, H, nqb * qblock, nkb * block))
    padded[:, :, :n, :n] = p
    per_block = padded.view(B, H, nqb, qblock, nkb, block).sum((3, 5))  # (B, H, nqb, nkb)
    listed = blocks.to(torch.int64).repeat_interleave(H // Hs, 1)  # (B, H, nqb, k)
    got = per_block.gather(3, listed.clamp(0, nkb - 1))
    return torch.where(first_slots(listed), got, torch.zeros((), dtype=p.dtype, device=p.device))


def dense_selected(spec: Spec, q, k, v, scale: float, blocks: torch.Tensor, mass: bool):
    """(out, lse, block mass or None) by the textbook formula with the selection's masks;
    autograd gives the gradients (none for the selection)."""
    B, H, n, D = q.shape
    group = H // k.shape[1]
    spec.check_length(n)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    keep = selected_masks(spec, n, H, blocks)
    qf = q.to(ct)
    kf = k.to(ct).repeat_interleave(group, 1)
    vf = v.to(ct).repeat_interleave(group, 1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    empty = ~keep.any(-1, keepdim=True)
    row_max = torch.where(empty, 0.0, s.amax(-1, keepdim=True)).detach()
    e = torch.exp(s - row_max)
    denom = torch.where(empty, 1.0, e.sum(-1, keepdim=True))
    p = e / denom
    out = torch.matmul(p, vf)
    lse = (row_max + torch.log(denom)).masked_fill(empty, float("-inf")).squeeze(-1)
    got = block_mass(p.detach(), blocks, spec.select[1], spec.select[2]) if mass else None
    return out.to(q.dtype), lse, got


def flex_selected(make_mask_mod, q, k, v, scale: float, blocks: torch.Tensor):
    """(out, lse) by FlexAttention with a BlockMask built for this selection; rows with no allowed
    key give output 0 and lse = -inf, as in every backend."""
    require_flex()
    from torch.nn.attention.flex_attention import create_block_mask

    B, H, n, _ = q.shape
    mod = make_mask_mod(n, blocks, H // blocks.shape[1])
    bm = create_block_mask(mod, B=B, H=H, Q_LEN=n, KV_LEN=n, device=q.device)
    out, lse = flex_call(q, k, v, bm, float(scale), H != k.shape[1])
    empty = ~torch.isfinite(lse)  # a row with no allowed key
    out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
    lse = torch.where(empty, torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
    return out, lse
