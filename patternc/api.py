"""The public Python API; the CLI is a thin shell over these functions."""
from __future__ import annotations

import os
import types
from typing import TYPE_CHECKING, Optional, Union

from .errors import PatternError
from .frontend import Pattern, parse_program, resolve

if TYPE_CHECKING:  # the real import is lazy (numpy)
    from .analysis import Analysis

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


def analyze(pattern: Union[Pattern, str, os.PathLike], n: int, heads: Optional[int] = None,
            tile: Union[int, tuple] = 128, head_dim: int = 128, kernel: bool = True) -> "Analysis":
    """Cost, closed form, tiles, reachability and kernel plan of a pattern at sequence length n.

    Arguments:
        pattern: a `Pattern` from `parse`, or what `parse` accepts (a path to a .attn file or
            source text; the last pattern defined is used).
        n: the sequence length, 1 <= n <= 2**30 (patternc.limits.MAX_N).  The closed form in
            `nnz_formula` holds for every n; parts whose cost grows with n are skipped at very
            long lengths, and `skipped` lists them with the reason.
        heads: number of heads (at most 65536).  A pattern with `heads { ... }` fixes its own
            count (None, or that count); otherwise the same pattern runs on every head and
            nnz, flops, tiles and the closed form are totals over the heads.  Default 1.
        tile: tile size of the tile map, an int or a (rows, keys) pair (default 128).
        head_dim: head dimension, used for the flop counts (default 128, at most 65536).
        kernel: also ask the Triton lowering what its kernels do (tile shape, passes, the
            pairs they compute, the backward's dq strategy); False skips it (faster).

    Returns:
        An `Analysis` (patternc.analysis): nnz, density, nnz_formula (sympy syntax),
        order and leading_term, flops_fwd / flops_bwd, tiles and tile_efficiency,
        kernel_tile_efficiency and kernel_plan, empty_rows, layers_to_full_reach, per_head
        for multi-head patterns, skipped; `format_table()` is what `patternc analyze` prints,
        `to_dict()` its `--json`.

    Raises:
        PatternError: the pattern does not parse or resolve, is invalid at length n (located,
            like the compiler's errors), or an argument is out of range (the message names
            the limit).

    Example:
        >>> import patternc
        >>> a = patternc.analyze("pattern p(w = 256, g = 16) = local(w) | global(g)", 65536)
        >>> a.nnz, a.nnz_formula, a.order
        (35642864, 'Piecewise((n**2, n <= 272), (545*n - 74256, True))', 'O(n·(w + g))')
    """
    from .analysis import analyze as analyze_ir  # lazy: numpy is not needed to check or compile
    from .kernel_report import kernel_report

    if not isinstance(pattern, Pattern):
        pattern = parse(pattern)
    result = analyze_ir(pattern, n, heads=heads, tile=tile, head_dim=head_dim)
    return result.with_kernel(kernel_report(pattern, result.n, result.heads)) if kernel else result


def compile(pattern: Union[Pattern, str], backend: str = "triton") -> str:  # noqa: A001 - public name
    """The generated module's source text (deterministic)."""
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
    return gen.emit(pattern)


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
