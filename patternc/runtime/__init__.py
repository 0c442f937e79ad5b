"""The runtime library of generated modules: everything that does not depend on a pattern.

A generated module holds its pattern's constants, mask and walk functions and kernels, and
binds them here with one call:

    SPEC = runtime.Spec(...)          # the pattern as data (runtime.spec)
    _bound = runtime.bind(SPEC, "triton")
    attention, mask, mask_rows = _bound.attention, _bound.mask, _bound.mask_rows

By concern: spec (what a module hands over), validate (input checks, shared by every
backend), module (bind: the public functions), walk (the exact sparse PyTorch path), dense
(the reference backend), flex_path (FlexAttention), triton_path (launch plans and launches),
abi (the kernels' parameters), config (launch settings), launch (direct launches, parallel
first compiles), tma (descriptors), autotune, split (split walks of global rows and their
merges), tile_bodies and random_blocks (Triton functions every pattern's kernels call), jit
(Triton, or a stand-in where it is not installed).  Patterns with `select(...)` add selection
(the run-time `blocks` and their key-major inverse), selected_attention (the call with
`blocks=`, its autograd and custom ops), selected_paths (dense and flex with a selection),
select_index (`select_blocks`, the fused indexer) and select_tiles (their kernels' Triton
functions).

`patternc compile --standalone` copies these modules into the generated file, so a module
can be deployed where patternc is not installed.
"""
from __future__ import annotations

from .module import BACKENDS, Compiled, bind
from .selection import Selection
from .spec import Case, Pass, Schedule, Spec

__all__ = ["BACKENDS", "Case", "Compiled", "Pass", "Schedule", "Selection", "Spec", "bind"]
