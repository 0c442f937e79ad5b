"""patternc: compile one-line sparse attention patterns into analysed, specialised kernels.

A pattern says which keys j each query i may attend, e.g.
`pattern longformer(w = 256, g = 16) = local(w) | global(g)` (the language:
docs/language.md).  The public API is four functions and one exception; the
`patternc` command line (check, analyze, show, mask, compile) is a shell over them.

    parse(path_or_source, pattern=None, *, path=None, **params) -> Pattern
        Read a .attn file (a str path or a pathlib.Path) or source text and resolve one
        pattern, parameters set by keyword (w=64).
    analyze(pattern, n, heads=None, tile=128) -> Analysis
        Cost, closed form, tile efficiency, empty rows and reachability at length n.
    compile(pattern, backend="triton") -> str
        The source text of a standalone PyTorch/Triton module for the pattern.
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

from .api import analyze, compile, load, parse  # noqa: E402,F401
from .errors import PatternError  # noqa: E402,F401

# In a source checkout, backends/ and grammar/ sit beside this package rather than inside it
# (the installed package maps them to patternc.backends and patternc.grammar).
import os as _os  # noqa: E402

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "backends")) \
        and _os.path.isfile(_os.path.join(_root, "backends", "triton.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
