"""`select(k, block=b)`: the language, the semantics with a run-time selection, and the analyses of a
bounded term (static part ... static part + k*b per row), each against brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest

from patternc import ir, semantics
from patternc.analysis import analyze
from patternc.errors import PatternError
from patternc.lower import plan

from conftest import resolve_source

NSA = "causal & (sink(4) | local(12) | select(3, block=16))"


def random_blocks(rng, n: int, k: int, b: int, qb: int, heads: int = 1) -> np.ndarray:
    """(heads, ceil(n/qb), k) blocks with duplicates, -1 slots and any key block."""
    nkb = -(-n // b)
    out = rng.integers(-1, nkb, size=(heads, -(-n // qb), k))
    out[..., -1] = out[..., 0]  # a duplicate in every row
    return out


def brute(expr, n: int, sel: np.ndarray) -> np.ndarray:
    """The mask by the definition, pair by pair: i may attend j when the static predicate holds
    or (with select) j's block is listed for i's query block and the outer terms allow it."""
    out = np.zeros((n, n), bool)
    (atom,) = ir.selects(expr)
    k, b, qb = (e.value for e in ir.int_args(atom))
    static = semantics.dense_mask_numpy(ir.static_part(expr), n)
    outer = semantics.dense_mask_numpy(ir.outer_part(expr), n)
    for i in range(n):
        for j in range(n):
            out[i, j] = static[i, j] or (outer[i, j] and (j // b) in set(sel[i // qb].tolist()))
    return out


# ---------------------------------------------------------------- language


def test_normal_form_printing_and_hash():
    p = resolve_source("select(4, block=32)")
    assert p.expr == ir.Select(*(ir.Const(v) for v in (4, 32, 32))) and str(p.expr) == "select(4, block=32)"
    q = resolve_source("select(4, block=32, qblock=16)")
    assert str(q.expr) == "select(4, block=32, qblock=16)" and q.hash != p.hash
    assert resolve_source(str(q.expr)).expr == q.expr  # prints valid source
    assert resolve_source("select(2) | causal").expr == resolve_source("causal | select(2, block=64)").expr
    nsa = resolve_source(NSA).expr
    assert resolve_source(str(nsa)).expr == nsa
    assert ir.static_part(nsa) == resolve_source("causal & (sink(4) | local(12))").expr
    assert ir.outer_part(nsa) == resolve_source("causal").expr


@pytest.mark.parametrize("src,message", [
    ("select(2, block=24)", "select(): select block must be a power of two from 16 to 256, got 24"),
    ("select(2, block=512)", "select block must be a power of two from 16 to 256, got 512"),
    ("select(2, qblock=8)", "select qblock must be a power of two from 16 to 256, got 8"),
    ("select(0)", "select count k must be from 1 to 1024, got 0"),
    ("select(n // 64)", "select count k must be a constant"),
    ("select(2, seed=1)", "select() has no argument 'seed'"),
    ("select(2, 64, 32)", "takes at most 1 positional argument"),
    ("causal - select(2)", "select(...) cannot be subtracted"),
    ("select(2) | select(3)", "2 different selections"),
    ("heads { 0..1: select(2), 2..3: select(2, block=32) }", "2 different selections"),
])
def test_argument_errors(src, message):
    with pytest.raises(PatternError) as e:
        resolve_source(src)
    assert message in e.value.message


def test_parameters_and_per_head_use():
    p = resolve_source("pattern p(kk = 8, b = 32) = causal & (local(b) | select(kk, block=b))", kk=2)
    assert str(ir.selects(p.expr)[0]) == "select(2, block=32)"
    h = resolve_source("heads { 0..1: local(4) | select(2, block=16), 2..3: local(4) }")
    assert len(ir.selects(h.expr)) == 1 and not ir.has_select(h.expr.cases[1].expr)


def test_lowering_puts_the_selected_term_last():
    pl = plan(resolve_source(NSA).at(300))
    (p,) = pl.passes
    assert [bool(t.selects) for t in p.terms] == [False, False, True]
    assert str(pl.select) == "select(3, block=16)" and p.terms[-1].lo == ir.Const(0)


# ---------------------------------------------------------------- semantics


@pytest.mark.parametrize("src,n", [(NSA, 77), ("select(2, block=16, qblock=32) | local(3)", 100),
                                   ("local(20) & select(4, block=16)", 64)])
def test_allowed_with_a_selection_matches_the_definition(src, n):
    rng = np.random.default_rng(0)
    p = resolve_source(src)
    (atom,) = ir.selects(p.expr)
    k, b, qb = (e.value for e in ir.int_args(atom))
    sel = random_blocks(rng, n, k, b, qb)[0]
    m = semantics.dense_mask_numpy(p.at(n), n, selection=sel)
    assert (m == brute(p.at(n), n, sel)).all()
    import torch

    assert (semantics.dense_mask(p.at(n), n, selection=torch.from_numpy(sel)).numpy() == m).all()


def test_allowed_without_a_selection_is_a_clear_error():
    with pytest.raises(semantics.SelectionNeeded, match=r"select\(3, block=16\) is chosen at run time"):
        semantics.dense_mask_numpy(resolve_source(NSA).at(50), 50)


# ---------------------------------------------------------------- analyses


@pytest.mark.parametrize("src,n,heads", [(NSA, 77, 1), (NSA, 200, 3), ("local(5) | select(2, block=16)", 90, 1),
                                         ("causal & (local(40) | select(8, block=16))", 64, 1),
                                         ("heads { 0..1: causal & select(1, block=16), 2..2: causal & local(3) }",
                                          50, None)])
def test_nnz_range_against_brute_force(src, n, heads):
    p = resolve_source(src)
    a = analyze(p, n, heads=heads, tile=16)
    H = a.heads
    e = p.at(n)
    per_head = [e.for_head(h) for h in range(H)] if isinstance(e, ir.Heads) else [e] * H
    (atom,) = ir.selects(p.expr)
    k, b, qb = (x.value for x in ir.int_args(atom))
    lo = hi = 0
    for x in per_head:
        s = int(semantics.dense_mask_numpy(ir.static_part(x), n).sum())
        o = int(semantics.dense_mask_numpy(ir.outer_part(x), n).sum())
        lo += s
        hi += min(s + k * b * n, o)
    sb = a.selection
    assert (a.nnz, sb.nnz_max) == (lo, hi)
    assert a.flops_fwd == 4 * lo * 128 and sb.flops_max == (4 * hi * 128, 10 * hi * 128)
    d = a.to_dict()["select"]
    assert d["nnz_range"] == [lo, hi] and d["flops_fwd_range"] == [4 * lo * 128, 4 * hi * 128]
    json.dumps(a.to_dict())
    # every selection's pairs lie in the range, and the empty selection reaches its low end
    rng = np.random.default_rng(1)
    for _ in range(3):
        got = sum(int(semantics.dense_mask_numpy(x, n, selection=random_blocks(rng, n, k, b, qb)[0]).sum())
                  for x in per_head)
        assert lo <= got <= hi
    empty = np.full((-(-n // qb), k), -1)
    assert sum(int(semantics.dense_mask_numpy(x, n, selection=empty).sum()) for x in per_head) == lo


def test_closed_form_ranges_hold_at_every_length():
    import sympy

    p = resolve_source(NSA)
    for n in (5, 40, 333, 4096):
        a = analyze(p, n)
        sym = sympy.Symbol("n", integer=True, positive=True)
        lo = sympy.sympify(a.nnz_formula, locals={"n": sym}).subs(sym, n)
        hi = sympy.sympify(a.selection.nnz_max_formula, locals={"n": sym}).subs(sym, n)
        assert (int(lo), int(hi)) == (a.nnz, a.selection.nnz_max)


def test_tiles_reach_and_empty_rows_are_the_static_parts():
    p = resolve_source(NSA)
    a = analyze(p, 256, tile=32)
    static = analyze(resolve_source("causal & (sink(4) | local(12))"), 256, tile=32)
    assert (a.tiles, a.tile_efficiency, a.layers_to_full_reach) == \
        (static.tiles, static.tile_efficiency, static.layers_to_full_reach)
    lone = analyze(resolve_source("causal & select(2, block=16)"), 64)
    assert lone.nnz == 0 and lone.empty_rows == 0  # a selection can fill every row of the outer pattern
    table = a.format_table()
    assert "static part ... + 3x16 selected keys per row" in table and "at most" in table


def test_cli_check_show_mask_and_json(cli, tmp_path):
    f = tmp_path / "nsa.attn"
    f.write_text(f"pattern nsa = {NSA}\n")
    r = cli("check", f)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = cli("show", f, "--n", 64, "--tile", 16)
    assert r.returncode == 0 and "':' selected blocks may fall here" in r.stdout
    tiles = r.stdout.split("selected blocks only:\n")[1].split()
    assert tiles[3] == "+s++" and tiles[0] == "+..."  # the region lies below the window, beside the sink
    r = cli("mask", f, "--n", 64, "-o", tmp_path / "m.npy")
    assert r.returncode == 1 and "depends on the run-time blocks= tensor" in r.stderr
    r = cli("analyze", f, "--n", 300, "--json")
    d = json.loads(r.stdout)
    assert d["select"]["nnz_range"][0] == d["nnz"] and d["select"]["k"] == 3
    r = cli("show", f, "--n", 96, "--tile", 32, "-o", tmp_path / "nsa.png")
    assert r.returncode == 0 and (tmp_path / "nsa.png").read_bytes()[:4] == b"\x89PNG"
