"""What a generated module hands the runtime: its pattern, as data and small functions.

A generated module defines these objects with its own constants, mask functions, walk
functions and kernels, then calls `runtime.bind`.  Nothing here depends on a pattern:
the runtime reads only these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass(frozen=True)
class Pass:
    """One pass of a head case: an index space, its kernels and its closed-form walk."""

    space: str  # "identity" | "diag" (residue classes of m) | "keys" (kept key columns j % l >= l - c)
    walk: Callable  # (a0, a1, r, n, L, LQ, A) -> [(lo, hi, applies, random or None), ...] per term
    mask: Callable  # (i, j, n, A) -> bool tensor: this pass's pairs (its terms minus earlier passes')
    m: object = None  # diag: the modulus (int, or the name of a length-dependent argument)
    l: object = None  # keys: the period
    c: object = None  # keys: columns kept per period
    heavy_q: Optional[Callable] = None  # n -> [(a, b)]: global rows whose walks are split into chunks
    heavy_k: Optional[Callable] = None  # n -> [(a, b)]: global key columns, likewise
    fwd: object = None  # forward kernel (None: an earlier pass's forward walks this pass too)
    dq: object = None
    dkdv: object = None
    rev_fwd: bool = False  # query tiles' walks grow: launch them last-first (REV)
    rev_dq: bool = False
    tma_fwd: bool = True  # the forward's key tiles may load through TMA descriptors
    tma_dq: bool = True
    tma_dkdv: bool = True
    tma_rows: bool = True  # a query-major kernel's own rows (Q, dO) may load through TMA
    decode: object = None  # decode kernel: the newest rows against a KV cache (runtime.decode)

    def value(self, x, A: dict) -> int:
        """An argument of the space (int, or the name of a length-dependent one)."""
        return A[x] if isinstance(x, str) else x


@dataclass(frozen=True)
class Case:
    """Heads first..last (last None: every head) and their passes."""

    first: int
    last: Optional[int]
    passes: tuple


@dataclass(frozen=True)
class Schedule:
    """The Triton kernels' compile-time choices (backends/schedule.py)."""

    fwd_tiles: tuple  # (BM, BN) of the forward on the GPU
    bwd_tiles: dict  # D bucket (64, 128) -> dq and dk/dv tiles, warps and stages
    fused_dq: bool  # the dk/dv kernel adds dq atomically (no dq kernel)
    random_block: Optional[int] = None  # tiles must divide it when the pattern has random blocks
    select_blocks: Optional[tuple] = None  # (block, qblock): key tiles divide block, query tiles qblock


@dataclass(frozen=True)
class Spec:
    """A compiled pattern: everything the runtime needs to run it."""

    name: str
    source: str
    namespace: str  # unique per pattern: custom ops and caches are named by it
    num_heads: Optional[int]  # None: the same pattern for every head
    is_causal: bool  # no query attends a later key
    length_args: Callable  # n -> {name: value} of the length-dependent arguments
    check_length: Callable  # n -> None, or ValueError where the pattern is invalid at n
    mask_head: Callable  # (h, i, j, n) -> bool tensor: the whole pattern of head h
    cases: tuple = ()
    schedule: Optional[Schedule] = None  # None: no Triton kernels (reference and flex backends)
    arg_names: tuple = field(default=())  # the kernels' length-dependent argument names
    # (fixed slots, window) of a cache that holds every key the pattern can still read while
    # decoding (patternc.live_keys); None: the live keys are unbounded
    cache_layout: Optional[tuple] = None
    lengths_ok: Optional[Callable] = None  # tensor of lengths -> where _check_length passes (None: no checks)
    select: Optional[tuple] = None  # (k, block, qblock) of the pattern's select(...): calls take blocks=
    select_candidates: Optional[Callable] = None  # (a0, a1, b0, b1, n) -> may selecting key block [b0, b1]
                                                   # for query block [a0, a1] add a pair (select_blocks)
    select_index: object = None  # the Triton indexer kernel (select_blocks on the GPU)
