"""Reachability against boolean matrix powers, and the classic results at large n."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import patternc
from patternc import reach, semantics
from patternc.errors import PatternError

from conftest import resolve_source
from test_cost import EXAMPLES, expressions
from work import counted


def brute_layers(m: np.ndarray):
    """Smallest L with A^L covering the target (j <= i for causal masks, all pairs otherwise)."""
    n = m.shape[0]
    causal = not np.triu(m, 1).any()
    target = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    A = m.astype(np.int64)
    R, seen = m.copy(), set()
    while True:
        if (R | ~target).all():
            return len(seen) + 1
        key = R.tobytes()
        if key in seen:  # the powers cycle without covering the target
            return None
        seen.add(key)
        R = (R.astype(np.int64) @ A) > 0


CASES = [
    "all", "none", "causal", "local(1)", "local(3)", "band(-1, 2)", "band(1, 3)", "causal & local(2)",
    "global(1)", "global(3)", "global(2) - local(0)", "local(2) | global(1)", "local(1) | sink(2)",
    "causal & (sink(1) | local(2))", "block(4)", "block(4) | local(1)", "stride(3)", "local(2, dilation=2)",
    "causal & (local(3) | stride(4))", "causal & stride(3)", "causal & (local(1) | stride(5))",
    "causal & fixed(4, 1)", "causal & fixed(5, 2)", "summary(4, 1)", "summary(4, 1) | local(1)",
    "random(2, block=2, seed=1)", "random(2, block=3, seed=4) | local(1)", "block(4) | random(1, block=4, seed=2)",
    "causal | (queries(0, 5) & keys(0, 5))", "causal - local(0)", "band(-1, -1) | band(1, 1)",
    "(local(2) | stride(6)) - block(3)", "keys(0, 3) | queries(0, 2)", "global(at=[5])",
    "rows_mod(2, 1) | local(1)", "causal & (rows_mod(3, 0) | local(1))", "rows_mod(4, 1) | summary(4, 1)",
    "block(4) | (block(8) & stride(2) & rows_mod(2, 0))",
]


@pytest.mark.parametrize("src", CASES)
def test_layers_vs_matrix_powers(src):
    p = resolve_source(src)
    for n in (1, 2, 3, 7, 16, 29, 48):
        e = p.at(n)
        m = semantics.dense_mask_numpy(e, n)
        assert reach.layers_to_full_reach(e, n) == brute_layers(m), (src, n)
        c, first = reach.empty_rows(e, n)
        z = np.nonzero(~m.any(1))[0]
        assert c == len(z) and first == [int(v) for v in z[:5]]


@pytest.mark.parametrize("src", CASES)
def test_structural_rules_alone_are_exact(src, monkeypatch):
    """Without the dense fallback, every decided answer must still be exact."""
    monkeypatch.setattr(reach, "DENSE_N", 0)
    p = resolve_source(src)
    for n in (2, 9, 31, 50):
        e = p.at(n)
        for structural in (False, True):
            r = reach.full_reach(e, n, structural_only=structural)
            if r.decided:
                assert r.layers == brute_layers(semantics.dense_mask_numpy(e, n)), (src, n, r)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([2, 3, 5, 8, 13, 21]).flatmap(lambda n: st.tuples(st.just(n), expressions(n))))
def test_layers_on_random_expressions(case):
    n, e = case
    try:
        m = semantics.dense_mask_numpy(e, n)
    except TypeError:  # degenerate IR the oracle cannot evaluate
        return
    assert reach.layers_to_full_reach(e, n) == brute_layers(m)


@pytest.mark.parametrize("src", ["causal & (local(3) | stride(4))", "local(2) | global(1)", "random(2, block=3) | local(1)",
                                 "summary(5, 2) | local(1)", "causal & fixed(6, 2)", "block(5) | stride(7)"])
def test_reaches_vs_matrix_powers(src):
    n = 30
    e = resolve_source(src).at(n)
    A = semantics.dense_mask_numpy(e, n).astype(np.int64)
    rng = np.random.default_rng(1)
    P = np.eye(n, dtype=np.int64)
    for L in range(0, 5):
        for _ in range(12):
            a, b = rng.integers(0, n, 2)
            assert reach.reaches(e, n, int(a), int(b), L) == bool(P[a, b]), (src, L, a, b)
        P = (P @ A > 0).astype(np.int64)
    with pytest.raises(ValueError):
        reach.reaches(e, n, n, 0, 1)


# ---------------------------------------------------------------- classic results

@pytest.mark.parametrize("n", [100, 4096, 65536])
def test_sparse_transformer_strided_needs_two_layers(n):
    s = math.isqrt(n)
    e = resolve_source(f"causal & (local({s - 1}) | stride({s}))").at(n)
    assert reach.layers_to_full_reach(e, n) == 2
    r = reach.full_reach(e, n)
    assert r.causal  # full reach means every j <= i


@pytest.mark.parametrize("n,w", [(100, 7), (1000, 10), (65536, 256), (65536, 1000)])
def test_local_window_needs_ceil_n_over_w(n, w):
    assert reach.layers_to_full_reach(resolve_source(f"local({w})").at(n), n) == -(-(n - 1) // w)
    assert reach.layers_to_full_reach(resolve_source(f"causal & local({w})").at(n), n) == -(-(n - 1) // w)


@pytest.mark.parametrize("n", [50, 65536])
def test_global_all_block(n):
    for k in (1, 16):
        assert reach.layers_to_full_reach(resolve_source(f"global({k})").at(n), n) == 2
    assert reach.layers_to_full_reach(resolve_source("all").at(n), n) == 1
    assert reach.layers_to_full_reach(resolve_source("causal").at(n), n) == 1
    assert reach.layers_to_full_reach(resolve_source("block(8)").at(n), n) is None
    assert reach.layers_to_full_reach(resolve_source(f"block({n})").at(n), n) == 1


def test_examples_at_65536_are_exact_and_cheap():
    n = 65536
    want = {"local": 256, "causal_local": 256, "longformer": 2, "bigbird": 2, "strided": 2, "fixed": 2,
            "dilated": None, "streaming": 64, "prefix_lm": None, "causal": 1}
    for name, src in EXAMPLES.items():
        e = resolve_source(src).at(n)
        with counted() as work:  # catches a regression to per-row or pair-by-pair reach
            r = reach.full_reach(e, n)
        assert work.pairs == 0 and work.calls < 50_000, (name, work)  # 1,100-6,700 measured
        assert r.decided and r.layers == want[name], (name, r)


def test_examples_at_a_million_use_structural_rules():
    n = 1 << 20
    want = {"local": 4096, "causal_local": 4096, "longformer": 2, "bigbird": 2, "strided": 2, "fixed": 2,
            "dilated": None, "streaming": 1024, "prefix_lm": None, "causal": 1}
    for name, src in EXAMPLES.items():
        e = resolve_source(src).at(n)
        with counted() as work:  # the structural rules look at the IR, not at rows or pairs
            r = reach.full_reach(e, n, structural_only=True)
        assert work.pairs == 0 and work.calls < 50_000, (name, work)  # 1,100-7,100 measured
        assert r.decided and r.layers == want[name], (name, r)


def test_undecided_is_reported_not_guessed():
    n = 4096  # above DENSE_N, and no structural rule covers a band plus random blocks without hubs
    e = resolve_source("local(64) | random(2, block=64)").at(n)
    r = reach.full_reach(e, n)
    assert not r.decided and r.layers is None
    with pytest.raises(reach.ReachUndecided):
        reach.layers_to_full_reach(e, n)


def test_never_certificates():
    n = 200
    cases = {
        "local(4, dilation=2)": "mod 2",  # residue classes never mix
        "block(10) | block(20)": "block of 20",
        "causal | (queries(0, 50) & keys(0, 50))": "never attend a key >= 50",
        "causal - local(0)": "attends nothing",  # row 0
        "queries(0, 5)": "attends nothing",
        "keys(0, 5)": "attended by no query",
    }
    for src, why in cases.items():
        r = reach.full_reach(resolve_source(src).at(n), n)
        assert r.decided and r.layers is None and why in r.method, (src, r)


def test_empty_rows_and_columns():
    e = resolve_source("causal - local(0) - queries(5, 8)").at(20)
    assert reach.empty_rows(e, 20) == (4, [0, 5, 6, 7])
    e = resolve_source("keys(3, 6) | queries(0, 1)").at(10)
    assert reach.empty_columns(e, 10) == (0, [])
    e = resolve_source("keys(3, 6)").at(10)
    assert reach.empty_columns(e, 10) == (7, [0, 1, 2, 6, 7])
    n = 1 << 20
    e = resolve_source("causal & local(64) - queries(1000, 1003)").at(n)
    with counted() as work:  # from row ranges: no per-row loop, no pair evaluated
        assert reach.empty_rows(e, n) == (3, [1000, 1001, 1002])
    assert work.pairs == 0 and work.calls < 20_000, work
    with pytest.raises(TypeError):
        reach.empty_rows(resolve_source("heads { 0..1: causal }").at(4), 4)


def test_invalid_length_is_a_pattern_error():
    with pytest.raises(PatternError):
        resolve_source("local(n - 10)").at(4)


@pytest.mark.parametrize("src", ["local(37)", "band(-5, 80)", "causal & (sink(3) | local(45))", "block(300) | local(20)",
                                 "(local(60) | keys(0, 4)) - queries(5, 9)", "local(25) | (queries(0, 500) & keys(0, 500))"])
def test_range_level_rows_agree_with_per_row_scans(src):
    """The range-level row functions (used at huge n) against explicit per-row spans."""
    from patternc.counting import engine

    n = 2999
    e = resolve_source(src).at(n)
    E = engine(e, n)
    fn = reach.RowFn(E.range_table())
    cnt, lo, hi = E.row_spans()
    rows = np.arange(n)
    assert [list(x) for x in fn.at(rows)] == [list(cnt), list(lo), list(hi)]
    assert list(fn.full_rows(n)) == list(np.nonzero(cnt == n)[0])
    single = reach._is_interval(cnt, lo, hi)
    assert fn.interval_rows() == single
    if single:
        steps = reach._interval_steps(lo, hi, True, not reach.is_causal(e, n))
        assert reach._interval_layers(fn, 0, n - 1, reach.is_causal(e, n)) == (None if steps is None else max(1, steps))


@pytest.mark.parametrize("src, why", [
    ("local(1) - band(0, 0)", "periodic"),  # i <-> i +- 1 only: walks alternate parity
    ("local(2) - band(-1, 1)", "2 groups"),  # distance 2 only: even and odd never meet
    ("(queries(0, 8) & keys(8, 16)) | (queries(8, 16) & keys(0, 8))", "periodic"),  # halves swap
])
def test_never_full_reach_says_why(src, why):
    n = 16
    a = patternc.analyze(patternc.parse(f"pattern x = {src}"), n)
    assert a.layers_to_full_reach is None and a.reach_decided and why in a.reach_method
    # brute force: no power of the mask up to n^2 is all-true
    A = semantics.dense_mask_numpy(patternc.parse(f"pattern x = {src}").at(n), n).astype(np.int64)
    R = A.copy()
    for _ in range(n * n):
        assert not R.all()
        R = ((R @ A) > 0).astype(np.int64)
    if "groups" in why:  # even positions never reach odd ones
        closure = np.linalg.matrix_power(np.eye(n, dtype=np.int64) + A, n) > 0
        assert not closure[0, 1] and closure[0, 2]
