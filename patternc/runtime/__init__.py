"""The runtime library of generated modules: everything that does not depend on a pattern.

A generated module holds its pattern's constants, mask and walk functions and kernels, and
binds them here with one call:

    SPEC = Spec(...)                  # the pattern as data (runtime.spec)
    _bound = bind(SPEC, "triton")
    attention, mask, mask_rows = _bound.attention, _bound.mask, _bound.mask_rows

By concern: spec (what a module hands over), validate (input checks, shared by every
backend), module (bind: the public functions), walk (the exact sparse PyTorch path), dense
(the reference backend), flex_path (FlexAttention), triton_path (launch plans and launches),
abi (the kernels' parameters), config (launch settings), launch (direct launches, parallel
first compiles), tma (descriptors), autotune, split (split walks of global rows and their
merges), tile_bodies and random_kernels (Triton functions every pattern's kernels call),
random_blocks (the random primitive's picks on the host), jit (Triton, or a stand-in where it
is not installed).  Patterns with `select(...)` add selection (the run-time `blocks` and their
key-major inverse), selected_attention (the call with `blocks=`, its autograd and custom ops),
selected_paths (dense and flex with a selection), select_index (`select_blocks`, the fused
indexer) and select_tiles (their kernels' Triton functions).

`bind` and the spec classes are imported on first use: the code generator reads `abi` and
`random_blocks` without importing torch (`patternc compile` never does).
`patternc compile --standalone` copies these modules into the generated file, so a module
can be deployed where patternc is not installed.
"""
from __future__ import annotations

__all__ = ["BACKENDS", "Case", "Compiled", "Pass", "Schedule", "Selection", "Spec", "bind"]


def __getattr__(name: str):
    if name in ("BACKENDS", "Compiled", "bind"):
        from . import module
        return getattr(module, name)
    if name in ("Case", "Pass", "Schedule", "Spec"):
        from . import spec
        return getattr(spec, name)
    if name == "Selection":
        from . import selection
        return selection.Selection
    raise AttributeError(f"module 'patternc.runtime' has no attribute {name!r}")
