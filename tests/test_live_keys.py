"""The live-key analysis (patternc.live_keys) against brute force, and its place in `patternc analyze`.

Brute force: key j is live at step t when some query i >= t may attend it; with the pattern's
constants well below the horizon N, queries i < N decide it."""
from __future__ import annotations

import json

import numpy as np
import pytest

import patternc
from patternc import live_keys, semantics

# one entry per atom and the ways terms combine, with small constants
LIVE = {
    "streaming": "causal & (sink(4) | local(20))",
    "causal": "causal",
    "dilated": "causal & local(7, dilation=3)",
    "fixed": "causal & fixed(16, 3)",
    "longformer": "local(9) | global(3)",
    "longformer_causal": "causal & (local(5) | global(4))",
    "block": "block(8)",
    "band": "band(2, 9)",
    "band_stride": "band(-3, 5) & stride(4)",
    "strided": "causal & (local(6) | stride(8))",
    "rows_cols": "queries(3, 20) & keys(2, 30) | local(2)",
    "block_summary": "local(3) & block(8) | summary(10, 2) & causal",
    "future_only": "band(-4, -2)",
    "lookback": "band(lo=3)",
    "rows_block": "queries(5, 9) & block(4)",
    "band_block": "band(1, 3) & block(8)",
    "ahead_block": "band(-5, -1) & block(8)",
    "rows_band_block": "queries(4, 30) & band(-3, 6) & block(8)",
    "prefix": "causal | (queries(0, 12) & keys(0, 12))",
    "heads": "heads { 0..0: causal & local(5), 1..1: causal & sink(3) }",
}
INEXACT = {  # a superset: never fewer keys than brute force
    "difference": "causal & (sink(4) | local(7)) - stride(3)",
    "random": "causal & (local(4) | random(1, block=16, seed=2))",
    "rows_stride": "queries(2, 40) & stride(5) & causal",
    "rows_mod": "causal & (local(6) & rows_mod(3, 1) | sink(2))",
}
N, STEPS = 420, 200


def brute_counts(p, steps: int = STEPS, horizon: int = N) -> np.ndarray:
    """|L(t)| for t < steps, from the dense mask at length `horizon`."""
    e = p.at(horizon)
    idx = np.arange(horizon)
    cases = [c.expr for c in e.cases] if p.num_heads else [e]
    m = np.zeros((horizon, horizon), bool)
    for x in cases:
        m |= np.broadcast_to(semantics.allowed(x, idx[:, None], idx[None, :], horizon), (horizon, horizon))
    later = np.logical_or.accumulate(m[::-1], axis=0)[::-1]  # row t: keys some i >= t attends
    return np.array([later[t, :t + 1].sum() for t in range(steps)])


def parse(src: str):
    return patternc.parse(f"pattern x = {src}")


@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_counts_match_brute_force(name):
    p = parse(LIVE[name])
    want = brute_counts(p)
    ls = live_keys.live_set(p.expr)
    assert ls.exact
    assert np.array_equal(live_keys.Counts(ls).upto(STEPS), want)
    for n in (1, 2, 17, 64, 150, STEPS):
        assert live_keys.report(p.expr, n).kv_live_max == want[:n].max(), n


@pytest.mark.parametrize("name", sorted(INEXACT))
def test_inexact_live_sets_are_supersets(name):
    p = parse(INEXACT[name])
    ls = live_keys.live_set(p.expr)
    assert not ls.exact
    assert (live_keys.Counts(ls).upto(STEPS) >= brute_counts(p)).all()
    assert not live_keys.report(p.expr, 100).exact


@pytest.mark.parametrize("name", sorted(LIVE) + sorted(INEXACT))
def test_the_cache_layout_holds_every_live_key(name):
    """A bounded pattern's cache keeps positions < fixed and the newest `window`: every live key
    of every step is among them (brute force)."""
    p = parse(LIVE.get(name) or INEXACT[name])
    layout = live_keys.cache_layout(p.expr)
    if layout is None:
        assert not live_keys.report(p.expr, STEPS).bounded or not live_keys.live_set(p.expr).exact
        return
    e = p.at(N)
    idx = np.arange(N)
    cases = [c.expr for c in e.cases] if p.num_heads else [e]
    m = np.zeros((N, N), bool)
    for x in cases:
        m |= np.broadcast_to(semantics.allowed(x, idx[:, None], idx[None, :], N), (N, N))
    later = np.logical_or.accumulate(m[::-1], axis=0)[::-1]
    for t in range(STEPS):
        live = np.flatnonzero(later[t, :t + 1])
        kept = (live < layout.fixed) | (live > t - layout.window)
        assert kept.all(), (t, live[~kept], layout)


def test_the_issue_examples_at_long_lengths():
    """causal & (sink(4) | local(1024)) needs 1,029 keys from n = 1,029 on; causal needs n."""
    p = parse("causal & (sink(4) | local(1024))")
    for n in (1, 1000, 1028, 1029, 1030, 1 << 20, 1 << 30):
        r = live_keys.report(p.expr, n)
        assert r.kv_live_max == min(n, 1029) and r.bounded and r.bound == 1029 and r.exact
    assert r.formula == "min(n, 1029)" and r.layout == live_keys.CacheLayout(4, 1025)
    r = live_keys.report(parse("causal").expr, 123456)
    assert (r.kv_live_max, r.formula, r.bounded) == (123456, "n", False)


def test_unbounded_growth_is_extrapolated_exactly():
    """Past the scanned steps the count of a growing pattern (summaries) is extrapolated period by
    period: it must equal brute force at a length the scan does not reach."""
    p = parse("causal & fixed(16, 3)")
    r = live_keys.report(p.expr, 3001)
    assert not r.bounded and r.formula is None  # the count falls at each block start: no closed form
    # |L(t)|: 3 summary keys of every earlier block, then the current block up to t
    want = max(3 * (t // 16) + t % 16 + 1 for t in range(3001))
    assert r.kv_live_max == want
    g = parse("causal & (local(3) | summary(8, 8))")  # summary(8, 8) is every key: all live
    assert live_keys.report(g.expr, 5000).kv_live_max == 5000


def test_monotone_growth_gets_a_formula():
    """A count that never falls has kv_live_max(n) = |L(n - 1)|, whose closed form is printed."""
    import sympy as sp

    p = parse("band(0, 3) | causal & summary(4, 1)")
    counts = brute_counts(p, 300)
    r = live_keys.report(p.expr, 300)
    assert not r.bounded and r.formula is not None and r.kv_live_max == counts.max()
    n = sp.Symbol("n", integer=True, positive=True)
    f = sp.sympify(r.formula, locals={"n": n, "Mod": sp.Mod, "Min": sp.Min, "Max": sp.Max, "floor": sp.floor,
                                      "Piecewise": sp.Piecewise})
    for m in (1, 2, 5, 77, 300):
        assert int(f.subs(n, m)) == counts[:m].max(), m


def test_every_example_has_an_answer():
    """Every example pattern gets a value at n = 2^20, bounded ones with their bound."""
    from pathlib import Path

    from patternc.frontend import parse_program, resolve

    root = Path(__file__).resolve().parent.parent / "examples"
    bounded = {}
    for f in sorted(root.glob("*.attn")):
        prog = parse_program(f.read_text(), str(f))
        for name in prog.definitions:
            item = resolve(prog, name, {})
            for p in getattr(item, "distinct", (item,)):  # a stack: each of its layer patterns
                r = live_keys.report(p.expr, 1 << 20)
                assert r.kv_live_max is not None, (name, p.name)
                bounded.setdefault(name, r.bound)
    assert bounded["streaming"] == 1025 and bounded["sliding_window"] == 4096
    assert bounded["longformer_causal"] == 273 and bounded["strided"] is None and bounded["prefix_lm"] is None


def test_analyze_reports_kv_live_max(cli, tmp_path):
    src = tmp_path / "s.attn"
    src.write_text("pattern s = causal & (sink(4) | local(1024))\n")
    r = cli("analyze", src, "--n", 65536, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kv_live_max"] == 1029 and d["kv_live_bounded"] is True and d["kv_live_bound"] == 1029
    assert d["kv_live_max_formula"] == "min(n, 1029)" and d["kv_cache_slots"] == {"fixed": 4, "window": 1025}
    r = cli("analyze", src, "--n", 65536)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("kv live max"))
    assert "1,029" in line and "min(n, 1029)" in line and "bounded" in line
    src.write_text("pattern c = causal\n")
    d = json.loads(cli("analyze", src, "--n", 5000, "--json").stdout)
    assert d["kv_live_max"] == 5000 and d["kv_live_bounded"] is False and d["kv_live_max_formula"] == "n"
