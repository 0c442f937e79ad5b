"""patternc: compile one-line sparse attention patterns into analysed, specialised kernels.

Public API:
    parse(path_or_source, pattern=None, **params) -> Pattern
    analyze(pattern, n, heads=None, tile=128)     -> Analysis
    compile(pattern, backend="triton")            -> module source text
    load(path_or_source, pattern=None, backend="triton", **params) -> module
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import analyze, compile, load, parse  # noqa: E402,F401
from .errors import PatternError  # noqa: E402,F401
