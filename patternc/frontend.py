"""The front end: .attn source -> checked pattern definitions -> IR.

Parsing is lark (LALR, with positions).  Resolution substitutes parameters,
folds constants, validates every argument it can, and records the checks
that depend on `n` so that analyses and generated modules can run them once
the length is known.  Every error carries a source span.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Optional, Union

from . import intexpr as ix
from . import ir
from .errors import PatternError, Span, did_you_mean

MAX_SOURCE_BYTES = 1 << 20
MAX_DEPTH = 200
MAX_HEADS = 4096
MAX_TOKENS = 20_000  # lark needs ~30 us a token: this keeps the worst parse well under a second
MAX_EXPR_DEPTH = 64  # operator nesting of a resolved expression; generated code nests ~2 parens a level
MAX_WORK = 40_000  # expression nodes visited while resolving a file (user patterns expand inline): ~1 s
MAX_LENGTH = (1 << 31) - 1  # the longest sequence every generated module must handle
MAX_NAME = 128  # characters in a pattern or parameter name (names become file and symbol names)
MAX_LAYERS = 4096  # layers of one stack (each layer's cost and reach are reported)
LAYER_NAME = 80  # characters of a layer's printed pattern used as its name


@functools.lru_cache(maxsize=1)
def _parser():
    import lark

    text = resources.files("patternc.grammar").joinpath("attn.lark").read_text()
    try:  # lark caches the built LALR tables in the temp folder: ~70 ms less per command
        return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)
    except OSError:
        return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Check:
    """A requirement `expr >= minimum` that could not be decided without n."""

    expr: ix.IntExpr
    minimum: int
    message: str
    span: Optional[Span]


@dataclass(frozen=True)
class Param:
    name: str
    default: Optional[object]  # lark tree of the default, or None when required
    span: Span


@dataclass(frozen=True)
class Definition:
    name: str
    params: tuple
    body: object  # lark tree; for a stack, the tuple of its layer trees
    span: Span
    kind: str = "pattern"  # or "stack"


@dataclass(frozen=True)
class Pattern:
    """A resolved pattern: IR plus what is needed to explain and reproduce it."""

    name: str
    expr: object  # ir node or ir.Heads
    params: tuple  # ((name, value-as-string), ...), in declaration order
    checks: tuple  # n-dependent Check objects
    source: str
    filename: str

    @property
    def hash(self) -> str:
        return ir.ir_hash(self.expr)

    @property
    def num_heads(self) -> Optional[int]:
        return self.expr.num_heads if isinstance(self.expr, ir.Heads) else None

    def at(self, n: int):
        """The IR with every argument evaluated at length n, after running the n-dependent checks."""
        for c in self.checks:
            try:
                v = ix.evaluate(c.expr, n)
            except ix.EvalError as e:
                raise PatternError(f"{c.message}: {e} at n={n}", c.span, self.source, self.filename)
            if v < c.minimum:
                raise PatternError(f"{c.message} (it is {v} at n={n})", c.span, self.source, self.filename)
        try:
            return ir.substitute_n(self.expr, n)
        except ix.EvalError as e:
            raise PatternError(f"{e} at n={n}", None, self.source, self.filename)


@dataclass(frozen=True)
class Stack:
    """A resolved stack of layers: one Pattern per layer, the first layer applied first.

    Layers that share a pattern share one Pattern object; `distinct` lists each once, in order
    of first use, and `layer_index` says which one each layer uses."""

    name: str
    layers: tuple  # Pattern per layer
    params: tuple  # ((name, value-as-string), ...), in declaration order
    source: str
    filename: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def distinct(self) -> tuple:
        first: dict = {}
        for p in self.layers:
            first.setdefault(p.hash, p)
        return tuple(first.values())

    @property
    def layer_index(self) -> tuple:
        index = {p.hash: k for k, p in enumerate(self.distinct)}
        return tuple(index[p.hash] for p in self.layers)

    @property
    def hash(self) -> str:
        import hashlib

        return hashlib.sha256(("stack:" + ",".join(p.hash for p in self.layers)).encode()).hexdigest()[:16]


@dataclass
class Program:
    source: str
    filename: str
    definitions: dict = field(default_factory=dict)

    @property
    def names(self) -> list:
        return list(self.definitions)


# ---------------------------------------------------------------- parsing

def _span(node) -> Span:
    import lark

    if isinstance(node, lark.Token):
        return Span(node.line or 1, node.column or 1)
    meta = getattr(node, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return Span(meta.line, meta.column)
    for child in getattr(node, "children", []):
        if child is not None:
            return _span(child)
    return Span(1, 1)


_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "EQUAL": "'='", "VBAR": "'|'", "AMPERSAND": "'&'", "MINUS": "'-'", "PLUS": "'+'",
    "STAR": "'*'", "PERCENT": "'%'", "SLASH": "'/'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COLON": "':'", "__ANON_0": "'//'", "__ANON_1": "'..'",
    "PATTERN": "'pattern'", "HEADS": "'heads'", "STACK": "'stack'", "$END": "end of file",
}


def _describe_expected(expected) -> str:
    words = sorted({_TOKEN_WORDS.get(t, t.lower()) for t in expected})
    if len(words) > 6:
        return ""
    return " (expected " + ", ".join(words) + ")"


_TOKEN_RE = None


def _check_token_count(source: str, filename: str) -> None:
    """Refuse files with more tokens than a pattern file needs, before the (slow) parser runs."""
    import re

    global _TOKEN_RE
    if _TOKEN_RE is None:
        _TOKEN_RE = re.compile(r"#[^\n]*|[A-Za-z0-9_]+|\S")
    count = 0
    for m in _TOKEN_RE.finditer(source):
        if m.group().startswith("#"):
            continue
        count += 1
        if count > MAX_TOKENS:
            pos = m.start()
            line = source.count("\n", 0, pos) + 1
            col = pos - (source.rfind("\n", 0, pos) + 1) + 1
            raise PatternError(f"file has more than {MAX_TOKENS} tokens; a pattern file should be small",
                               Span(line, col), source, filename)


def _lines(source: str) -> list:
    """Lines as the parser counts them: only "\\n" ends a line (str.splitlines also splits at form
    feeds, vertical tabs, U+2028 ... which would put positions on the wrong line)."""
    return source.split("\n")


def _check_name(tok, source: str, filename: str) -> None:
    if len(tok) > MAX_NAME:
        raise PatternError(f"name '{str(tok)[:32]}...' is {len(tok)} characters long (at most {MAX_NAME})",
                           _span(tok), source, filename)


def parse_program(source: str, filename: str = "<string>") -> Program:
    """Parse and index the definitions; resolution happens per pattern."""
    import lark

    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise PatternError(f"file is larger than {MAX_SOURCE_BYTES // 1024} KiB; a pattern file should be small",
                           Span(1, 1), source, filename)
    if "\x00" in source:
        line = source[: source.index("\x00")].count("\n") + 1
        col = source.index("\x00") - (source.rfind("\n", 0, source.index("\x00")) + 1) + 1
        raise PatternError("NUL byte in source", Span(line, col), source, filename)
    depth, worst = 0, 0
    for ch in source:  # LALR parsing is iterative, but our tree walks are not: bound nesting first
        if ch in "([{":
            depth += 1
            worst = max(worst, depth)
        elif ch in ")]}":
            depth -= 1
    if worst > MAX_DEPTH:
        pos = 0
        depth = 0
        for pos, ch in enumerate(source):
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth > MAX_DEPTH:
                break
        line = source.count("\n", 0, pos) + 1
        col = pos - (source.rfind("\n", 0, pos) + 1) + 1
        raise PatternError(f"expression nested more than {MAX_DEPTH} levels deep", Span(line, col), source, filename)
    _check_token_count(source, filename)
    try:
        tree = _parser().parse(source)
    except lark.UnexpectedCharacters as e:
        ch = source[e.pos_in_stream] if e.pos_in_stream < len(source) else "?"
        shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
        if not ch.isascii():  # a look-alike (Cyrillic 'а', fullwidth '（') must not read as 'a' or '('
            import unicodedata

            what = unicodedata.name(ch, "")
            shown += (f" (U+{ord(ch):04X} {what})" if ch.isprintable() and what else
                      f" ({what})" if what else "") + "; names and operators are ASCII"
        raise PatternError(f"unexpected character {shown}", Span(e.line, e.column), source, filename) from None
    except lark.UnexpectedEOF as e:
        lines = _lines(source.rstrip("\r\n"))
        raise PatternError("unexpected end of file" + _describe_expected(e.expected),
                           Span(len(lines), len(lines[-1]) + 1), source, filename) from None
    except lark.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = _lines(source.rstrip("\r\n"))
            raise PatternError("unexpected end of file" + _describe_expected(e.expected),
                               Span(len(lines), len(lines[-1]) + 1), source, filename) from None
        raise PatternError(f"unexpected {str(tok)!r}" + _describe_expected(e.expected),
                           Span(tok.line, tok.column), source, filename) from None
    except lark.LarkError as e:  # pragma: no cover - other lark failures
        raise PatternError(f"syntax error: {e}", Span(1, 1), source, filename) from None

    prog = Program(source, filename)
    for d in tree.children:
        name_tok, params_tree, *layers = d.children
        body = layers[0] if d.data == "definition" else tuple(x for x in layers if x is not None)
        name = str(name_tok)
        _check_name(name_tok, source, filename)
        if name in prog.definitions:
            raise PatternError(f"pattern '{name}' is defined twice", _span(name_tok), source, filename)
        if name in PRIMITIVES or name == "n":
            raise PatternError(f"'{name}' is a built-in name and cannot be redefined", _span(name_tok), source, filename)
        params = []
        seen = set()
        if params_tree is not None:
            for p in params_tree.children:
                if p is None:
                    continue
                pname, default = p.children
                pname_s = str(pname)
                _check_name(pname, source, filename)
                if pname_s in seen:
                    raise PatternError(f"parameter '{pname_s}' is declared twice", _span(pname), source, filename)
                if pname_s == "n" or pname_s in FUNCTIONS:
                    raise PatternError(f"'{pname_s}' is a built-in name and cannot be a parameter",
                                       _span(pname), source, filename)
                seen.add(pname_s)
                params.append(Param(pname_s, default, _span(pname)))
        kind = "pattern" if d.data == "definition" else "stack"
        prog.definitions[name] = Definition(name, tuple(params), body, _span(name_tok), kind)
    if not prog.definitions:
        raise PatternError("no pattern definitions (write: pattern NAME = EXPRESSION)", Span(1, 1), source, filename)
    return prog


# ---------------------------------------------------------------- primitives

FUNCTIONS = ix.FUNCS


@dataclass(frozen=True)
class Prim:
    positional: tuple  # names in positional order
    defaults: dict  # keyword -> default (int) ; absent means required
    build: Callable
    doc: str
    list_args: tuple = ()
    optional: tuple = ()  # may be omitted with no default (builder gets None)


def _local(a, ck):
    w, d = a["w"], a["dilation"]
    ck(w, 0, "local window must be >= 0")
    ck(d, 1, "dilation must be >= 1")
    if d == ix.Const(1):
        return ir.band(ix.make("neg", w), w)
    wd = ix.make("*", w, d)
    return ir.inter([ir.band(ix.make("neg", wd), wd), ir.diagmod(d)])


def _band(a, ck):
    lo, hi = a["lo"], a["hi"]
    if lo is None and hi is None:
        raise _ArgError("band needs lo, hi or both")
    if isinstance(lo, ix.Const) and isinstance(hi, ix.Const) and lo.value > hi.value:
        raise _ArgError(f"band({lo.value}, {hi.value}) is empty: lo must be <= hi")
    if lo is not None and hi is not None:
        ck(ix.make("-", hi, lo), 0, "band needs lo <= hi")
    return ir.band(lo, hi)


def _global(a, ck):
    k, at = a["k"], a["at"]
    if (k is None) == (at is None):
        raise _ArgError("global takes either a count k or at=[positions]")
    if k is not None:
        ck(k, 0, "global count must be >= 0")
        return ir.union([ir.rows(ix.Const(0), k), ir.cols(ix.Const(0), k)])
    parts = []
    for p in at:
        ck(p, 0, "global position must be >= 0")
        p1 = ix.make("+", p, ix.Const(1))
        parts += [ir.rows(p, p1), ir.cols(p, p1)]
    return ir.union(parts)


def _range(kind):
    def build(a, ck):
        lo, hi = a["a"], a["b"]
        ck(lo, 0, f"{kind} start must be >= 0")
        ck(ix.make("-", hi, lo), 0, f"{kind} range must have start <= end")
        return (ir.rows if kind == "queries" else ir.cols)(lo, hi)
    return build


def _sink(a, ck):
    ck(a["k"], 0, "sink count must be >= 0")
    return ir.cols(ix.Const(0), a["k"])


def _stride(a, ck):
    ck(a["s"], 1, "stride must be >= 1")
    return ir.diagmod(a["s"])


def _block(a, ck):
    ck(a["b"], 1, "block size must be >= 1")
    return ir.block(a["b"])


def _summary(a, ck):
    l, c = a["l"], a["c"]
    ck(l, 1, "summary period must be >= 1")
    ck(c, 0, "summary width must be >= 0")
    if isinstance(l, ix.Const) and isinstance(c, ix.Const) and c.value > l.value:
        raise _ArgError(f"summary width c={c.value} must be <= its period l={l.value}")
    ck(ix.make("-", l, c), 0, "summary width must be <= its period (l - c >= 0)")
    return ir.keymod(l, c)


def _rows_mod(a, ck):
    r, o = a["r"], a["o"]
    ck(r, 1, "rows_mod period must be >= 1")
    ck(o, 0, "rows_mod offset must be >= 0")
    if isinstance(r, ix.Const) and isinstance(o, ix.Const) and o.value >= r.value:
        raise _ArgError(f"offset o={o.value} must be < its period r={r.value}")
    ck(ix.make("-", ix.make("-", r, o), ix.Const(1)), 0, "rows_mod offset must be < its period (r - o - 1 >= 0)")
    return ir.rowmod(r, o)


def _fixed(a, ck):
    return ir.union([_block({"b": a["l"]}, ck), _summary(a, ck)])


def _random(a, ck):
    r, b, seed = a["r"], a["block"], a["seed"]
    ck(r, 0, "random count must be >= 0")
    ck(b, 1, "random block size must be >= 1")
    if not isinstance(seed, ix.Const) or not 0 <= seed.value < 2 ** 31:
        raise _ArgError("random seed must be a constant in 0..2**31-1")
    return ir.random(r, b, seed.value)


SELECT_BLOCKS = (16, 32, 64, 128, 256)  # block sizes select() takes: a tile of the kernels divides each
MAX_SELECT = 1024  # selected blocks per query block (the kernels hold one query block's list in registers)


def _select(a, ck):
    k, b, qb = a["k"], a["block"], a["qblock"]
    qb = b if qb is None else qb
    for what, v in (("count k", k), ("block", b), ("qblock", qb)):
        if not isinstance(v, ix.Const):
            raise _ArgError(f"select {what} must be a constant: it sets the shape of the run-time blocks tensor")
    if not 1 <= k.value <= MAX_SELECT:
        raise _ArgError(f"select count k must be from 1 to {MAX_SELECT}, got {k.value}")
    for what, v in (("block", b), ("qblock", qb)):
        if v.value not in SELECT_BLOCKS:
            raise _ArgError(f"select {what} must be a power of two from 16 to 256, got {v.value}")
    return ir.select(k, b, qb)


PRIMITIVES: dict = {
    "all": Prim((), {}, lambda a, ck: ir.All(), "every pair"),
    "none": Prim((), {}, lambda a, ck: ir.Empty(), "no pair"),
    "causal": Prim((), {}, lambda a, ck: ir.band(ix.Const(0), None), "j <= i"),
    "local": Prim(("w",), {"dilation": 1}, _local, "|i - j| <= w*d and (i - j) % d == 0"),
    "band": Prim(("lo", "hi"), {}, _band, "lo <= i - j <= hi", optional=("lo", "hi")),
    "global": Prim(("k",), {}, _global, "i < k or j < k  /  i in S or j in S", list_args=("at",),
                   optional=("k", "at")),
    "sink": Prim(("k",), {}, _sink, "j < k"),
    "queries": Prim(("a", "b"), {}, _range("queries"), "a <= i < b"),
    "keys": Prim(("a", "b"), {}, _range("keys"), "a <= j < b"),
    "stride": Prim(("s",), {}, _stride, "(i - j) % s == 0"),
    "block": Prim(("b",), {}, _block, "i // b == j // b"),
    "summary": Prim(("l", "c"), {}, _summary, "j % l >= l - c"),
    "fixed": Prim(("l", "c"), {}, _fixed, "block(l) | summary(l, c)"),
    "rows_mod": Prim(("r", "o"), {"o": 0}, _rows_mod, "i % r == o"),
    "random": Prim(("r",), {"block": 64, "seed": 0}, _random, "r hashed key blocks per query block"),
    "select": Prim(("k",), {"block": 64}, _select, "k key blocks per query block, chosen at run time (blocks=)",
                   optional=("qblock",)),
}


class _ArgError(Exception):
    pass


# ---------------------------------------------------------------- resolution

class _Resolver:
    def __init__(self, prog: Program, shared: Optional[dict] = None):
        self.prog = prog
        self.checks: list = []
        self.stack: list = []
        # (pattern, arguments) -> (IR, checks): a pattern used twice is resolved once.  check_program
        # shares the memo and the work budget between the definitions of one file.
        self.shared = shared if shared is not None else {"memo": {}, "work": 0}
        self.memo = self.shared["memo"]
        self.layer_memo: dict = {}  # (name, hash, params, checks) -> the layer's Pattern

    def tick(self, node) -> None:
        """Bound the work of resolution: user patterns expand inline, so a few lines that each
        use the previous pattern twice, with new arguments each time, take exponential time."""
        self.shared["work"] += 1
        if self.shared["work"] > MAX_WORK:
            raise self.err(f"pattern expands to more than {MAX_WORK} expression nodes "
                           "(user patterns are expanded inline wherever they are used)", node)

    def err(self, msg: str, node) -> PatternError:
        return PatternError(msg, _span(node) if node is not None else None, self.prog.source, self.prog.filename)

    # integer expressions -------------------------------------------------
    def ints(self, t, env: dict) -> ix.IntExpr:
        import lark

        if isinstance(t, lark.Token):
            raise self.err(f"expected an integer expression, got {str(t)!r}", t)
        self.tick(t)
        k = t.data
        try:
            if k == "int":
                text = str(t.children[0])
                if len(text) > 19 or int(text) > ix.MAX_ABS:
                    raise self.err(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is too large", t)
                return ix.Const(int(text))
            if k == "var":
                name = str(t.children[0])
                if name == "n":
                    return ix.NVar()
                if name in env:
                    return env[name]
                hint = did_you_mean(name, list(env) + ["n"])
                if name in self.prog.definitions or name in PRIMITIVES:
                    raise self.err(f"'{name}' is a pattern, not an integer{hint}", t)
                raise self.err(f"undefined parameter '{name}'{hint}", t)
            if k in ("add", "sub", "mul", "floordiv", "mod"):
                op = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}[k]
                a, b = (self.ints(c, env) for c in t.children)
                if op in ("//", "%") and b == ix.Const(0):
                    raise self.err("division by zero", t.children[1])
                return ix.make(op, a, b)
            if k == "neg":
                return ix.make("neg", self.ints(t.children[0], env))
            if k == "icall":
                name = str(t.children[0])
                args = [self.ints(c, env) for c in t.children[1:] if c is not None]
                if name not in FUNCTIONS:
                    if name in PRIMITIVES or name in self.prog.definitions:
                        raise self.err(f"'{name}' is a pattern, but an integer is expected here", t)
                    raise self.err(f"unknown function '{name}'{did_you_mean(name, FUNCTIONS)}", t)
                lo, hi = FUNCTIONS[name]
                if len(args) < lo or (hi is not None and len(args) > hi):
                    want = f"{lo}" if lo == hi else f"at least {lo}"
                    raise self.err(f"{name}() takes {want} argument{'s' if lo != 1 else ''}, got {len(args)}", t)
                if name == "cdiv" and args[1] == ix.Const(0):
                    raise self.err("division by zero", t)
                if name == "isqrt" and isinstance(args[0], ix.Const) and args[0].value < 0:
                    raise self.err("isqrt of a negative number", t)
                e = ix.make(name, *args)
                if name in ("cdiv",) and not isinstance(e, ix.Const):
                    self.checks.append(Check(args[1], 1, "cdiv divisor must be >= 1", _span(t)))
                return e
            if k == "intlist":
                raise self.err("a list is not allowed here; lists are only for global(at=[...])", t)
        except ix.EvalError as e:
            raise self.err(str(e), t) from None
        raise self.err(f"expected an integer expression, got a {k}", t)

    # pattern expressions -------------------------------------------------
    def pattern(self, t, env: dict):
        import lark

        if isinstance(t, lark.Token):
            raise self.err(f"unexpected {str(t)!r}", t)
        self.tick(t)
        k = t.data
        try:
            if k in ("union", "inter", "diff"):
                return self.chain(t, env)
        except ir.HeadsMismatch as e:
            raise self.err(str(e), t) from None
        if k == "ref":
            return self.call(t.children[0], [], t, env)
        if k == "call":
            return self.call(t.children[0], [c for c in t.children[1:] if c is not None], t, env)
        if k == "heads":
            return self.heads(t, env)
        if k in ("int", "add", "sub", "mul", "floordiv", "mod", "neg", "icall"):
            raise self.err("expected a pattern, got an integer expression", t)
        raise self.err(f"unexpected {k}", t)

    def chain(self, t, env: dict):
        """A left-deep chain `a | b - c | d ...` (or `a & b & c ...`) without recursion: the parser
        nests one node per operator, and printed normal forms of wide unions have thousands.
        Consecutive operators of one kind combine in one call (the normal form is associative)."""
        ops = []
        node = t
        while not isinstance(node, str) and getattr(node, "data", None) in ("union", "inter", "diff") \
                and (node is t or (node.data == "inter") == (t.data == "inter")):
            if node is not t:
                self.tick(node)
            ops.append((node.data, node.children[1]))
            node = node.children[0]
        acc = self.pattern(node, env)
        ops.reverse()
        i = 0
        while i < len(ops):
            kind = ops[i][0]
            run = []
            while i < len(ops) and ops[i][0] == kind:
                run.append(self.pattern(ops[i][1], env))
                i += 1
            if kind == "union":
                acc = ir.union([acc] + run)
            elif kind == "inter":
                acc = ir.inter([acc] + run)
            else:
                for x, (_, node_) in zip(run, ops[i - len(run):i]):
                    if ir.has_select(x):
                        raise self.err("select(...) cannot be subtracted: a run-time selection only adds "
                                       "pairs to a pattern", node_)
                acc = ir.inter([acc] + [ir.neg(x) for x in run])  # a - b - c = a & ~b & ~c
        return acc

    def heads(self, t, env: dict):
        cases = []
        for c in t.children:
            if c is None:
                continue
            lo_t, hi_t, body = c.children
            lo, hi = self.ints(lo_t, env), self.ints(hi_t, env)
            if not isinstance(lo, ix.Const) or not isinstance(hi, ix.Const):
                raise self.err("head ranges must be constants (they cannot depend on n)", c)
            if lo.value > hi.value:
                raise self.err(f"head range {lo.value}..{hi.value} is empty", c)
            cases.append((lo.value, hi.value, self.pattern(body, env), c))
        cases.sort(key=lambda x: x[0])
        expect = 0
        for lo, hi, _, node in cases:
            if lo > expect:
                raise self.err(f"heads {expect}..{lo - 1} have no pattern (ranges must cover 0..H-1)", node)
            if lo < expect:
                raise self.err(f"head range {lo}..{hi} overlaps an earlier range", node)
            expect = hi + 1
        if expect > MAX_HEADS:
            raise self.err(f"more than {MAX_HEADS} heads", t)
        out = []
        for lo, hi, e, _ in cases:
            if isinstance(e, ir.Heads):
                raise self.err("per-head patterns cannot be nested", t)
            out.append(ir.HeadCase(lo, hi, e))
        return ir.Heads(tuple(out))

    def split_args(self, args: list) -> tuple:
        """(positional [(value, node)], keyword {name: (value, node)}) of a call's arguments."""
        pos, kw = [], {}
        for a in args:
            if a.data == "kwarg":
                key = str(a.children[0])
                if key in kw:
                    raise self.err(f"argument '{key}' given twice", a)
                kw[key] = (a.children[1], a)
            else:
                if kw:
                    raise self.err("positional argument after a keyword argument", a)
                pos.append((a.children[0], a))
        return pos, kw

    def call(self, name_tok, args: list, node, env: dict):
        name = str(name_tok)
        pos, kw = self.split_args(args)
        if name in PRIMITIVES:
            return self.primitive(name, PRIMITIVES[name], pos, kw, node, env)
        if name in self.prog.definitions:
            d = self.prog.definitions[name]
            if d.kind == "stack":
                raise self.err(f"'{name}' is a stack of layers, not a pattern; a stack can only be a layer "
                               "of another stack", name_tok)
            return self.user(d, pos, kw, node, env)
        if name in env or name == "n":
            raise self.err(f"'{name}' is an integer parameter, not a pattern", name_tok)
        hint = did_you_mean(name, list(PRIMITIVES) + list(self.prog.definitions))
        raise self.err(f"unknown pattern '{name}'{hint}", name_tok)

    def primitive(self, name: str, prim: Prim, pos, kw, node, env):
        import lark

        names = list(prim.positional) + [k for k in prim.defaults if k not in prim.positional] + list(prim.list_args)
        names += [k for k in prim.optional if k not in names]  # keyword-only, may be omitted (select's qblock)
        if len(pos) > len(prim.positional):
            raise self.err(f"{name}() takes at most {len(prim.positional)} positional argument"
                           f"{'s' if len(prim.positional) != 1 else ''}, got {len(pos)}", node)
        values: dict = {}
        given: dict = {}
        for pname, (val, anode) in zip(prim.positional, pos):
            given[pname] = (val, anode)
        for key, (val, anode) in kw.items():
            if key not in names:
                raise self.err(f"{name}() has no argument '{key}'{did_you_mean(key, names)}", anode)
            if key in given:
                raise self.err(f"{name}() got '{key}' twice", anode)
            given[key] = (val, anode)
        for pname in names:
            if pname in given:
                val, anode = given[pname]
                is_list = isinstance(val, lark.Tree) and val.data == "intlist"
                if pname in prim.list_args:
                    if not is_list:
                        raise self.err(f"{name}() argument '{pname}' must be a list like [0, 5]", anode)
                    items = [self.ints(c, env) for c in val.children if c is not None]
                    if not items:
                        raise self.err(f"{name}() argument '{pname}' must not be empty", anode)
                    values[pname] = items
                else:
                    if is_list:
                        raise self.err(f"{name}() argument '{pname}' must be an integer, not a list", anode)
                    values[pname] = self.ints(val, env)
            elif pname in prim.defaults:
                values[pname] = ix.Const(prim.defaults[pname])
            elif pname in prim.optional or pname in prim.list_args:
                values[pname] = None
            else:
                n_req = len([p for p in prim.positional if p not in prim.optional])
                raise self.err(f"{name}() needs {n_req} argument{'s' if n_req != 1 else ''} "
                               f"({', '.join(prim.positional)}); '{pname}' is missing", node)
        anode_of = {k: v[1] for k, v in given.items()}

        def ck(e: ix.IntExpr, minimum: int, message: str, _node=node):
            argnode = next((anode_of[k] for k, v in values.items() if v is e and k in anode_of), _node)
            if isinstance(e, ix.Const):
                if e.value < minimum:
                    raise self.err(f"{message}, got {e.value}", argnode)
            else:
                self.checks.append(Check(e, minimum, f"{name}(): {message}", _span(argnode)))

        try:
            return prim.build(values, ck)
        except _ArgError as e:
            raise self.err(f"{name}(): {e}", node) from None
        except ix.EvalError as e:
            raise self.err(f"{name}(): {e}", node) from None

    def user(self, d: Definition, pos, kw, node, env):
        return self.user_env(d, pos, kw, node, env)[0]

    def not_recursive(self, d: Definition, node) -> None:
        if d.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(d.name):] + [d.name])
            raise self.err(f"{d.kind} '{d.name}' refers to itself ({chain})", node)

    def arguments(self, d: Definition, pos, kw, node, env) -> dict:
        """A user definition's arguments, evaluated in the caller's environment."""
        if len(pos) > len(d.params):
            raise self.err(f"{d.kind} '{d.name}' takes {len(d.params)} argument"
                           f"{'s' if len(d.params) != 1 else ''}, got {len(pos)}", node)
        names = [p.name for p in d.params]
        given = {}
        for p, (val, anode) in zip(d.params, pos):
            given[p.name] = self.ints(val, env)
        for key, (val, anode) in kw.items():
            if key not in names:
                raise self.err(f"{d.kind} '{d.name}' has no parameter '{key}'{did_you_mean(key, names)}", anode)
            if key in given:
                raise self.err(f"{d.kind} '{d.name}' got '{key}' twice", anode)
            given[key] = self.ints(val, env)
        return given

    def user_env(self, d: Definition, pos, kw, node, env) -> tuple:
        """(IR, parameter values) of a use of pattern d."""
        self.not_recursive(d, node)
        given = self.arguments(d, pos, kw, node, env)
        memo_key = (d.name, tuple(sorted(given.items())))
        if memo_key not in self.memo:
            before = len(self.checks)
            expr, inner = self.instantiate(d, given, node)
            self.memo[memo_key] = (expr, tuple(self.checks[before:]), inner)
            return expr, inner
        expr, checks, inner = self.memo[memo_key]
        self.checks.extend(checks)
        return expr, inner

    def instantiate(self, d: Definition, given: dict, node):
        """(IR, parameter values) of pattern d, or (layers, parameter values) of stack d."""
        self.stack.append(d.name)
        try:
            inner: dict = {}
            for p in d.params:
                if p.name in given:
                    inner[p.name] = given[p.name]
                elif p.default is not None:
                    inner[p.name] = self.ints(p.default, inner)
                else:
                    raise self.err(f"{d.kind} '{d.name}' needs a value for parameter '{p.name}'", node)
            if d.kind == "stack":
                layers: list = []
                for t in d.body:
                    layers += self.layers(t, inner, len(layers))
                return layers, inner
            return self.pattern(d.body, inner), inner
        finally:
            self.stack.pop()

    # stacks of layers ----------------------------------------------------
    def layers(self, t, env: dict, before: int) -> list:
        """The layers a stack item stands for, as Patterns (`before`: layers earlier in the stack)."""
        import lark

        self.tick(t)
        kind = t.data if isinstance(t, lark.Tree) else None
        if kind == "repeat":
            unit, count_t = t.children
            count = self.ints(count_t, env)
            if not isinstance(count, ix.Const):
                raise self.err("a repeat count must be a constant (it cannot depend on n)", count_t)
            if count.value < 0:
                raise self.err(f"a repeat count must be >= 0, got {count.value}", count_t)
            items = self.layers(unit, env, before)
            if before + len(items) * count.value > MAX_LAYERS:
                raise self.err(f"stack has more than {MAX_LAYERS} layers", t)
            return items * count.value
        if kind == "group":
            out: list = []
            for c in t.children:
                if c is not None:
                    out += self.layers(c, env, before + len(out))
            return out
        if kind in ("ref", "call"):
            d = self.prog.definitions.get(str(t.children[0]))
            if d is not None:
                pos, kw = self.split_args([c for c in t.children[1:] if c is not None])
                if d.kind == "stack":  # another stack's layers, in order
                    self.not_recursive(d, t)
                    out = self.instantiate(d, self.arguments(d, pos, kw, t, env), t)[0]
                    if before + len(out) > MAX_LAYERS:
                        raise self.err(f"stack has more than {MAX_LAYERS} layers", t)
                    return out
                start = len(self.checks)
                expr, inner = self.user_env(d, pos, kw, t, env)
                params = tuple((p.name, str(inner[p.name])) for p in d.params)
                return [self.layer_pattern(d.name, expr, params, start)]
        start = len(self.checks)
        expr = self.pattern(t, env)
        if isinstance(expr, (ir.Union, ir.Inter)) and str(expr).startswith("("):
            name = str(expr)[1:-1]
        else:
            name = str(expr)
        if len(name) > LAYER_NAME:
            name = name[:LAYER_NAME - 3] + "..."
        return [self.layer_pattern(name, expr, (), start)]

    def layer_pattern(self, name: str, expr, params: tuple, start: int) -> Pattern:
        """A layer as a Pattern, with the n-dependent checks its resolution recorded."""
        checks = tuple(dict.fromkeys(self.checks[start:]))
        key = (name, ir.ir_hash(expr), params, checks)
        if key not in self.layer_memo:  # repeated layers share one Pattern
            self.layer_memo[key] = Pattern(name, expr, params, checks, self.prog.source, self.prog.filename)
        return self.layer_memo[key]


def resolve(prog: Program, name: Optional[str] = None, overrides: Optional[dict] = None,
            option: str = "") -> Union[Pattern, Stack]:
    """Resolve one definition (default: the last one), its parameters overridden by `overrides`
    (name -> int; bool, float and str values are refused: the CLI parses -D text itself).
    A pattern gives a Pattern, a stack a Stack.

    `option` is how the caller's user spelled the overrides, for error messages: "-D" on the
    command line ("-D x: pattern 'p' has no parameter 'x'"), "" in Python ("parameter w must
    be an integer, got 64.7 (float)")."""
    return _resolve(prog, name, overrides, None, option)


def _shown(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _override(prog: Program, key: str, value, option: str) -> ix.Const:
    """One checked override value."""
    def fail(api_message: str, cli_message: str):
        message = f"{option} {key}={_shown(value) if not isinstance(value, int) else value}: {cli_message}" \
            if option else api_message
        return PatternError(message, None, prog.source, prog.filename)

    try:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            raise TypeError
        value = operator.index(value)  # int, and numpy's (and other libraries') integer types
    except TypeError:
        raise fail(f"parameter {key} must be an integer, got {_shown(value)} ({type(value).__name__})",
                   "value must be an integer") from None
    if abs(value) > ix.MAX_ABS:
        raise fail(f"parameter {key} = {_shown(value, 24)} is too large (at most 2**62 in absolute value)",
                   "value is too large")
    return ix.Const(value)


def _resolve(prog: Program, name: Optional[str], overrides: Optional[dict], shared: Optional[dict],
             option: str = "") -> Pattern:
    if name is None:
        name = list(prog.definitions)[-1]
    if name not in prog.definitions:
        hint = did_you_mean(name, prog.definitions)
        raise PatternError(f"no pattern named '{name}'{hint}; this file defines: {', '.join(prog.definitions)}",
                           None, prog.source, prog.filename)
    d = prog.definitions[name]
    overrides = dict(overrides or {})
    names = [p.name for p in d.params]
    given = {}
    for key, value in overrides.items():
        if key not in names:
            what = f"its parameters are: {', '.join(names)}" if names else "it has no parameters"
            prefix = f"{option} {key}: " if option else ""
            raise PatternError(f"{prefix}pattern '{name}' has no parameter '{key}'{did_you_mean(key, names)}; "
                               f"{what}", None, prog.source, prog.filename)
        given[key] = _override(prog, key, value, option)
    r = _Resolver(prog, shared)
    try:
        expr, env = r.instantiate(d, given, d.body)
        uniq = tuple(dict.fromkeys(r.checks))
        for e in ({x.hash: x.expr for x in expr}.values() if d.kind == "stack" else (expr,)):
            _check_limits(e, d, prog)
            _check_selects(e, d, prog)
    except RecursionError:
        raise PatternError(f"{d.kind} is nested too deeply", d.span, prog.source, prog.filename) from None
    params = tuple((p.name, str(env[p.name])) for p in d.params)
    if d.kind == "stack":
        if not expr:
            raise PatternError(f"stack '{name}' has no layers", d.span, prog.source, prog.filename)
        counts = sorted({p.num_heads for p in expr if p.num_heads is not None})
        if len(counts) > 1:
            raise PatternError(f"stack '{name}' has per-head layers with different head counts "
                               f"({', '.join(map(str, counts))}); a model's layers share one head count",
                               d.span, prog.source, prog.filename)
        return Stack(name, tuple(expr), params, prog.source, prog.filename)
    return Pattern(name, expr, params, uniq, prog.source, prog.filename)


def _int_depth(e) -> int:
    return 1 + max(map(_int_depth, e.args)) if isinstance(e, ix.Op) else 0


def _expr_depth(x) -> int:
    """Operator nesting of a resolved expression: pattern operators plus integer operators.
    Generated code prints about two parentheses a level, and Python allows 200."""
    if isinstance(x, ir.Heads):
        return max(_expr_depth(c.expr) for c in x.cases)
    if isinstance(x, (ir.Union, ir.Inter)):
        return 1 + max(map(_expr_depth, x.items))
    if isinstance(x, ir.Not):
        return 1 + _expr_depth(x.x)
    return 1 + max((_int_depth(e) for e in ir.int_args(x)), default=0)


# lengths at which n-dependent integers are checked to stay within 64 bits
_SAMPLE_LENGTHS = (3, MAX_LENGTH) + tuple(1 << k for k in range(31))


def _bounded_value(e, n: int, memo: dict) -> int:
    """The value of e at length n; OverflowError if it or any intermediate leaves +-2**62."""
    if isinstance(e, ix.Const):
        return e.value
    if isinstance(e, ix.NVar):
        return n
    if id(e) not in memo:  # shared subexpressions (user patterns, band bounds) count once
        v = ix.apply_op(e.op, [_bounded_value(a, n, memo) for a in e.args])
        if abs(v) > ix.MAX_ABS:
            text = str(e)
            text = text if len(text) <= 80 else text[:80] + "..."
            raise OverflowError(f"{text} is {v} at n={n}" if abs(v) < 10 ** 40 else f"{text} is too large at n={n}")
        memo[id(e)] = v
    return memo[id(e)]


def _check_limits(expr, d: Definition, prog: Program) -> None:
    """Reject what would break code generation or overflow 64-bit integers at run time."""
    depth = _expr_depth(expr)
    if depth > MAX_EXPR_DEPTH:
        raise PatternError(f"expression nests {depth} operators deep (at most {MAX_EXPR_DEPTH}); "
                           "split it into named patterns or simplify the arithmetic", d.span, prog.source,
                           prog.filename)
    # Arguments reach kernels and numpy as 64-bit integers; the checks run on Python integers.
    exprs = [e for node in ir.walk(expr) for e in ir.int_args(node) if isinstance(e, ix.Op)]  # stable order
    for n in _SAMPLE_LENGTHS:
        memo: dict = {}
        for e in exprs:
            try:
                _bounded_value(e, n, memo)
            except ix.EvalError:
                continue  # an invalid length: the n-dependent checks reject it at run time
            except OverflowError as err:
                raise PatternError(f"integer overflow: {err}; every value must stay within +-2**62 for "
                                   f"lengths up to n={MAX_LENGTH}", d.span, prog.source, prog.filename) from None


def _check_selects(expr, d: Definition, prog: Program) -> None:
    """One run-time selection per call: every select(...) of a pattern must be the same atom."""
    found = ir.selects(expr)
    if len(found) > 1:
        raise PatternError(f"pattern uses {len(found)} different selections ({', '.join(map(str, found))}); "
                           "a call takes one blocks= tensor, so every select(...) must have the same k, block "
                           "and qblock", d.span, prog.source, prog.filename)


# Errors that the placeholder value 1 for a required parameter can cause by itself.
_PLACEHOLDER_ERRORS = ("must be", "is empty", "division by zero", "isqrt of a negative")


def check_program(prog: Program) -> list:
    """Resolve every definition with its defaults; patterns and stacks with required parameters
    are checked when used.  Returns the resolved patterns and stacks."""
    out = []
    shared = {"memo": {}, "work": 0}  # one work budget for the file; definitions reuse each other's work
    for name, d in prog.definitions.items():
        if all(p.default is not None for p in d.params):
            out.append(_resolve(prog, name, None, shared))
        else:  # check the body with placeholder values so typos are still found
            r = _Resolver(prog, shared)
            given = {p.name: ix.Const(1) for p in d.params if p.default is None}
            try:
                r.instantiate(d, given, d.body)
            except RecursionError:
                raise PatternError(f"{d.kind} is nested too deeply", d.span, prog.source, prog.filename) from None
            except PatternError as e:
                if any(s in e.message for s in _PLACEHOLDER_ERRORS):
                    pass  # a placeholder value may violate a constraint; the use site is checked
                else:
                    raise
    return out
