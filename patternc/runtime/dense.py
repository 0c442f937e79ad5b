"""Dense masked attention: the executable specification every fast path is tested against.

The whole n x n mask is built from the pattern's printed formula, scores are masked and a
safe softmax gives rows with no allowed key output 0, lse = -inf and no gradient.  Exact
(float32, or float64 for float64 inputs) and differentiable through autograd, but O(n^2) in
time and memory whatever the pattern: for tests and explanations, not long sequences.
"""
from __future__ import annotations

import torch

from .spec import Spec


def head_masks(spec: Spec, n: int, H: int, device) -> torch.Tensor:
    """(H, n, n) boolean mask (H is 1 for a pattern that is the same for every head)."""
    idx = torch.arange(n, device=device)
    i, j = idx[:, None], idx[None, :]
    return torch.stack([torch.broadcast_to(spec.mask_head(h, i, j, n), (n, n)) for h in range(H)])


def dense_attention(spec: Spec, q, k, v, scale: float, keep=None):
    """(out, lse) by the textbook formula; autograd gives the gradients.  `keep`: a (B, H or 1, n, n)
    mask to use instead of the pattern's at length n (runtime.varlen.seq_masks: packed or padded
    sequences, each its own block on the diagonal)."""
    B, H, n, D = q.shape
    HK = k.shape[1]
    group = H // HK
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    if keep is None:
        spec.check_length(n)
        keep = head_masks(spec, n, spec.num_heads or 1, q.device)[None]
    keep = keep.reshape(keep.shape[0], HK, group, n, n) if spec.num_heads is not None else \
        keep.reshape(keep.shape[0], 1, 1, n, n)
    qf = q.to(ct).reshape(B, HK, group, n, D)
    kf = k.to(ct)[:, :, None]  # (B, HK, 1, n, D): each k/v head serves `group` query heads
    vf = v.to(ct)[:, :, None]
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    empty = ~keep.any(-1, keepdim=True)
    row_max = torch.where(empty, 0.0, s.amax(-1, keepdim=True)).detach()
    p = torch.exp(s - row_max)
    denom = torch.where(empty, 1.0, p.sum(-1, keepdim=True))
    out = torch.matmul(p / denom, vf)
    lse = (row_max + torch.log(denom)).masked_fill(empty, float("-inf")).squeeze(-1)
    return out.reshape(B, H, n, D).to(q.dtype), lse.reshape(B, H, n)
