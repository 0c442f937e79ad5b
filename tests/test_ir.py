"""The IR: normal form, hashing, printing back to source, and meaning preserved throughout."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from patternc import ir, semantics
from patternc.intexpr import Const, NVar, make

from conftest import resolve_source


def expr_of(src: str):
    return resolve_source(src).expr


def mask(expr, n: int, head: int = 0) -> np.ndarray:
    return semantics.dense_mask_numpy(ir.substitute_n(expr, n), n, head=head)


# ---------------------------------------------------------------- normal form

@pytest.mark.parametrize("src,normal", [
    # unions flatten, sort and drop duplicates
    ("causal | stride(3) | causal", "(causal | stride(3))"),
    ("stride(3) | causal", "(causal | stride(3))"),
    ("(local(1) | sink(2)) | (stride(3) | local(1))", "(local(1) | keys(0, 2) | stride(3))"),
    # local(a) | local(b) = local(max(a, b)); touching bands merge, separate ones do not
    ("local(2) | local(5)", "local(5)"),
    ("band(0, 3) | band(4, 9)", "band(0, 9)"),
    ("band(0, 3) | band(5, 9)", "(band(0, 3) | band(5, 9))"),
    ("band(lo=-3) | causal", "band(lo=-3)"),
    # intersections of bands are bands: causal & local(w) = band(0, w)
    ("causal & local(4)", "band(0, 4)"),
    ("local(4) & causal", "band(0, 4)"),
    ("local(3) & local(5)", "local(3)"),
    ("causal & band(lo=2)", "band(lo=2)"),
    # constant folding and identities
    ("local(2 * 3 + 1)", "local(7)"),
    ("local(10 // 3 - 10 % 3)", "local(2)"),
    ("block(1)", "local(0)"),
    ("stride(1)", "all"),
    ("summary(4, 0)", "none"),
    ("summary(4, 4)", "all"),
    ("keys(3, 3)", "none"),
    ("random(0)", "none"),
    ("all | stride(2)", "all"),
    ("none | causal", "causal"),
    ("none & causal", "none"),
    ("all & causal", "causal"),
    ("local(3) - local(3)", "none"),
    ("causal - (all - stride(2))", "(causal & stride(2))"),
    ("causal | (all - causal)", "all"),
    # intervals of global/sink/queries merge
    ("sink(2) | sink(5)", "keys(0, 5)"),
    ("queries(0, 3) | queries(2, 8)", "queries(0, 8)"),
    ("global(at=[3, 1, 2])", "(keys(1, 4) | queries(1, 4))"),
    ("random(2)", "random(2, block=64, seed=0)"),
    # row classes: one modulus is all rows; two different classes of one modulus share none
    ("rows_mod(1)", "all"),
    ("rows_mod(3)", "rows_mod(3, 0)"),
    ("rows_mod(2, 1) & rows_mod(2, 0)", "none"),
    ("rows_mod(2, 1) & rows_mod(2, 1) & causal", "(causal & rows_mod(2, 1))"),
])
def test_normal_form(src, normal):
    assert str(expr_of(src)) == normal


def test_normal_form_structure():
    assert expr_of("causal & local(4)") == ir.Band(Const(0), Const(4))
    assert expr_of("local(2) | local(5)") == ir.Band(Const(-5), Const(5))
    u = expr_of("(stride(2) | (block(4) | stride(2))) | sink(1)")
    assert isinstance(u, ir.Union) and len(u.items) == 3
    assert not any(isinstance(x, ir.Union) for x in u.items)  # flat
    i = expr_of("(stride(2) & (block(4) & stride(2))) & summary(4, 1)")
    assert isinstance(i, ir.Inter) and len(i.items) == 3
    assert expr_of("local(n // 2) | local(n // 2)") == ir.Band(make("neg", make("//", NVar(), Const(2))),
                                                                make("//", NVar(), Const(2)))


def test_equal_patterns_hash_equal():
    groups = [
        ["causal | local(3)", "local(3) | causal", "(causal | local(3)) | local(1)"],
        ["causal & local(4)", "band(0, 4)", "local(4) & band(lo=0)"],
        ["block(2) | stride(3) | sink(1)", "sink(1) | (stride(3) | block(2))"],
        ["local(n // 4)", "local((n // 4))", "local(n // 4) | local(n // 4)"],
    ]
    hashes = []
    for g in groups:
        hs = {resolve_source(s).hash for s in g}
        assert len(hs) == 1, g
        hashes.append(hs.pop())
    assert len(set(hashes)) == len(groups)  # different patterns, different hashes
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes)


def test_hash_stable_across_processes():
    """Caches and generated headers use the hash: it must not depend on PYTHONHASHSEED."""
    src = "causal & (local(7) | stride(8) | random(2, block=16, seed=3)) | sink(n // 8)"
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import resolve_source; "
            f"print(resolve_source({src!r}).hash)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed), check=True).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {resolve_source(src).hash}


# ---------------------------------------------------------------- printing back to source

EXAMPLES = [
    "causal", "all", "none", "local(128)", "local(4, dilation=3)", "band(-2, 9)", "band(lo=3)", "band(hi=-2)",
    "causal & (local(127) | stride(128))",
    "causal & (local(isqrt(n)) | stride(isqrt(n)))",
    "causal & (block(64) | summary(64, 8))", "fixed(32, 4)",
    "local(256) | global(16) | random(3, block=64, seed=7)",
    "local(512) | global(at=[0, 100, 1000])",
    "causal & (sink(4) | local(1024))",
    "local(10) - stride(3)", "(local(20) & block(32)) - local(0)",
    "causal | (queries(0, 20) & keys(0, 20))",
    "queries(2, 9) & queries(n // 4, n)",
    "band(-(n // 3), cdiv(n, 4)) | keys(n - 8, n)",
    "local(min(n // 2, 64), dilation=max(2, n // 100))",
    "heads { 0..1: causal & local(8), 2..3: causal & stride(4), 4..7: local(2) | sink(1) }",
    "causal & heads { 0..0: local(2), 1..1: all - stride(2) }",
    "all - (causal | sink(3))",
]


@pytest.mark.parametrize("src", EXAMPLES)
def test_str_round_trips_to_the_same_normal_form(src):
    e = expr_of(src)
    again = expr_of(str(e))
    assert again == e, f"{src}\n  printed: {e}\n  reparsed: {again}"
    assert ir.ir_hash(again) == ir.ir_hash(e)
    assert str(again) == str(e)


def _example_patterns() -> list:
    from patternc.frontend import parse_program

    from conftest import ROOT

    out = []
    for f in sorted((ROOT / "examples").glob("*.attn")):
        prog = parse_program(f.read_text(), str(f))
        out += [(f.name, name) for name, d in prog.definitions.items() if all(p.default is not None for p in d.params)]
    return out


@pytest.mark.parametrize("file,name", _example_patterns())
def test_example_files_round_trip(file, name):
    from conftest import ROOT

    got = resolve_source((ROOT / "examples" / file).read_text(), name)
    for p in getattr(got, "distinct", (got,)):  # a stack: each of its layer patterns
        again = expr_of(str(p.expr))
        assert again == p.expr, f"{file}:{name}\n  printed: {p.expr}\n  reparsed: {again}"
        parts = (ir.static_part, ir.outer_part) if ir.has_select(p.expr) else (lambda e: e,)  # select: its bounds
        for n in (50, 129):
            for part in parts:
                np.testing.assert_array_equal(mask(part(again), n, head=0), mask(part(p.expr), n, head=0))


@pytest.mark.parametrize("src", EXAMPLES)
def test_substitute_n_leaves_only_constants(src):
    e = expr_of(src)
    for n in (50, 300):
        concrete = ir.substitute_n(e, n)
        assert not ir.depends_on_length(concrete)
        for node in ir.walk(concrete):
            assert all(isinstance(a, Const) for a in ir.int_args(node))


# ---------------------------------------------------------------- property: meaning survives

_ATOMS = [
    ("causal", lambda i, j, n: j <= i),
    ("local(2)", lambda i, j, n: abs(i - j) <= 2),
    ("local(1, dilation=2)", lambda i, j, n: abs(i - j) <= 2 and (i - j) % 2 == 0),
    ("band(-1, 3)", lambda i, j, n: -1 <= i - j <= 3),
    ("band(lo=4)", lambda i, j, n: i - j >= 4),
    ("stride(3)", lambda i, j, n: (i - j) % 3 == 0),
    ("block(4)", lambda i, j, n: i // 4 == j // 4),
    ("sink(2)", lambda i, j, n: j < 2),
    ("global(1)", lambda i, j, n: i < 1 or j < 1),
    ("queries(3, n - 2)", lambda i, j, n: 3 <= i < n - 2),
    ("keys(n // 2, n)", lambda i, j, n: j >= n // 2),
    ("summary(5, 2)", lambda i, j, n: j % 5 >= 3),
    ("rows_mod(3, 2)", lambda i, j, n: i % 3 == 2),
    ("local(n // 4)", lambda i, j, n: abs(i - j) <= n // 4),
    ("all", lambda i, j, n: True),
    ("none", lambda i, j, n: False),
]


def _trees():
    leaf = st.sampled_from(_ATOMS)

    def combine(children):
        def node(op, a, b):
            sa, fa = a
            sb, fb = b
            if op == "|":
                return f"({sa} | {sb})", lambda i, j, n: fa(i, j, n) or fb(i, j, n)
            if op == "&":
                return f"({sa} & {sb})", lambda i, j, n: fa(i, j, n) and fb(i, j, n)
            return f"({sa} - {sb})", lambda i, j, n: fa(i, j, n) and not fb(i, j, n)
        return st.builds(node, st.sampled_from("|&-"), children, children)

    return st.recursive(leaf, combine, max_leaves=7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees(), n=st.sampled_from([6, 11, 16]))
def test_normal_form_keeps_meaning_and_round_trips(tree, n):
    src, pred = tree
    e = expr_of(src)
    want = np.array([[pred(i, j, n) for j in range(n)] for i in range(n)], dtype=bool)
    np.testing.assert_array_equal(mask(e, n), want, err_msg=f"{src} -> {e}")
    again = expr_of(str(e))
    assert again == e, f"{src}\n  printed: {e}\n  reparsed: {again}"
