"""The `patternc` command line: check, analyze, mask, show and compile .attn files.

Errors are for people, not for debuggers: a mistake in a pattern or in how the
command is used prints `FILE:LINE:COL: message` with the source line and a
caret and exits 1; anything unexpected prints one `internal error` line and
exits 2 (set PATTERNC_DEBUG=1 for the traceback).  Heavy imports (numpy,
matplotlib, torch) happen inside the commands that need them, so `check` and
`compile` start fast and never import torch.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from typing import Callable, Optional, Sequence

from . import __version__, api, ir, limits, show
from .errors import PatternError, did_you_mean
from .frontend import Stack, check_program, parse_program, resolve

MAX_MASK_N = 32768  # a dense bool mask takes n*n bytes: 1 GiB at this size
MAX_MASK_BYTES = 1 << 30


# ---------------------------------------------------------------- helpers

def _fail(message: str, where: str = "patternc") -> PatternError:
    """An error that is not located in the pattern source (options, output paths)."""
    return PatternError(message, None, "", where)


def _int_at_least(what: str, minimum: int) -> Callable[[str], int]:
    """An argparse type for integer options, with the option named in its message."""
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {v}")
        return v
    return parse


def _positive(what: str) -> Callable[[str], int]:
    return _int_at_least(what, 1)


def _defines(items: Optional[list], filename: str) -> dict:
    """-D name=value pairs as integers; the front end checks the names and ranges."""
    out: dict = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise _fail(f"-D {item}: expected NAME=VALUE, e.g. -D w=64", filename)
        if name in out:
            raise _fail(f"-D {name} is given twice", filename)
        try:
            out[name] = int(value.strip(), 10)
        except ValueError:
            shown = value.strip() if len(value.strip()) <= 40 else value.strip()[:37] + "..."
            raise _fail(f"-D {name}={shown}: value must be an integer", filename) from None
    return out


def _load(args: argparse.Namespace):
    """Read, parse and resolve the pattern (or stack) the command works on."""
    source = api.read_source(args.file)
    prog = parse_program(source, args.file)
    return resolve(prog, getattr(args, "pattern", None), _defines(getattr(args, "define", None), args.file), "-D")


def _one_pattern(args: argparse.Namespace):
    """The pattern a command draws or writes: the chosen pattern, or with --layer I one layer of
    the chosen stack."""
    got = _load(args)
    layer = args.layer
    if isinstance(got, Stack):
        if layer is None:
            raise _fail(f"'{got.name}' is a stack of {got.num_layers} layers: pick one with --layer I "
                        f"(0..{got.num_layers - 1}), or a pattern with -p NAME", got.filename)
        if layer >= got.num_layers:
            raise _fail(f"--layer {layer}: stack '{got.name}' has layers 0..{got.num_layers - 1}", got.filename)
        return got.layers[layer]
    if layer is not None:
        raise _fail(f"--layer {layer}: '{got.name}' is a pattern, not a stack", got.filename)
    return got


def _patterns_of(item) -> list:
    """(pattern, how to name it in a warning) for a pattern, or for each distinct layer of a stack."""
    if not isinstance(item, Stack):
        return [(item, None)]
    return [(p, f"layer {item.layer_index.index(k)} of stack '{item.name}' ({p.name})")
            for k, p in enumerate(item.distinct)]


def _concrete(pattern, n: int):
    """The IR at length n (runs the pattern's n-dependent checks)."""
    return pattern.at(n)


def _pick_head(pattern, head: Optional[int]) -> int:
    if head is None:
        return 0
    if pattern.num_heads is not None and head >= pattern.num_heads:
        raise _fail(f"--head {head}: pattern '{pattern.name}' has heads 0..{pattern.num_heads - 1}",
                    pattern.filename)
    return head


def atomic_write(path: str, data: bytes, write: Optional[Callable[[str], None]] = None) -> None:
    """Write `data` (or let `write(tmp_path)` produce the file) so that `path` is either
    untouched or complete: temporary file in the same directory, fsync, rename."""
    if os.path.isdir(path):
        raise _fail("is a directory; give a file name to write", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _fail(f"cannot write: directory {os.path.dirname(path) or folder!r} does not exist", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _fail(f"cannot write: {e.strerror or e}", path) from None
    try:
        try:
            if write is None:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.close(fd)
                write(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            try:
                mode = os.stat(path).st_mode & 0o7777
            except FileNotFoundError:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as e:
            raise _fail(f"cannot write: {e.strerror or e}", path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable; not possible everywhere, and not fatal
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ---------------------------------------------------------------- commands

EMPTY_ROWS_POLICIES = ("warn", "error", "ignore")


def _empty_rows_policy(args: argparse.Namespace) -> str:
    return "ignore" if getattr(args, "allow_empty_rows", False) else args.empty_rows


def _warn(message: str, where: str) -> None:
    print(PatternError(f"warning: {message}", None, "", where).format(), file=sys.stderr)


def _check_all_lengths(item, policy: str) -> None:
    """Warn about (or refuse) a pattern (each layer of a stack) that leaves query rows with no
    allowed key at some length (emptyrows.find: exact for constant arguments, sampled lengths
    otherwise)."""
    if policy == "ignore":
        return
    for pattern, what in _patterns_of(item):
        _check_lengths_of(pattern, what, policy)


def _check_lengths_of(pattern, what: Optional[str], policy: str) -> None:
    from . import emptyrows

    found = emptyrows.find(pattern)
    if found is None:
        return
    message = found.message(pattern, what)
    if policy == "error":
        raise _fail(message, pattern.filename)
    _warn(message + " (--empty-rows=error to refuse, --empty-rows=ignore to silence)", pattern.filename)


def cmd_check(args: argparse.Namespace) -> int:
    source = api.read_source(args.file)
    prog = parse_program(source, args.file)
    for pattern in check_program(prog):
        _check_all_lengths(pattern, _empty_rows_policy(args))
    names: dict = {"pattern": [], "stack": []}
    for name, d in prog.definitions.items():
        required = [p.name for p in d.params if p.default is None]
        names[d.kind].append(f"{name}({', '.join(required)})" if required else name)
    parts = [f"{len(v)} {kind}{'s' if len(v) != 1 else ''}: {', '.join(v)}" for kind, v in names.items()
             if v or (kind == "pattern" and not names["stack"])]
    print(f"{args.file}: ok ({'; '.join(parts)})")
    return 0


def _empty_rows_info(value) -> tuple[Optional[int], Optional[list]]:
    """(count, first rows) from whatever form the analysis reports empty rows in."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        return int(value), None
    if isinstance(value, int):
        return value, None
    if isinstance(value, dict):
        count = value.get("count", value.get("total"))
        first = value.get("first", value.get("rows"))
        return (int(count) if count is not None else (len(first) if first is not None else None),
                list(first) if first is not None else None)
    if isinstance(value, (list, tuple)):
        return len(value), list(value)
    return None, None


SCAN_PAIRS = 1 << 26  # how much of the mask the CLI evaluates itself to name empty rows


def _check_empty_rows(pattern, n: int, reported, policy: str = "error", what: Optional[str] = None) -> None:
    """Warn about (or refuse) query rows with no allowed key at length n.  The analysis gives
    the count; the first few rows are found here by scanning the mask, within a budget at long
    lengths."""
    count, first = _empty_rows_info(reported)
    if count == 0 or policy == "ignore":
        return
    heads = list(range(pattern.num_heads)) if pattern.num_heads else [0]
    complete = n * n * len(heads) <= SCAN_PAIRS
    if count is None and not complete:
        return  # the analysis did not say, and the mask is too big to check here
    where: list = [(0, r) for r in first or []]
    if count is None or first is None:
        expr = ir.outer_part(_concrete(pattern, n))  # select(...): rows no selection can fill
        total, where = 0, []
        for h in heads:
            c, rows, _ = show.first_empty_rows(expr, n, 5 - len(where), head=h,
                                               max_pairs=None if complete else SCAN_PAIRS // len(heads))
            total += c
            where += [(h, r) for r in rows]
        if count is None:
            count = total
    if count == 0:
        return
    rows_word = f"{count} query row{'s' if count != 1 else ''}"
    if pattern.num_heads:
        listed = ", ".join(f"head {h} row {r}" for h, r in where[:5])
        rows_word += f" (over {pattern.num_heads} heads)"
    else:
        listed = ", ".join(str(r) for _, r in where[:5])
    shown = f" (first: {listed}{', ...' if count > len(where[:5]) else ''})" if where else ""
    message = f"{rows_word} of {n} {'have' if count != 1 else 'has'} no allowed key{shown}; " \
              "their attention output is 0"
    if what is not None:
        message = f"{what}: {message}"
    if policy == "error":
        raise _fail(message, pattern.filename)
    _warn(message + " (--empty-rows=error to refuse, --empty-rows=ignore to silence)", pattern.filename)


def _check_analyze_limits(args: argparse.Namespace) -> None:
    """The documented limits of `analyze` (patternc.limits), checked before any work."""
    for option, value, limit in (("--n", args.n, limits.MAX_N), ("--heads", args.heads, limits.MAX_HEADS),
                                 ("--tile", args.tile, limits.MAX_TILE), ("--head-dim", args.head_dim,
                                                                          limits.MAX_HEAD_DIM),
                                 ("--cp", args.cp, limits.MAX_CP)):
        if value is not None and value > limit:
            extra = " (2^30; the closed form in nnz(n) holds for every n)" if option == "--n" else ""
            raise _fail(f"{option} {value} is too large: analyze accepts {option} <= {limit:,}{extra}", args.file)


def _doc_lens(args: argparse.Namespace) -> Optional[tuple]:
    """The document lengths of --doc-lens or --doc-lens-from (None for --n), checked."""
    from .packing import parse_doc_lens

    given = [x for x, v in (("--n", args.n), ("--doc-lens", args.doc_lens), ("--doc-lens-from", args.doc_lens_from))
             if v is not None]
    if len(given) != 1:
        raise _fail("give one of --n (one sequence), --doc-lens or --doc-lens-from (a packed batch of documents)"
                    + (f", not {' and '.join(given)}" if given else ""), args.file)
    if args.doc_lens is not None:
        return parse_doc_lens(args.doc_lens, "--doc-lens")
    if args.doc_lens_from is not None:
        path = args.doc_lens_from
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise _fail(f"cannot read document lengths: {e.strerror if isinstance(e, OSError) else e}", path) \
                from None
        return parse_doc_lens(text, path)
    return None


def _cmd_analyze_packed(args: argparse.Namespace, doc_lens: tuple) -> int:
    pattern = _load(args)
    result = api.analyze(pattern, heads=args.heads, tile=args.tile, head_dim=args.head_dim, doc_lens=doc_lens)
    rows = result.empty_rows
    if rows and _empty_rows_policy(args) != "ignore":
        message = f"{rows} query row{'s' if rows != 1 else ''} of the packed batch " \
                  f"{'have' if rows != 1 else 'has'} no allowed key; their attention output is 0"
        if _empty_rows_policy(args) == "error":
            raise _fail(message, pattern.filename)
        _warn(message + " (--empty-rows=error to refuse, --empty-rows=ignore to silence)", pattern.filename)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result.format_table())
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    _check_analyze_limits(args)
    doc_lens = _doc_lens(args)
    if doc_lens is not None:
        return _cmd_analyze_packed(args, doc_lens)
    item = _load(args)
    for pattern, _ in _patterns_of(item):
        _concrete(pattern, args.n)  # located errors for n-dependent checks come first
    result = api.analyze(item, args.n, heads=args.heads, tile=args.tile, head_dim=args.head_dim)
    data = result.to_dict()
    reports = data["patterns"] if isinstance(item, Stack) else [data]
    for (pattern, what), report in zip(_patterns_of(item), reports):
        _check_empty_rows(pattern, args.n, report.get("empty_rows"), _empty_rows_policy(args), what)
    cp = None
    if args.cp is not None:
        if isinstance(item, Stack):
            raise _fail(f"--cp plans one pattern, not a stack: give a layer's pattern with -p "
                        f"(the stack's patterns: {', '.join(p.name for p in item.distinct)})", item.filename)
        cp = api.analyze_cp(item, args.n, args.cp, layout=args.cp_layout, heads=result.heads,
                            head_dim=args.head_dim, dtype=args.cp_dtype)
        data["context_parallel"] = cp.to_dict()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(result.format_table() + ("" if cp is None else "\n" + cp.format_table()))
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    pattern = _one_pattern(args)
    n = args.n
    if ir.has_select(pattern.expr):
        raise _fail(f"pattern '{pattern.name}' uses {ir.selects(pattern.expr)[0]}: its mask depends on the run-time "
                    "blocks= tensor; `patternc show` draws the static part and where selected blocks may fall",
                    pattern.filename)
    if n > MAX_MASK_N:
        raise _fail(f"--n {n} is too large for a dense mask ({n}x{n} = {n * n / 2 ** 30:.1f} GiB); "
                    f"the limit is n <= {MAX_MASK_N}; use `patternc analyze` for long sequences", pattern.filename)
    expr = _concrete(pattern, n)
    if pattern.num_heads is not None and args.head is None:
        heads = list(range(pattern.num_heads))
    else:
        heads = [_pick_head(pattern, args.head)]
    if len(heads) * n * n > MAX_MASK_BYTES:
        raise _fail(f"a ({len(heads)}, {n}, {n}) mask takes {len(heads) * n * n / 2 ** 30:.1f} GiB; "
                    f"pick one head with --head", pattern.filename)
    import numpy as np  # lazy: only the commands that build arrays pay for numpy

    masks = [show.dense_mask(expr, n, head=h) for h in heads]
    m = masks[0] if len(masks) == 1 and (pattern.num_heads is None or args.head is not None) else np.stack(masks)
    buf = io.BytesIO()
    np.save(buf, m, allow_pickle=False)
    atomic_write(args.output, buf.getvalue())
    print(f"{args.output}: {'x'.join(map(str, m.shape))} bool mask of pattern '{pattern.name}' "
          f"({int(m.sum())} allowed pairs)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    pattern = _one_pattern(args)
    n = args.n
    if n > show.MAX_N:
        raise _fail(f"--n {n} is too large to draw (the limit is {show.MAX_N}); "
                    f"use `patternc analyze` for long sequences", pattern.filename)
    if args.tile > show.MAX_N:
        raise _fail(f"--tile {args.tile} is too large: show accepts --tile <= {show.MAX_N}", pattern.filename)
    if args.output:
        try:
            fmt = show.picture_format(args.output)
        except ValueError as e:
            raise _fail(str(e), args.output) from None
    if -(-n // args.tile) > show.MAX_BLOCKS:
        raise _fail(f"--tile {args.tile} is too small to draw n={n}: at most {show.MAX_BLOCKS} tiles per side "
                    f"(use --tile {-(-n // show.MAX_BLOCKS)} or more)", pattern.filename)
    expr = _concrete(pattern, n)
    head = _pick_head(pattern, args.head)
    title = f"pattern {pattern.name}"
    if pattern.params:
        title += " (" + ", ".join(f"{k}={v}" for k, v in pattern.params) + ")"
    if pattern.num_heads is not None:
        title += f", head {head} of {pattern.num_heads}"
    if args.output:
        atomic_write(args.output, b"", write=lambda tmp: show.save_picture(expr, n, tmp, args.tile, head, title, fmt))
        print(f"{args.output}: {fmt.upper()} picture of pattern '{pattern.name}' at n={n}, tile={args.tile}")
    else:
        sys.stdout.write(show.ascii_picture(expr, n, args.tile, head, width=min(args.width, 512), title=title))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    if args.backend not in api.BACKENDS:
        raise _fail(f"unknown backend '{args.backend}'{did_you_mean(args.backend, api.BACKENDS)}; "
                    f"choose one of: {', '.join(api.BACKENDS)}")
    pattern = _load(args)
    _check_all_lengths(pattern, _empty_rows_policy(args))
    text = api.compile(pattern, args.backend, standalone=args.standalone)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    atomic_write(args.output, text.encode("utf-8"))
    shown = args.output if args.output.isprintable() else repr(args.output)  # no raw control characters
    what = "standalone " if args.standalone else ""
    kind = f"stack '{pattern.name}' ({pattern.num_layers} layers)" if isinstance(pattern, Stack) \
        else f"pattern '{pattern.name}'"
    print(f"{shown}: {what}{args.backend} module for {kind} (ir hash {pattern.hash})")
    return 0


# ---------------------------------------------------------------- argument parsing

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patternc", description="A compiler for sparse attention patterns (.attn files).")
    p.add_argument("--version", action="version", version=f"patternc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp, pattern: bool = True, defines: bool = True):
        sp.add_argument("file", metavar="FILE", help="the .attn file")
        if pattern:
            sp.add_argument("--pattern", "-p", metavar="NAME",
                            help="which pattern or stack (default: the last one defined)")
        if defines:
            sp.add_argument("-D", dest="define", action="append", metavar="NAME=VALUE",
                            help="set an integer parameter of the pattern (repeatable)")

    def empty_rows(sp, at: str):
        sp.add_argument("--empty-rows", choices=EMPTY_ROWS_POLICIES, default="warn",
                        help=f"query rows with no allowed key {at}: warn on stderr (default), "
                             "error (exit 1) or ignore")

    sp = sub.add_parser("check", help="report syntax and semantic errors")
    common(sp, pattern=False, defines=False)
    empty_rows(sp, "at any length, in any pattern of the file whose parameters all have defaults")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("analyze", help="cost, density, tile efficiency and reach at length n (for a stack: "
                                        "per layer, the total, and reach through its layers), or of a packed batch")
    common(sp)
    size = sp.add_mutually_exclusive_group(required=True)  # a usage error (exit 2) without one
    size.add_argument("--n", type=_positive("--n"), help="sequence length")
    size.add_argument("--doc-lens", metavar="L1,L2,...",
                    help="instead of --n: the document lengths of a packed batch, each its own sequence "
                         "(nnz, flops, density and tile efficiency are sums over documents)")
    size.add_argument("--doc-lens-from", metavar="FILE",
                    help="instead of --n: a file of document lengths (separated by commas, spaces or newlines; "
                         "# comments; - for stdin)")
    sp.add_argument("--heads", type=_positive("--heads"), help="number of heads (default: the pattern's, or 1)")
    sp.add_argument("--tile", type=_positive("--tile"), default=128, help="kernel tile size (default 128)")
    sp.add_argument("--head-dim", type=_positive("--head-dim"), default=128, help="head dimension (default 128)")
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sp.add_argument("--cp", type=_positive("--cp"), metavar="P",
                    help="also plan context parallelism over P ranks: bytes sent and pairs computed per rank")
    sp.add_argument("--cp-layout", choices=("contiguous", "balanced"), default="contiguous",
                    help="with --cp: how the sequence is split over the ranks (default contiguous)")
    sp.add_argument("--cp-dtype", choices=("bfloat16", "float16", "float32", "float64"), default="bfloat16",
                    help="with --cp: dtype of q, k, v (default bfloat16; partial results travel in float32)")
    empty_rows(sp, "at length n")
    sp.add_argument("--allow-empty-rows", action="store_true", help="the same as --empty-rows=ignore")
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser("mask", help="write the dense boolean mask as .npy")
    common(sp)
    sp.add_argument("--n", type=_positive("--n"), required=True, help="sequence length")
    sp.add_argument("-o", "--output", default="mask.npy", help="output .npy file (default mask.npy)")
    sp.add_argument("--head", type=_int_at_least("--head", 0),
                    help="head of a per-head pattern (default: all heads, shape (H, n, n))")
    sp.add_argument("--layer", type=_int_at_least("--layer", 0), help="layer of a stack (required for a stack)")
    sp.set_defaults(func=cmd_mask)

    sp = sub.add_parser("show", help="draw the mask and its tiles (ASCII, or a picture file with -o)")
    common(sp)
    sp.add_argument("--n", type=_positive("--n"), required=True, help="sequence length")
    sp.add_argument("-o", "--output", help="write a picture here instead of printing ASCII; its extension picks "
                                           "the format: .png, .svg, .pdf, .jpg, .eps, ...")
    sp.add_argument("--tile", type=_positive("--tile"), default=128, help="tile size (default 128)")
    sp.add_argument("--head", type=_int_at_least("--head", 0), help="head of a per-head pattern (default 0)")
    sp.add_argument("--layer", type=_int_at_least("--layer", 0), help="layer of a stack (required for a stack)")
    sp.add_argument("--width", type=_positive("--width"), default=64, help="ASCII columns (default 64, at most 512)")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("compile", help="generate a Python module for a backend")
    common(sp)
    sp.add_argument("--backend", "-b", default="triton", metavar="{triton,reference,flex}",
                    help="code generator (default triton)")
    sp.add_argument("-o", "--output", required=True, help="output .py file (written atomically), or - for stdout")
    sp.add_argument("--standalone", action="store_true",
                    help="copy the runtime library into the module, so it runs where patternc is not installed")
    empty_rows(sp, "at any length")
    sp.set_defaults(func=cmd_compile)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `patternc` console script; returns the exit status."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help, --version and usage errors: argparse has printed already
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        return args.func(args)
    except PatternError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("patternc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `patternc show ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        if os.environ.get("PATTERNC_DEBUG") == "1":
            raise
        text = str(e).strip().splitlines()
        print(f"patternc: internal error: {type(e).__name__}: {text[0] if text else ''} "
              "(set PATTERNC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
