"""Triton, or a stand-in where it is not installed.

A generated module defines its kernels with `@triton.jit` at import time.  Without Triton
(a CPU-only machine) the module must still import and run its exact CPU path, so the
decorator becomes a no-op and `HAVE_TRITON` tells the runtime to never launch a kernel.
"""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # the CPU path needs no Triton
    HAVE_TRITON = False

    class _NoTriton:
        """`triton.jit` that leaves a function as it is (it is never launched)."""

        @staticmethod
        def jit(fn=None, **options):
            return fn if fn is not None else (lambda f: f)

    triton = _NoTriton()
    tl = None
