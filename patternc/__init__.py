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

# In a source checkout, backends/ and grammar/ sit beside this package rather than inside it
# (the installed package maps them to patternc.backends and patternc.grammar).
import os as _os  # noqa: E402

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "backends")) \
        and _os.path.isfile(_os.path.join(_root, "backends", "triton.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
