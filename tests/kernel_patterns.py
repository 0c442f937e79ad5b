"""Patterns and helpers shared by the interpreter tests of the Triton backend and its runtime."""
from __future__ import annotations

import torch

import patternc

from kernel_check import TOL

# One entry per primitive and operator, plus the shapes of every example.
PATTERNS = {
    "all": "all",
    "causal": "causal",
    "local": "local(5)",
    "dilated": "local(4, dilation=3)",
    "band": "band(-2, 9)",
    "band_lo": "band(lo=3)",
    "global": "global(3)",
    "global_at": "local(2) | global(at=[0, 17, 40])",
    "sink": "causal & (sink(4) | local(9))",
    "queries_keys": "causal | (queries(0, 20) & keys(0, 20))",
    "stride": "stride(7)",
    "strided": "causal & (local(7) | stride(8))",
    "strided_sqrt": "causal & (local(isqrt(n)) | stride(isqrt(n)))",
    "block": "block(24)",
    "fixed": "causal & (block(16) | summary(16, 3))",
    "summary": "summary(10, 2)",
    "random": "random(2, block=16, seed=3)",
    "bigbird": "local(16) | global(16) | random(2, block=16, seed=1)",
    "longformer": "local(12) | global(4)",
    "difference": "local(10) - stride(3)",
    "intersection": "local(20) & block(32)",
    "none": "none",
    "empty_rows": "queries(5, 29)",
    "heads": "heads { 0..0: local(4), 1..1: causal & stride(5) }",
    # wide enough that the 16-wide interpreter tiles are often full, so the unmasked path runs too
    "wide_local": "local(40)",
    "wide_causal_band": "causal & local(33) | sink(3)",
    "wide_band": "band(-5, 50)",
    "wide_block_fixed": "causal & fixed(48, 20)",
    "wide_stride": "causal & stride(3)",
    "wide_dilated": "local(20, dilation=2)",
    "wide_global_rows": "queries(0, 40) | local(20)",
    # LongNet's row subsampling: as a mask filter in token order, and as one residue class of a
    # strided pass (the other classes are skipped whole)
    "rows_mod": "local(6) & rows_mod(3, 1)",
    "rows_mod_class": "block(24) & stride(3) & rows_mod(3, 2)",
    "longnet_heads": "heads { 0..0: block(8) | (block(16) & stride(2) & rows_mod(2, 0)), "
                     "1..1: block(8) | (block(16) & stride(2) & rows_mod(2, 1)) }",
    "wide_rows_mod": "local(40) & rows_mod(40, 7) | causal & local(3)",
}


def fresh(src: str, backend: str = "triton"):
    """(pattern, a newly loaded module): a module of its own, so monkeypatched state stays in the test."""
    p = patternc.parse(f"pattern x = {src}")
    return p, patternc.load(p, backend=backend)


_cache: dict = {}


def module(src: str):
    """(pattern, module), loaded once per source for the whole session."""
    if src not in _cache:
        _cache[src] = fresh(src)
    return _cache[src]


def assert_close(res, dtype=torch.float32):
    tol = TOL[dtype]
    assert res.lse_ok, "lse differs (or is NaN, or -inf in the wrong rows)"
    assert res.worst() <= tol, res


def poisoned(*shape, **kw):
    """An allocator that fills with NaN: outputs a kernel forgot to write fail the comparison."""
    shape = shape[0] if isinstance(shape[0], (tuple, torch.Size)) else shape
    return torch.full(tuple(shape), float("nan"), **kw)


class LaunchSpy:
    """Stands in for a pattern's launcher (runtime.launch.Launcher): `hook(kernel, grid, site, kw)` sees
    each launch first, its arguments by name, and may raise; then the real launcher launches it."""

    def __init__(self, real, hook):
        self.real, self.hook = real, hook

    def __call__(self, kernel, grid, site=None):
        inner = self.real(kernel, grid, site)

        def launch(*args, **kw):
            self.hook(kernel, grid, site, dict(zip(kernel.arg_names, args)) | kw)  # by name, however passed
            return inner(*args, **kw)
        return launch

    def __getattr__(self, name):  # precompile, warming, ...: the real launcher's
        return getattr(self.real, name)
