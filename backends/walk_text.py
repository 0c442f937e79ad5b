"""The exact PyTorch walk's text, printed into every backend's module.

Each pass of the lowering plan gets `_walk_*` (its terms' closed-form key ranges for a range of
query indices, from the same trees as the Triton kernels' loop bounds) and `_pairs_*` (its pairs,
minus earlier passes').  The Triton backend's PyTorch path walks them; every backend's context
parallel plan (patternc.runtime.cp_plan) reads them to decide which key rows each rank needs, so
the reference and flex modules print them too, in `Case`s without kernels.
"""
from __future__ import annotations

from patternc import scalar as S
from patternc.frontend import Pattern
from patternc.intexpr import to_python
from patternc.lower import Pass, heavy_spans, plan
from patternc.printer import formula, mask_expr
from patternc.ranges import Args, query_major

from .common import SELECT_HOST, HostEmitter, bind_args, call_lines, describe_formula, head_cases


def walk_fn(name: str, p: Pass, host: HostEmitter, arg: Args) -> list:
    """`name(a0, a1, r, n, L, LQ, A)`: each term's key index range for query indices [a0, a1] of the
    pass, from the same trees as the kernels' bounds (for the PyTorch path's walk)."""
    rows = []
    for t in p.terms:
        tr = query_major(t, p.space, arg)
        rnd = "None"
        if tr.random is not None:
            rnd = f"({S.python(arg(tr.random.r))}, {S.python(arg(tr.random.b))}, {tr.random.seed})"
        if tr.select is not None:  # the runtime adds the query tile's selected blocks (runtime.walk)
            rnd = '"select"'
        rows.append(f"        # {formula(t.expr())}")
        rows += call_lines("", [S.python(tr.lo), S.python(tr.hi), S.python(tr.applies), rnd], " " * 8)
        rows[-1] += ","
    text = "\n".join(rows)
    return ([f"def {name}(a0: int, a1: int, r: int, n: int, L: int, LQ: int, A: dict) -> list:",
             '    """Each term\'s key range [lo, hi] for query tile [a0, a1], whether it applies, and its random',
             '    blocks (r, block, seed) or "select": the kernels\' bounds, for the PyTorch path."""']
            + bind_args(text, host.table, "A") + ["    return ["] + rows + ["    ]"])


def pairs_fn(name: str, p: Pass, host: HostEmitter) -> list:
    body = mask_expr(p.mask, "i", "j", host.table, hash_fn="random_pick", select=SELECT_HOST)
    sel = ", sel=None" if host.selected else ""
    return ([f"def {name}(i, j, n: int, A: dict{sel}):",
             f'    """This pass\'s pairs: {describe_formula(p.mask)}"""']
            + bind_args(body, host.table, "A") + [f"    return {body}"])


def space_fields(p: Pass, host: HostEmitter) -> str:
    if p.space.kind == "diag":
        return f", m={host.arg(p.space.m)}"
    if p.space.kind == "keys":
        return f", l={host.arg(p.space.l)}, c={host.arg(p.space.c)}"
    return ""


def heavy_lambda(spans: list) -> str:
    return "lambda n: [" + ", ".join(f"({to_python(a)}, {to_python(b)})" for a, b in spans) + "]"


def walk_cases(pattern: Pattern, host: HostEmitter) -> tuple:
    """(walk and pairs functions, `cases=` text) of a module without kernels: each pass's space,
    walk, pairs and global rows and columns, as the Triton backend prints them."""
    arg = Args(host.table)
    cases = head_cases(pattern)
    walks: list = []
    case_rows = []
    for ci, (h0, h1, expr) in enumerate(cases):
        passes = []
        for pi, p in enumerate(plan(expr).passes):
            tag = f"c{ci}_p{pi}" if len(cases) > 1 else f"p{pi}"
            walks.append("\n".join(walk_fn(f"_walk_{tag}", p, host, arg)))
            walks.append("\n".join(pairs_fn(f"_pairs_{tag}", p, host)))
            fields = [f'"{p.space.kind}"{space_fields(p, host)}', f"walk=_walk_{tag}", f"mask=_pairs_{tag}"]
            for major in ("q", "k"):
                if heavy_spans(p, major):
                    fields.append(f"heavy_{major}={heavy_lambda(heavy_spans(p, major))}")
            passes.append(call_lines("Pass", fields, " " * 12))
        last = "None" if h1 is None else str(h1)
        case_rows.append(f"        Case({h0}, {last}, (\n" + "".join("\n".join(x) + ",\n" for x in passes) + "        )),")
    return walks, "(\n" + "\n".join(case_rows) + "\n    )"
