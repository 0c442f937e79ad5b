"""Triton functions of the document-aware kernels: a program's sequence, and the integer
arithmetic of its own length-dependent arguments.

Under packing (DOCS set) each program reads its sequence's length n on the device and computes
the pattern's n-dependent arguments from it (printed by patternc.intexpr.to_triton), with
Python's integer semantics: floor division and a remainder with the divisor's sign (Triton's
`//` and `%` truncate, as in C), and an exact integer square root.
"""
from __future__ import annotations

from .jit import tl, triton


@triton.jit
def seq_span(SEQ, SEQ_LEN, z, DOCS: tl.constexpr):
    """(first row, length, batch row) of the sequence of program row z: document z of batch row 0
    (DOCS = 1, SEQ = cu_seqlens), or batch row z's sequence (DOCS = 2, SEQ = starts, SEQ_LEN)."""
    row0 = tl.load(SEQ + z)
    if DOCS == 1:
        length = tl.load(SEQ + z + 1) - row0
        z = z * 0
    else:
        length = tl.load(SEQ_LEN + z)
    return row0, length, z


@triton.jit
def floor_div(a, b):
    """a // b rounded down, as Python does (C-style division truncates towards zero)."""
    q = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)


@triton.jit
def floor_mod(a, b):
    """a % b with the sign of b, as Python does."""
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def int_sqrt(x):
    """floor(sqrt(x)) of a non-negative 64-bit integer: the float64 root, corrected by one."""
    r = tl.sqrt(tl.maximum(x, 0).to(tl.float64)).to(tl.int64)
    r = tl.where(r * r > x, r - 1, r)
    return tl.where((r + 1) * (r + 1) <= x, r + 1, r)


@triton.jit
def as_i32(x):
    """A length-dependent argument as the kernels' int32 (clamped: beyond +-2^31 every pattern
    argument means the same as at the bound, since positions are below 2^31)."""
    return tl.minimum(tl.maximum(x, -2147483647), 2147483647).to(tl.int32)
