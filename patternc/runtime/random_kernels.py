"""`random(r, block=b, seed)` in the kernels: the hash and the picks of random_blocks.py, as
Triton functions (the constants are random_blocks' HASH_*; a test checks they agree)."""
from __future__ import annotations

from .jit import tl, triton


@triton.jit
def hash32(key, qb, t):
    """32-bit xorshift-multiply hash, computed in int64 exactly as the host does."""
    zero = tl.zeros([], dtype=tl.int64)  # promotes plain ints (interpreter loop indices) to int64 tensors
    x = (key + (qb + zero) * 0x165667B1 + (t + zero) * 0x3C6EF372) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x045D9F3B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x045D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def random_block(qb, t, nkb, picks, key):
    """The key block that query block qb picks in segment t (segments split the key blocks evenly)."""
    start = t * nkb // picks
    length = (t + 1) * nkb // picks - start
    return (start + (hash32(key, qb, t) % length)).to(tl.int32)


@triton.jit
def random_picked(qb, kb, nkb, picks, key):
    """Did query block qb pick key block kb?  Closed form: kb's segment has one pick.
    An n-dependent count can be 0 at some lengths: then nothing is picked."""
    p1 = tl.maximum(picks, 1)
    t = ((kb + 1) * p1 - 1) // nkb
    return (picks > 0) & (random_block(qb, t, nkb, p1, key) == kb)


@triton.jit
def random_mask(i, j, r, b, seed, n):
    """The kernels' mask for random(r, block=b, seed): query i's block picked key j's block."""
    nkb = (n + b - 1) // b
    picks = tl.minimum(r, nkb)
    return random_picked(i // b, j // b, nkb, picks, (seed * 0x27D4EB2F + 1) & 0xFFFFFFFF)
