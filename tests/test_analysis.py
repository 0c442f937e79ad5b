"""`analyze`: the combined report, per-head patterns, errors, output formats and speed."""
from __future__ import annotations

import json

import numpy as np
import pytest

import patternc
from patternc import semantics
from patternc.analysis import Analysis, analyze
from patternc.errors import PatternError

from conftest import ROOT, resolve_source
from test_cost import EXAMPLES
from test_tiles import brute as brute_tiles
from work import counted

REQUIRED = ("nnz", "density", "nnz_formula", "flops_fwd", "flops_bwd", "order", "tile_efficiency", "empty_rows",
            "layers_to_full_reach", "metadata_bytes", "kernel_tile_efficiency", "n", "heads", "tile", "pattern",
            "params", "ir_hash")


@pytest.mark.parametrize("src,n,tile", [("causal & (local(5) | stride(8))", 100, 16),
                                        ("local(4) | global(2) | random(2, block=8)", 77, 32),
                                        ("causal & fixed(8, 2)", 64, 64)])
def test_numbers_match_brute_force(src, n, tile):
    p = resolve_source(src)
    a = analyze(p, n, tile=tile, head_dim=64)
    m = semantics.dense_mask_numpy(p.at(n), n)
    nnz = int(m.sum())
    assert a.nnz == nnz and a.density == pytest.approx(nnz / n / n)
    assert a.flops_fwd == 4 * nnz * 64 and a.flops_bwd == 10 * nnz * 64
    st = brute_tiles(m, tile, tile)
    assert a.tiles == {"empty": int((st == 0).sum()), "partial": int((st == 1).sum()),
                       "full": int((st == 2).sum()), "total": st.size}
    rows = np.repeat(np.minimum(n, np.arange(1, st.shape[0] + 1) * tile) - np.arange(st.shape[0]) * tile, 1)
    visited = int(((st > 0) * np.outer(rows, rows)).sum())
    assert a.tile_efficiency == pytest.approx(nnz / visited)
    assert a.empty_rows == 0 and a.reach_decided
    d = a.to_dict()
    for key in REQUIRED:
        assert key in d, key
    k = d["kernel_tile_efficiency"]  # filled in by the Triton backend: its own visited tiles
    assert d["metadata_bytes"] == 0 and (k is None or 0 < k <= 1)
    json.dumps(d)


def test_dict_values_and_formula():
    p = resolve_source("pattern w(w = 8) = local(w)")
    a = analyze(p, 1000, tile=64)
    d = a.to_dict()
    assert d["pattern"] == "w" and d["params"] == {"w": "8"} and d["ir_hash"] == p.hash
    assert d["n"] == 1000 and d["heads"] == 1 and d["tile"] == 64 and d["head_dim"] == 128
    assert d["nnz"] == 17 * 1000 - 8 * 9 and d["order"] == "O(n·w)"
    assert d["nnz_formula"] == "Piecewise((n**2, n <= 9), (17*n - 72, True))"
    assert d["layers_to_full_reach"] == -(-999 // 8) and d["causal"] is False
    assert analyze(resolve_source("random(2)"), 256).to_dict()["nnz_formula"] == "no closed form"
    assert analyze(p, 100, tile=(32, 16)).to_dict()["tile"] == [32, 16]


def test_per_head_patterns():
    p = resolve_source("heads { 0..1: causal & local(3), 2..3: random(2, block=4, seed=1) | sink(n // 8) }")
    a = analyze(p, 64, tile=16)
    assert a.heads == 4 and len(a.per_head) == 2
    masks = [semantics.dense_mask_numpy(p.at(64), 64, head=h) for h in range(4)]
    assert a.nnz == sum(int(m.sum()) for m in masks)
    assert a.density == pytest.approx(a.nnz / (4 * 64 * 64))
    assert a.per_head[0].heads == (0, 1) and a.per_head[0].nnz == int(masks[0].sum())
    assert a.per_head[0].layers_to_full_reach == 21  # causal band of 3: ceil(63 / 3)
    union = masks[0] | masks[2]  # a layer depends on a pair when any head allows it
    from test_reach import brute_layers
    assert a.layers_to_full_reach == brute_layers(union)
    d = a.to_dict()
    assert [h["heads"] for h in d["per_head"]] == [[0, 1], [2, 3]]
    assert "per head:" in a.format_table()
    assert analyze(p, 64, heads=4).heads == 4
    with pytest.raises(PatternError, match="defines 4 heads .* heads=3"):
        analyze(p, 64, heads=3)


def test_same_pattern_on_several_heads_scales_totals():
    p = resolve_source("causal")
    one, four = analyze(p, 128, tile=32), analyze(p, 128, heads=4, tile=32)
    assert four.nnz == 4 * one.nnz and four.flops_fwd == 4 * one.flops_fwd
    assert four.density == one.density and four.tile_efficiency == one.tile_efficiency
    assert four.tiles["total"] == 4 * one.tiles["total"]


def test_empty_rows_are_prominent():
    a = analyze(resolve_source("causal - local(0) - queries(5, 8)"), 20)
    assert a.empty_rows == 4 and a.empty_rows_first == [0, 5, 6, 7]
    table = a.format_table()
    assert table.startswith("WARNING: 4 query rows have no allowed key (first: 0, 5, 6, 7)")
    assert a.layers_to_full_reach is None and a.reach_decided
    h = analyze(resolve_source("heads { 0..0: causal, 1..2: causal - local(0) }"), 8)
    assert h.empty_rows == 2 and h.empty_rows_first == [[1, 0], [2, 0]]
    assert "head 1 row 0" in h.format_table().splitlines()[0]


def test_table_is_aligned():
    table = analyze(resolve_source("local(16) | global(2)"), 500).format_table()
    lines = [ln for ln in table.splitlines() if ln]
    col = len(lines[0]) - len(lines[0][len("pattern"):].lstrip())  # values start in one column
    assert all(len(ln) > col and ln[col - 2:col] == "  " and ln[col] != " " for ln in lines)
    for label in ("allowed pairs (nnz)", "density", "nnz(n)", "order", "flops fwd", "flops bwd", "tile efficiency",
                  "empty query rows", "layers to full reach", "metadata bytes"):
        assert any(ln.startswith(label) for ln in lines), label


def test_bad_arguments():
    p = resolve_source("causal")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(PatternError):
            analyze(p, bad)
    with pytest.raises(PatternError):
        analyze(p, 16, tile=0)
    with pytest.raises(PatternError):
        analyze(p, 16, heads=0)
    with pytest.raises(PatternError, match="window"):
        analyze(resolve_source("local(n - 10)"), 5)


def test_public_api():
    a = patternc.analyze("pattern x = causal & local(4)", 64, tile=16)
    assert isinstance(a, Analysis) and a.nnz == 64 * 5 - 10


# Calls the analysis makes at n = 2^20 (tests/work.py): a few times what it made when measured, a
# pattern's first analysis included (16-220 thousand; fixed(isqrt(n), 8)'s formula text alone takes
# ~1.1 million, the same at any n).  A loop per row at 2^20 adds a million calls per call it makes.
MILLION_CALLS = {"fixed": 2_500_000}
MILLION_CALLS_DEFAULT = 600_000


@pytest.mark.parametrize("name", ["longformer", "strided"])
def test_a_million_tokens_without_per_row_work(name):
    """At n = 2^20 the analysis works on ranges of rows and on tiles, never row by row or pair by
    pair: catches a regression to a per-row loop (a million calls) or to the dense evaluator."""
    p = resolve_source(EXAMPLES[name])
    analyze(p, 4096)  # warm imports (sympy) once; the count below is the analysis itself
    with counted() as work:
        a = analyze(p, 1 << 20)
    assert work.pairs == 0 and work.calls < MILLION_CALLS_DEFAULT, work
    assert a.reach_decided and a.layers_to_full_reach == 2
    assert a.nnz == {"longformer": 545 * (1 << 20) - 74256, "strided": 1609564672}[name]
    assert a.order == {"longformer": "O(n)", "strided": "O(n^1.5)"}[name]


def test_every_example_at_a_million():
    """Every example at 2^20 stays within its call budget and evaluates no pair densely: catches
    any part of the analysis (counts, tiles, reach, live keys) going per row or pair by pair."""
    for name, src in EXAMPLES.items():
        with counted() as work:
            a = analyze(resolve_source(src), 1 << 20)
        assert work.pairs == 0 and work.calls < MILLION_CALLS.get(name, MILLION_CALLS_DEFAULT), (name, work)
        assert a.reach_decided and a.empty_rows == 0, name
        assert (a.nnz_formula is None) == (name == "bigbird"), name


def test_kernel_plan_names_passes_and_split_global_rows():
    """Lowering's part of the report comes from the API, which composes it (the analysis itself
    never asks the code generator)."""
    analyze = patternc.analyze
    assert patternc.analysis.analyze(resolve_source("causal"), 64).kernel_plan == ()
    lf = analyze(resolve_source("pattern p = local(256) | global(16)"), 65536)
    assert lf.kernel_plan == ("pass 0: tokens in order, 3 terms; global rows 0..15 split into chunks; "
                              "global key columns 0..15 split into chunks",)
    fixed = analyze(resolve_source("pattern p = causal & fixed(128, 8)"), 16384)
    assert len(fixed.kernel_plan) == 3 and "keys restricted to columns j % 128 >= 128 - 8" in fixed.kernel_plan[1]
    assert fixed.kernel_plan[2].startswith("forward: one kernel walks passes 0..1")
    assert "global" not in " ".join(fixed.kernel_plan)
    strided = analyze(resolve_source("pattern p = causal & (local(127) | stride(128))"), 16384)
    assert len(strided.kernel_plan) == 2  # residue classes: other query tiles, separate launches
    late = analyze(resolve_source("pattern p = causal & (local(9) | queries(n - 5, n))"), 100)
    assert late.kernel_plan[0].endswith("global rows 95..99 split into chunks")
    d = lf.to_dict()
    assert d["kernel_plan"] == list(lf.kernel_plan) and json.dumps(d)
    assert "kernel plan" in lf.format_table()


def test_analysis_says_whether_gradients_are_bit_exact():
    """The report names the backward's dq strategy, the same rule the Triton module uses."""
    analyze = patternc.analyze
    for src, atomic in (("local(256) | global(16)", False), ("causal", False), ("local(64, dilation=4)", False),
                        ("causal & (local(127) | stride(128))", True),
                        ("local(127) | global(128) | random(3, block=64)", True),
                        ("heads { 0..0: local(8), 1..1: random(2, block=16) }", True)):
        p = resolve_source(f"pattern p = {src}")
        a = analyze(p, 4096)
        assert a.atomic_dq is atomic, src
        assert a.to_dict()["bit_exact_gradients"] == ("only with PATTERNC_DETERMINISTIC=1" if atomic else "yes")
        assert ("added atomically" in a.format_table()) is atomic
        assert patternc.load(p, backend="triton").SPEC.schedule.fused_dq == atomic, src


# ---------------------------------------------------------------- issues users reported

LONGNET_SMALL = "pattern p(w = 8, r1 = 2, r2 = 4) = local(w) | local(w, dilation=r1) | local(w, dilation=r2)"


def _brute_nnz(p, n: int) -> int:
    e = p.at(n)
    heads = e.cases if hasattr(e, "cases") else None
    if heads:
        return sum((c.hi - c.lo + 1) * int(semantics.dense_mask_numpy(c.expr, n).sum()) for c in heads)
    return int(semantics.dense_mask_numpy(e, n).sum())


@pytest.mark.parametrize("src,order,lead", [
    ("pattern p(w = 16, g = 4) = local(w) | global(g)", "O(n·(w + g))", 41),  # 2w + 2g + 1 keys per row
    (LONGNET_SMALL, "O(n·w)", None),
    ("pattern p(w = 4, r1 = 3, r2 = 5) = local(w, dilation=r1) | local(w, dilation=r2)", "O(n·w)", None),
    ("pattern p(sinks = 4, w = 20) = causal & (sink(sinks) | local(w))", "O(n·(sinks + w))", 25),
])
def test_order_of_unions_comes_from_the_leading_term(src, order, lead):
    """The order is the leading term of the closed form in n (Longformer used to read O(n·w·g),
    a union of dilated windows O(n/r1/r2)); checked against brute-force counts at several n."""
    p = resolve_source(src)
    a = analyze(p, 512, tile=64)
    assert a.order == order
    coef = int(a.leading_term.split("*")[0])
    assert a.leading_term == f"{coef}*n"
    if lead is not None:
        assert coef == lead
    # linear past the windows: every extra query row adds exactly `coef` pairs
    counts = {n: _brute_nnz(p, n) for n in (256, 512, 1024, 2048)}
    for n in (256, 512, 1024):
        assert counts[2 * n] - counts[n] == coef * n, (src, n)
    assert a.nnz == counts[512]


def test_order_names_ratios_and_products():
    fixed = patternc.analysis.order_of(resolve_source("pattern p(l = 64, c = 4) = causal & fixed(l, c)"))
    assert fixed == ("O(n^2·c/l)", "n**2/32")  # c / (2 l) of the lower triangle
    p = resolve_source("pattern p(l = 64, c = 4) = causal & fixed(l, c)")
    assert _brute_nnz(p, 1024) == analyze(p, 1024).nnz
    # leading term n^2 / 32: second differences over one period (64) are 2 * 64^2 / 32
    b = [_brute_nnz(p, 1000 + 64 * k) for k in range(3)]
    assert b[2] - 2 * b[1] + b[0] == 2 * 64 ** 2 // 32


def test_heads_keep_the_closed_form(cli):
    """`--heads 16` used to print "no closed form": the total is 16 times the shared form."""
    p = resolve_source("pattern p(w = 16, g = 4) = local(w) | global(g)")
    one, many = analyze(p, 300), analyze(p, 300, heads=16)
    assert one.nnz_formula == "Piecewise((n**2, n <= 20), (41*n - 420, True))"
    assert many.nnz_formula == "Piecewise((16*n**2, n <= 20), (656*n - 6720, True))"
    assert many.nnz == 16 * one.nnz == 16 * (41 * 300 - 420)
    r = cli("analyze", "examples/longformer.attn", "--n", 4096, "--heads", 16, "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["nnz_formula"] == "Piecewise((16*n**2, n <= 272), (8720*n - 1188096, True))"
    assert data["nnz"] == 8720 * 4096 - 1188096


def test_longnet_union_is_small_and_readable():
    """A union of dilated windows took 8-11 s and printed a 9,798-character formula: catches the
    symbolic blow-up coming back (its calls grow with the formula) and any pair-by-pair count."""
    p = patternc.parse(str(ROOT / "examples" / "longnet.attn"))
    analyze(resolve_source("local(3) | local(2, dilation=2)"), 512)  # imports
    with counted() as work:
        a = patternc.analyze(p, 65536)
    assert work.pairs == 0 and work.calls < 3_000_000, work  # 0.5-1.4 million since the fix
    assert a.nnz_formula_large_n == (2050, "1281*n - 755712")
    assert len(a.nnz_formula) < 300 and "Max" not in a.nnz_formula and "floor" not in a.nnz_formula
    assert a.nnz == 1281 * 65536 - 755712 and a.order == "O(n·w)" and a.leading_term == "1281*n"
    assert "1281*n - 755712 for n >= 2,050" in a.format_table()
    # every piece of the printed formula, against brute force
    import sympy as sp
    small = resolve_source(LONGNET_SMALL)
    sym = sp.Symbol("n", integer=True, positive=True)
    f = sp.sympify(analyze(small, 200).nnz_formula, locals={"n": sym})
    for n in list(range(1, 70)) + [97, 128, 200]:
        assert int(f.subs(sym, n)) == _brute_nnz(small, n), n


def test_the_api_docstring_is_real():
    """help(patternc.analyze): arguments, errors and a working example."""
    import doctest

    doc = patternc.analyze.__doc__
    for word in ("pattern:", "n:", "heads:", "tile:", "head_dim:", "kernel:", "Raises:", "PatternError", "2**30"):
        assert word in doc, word
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(patternc.api.analyze, "analyze", globs={"patternc": patternc}):
        runner.run(test)
    summary = runner.summarize(verbose=False)
    assert summary.failed == 0 and summary.attempted >= 2


def test_long_lengths_are_bounded():
    """n = 2^30 answers from the closed form, saying what it skipped; above the limit the error
    names it.  The work does not grow with n: catches anything that walks the 8,388,608 query
    tiles or the rows, in Python (millions of calls) or in numpy (an array per tile: 64 MiB and
    more; the whole analysis needs under 1 MiB), or evaluates pairs."""
    p = resolve_source("pattern p(w = 256, g = 16) = local(w) | global(g)")
    analyze(p, 4096)
    with counted(memory=True) as work:
        a = patternc.analyze(p, 1 << 30)
    assert work.pairs == 0 and work.calls < 300_000 and work.peak_bytes < 16 << 20, work
    assert a.nnz == 545 * (1 << 30) - 74256 and a.layers_to_full_reach == 2 and a.empty_rows == 0
    assert a.tiles is None and a.tile_efficiency is None and a.kernel_tile_efficiency is None
    assert any(s.startswith("tiles: 8,388,608 query tiles") for s in a.all_skipped)
    assert "skipped" in a.format_table() and a.to_dict()["skipped"] == list(a.all_skipped)
    json.dumps(a.to_dict())
    for bad in (1 << 31, 10 ** 20):
        with pytest.raises(PatternError, match="the limit is 1,073,741,824"):
            analyze(p, bad)
    with pytest.raises(PatternError, match="heads = 70000 is too large"):
        analyze(p, 64, heads=70000)
    # no closed form: the exact count is bounded too, and said so
    big = patternc.analyze(resolve_source("local(64) | random(2, block=16)"), 1 << 30)
    assert big.nnz is None and any("allowed pairs: no closed form" in s for s in big.skipped)


def test_the_analyses_never_load_the_lowering():
    """grammar -> front end -> IR -> analyses -> lowering -> backends: analysing a pattern loads
    neither the code generator nor sympy (the formula text is written without it)."""
    import subprocess
    import sys

    code = ("import sys; from patternc import analysis; from patternc.frontend import parse_program, resolve; "
            "p = resolve(parse_program('pattern p(w = 8) = local(w) | global(2) | stride(5)', 'x'), None, {}); "
            "a = analysis.analyze(p, 300); assert a.nnz_formula and a.order == 'O(n^2)', (a.nnz_formula, a.order); "
            "print(sorted(m for m in sys.modules if m in ('patternc.lower', 'patternc.printer', 'sympy', "
            "'patternc.cost', 'torch')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_pair_by_pair_patterns_skip_their_tiles_at_long_lengths():
    """Two strides whose combined period is beyond the counter's tables: the count comes from the
    closed form, the tile map (pair by pair) is skipped past 16,384 and said so."""
    p = resolve_source("stride(4099) | stride(4111)")
    a = analyze(p, 20000)
    assert a.tiles is None and any("counted pair by pair" in s for s in a.skipped)
    assert a.leading_term == "8209*n**2/16850989" and a.order == "O(n^2)"
    d = 4099 * 4111
    assert a.nnz == sum((20000 - abs(k)) for k in range(-19999, 20000) if k % 4099 == 0 or k % 4111 == 0)
    assert d > 4 << 20
