"""The public Python API; the CLI is a thin shell over these functions."""
from __future__ import annotations

import os
import types
from typing import Optional, Union

from .errors import PatternError
from .frontend import Pattern, parse_program, resolve

BACKENDS = ("triton", "reference", "flex")


def read_source(path: str) -> str:
    """Read a .attn file, turning OS and encoding problems into clean errors."""
    if os.path.isdir(path):
        raise PatternError("is a directory, not a .attn file", None, "", path)
    try:
        with open(path, "rb") as f:
            data = f.read(2 << 20)
    except FileNotFoundError:
        raise PatternError("no such file", None, "", path) from None
    except PermissionError:
        raise PatternError("permission denied", None, "", path) from None
    except OSError as e:
        raise PatternError(f"cannot read file: {e.strerror or e}", None, "", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        from .errors import Span
        raise PatternError(f"invalid UTF-8 (byte 0x{data[e.start]:02x})", Span(line, col), "", path) from None
    return text.lstrip("\ufeff")


def _looks_like_path(s: str) -> bool:
    return "\n" not in s and "=" not in s and (s.endswith(".attn") or os.path.exists(s))


def parse(path_or_source: Union[str, os.PathLike], pattern: Optional[str] = None, **params: int) -> Pattern:
    """Parse a file or a source string and resolve one pattern (default: the last defined).

    `params` override the pattern's parameters, like `-D name=value` on the CLI."""
    s = os.fspath(path_or_source)
    if _looks_like_path(s):
        source, filename = read_source(s), s
    else:
        source, filename = s, "<string>"
    return resolve(parse_program(source, filename), pattern, params)


def analyze(pattern: Union[Pattern, str], n: int, heads: Optional[int] = None, tile: int = 128, **kw):
    """Cost, tiles and reachability of a pattern at length n (see patternc.analysis)."""
    from .analysis import analyze as _analyze

    if not isinstance(pattern, Pattern):
        pattern = parse(pattern)
    return _analyze(pattern, n, heads=heads, tile=tile, **kw)


def compile(pattern: Union[Pattern, str], backend: str = "triton", standalone: bool = False) -> str:  # noqa: A001
    """The generated module's source text (deterministic).  The module imports patternc's runtime
    library; with `standalone`, the runtime is copied into it instead (it then imports only torch,
    triton and the standard library)."""
    if not isinstance(pattern, Pattern):
        pattern = parse(pattern)
    if backend not in BACKENDS:
        from .errors import did_you_mean
        raise PatternError(f"unknown backend '{backend}'{did_you_mean(backend, BACKENDS)}; "
                           f"choose one of: {', '.join(BACKENDS)}")
    if backend == "reference":
        from .backends import reference as gen
    elif backend == "flex":
        from .backends import flex as gen
    else:
        from .backends import triton as gen
    text = gen.emit(pattern)
    if standalone:
        from .backends.standalone import standalone as bundle
        text = bundle(text)
    return text


def load(path_or_source: Union[str, os.PathLike, Pattern], pattern: Optional[str] = None,
         backend: str = "triton", **params: int) -> types.ModuleType:
    """Compile and import the generated module in memory."""
    p = path_or_source if isinstance(path_or_source, Pattern) else parse(path_or_source, pattern, **params)
    text = compile(p, backend)
    name = f"patternc_generated_{p.name}_{backend}_{p.hash}"
    mod = types.ModuleType(name)
    mod.__file__ = f"<patternc:{p.name}:{backend}>"
    if backend == "triton":
        # Triton's JIT reads kernel source through inspect/linecache: give it a real file.
        import hashlib
        import sys
        import tempfile

        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), "patternc-modules")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{p.name}_{digest}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    import sys

    sys.modules[name] = mod  # torch.compile (FlexAttention) looks module globals up there
    exec(builtins_compile(text, mod.__file__, "exec"), mod.__dict__)
    return mod


def builtins_compile(text: str, filename: str, mode: str):
    import builtins

    return builtins.compile(text, filename, mode)
