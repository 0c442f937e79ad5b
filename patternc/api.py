"""The public Python API; the CLI is a thin shell over these functions."""
from __future__ import annotations

import os
import re
import types
from typing import TYPE_CHECKING, Optional, Union

from .errors import PatternError, Span, did_you_mean
from .frontend import Pattern, Stack, parse_program, resolve

if TYPE_CHECKING:  # the real import is lazy (numpy)
    from .analysis import Analysis
    from .packing import PackedAnalysis
    from .stack_analysis import StackAnalysis
    from .cp_report import CPReport

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
        raise PatternError(f"invalid UTF-8 (byte 0x{data[e.start]:02x})", Span(line, col), "", path) from None
    return text.lstrip("\ufeff")


_SOURCE_START = re.compile(r"\s*(pattern|stack)\s")  # every program starts with a keyword (after blanks)
_EXTENSION = re.compile(r"\.[A-Za-z0-9_]{1,16}$")


def _looks_like_path(s: str) -> bool:
    """A one-line string that ends in a file extension or contains a path separator, and does
    not start like pattern source (`pattern NAME ...`)."""
    return "\n" not in s and not _SOURCE_START.match(s) \
        and (bool(_EXTENSION.search(s)) or "/" in s or "\\" in s or os.sep in s)


def _source_and_name(path_or_source, path) -> tuple[str, str]:
    """(source text, file name for errors) from parse()'s two ways of naming the input."""
    if path is not None:
        if path_or_source is not None:
            raise TypeError("give pattern source text or path=, not both")
        path_or_source = path
        if isinstance(path, str):
            return read_source(path), path
    if isinstance(path_or_source, os.PathLike):
        name = os.fsdecode(os.fspath(path_or_source))
        return read_source(name), name
    if not isinstance(path_or_source, str):
        raise TypeError(f"expected pattern source text (str) or a path (str or os.PathLike), "
                        f"got {type(path_or_source).__name__}")
    s = path_or_source
    if "\n" not in s and os.path.exists(s):
        return read_source(s), s
    if _looks_like_path(s):
        raise PatternError("no such file (a one-line string ending in a file extension or containing a path "
                           "separator is read as a file name; source text starts with 'pattern')", None, "", s)
    return s, "<string>"


def parse(path_or_source: Union[str, os.PathLike, None] = None, pattern: Optional[str] = None, *,
          path: Union[str, os.PathLike, None] = None, **params: int) -> Union[Pattern, Stack]:
    """Parse a .attn file or source text and resolve one of its patterns (or stacks).

    Arguments:
        path_or_source: the pattern source text, or a path to a .attn file.  A `pathlib.Path`
            (any os.PathLike) is always a path.  A str is read as a path when it has no
            newline and names an existing file, or when it looks like a file name: it ends
            in a file extension (`natten.atn`) or contains a path separator, and does not
            start with the keyword `pattern` or `stack` (all source does, after blanks).  A
            missing file then gives "no such file" instead of a syntax error about the file
            name.  Anything else is source text, e.g. "pattern p = local(n // 8)".
        pattern: which definition to resolve (default: the last one defined), a pattern or a
            stack.
        path: a path to read, whatever it looks like (instead of `path_or_source`).
        **params: integer values for the pattern's parameters (`w=64`), like `-D w=64` on the
            command line.  int or an integer type such as numpy.int64; bool, float and str
            are refused.  (A parameter named `path` or `pattern` cannot be set this way.)

    Returns the resolved Pattern: its IR (`.expr`), `.name`, `.params`, `.filename`, `.hash`;
    `.at(n)` gives the IR at length n.  A stack gives a Stack: `.layers` (a Pattern per layer,
    first layer first), `.distinct` (each pattern once), `.layer_index`, `.name`, `.params`.

    Raises PatternError (message, file name, line, column and a caret in `str(error)`) for a
    missing or unreadable file, a syntax or semantic error, an unknown pattern or parameter
    name, and a parameter value that is not an integer or is too large.  TypeError when the
    input is neither text nor a path, or when both `path_or_source` and `path` are given.

    Example:
        >>> import patternc
        >>> p = patternc.parse("pattern longformer(w = 256, g = 16) = local(w) | global(g)", w=64)
        >>> dict(p.params)
        {'w': '64', 'g': '16'}
        >>> patternc.parse(pathlib.Path("examples/longformer.attn"), "longformer_causal")  # doctest: +SKIP
    """
    source, filename = _source_and_name(path_or_source, path)
    return resolve(parse_program(source, filename), pattern, params)


def _in_file(e: PatternError, p: Union[Pattern, Stack]) -> PatternError:
    """An error about using pattern p (a length, a backend) names p's file, not "<string>"."""
    if e.filename == "<string>" and not e.source and p.filename != "<string>":
        return e.located(p.filename, p.source)
    return e


def analyze(pattern: Union[Pattern, Stack, str, os.PathLike], n: Optional[int] = None,
            heads: Optional[int] = None, tile: Union[int, tuple] = 128, head_dim: int = 128,
            kernel: bool = True, doc_lens=None) -> Union["Analysis", "StackAnalysis", "PackedAnalysis"]:
    """Cost, closed form, tiles, reachability and kernel plan of a pattern at sequence length n;
    for a stack of layers, each layer's cost, the totals and reach through the stack; or, with
    `doc_lens` instead of n, the cost of a packed batch of documents.

    Arguments:
        pattern: a `Pattern` or `Stack` from `parse`, or what `parse` accepts (a path to a .attn
            file or source text; the last definition is used).
        n: the sequence length, 1 <= n <= 2**30 (patternc.limits.MAX_N).  The closed form in
            `nnz_formula` holds for every n; parts whose cost grows with n are skipped at very
            long lengths, and `skipped` lists them with the reason.
        heads: number of heads (at most 65536).  A pattern with `heads { ... }` fixes its own
            count (None, or that count); otherwise the same pattern runs on every head and
            nnz, flops, tiles and the closed form are totals over the heads.  Default 1 (for a
            stack: its per-head layers' count, which they must share).
        tile: tile size of the tile map, an int or a (rows, keys) pair (default 128).
        head_dim: head dimension, used for the flop counts (default 128, at most 65536).
        kernel: also ask the Triton lowering what its kernels do (tile shape, passes, the
            pairs they compute, the backward's dq strategy); False skips it (faster).
        doc_lens: document lengths of a packed batch (a list of ints, 0 allowed), given instead of
            n: each document is its own sequence (as `attention(..., cu_seqlens=...)` computes), so
            nnz, flops, tiles, tile efficiency and empty rows are sums over documents
            (patternc.packing); returns a `PackedAnalysis`.

    Returns:
        An `Analysis` (patternc.analysis): nnz, density, nnz_formula (sympy syntax),
        order and leading_term, flops_fwd / flops_bwd, tiles and tile_efficiency,
        kernel_tile_efficiency and kernel_plan, empty_rows, layers_to_full_reach, per_head
        for multi-head patterns, skipped; `format_table()` is what `patternc analyze` prints,
        `to_dict()` its `--json`.  For a stack, a `StackAnalysis` (patternc.stack_analysis):
        `patterns` (an Analysis per distinct layer pattern), `layer_index`, the totals `nnz`,
        `flops_fwd`, `flops_bwd`, and `reach` (`in_stack`: the fewest of the stack's layers
        after which every token reaches every other; `repeated`: the fewest layers of the
        stack repeated; `method`: how, or why never).

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
    from .backends.kernel_report import computed_per_length, kernel_report
    from .packing import analyze_packed
    from .stack_analysis import analyze_stack

    if not isinstance(pattern, (Pattern, Stack)):
        pattern = parse(pattern)
    if (n is None) == (doc_lens is None):
        raise PatternError("give the sequence length n, or doc_lens (the document lengths of a packed batch), "
                           "not both" if n is not None else "give the sequence length n, or doc_lens (the "
                           "document lengths of a packed batch)")
    try:
        if isinstance(pattern, Stack):
            if doc_lens is not None:
                raise PatternError("doc_lens takes one pattern, not a stack: analyze a layer's pattern "
                                   "(stack.layers[i]) with doc_lens")
            with_kernel = (lambda p, a: a.with_kernel(kernel_report(p, a.n, a.heads))) if kernel else None
            return analyze_stack(pattern, n, heads=heads, tile=tile, head_dim=head_dim, report=with_kernel)
        if doc_lens is not None:
            packed = analyze_packed(pattern, doc_lens, heads=heads, tile=tile, head_dim=head_dim)
            if not kernel:
                return packed
            return packed.with_computed(*computed_per_length(pattern, [c.length for c in packed.lengths],
                                                             packed.heads))
        result = analyze_ir(pattern, n, heads=heads, tile=tile, head_dim=head_dim)
        return result.with_kernel(kernel_report(pattern, result.n, result.heads)) if kernel else result
    except PatternError as e:
        raise _in_file(e, pattern) from None


def analyze_cp(pattern: Union[Pattern, str, os.PathLike], n: int, world_size: int, layout: str = "contiguous",
               heads: Optional[int] = None, head_dim: int = 128, kv_heads: Optional[int] = None, batch: int = 1,
               dtype: str = "bfloat16") -> "CPReport":
    """Context parallelism over `world_size` ranks at length n: per rank, the tokens it holds, the
    allowed pairs it computes, the key rows it pulls, the global rows it sends out, and the bytes
    it sends (forward, backward) under the exchange plan, beside a ring exchange of whole shards.

    The plan is the one `context_parallel_attention` follows (patternc.runtime.cp_plan), so these
    are the bytes it sends.  heads (default: the pattern's, or 1), kv_heads (default: heads),
    head_dim, batch and dtype ("bfloat16", "float16", "float32", "float64"; partial results travel
    in float32, or float64) size the rows.  Returns a `CPReport` (`format_table()`, `to_dict()`).

    Example:
        >>> from patternc.api import analyze_cp
        >>> r = analyze_cp("pattern p = local(256) | global(16)", 1 << 20, 8)
        >>> r.ring_ratio < 0.01
        True
    """
    from .cp_report import cp_report  # lazy: numpy
    from .limits import MAX_CP, MAX_HEAD_DIM, MAX_HEADS, MAX_N

    if not isinstance(pattern, Pattern):
        pattern = parse(pattern)
    for what, value, top in (("n", n, MAX_N), ("world_size", world_size, MAX_CP), ("head_dim", head_dim, MAX_HEAD_DIM),
                             ("batch", batch, MAX_HEADS), ("heads", heads, MAX_HEADS), ("kv_heads", kv_heads, MAX_HEADS)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
            raise PatternError(f"{what} must be an int in 1..{top:,}, got {value!r}", None, "", pattern.filename)
    own = pattern.num_heads
    if own is not None and heads is not None and heads != own:
        raise PatternError(f"pattern '{pattern.name}' defines {own} heads, but heads={heads} was requested",
                           None, "", pattern.filename)
    heads = own or heads or 1
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % kv_heads:
        raise PatternError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})", None, "", pattern.filename)
    try:
        pattern.at(n)  # located errors for n-dependent checks
        spec = load(pattern, backend="reference").SPEC
        return cp_report(pattern, spec, n, world_size, layout, heads, kv_heads, head_dim, batch, dtype)
    except PatternError as e:
        raise _in_file(e, pattern) from None
    except ValueError as e:
        raise PatternError(str(e), None, "", pattern.filename) from None


def compile(pattern: Union[Pattern, Stack, str, os.PathLike], backend: str = "triton",  # noqa: A001
            standalone: bool = False) -> str:
    """The source text of a Python module that computes the pattern's attention.

    Arguments:
        pattern: a Pattern or Stack from `parse`, or anything `parse` accepts (source text or a
            path; its last definition, with default parameters).
        backend: "triton" (fused Triton kernels, forward and backward, with an exact sparse
            PyTorch path where they do not run), "reference" (dense PyTorch, for checking) or
            "flex" (PyTorch's FlexAttention).
        standalone: copy patternc's runtime library into the module, so that it imports only
            torch, triton and the standard library (for deployment without patternc).

    Returns the module's text; the same pattern and backend always give the same text.  The
    module defines `attention(q, k, v)`, `mask(n)`, `mask_rows(i, j, n)` and `PATTERN`, and binds
    them to patternc.runtime (or to its own copy of it, with `standalone`).  A stack's module
    holds each distinct layer pattern once and defines `layer(i)` (layer i's attention, with
    its own `attention`, `mask`, `mask_rows`), `attention(q, k, v, layer=i)`, `mask(n, layer=i)`,
    `mask_rows(i, j, n, layer=i)`, `LAYERS` and `NUM_LAYERS`.

    Raises PatternError for what `parse` refuses and for an unknown backend, naming the
    pattern's file.

    Example:
        >>> import patternc
        >>> text = patternc.compile("pattern p = causal & local(128)", backend="reference")
        >>> "attention = _bound.attention" in text
        True
    """
    if not isinstance(pattern, (Pattern, Stack)):
        pattern = parse(pattern)
    if backend not in BACKENDS:
        raise PatternError(f"unknown backend '{backend}'{did_you_mean(backend, BACKENDS)}; "
                           f"choose one of: {', '.join(BACKENDS)}", None, "", pattern.filename)
    if backend == "reference":
        from .backends import reference as gen
    elif backend == "flex":
        from .backends import flex as gen
    else:
        from .backends import triton as gen
    try:
        if isinstance(pattern, Stack):
            from .backends.stack import emit_stack
            text = emit_stack(pattern, backend, gen.emit)
        else:
            text = gen.emit(pattern)
    except PatternError as e:
        raise _in_file(e, pattern) from None
    if standalone:
        from .backends.standalone import standalone as bundle
        text = bundle(text)
    return text


def load(path_or_source: Union[str, os.PathLike, Pattern, Stack, None] = None, pattern: Optional[str] = None,
         backend: str = "triton", *, path: Union[str, os.PathLike, None] = None,
         **params: int) -> types.ModuleType:
    """Compile a pattern and import the generated module, without writing it anywhere you see.

    Arguments:
        path_or_source, pattern, path, **params: as for `parse` (or a Pattern or Stack from
            `parse`, with no `pattern` or params).
        backend: as for `compile`.

    Returns the imported module: `attention(q, k, v)` for (B, H, n, D) tensors (k and v may
    have fewer heads), `mask(n)` and `PATTERN`; for a stack, `layer(i)` and the rest that
    `compile` describes.  The Triton backend's text goes to a file in
    the temporary folder, because Triton reads kernel source from files.

    Raises PatternError as `parse` and `compile` do; ImportError when the module's own
    imports (torch, triton) are missing.

    Example:
        >>> import patternc, torch
        >>> attn = patternc.load("examples/longformer.attn", w=128, backend="reference")  # doctest: +SKIP
        >>> q = k = v = torch.randn(1, 4, 1024, 64)
        >>> attn.attention(q, k, v).shape  # doctest: +SKIP
        torch.Size([1, 4, 1024, 64])
    """
    if isinstance(path_or_source, (Pattern, Stack)):
        if pattern is not None or params or path is not None:
            raise TypeError("load(Pattern) takes no pattern name, path or parameters: parse() the file with them")
        p = path_or_source
    else:
        p = parse(path_or_source, pattern, path=path, **params)
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
        module_path = os.path.join(folder, f"{p.name}_{digest}.py")
        if not os.path.exists(module_path):
            tmp = f"{module_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, module_path)
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, module_path)
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
