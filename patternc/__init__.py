"""patternc: compile one-line sparse attention patterns into analysed, specialised kernels.

Public API (imported on first use, so that `import patternc.runtime` -- what generated modules do --
and the Pygments lexer stay cheap):
    parse(path_or_source, pattern=None, **params) -> Pattern
    analyze(pattern, n, heads=None, tile=128)     -> Analysis
    compile(pattern, backend="triton")            -> module source text
    load(path_or_source, pattern=None, backend="triton", **params) -> module
    PatternError                                  -> the one exception for mistakes in patterns
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["PatternError", "analyze", "compile", "load", "parse"]


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
