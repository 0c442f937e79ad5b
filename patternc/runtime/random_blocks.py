"""`random(r, block=b, seed)`: the picks, in the kernels and on the host.

Key blocks are split into `picks` = min(r, #blocks) equal segments; query block qb picks one
block per segment by a 32-bit xorshift-multiply hash.  So picks are distinct and stratified,
and "did qb pick kb?" has a closed form (kb's segment has exactly one pick).  This is the
language's definition (patternc.semantics, which tests check against these constants),
computed in int64 exactly.  The kernels' side is random_kernels.py.
"""
from __future__ import annotations

MASK32 = 0xFFFFFFFF
HASH_SEED, HASH_QB, HASH_T, HASH_MUL = 0x27D4EB2F, 0x165667B1, 0x3C6EF372, 0x045D9F3B


def seed_key(seed: int) -> int:
    """The hash key of a seed (folded once, on the host)."""
    return (seed * HASH_SEED + 1) & MASK32


def _mix(x):
    x = x ^ (x >> 16)
    x = (x * HASH_MUL) & MASK32
    x = x ^ (x >> 16)
    x = (x * HASH_MUL) & MASK32
    return x ^ (x >> 16)


def random_pick(i, j, r, b, seed, n):
    """Does query i's block pick key j's block?  On int64 tensors and Python ints alike, n and r
    included (packed sequences give each position its own length): no branch on a value."""
    nkb = -(-n // b)
    picks = nkb - (nkb - r) * (nkb > r)  # min(r, nkb)
    some = picks > 0  # an n-dependent count can be 0 at some lengths: random(0) allows nothing
    picks = picks + (1 - picks) * (picks <= 0)  # 1 where there is none, so that the divisions are defined
    qb, kb = i // b, j // b
    t = ((kb + 1) * picks - 1) // nkb
    start = t * nkb // picks
    length = (t + 1) * nkb // picks - start
    return some & (kb == start + _mix((seed_key(seed) + qb * HASH_QB + t * HASH_T) & MASK32) % length)


def picked_blocks(qb: int, r: int, b: int, seed: int, n: int) -> list:
    """The key blocks that query block qb picks, in segment order."""
    nkb = -(-n // b)
    picks = min(r, nkb)
    key = seed_key(seed)
    out = []
    for t in range(max(picks, 0)):
        start = t * nkb // picks
        length = (t + 1) * nkb // picks - start
        out.append(start + _mix((key + qb * HASH_QB + t * HASH_T) & MASK32) % length)
    return out
