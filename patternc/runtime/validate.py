"""Input checks shared by every backend, so the same bad input gets the same one clear error."""
from __future__ import annotations

import math
from typing import Optional

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_list() -> str:
    names = [str(d).replace("torch.", "") for d in DTYPES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_qkv(q, k, v, num_heads: Optional[int], name: str) -> None:
    """q (B, Hq, n, D) and k, v (B, Hkv, n, D) with Hq a multiple of Hkv."""
    for what, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of shape (B, H, n, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{what} must have 4 dimensions (B, H, n, D), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{what} must be {_dtype_list()}, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    B, H, n, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, Hkv, n, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[2] != n or k.shape[3] != D:
        raise ValueError(f"k and v must have shape ({B}, Hkv, {n}, {D}) to match q of shape {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if n == 0:
        raise ValueError(f"sequence length n must be >= 1, got 0 (q has shape {tuple(q.shape)})")
    if B == 0 or D == 0:
        raise ValueError(f"batch size and head dim must be >= 1, got q of shape {tuple(q.shape)}")
    if H == 0 or k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"q heads ({H}) must be a positive multiple of k/v heads ({k.shape[1]}) for grouped-query "
                         f"attention: q is {tuple(q.shape)}, k and v are {tuple(k.shape)}")
    if num_heads is not None and H != num_heads:
        raise ValueError(f"pattern {name!r} defines {num_heads} heads, but q has {H} (shape {tuple(q.shape)})")


def check_scale(scale, D: int) -> float:
    """The softmax scale as a float: 1 / sqrt(D) by default; a finite real number otherwise."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, (str, bytes, bool, complex)) or not hasattr(scale, "__float__"):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    try:
        scale = float(scale)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}") from None
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def check_length(n, check: callable) -> int:
    """A sequence length: an int >= 1 at which the pattern is valid."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = n.__index__()
    check(n)
    return n
