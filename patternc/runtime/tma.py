"""TMA descriptors: bulk tile loads by the tensor-memory accelerator (Hopper and later).

A kernel loads through a descriptor where its tile's rows are contiguous and the tensor's
layout is 16-byte aligned; elsewhere it uses pointer loads, which take any strides.
Descriptors are checked once per layout and rebuilt from the checked fields on later calls
(about 1 us instead of 6).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .jit import HAVE_TRITON

if HAVE_TRITON:
    from triton.tools.tensor_descriptor import TensorDescriptor

_HOPPER: dict = {}  # CUDA device index -> has the tensor-memory accelerator (compute capability >= 9)
_DESC_FIELDS: dict = {}  # (shape, strides, dtype, rows, BD, m) -> a checked descriptor's fields, or None


def tma_on(device: torch.device) -> bool:
    """Whether kernels on this device load through TMA unless a tensor's layout forbids it:
    not with PATTERNC_TMA=0, on CUDA only from Hopper on; the CPU interpreter emulates it."""
    if os.environ.get("PATTERNC_TMA", "1") == "0":
        return False
    if device.type != "cuda":
        return True
    if device.index not in _HOPPER:
        _HOPPER[device.index] = torch.cuda.get_device_capability(device)[0] >= 9
    return _HOPPER[device.index]


def tma_desc(t: torch.Tensor, rows: int, BD: int, on: Optional[bool] = None, m: Optional[int] = None):
    """A descriptor for blocks of `rows` x BD elements of t (B, H, n, D), or None where the kernels
    must use pointer loads: PATTERNC_TMA=0, a GPU before Hopper, or a layout that is not 16-byte
    aligned.  With `m`: for a residue-class pass, t seen as (B, H, n / m, m, D), blocks of `rows`
    positions of one class; only where m divides n (otherwise a class's last rows would lie past
    the view)."""
    if not (tma_on(t.device) if on is None else on) or t.stride(-1) != 1 or t.data_ptr() % 16:
        return None
    if m is not None and (m <= 0 or t.shape[2] % m):
        return None
    key = (t.shape, t.stride(), t.dtype, rows, BD, m)
    fields = _DESC_FIELDS.get(key, False)
    if fields is False:  # first time for this layout: check it, and keep a validated descriptor's fields
        fields = None
        (B, H, n, D), (sb, sh, sn, _) = t.shape, t.stride()
        if m is None:
            shape, outer, block = [B, H, n, D], [sb, sh, sn], [1, 1, rows, BD]
        else:
            shape, outer, block = [B, H, n // m, m, D], [sb, sh, m * sn, sn], [1, 1, rows, 1, BD]
        strides, inner = [], D
        for size, stride in reversed(list(zip(shape[:-1], outer))):
            stride = inner if size == 1 else stride  # never stepped over: any aligned value will do
            if stride <= 0 or (stride * t.element_size()) % 16:
                break
            strides.insert(0, stride)
            inner = stride * size
        else:
            fields = dict(vars(TensorDescriptor(t, shape, strides + [1], block)))
            fields["base"] = None  # keep no tensor alive
        if len(_DESC_FIELDS) > 1024:
            _DESC_FIELDS.clear()
        _DESC_FIELDS[key] = fields
    if fields is None:
        return None
    d = object.__new__(TensorDescriptor)  # the checked fields again, on this tensor
    d.__dict__.update(fields)
    d.base = t
    return d


def tma_pair(used: bool, a: torch.Tensor, b: torch.Tensor, rows: int, BD: int, m: Optional[int] = None) -> tuple:
    """Descriptors for the two tensors a kernel streams and the kernel's TMA setting: (None, None,
    False) for pointer loads (each launch with descriptors costs host time to encode them);
    TMA = 2 for residue classes of modulus m (see tma_desc)."""
    if not used:
        return None, None, False
    da = tma_desc(a, rows, BD, True, m)  # callers pass used=False when TMA is off
    db = tma_desc(b, rows, BD, True, m) if da is not None else None
    return (da, db, True if m is None else 2) if db is not None else (None, None, False)
