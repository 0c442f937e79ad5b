"""patternc: compile one-line sparse attention patterns into analysed, specialised kernels.

A pattern says which keys j each query i may attend, e.g.
`pattern longformer(w = 256, g = 16) = local(w) | global(g)` (the language:
docs/language.md).  The public API is four functions and one exception; the
`patternc` command line (check, analyze, show, mask, compile) is a shell over them.
They are imported on first use, so that `import patternc.runtime` (what generated modules do)
and the Pygments lexer stay cheap.

    parse(path_or_source, pattern=None, *, path=None, **params) -> Pattern (or Stack)
        Read a .attn file (a str path or a pathlib.Path) or source text and resolve one
        pattern (or stack of layers), parameters set by keyword (w=64).
    analyze(pattern, n, heads=None, tile=128) -> Analysis (or StackAnalysis)
        Cost, closed form, tile efficiency, empty rows and reachability at length n; for a
        stack, each layer's cost, the totals and reach through its layers;
        analyze(pattern, doc_lens=[...]) -> PackedAnalysis: the same costs for a packed batch.
    compile(pattern, backend="triton", standalone=False) -> str
        The source text of a PyTorch/Triton module for the pattern (for a stack: one module,
        `layer(i)` picking each layer's attention).
    load(path_or_source, pattern=None, backend="triton", *, path=None, **params) -> module
        compile() and import the module in memory: `load(...).attention(q, k, v)`.
    PatternError
        Every mistake in a pattern or in how it is used; str(error) gives
        `FILE:LINE:COL: message` with the source line and a caret.

Example:
    >>> import patternc
    >>> p = patternc.parse("pattern p(w = 256) = causal & local(w)", w=64)
    >>> patternc.analyze(p, 4096).nnz            # doctest: +SKIP
    264160

help(patternc.parse) and the others give each function's arguments and errors.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["parse", "analyze", "compile", "load", "PatternError"]


def __getattr__(name: str):
    if name in ("analyze", "compile", "load", "parse"):
        from . import api
        return getattr(api, name)
    if name == "PatternError":
        from .errors import PatternError
        return PatternError
    raise AttributeError(f"module 'patternc' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
