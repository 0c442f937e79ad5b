"""Print IR as code: a mask expression over index tensors, for every backend.

The same printer serves the reference backend (torch), FlexAttention's
`mask_mod` and the Triton kernels, so their masks cannot drift apart.  Integer
arguments are printed through `arg`, which lets a backend either inline a
constant or refer to a runtime scalar (for arguments that depend on n).

Only non-negative operands are ever divided, so C-style (Triton) and
Python-style (torch) division agree.
"""
from __future__ import annotations

from typing import Callable, Optional

from . import ir
from .intexpr import Const, IntExpr, to_python

ArgFn = Callable[[IntExpr], str]


def inline_const(e: IntExpr) -> str:
    if isinstance(e, Const):
        return str(e.value) if e.value >= 0 else f"({e.value})"
    raise ValueError(f"argument {e} depends on n; give the printer an argument namer")


CHAIN = 32  # operands per parenthesised group in printed unions and intersections


def _chain(parts: list, op: str) -> str:
    """`(a | b | ...)`, grouped into a tree of at most CHAIN operands a level: Python parses
    `a | b | c ...` into a left-deep tree, and thousands of operands (global(at=[...]) with a
    long list) overflow the parser's recursion."""
    while len(parts) > CHAIN:
        parts = ["(" + f" {op} ".join(parts[k:k + CHAIN]) + ")" for k in range(0, len(parts), CHAIN)]
    return "(" + f" {op} ".join(parts) + ")"


def mask_expr(x, i: str, j: str, arg: ArgFn = inline_const, hash_fn: str = "_random_pick",
              n: str = "n", true: Optional[str] = None, select: Optional[str] = None) -> str:
    """A boolean expression in `i` and `j` (broadcastable index tensors).

    `select`: how this code asks about a `select` atom, a format string over {i}, {j}, {k},
    {b} and {qb} (the run-time selection is in scope there); None where it is not."""

    def p(y) -> str:
        return mask_expr(y, i, j, arg, hash_fn, n, true, select)

    if isinstance(x, ir.All):
        return true or f"(({i} >= 0) | ({j} >= 0))"
    if isinstance(x, ir.Empty):
        return f"(({i} < 0) & ({j} < 0))"
    if isinstance(x, ir.Union):
        return _chain([p(y) for y in x.items], "|")
    if isinstance(x, ir.Inter):
        return _chain([p(y) for y in x.items], "&")
    if isinstance(x, ir.Not):
        return f"(~{p(x.x)})" if true is None else f"({p(x.x)} == 0)"
    if isinstance(x, ir.Band):
        parts = []
        if x.lo is not None:
            parts.append(f"({i} - {j} >= {arg(x.lo)})")
        if x.hi is not None:
            parts.append(f"({i} - {j} <= {arg(x.hi)})")
        return parts[0] if len(parts) == 1 else "(" + " & ".join(parts) + ")"
    if isinstance(x, ir.DiagMod):
        # (i - j) % m == 0  <=>  i % m == j % m, which divides only non-negative values
        return f"({i} % {arg(x.m)} == {j} % {arg(x.m)})"
    if isinstance(x, ir.Rows):
        return f"(({i} >= {arg(x.a)}) & ({i} < {arg(x.b)}) & ({j} >= 0))"
    if isinstance(x, ir.Cols):
        return f"(({j} >= {arg(x.a)}) & ({j} < {arg(x.b)}) & ({i} >= 0))"
    if isinstance(x, ir.Block):
        return f"({i} // {arg(x.b)} == {j} // {arg(x.b)})"
    if isinstance(x, ir.KeyMod):
        return f"(({j} % {arg(x.l)} >= {arg(x.l)} - {arg(x.c)}) & ({i} >= 0))"
    if isinstance(x, ir.RowMod):
        return f"(({i} % {arg(x.m)} == {arg(x.o)}) & ({j} >= 0))"
    if isinstance(x, ir.Random):
        return f"{hash_fn}({i}, {j}, {arg(x.r)}, {arg(x.b)}, {x.seed}, {n})"
    if isinstance(x, ir.Select):
        if select is None:
            raise ValueError(f"{x} is chosen at run time: this code has no selection to ask")
        return select.format(i=i, j=j, k=arg(x.k), b=arg(x.b), qb=arg(x.qb))
    raise TypeError(f"cannot print {type(x).__name__}")


def formula(x) -> str:
    """A human-readable formula for comments and docs."""
    if isinstance(x, ir.All):
        return "true"
    if isinstance(x, ir.Empty):
        return "false"
    if isinstance(x, ir.Union):
        return " or ".join(f"({formula(y)})" for y in x.items)
    if isinstance(x, ir.Inter):
        return " and ".join(f"({formula(y)})" for y in x.items)
    if isinstance(x, ir.Not):
        return f"not ({formula(x.x)})"
    if isinstance(x, ir.Band):
        if x.lo is None:
            return f"i - j <= {x.hi}"
        if x.hi is None:
            return f"i - j >= {x.lo}"
        return f"{x.lo} <= i - j <= {x.hi}"
    if isinstance(x, ir.DiagMod):
        return f"(i - j) % {x.m} == 0"
    if isinstance(x, ir.Rows):
        return f"{x.a} <= i < {x.b}"
    if isinstance(x, ir.Cols):
        return f"{x.a} <= j < {x.b}"
    if isinstance(x, ir.Block):
        return f"i // {x.b} == j // {x.b}"
    if isinstance(x, ir.KeyMod):
        return f"j % {x.l} >= {x.l} - {x.c}"
    if isinstance(x, ir.RowMod):
        return f"i % {x.m} == {x.o}"
    if isinstance(x, ir.Random):
        return f"key block j // {x.b} is one of {x.r} hashed picks (seed {x.seed}) of query block i // {x.b}"
    if isinstance(x, ir.Select):
        return f"key block j // {x.b} is one of the {x.k} run-time selected blocks of query block i // {x.qb}"
    return str(x)


# ---------------------------------------------------------------- host code shared by generated modules

class ArgTable:
    """Names for integer arguments that depend on n.

    Constants are inlined; every distinct n-dependent expression gets one name
    (`_a0`, `_a1`, ...) computed once per call on the host, so kernels see it
    as a runtime scalar."""

    def __init__(self, prefix: str = "_a") -> None:
        self.prefix = prefix
        self.names: dict = {}

    def __call__(self, e: IntExpr) -> str:
        if isinstance(e, Const):
            return inline_const(e)
        if e not in self.names:
            self.names[e] = f"{self.prefix}{len(self.names)}"
        return self.names[e]

    def host_function(self, name: str = "_length_args") -> str:
        """`def _length_args(n)` returning a dict of the named values."""
        lines = [f"def {name}(n: int) -> dict:",
                 '    """Pattern arguments that depend on the sequence length n."""']
        for e, v in self.names.items():
            lines.append(f"    {v} = {to_python(e)}  # {e}")
        lines.append("    return {" + ", ".join(f"{v!r}: {v}" for v in self.names.values()) + "}")
        return "\n".join(lines)


def checks_function(pattern, table: "ArgTable", name: str = "_check_length") -> str:
    """`def _check_length(n)`: the n-dependent argument checks, as ValueErrors."""
    lines = [f"def {name}(n: int) -> None:",
             '    """Reject lengths at which the pattern\'s arguments are invalid."""',
             "    if n < 1:",
             '        raise ValueError(f"sequence length must be >= 1, got n={n}")']
    for c in pattern.checks:
        msg = c.message.replace("\\", "\\\\").replace('"', "'").replace("{", "{{").replace("}", "}}")
        lines.append(f"    if {to_python(c.expr)} < {c.minimum}:")
        lines.append(f'        raise ValueError(f"{msg} (n={{n}})")')
    return "\n".join(lines)


LENGTH_CALLS = {"min": "seq_min", "max": "seq_max", "isqrt": "seq_isqrt"}  # runtime.varlen: ints or tensors


def lengths_ok_function(pattern, name: str = "_lengths_ok"):
    """`def _lengths_ok(n)`: _check_length's checks on a tensor of lengths at once (True where the
    pattern is valid), for the device assertions of packed and padded calls; None without checks."""
    from .intexpr import to_python

    if not pattern.checks:
        return None
    conds = ["(n >= 1)"] + [f"({to_python(c.expr, 'n', LENGTH_CALLS)} >= {c.minimum})" for c in pattern.checks]
    return "\n".join([f"def {name}(n):",
                      '    """Where each length of the tensor n passes _check_length (sequences on the device)."""',
                      "    return " + " & ".join(conds)])


def py_string(text: str) -> str:
    """A safe Python string literal for arbitrary text (source files go in only this way).

    Pure ASCII and always single-quoted with every quote escaped, so the literal's text never
    contains a quoted word such as 'kept' that a later pass over the generated module could
    mistake for code, never a raw newline or control character, and no non-ASCII character
    (look-alikes, bidirectional overrides) whatever the file's encoding."""
    out = []
    for ch in text:
        if ch == "\\" or ch == "'":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "'" + "".join(out) + "'"
