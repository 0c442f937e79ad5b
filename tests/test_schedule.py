"""The Triton backend's compile-time schedule (backends/schedule.py) and its simulation of the
kernels' walks (backends/walks.py), against brute force from the dense mask."""
from __future__ import annotations

import os

import numpy as np
import pytest

import patternc
from patternc import ir, semantics
from patternc.backends import schedule, walks
from patternc.lower import plan


def parse(src: str):
    return patternc.parse(f"pattern p = {src}")


def test_strided_uses_a_residue_pass_with_high_tile_efficiency():
    p = patternc.parse("pattern strided(s = 128) = causal & (local(s - 1) | stride(s))")
    assert [x.space.kind for x in plan(p.expr).passes] == ["identity", "diag"]
    eff = walks.kernel_tile_efficiency(p.at(16384), 16384, *schedule.choose_forward_tiles(p))
    assert eff >= 0.5, eff


def test_fixed_tile_efficiency():
    p = patternc.parse("pattern fx(l = 128, c = 8) = causal & (block(l) | summary(l, c))")
    assert walks.kernel_tile_efficiency(p.at(16384), 16384, *schedule.choose_forward_tiles(p)) >= 0.5


@pytest.mark.parametrize("path", ["examples/strided.attn", "examples/fixed.attn"])
def test_analyze_reports_kernel_tile_efficiency(path):
    """Tile efficiency >= 0.5 for strided and fixed at s = 128, n = 16,384."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = patternc.parse(os.path.join(root, path))
    a = patternc.analyze(p, 16384)
    assert a.kernel_tile_efficiency >= 0.5, a.kernel_tile_efficiency
    assert a.tile_efficiency < 0.1  # what a plain 128-tile grid (FlexAttention's view) would compute
    assert a.to_dict()["kernel_tile_efficiency"] == a.kernel_tile_efficiency


def test_atomic_dq_is_the_default_only_where_it_measured_faster():
    """Random blocks and residue-class passes beside another pass: on; windows, causal, globals,
    a lone residue-class pass: the dq kernel."""
    for src, want in (("local(16) | global(16) | random(2, block=16, seed=1)", True),
                      ("causal & (local(7) | stride(8))", True), ("local(40)", False), ("causal", False),
                      ("local(12) | global(4)", False), ("causal & (sink(4) | local(9))", False),
                      ("local(4, dilation=3)", False)):
        assert schedule.atomic_dq(plan(parse(src).expr)) == want, src


def test_union_walks_follow_the_walk_length():
    """A union is walked twice (full runs mask-free, then partial tiles) by every dq kernel, by
    64-row forwards and by dk/dv kernels whose key tiles walk many query tiles."""
    cases = {"causal | (queries(0, 2048) & keys(0, 2048))": {"fwd": False, "dq": True, "dkdv": True},
             "causal & (sink(4) | local(1024))": {"fwd": False, "dq": True, "dkdv": False},
             "local(256) | global(16)": {"fwd": True, "dq": True, "dkdv": False}}
    for src, want in cases.items():
        assert schedule.choose_union_walks(parse(src)) == want, src


@pytest.mark.parametrize("src, wide", [
    ("causal", True), ("causal | (queries(0, 2048) & keys(0, 2048))", True),
    ("heads { 0..0: causal, 1..1: causal | (queries(0, 64) & keys(0, 64)) }", True),
    ("local(256)", False), ("causal & (sink(4) | local(1024))", False), ("local(256) | global(16)", False),
    ("heads { 0..0: local(8), 1..1: causal }", True)])  # the mean over heads
def test_backward_settings_at_d64_follow_the_key_walk(src, wide):
    """At D = 64 causal-like patterns (a 64-key tile meets >= 64 query tiles, on average over the
    heads) take 128x128 dq tiles and 3 dk/dv stages; windows, sinks and global rows keep 128x64 dq
    tiles and the module's default stages; at D = 128 every pattern keeps them."""
    p = parse(src)
    assert schedule.long_key_walk(p) == wide, src
    s64, s128 = schedule.choose_bwd_settings(p, D=64), schedule.choose_bwd_settings(p, D=128)
    assert (s64["DQ_BN"], s64["dkv_stages"]) == ((128, 3) if wide else (64, None)), src
    assert (s128["DQ_BN"], s128["dkv_stages"]) == (64, None), src


@pytest.mark.parametrize("src, tiles", [
    ("local(256)", (64, 64, 4)), ("band(-5, 50)", (64, 64, 4)), ("local(n // 4)", (64, 64, 4)),
    ("heads { 0..0: local(8), 1..1: local(100) }", (64, 64, 4)), ("causal & local(256)", (64, 64, 4)),
    ("causal", (64, 64, 4)), ("heads { 0..0: local(8), 1..1: causal }", (64, 64, 4)),
    ("causal & fixed(isqrt(n), 8)", (64, 64, 4)),
    ("local(127) | global(128) | random(3, block=64)", (32, 64, 4)),
    ("local(256) | global(16)", (64, 64, 4)), ("causal & (sink(4) | local(1024))", (64, 64, 4)),
    ("causal | (queries(0, 2048) & keys(0, 2048))", (64, 64, 4)),
    ("heads { 0..0: local(8), 1..1: local(8) | global(2) }", (64, 64, 4)),
    ("local(256, dilation=4)", (64, 128, 8)), ("causal & (local(isqrt(n) - 1) | stride(isqrt(n)))", (64, 128, 8)),
    ("heads { 0..0: local(8), 1..1: local(8, dilation=2) }", (64, 128, 8))])
def test_dkdv_tiles_follow_the_window_shape(src, tiles):
    """64-key dk/dv tiles on 4 warps for one-pass plans over tokens in order and for plans with
    block-diagonal or random terms, random ones with 32-query tiles at D = 128 (64 at D = 64,
    where nothing spills); residue classes and several passes keep 128 keys on 8 warps."""
    p = parse(src)
    assert schedule.choose_dkdv_tiles(p) == tiles, src
    assert schedule.choose_dkdv_tiles(p, D=64) == (64,) + tiles[1:], src


def test_tile_walks_match_the_mask_per_query_tile():
    """tile_walks gives each query tile's walk, in launch order: for causal the key tiles up to the
    diagonal, for local(w) the tiles the window touches; visited_tiles is their sum."""
    n, bm, bn = 1000, 128, 64
    for src in ("causal", "local(100)", "causal & local(300)"):
        e = parse(src).at(n)
        [(walk, t)] = walks.tile_walks(e, n, bm, bn)
        i = np.arange(n)[:, None]
        j = np.arange(n)[None, :]
        mask = np.broadcast_to(semantics.allowed(e, i, j, n), (n, n))
        want = [len({int(k) // bn for k in np.nonzero(mask[a:a + bm].any(0))[0]}) for a in range(0, n, bm)]
        assert list(walk) == want, (src, list(walk), want)
        assert list(t) == list(range(len(want)))
        assert walks.visited_tiles(e, n, bm, bn) == sum(want)


@pytest.mark.parametrize("src,cols,g", [("causal & (sink(4) | local(150))", (0, 4), 16),
                                        ("local(100) | global(16)", (0, 16), 16),
                                        ("local(60) | keys(200, 230)", (200, 230), 32)])
@pytest.mark.parametrize("bm", [64, 128])
def test_computed_pairs_count_narrow_column_steps(src, cols, g, bm):
    """computed_pairs (what `analyze` reports as kernel tile efficiency) counts a narrow column
    term's own step as bm x its step's keys where the kernel takes it -- no tile of the other terms
    touches the columns' key tiles -- and a whole key tile in the walk elsewhere; checked against
    tile sets from the dense mask."""
    n, bn = 1999, 64
    e = parse(src).at(n)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    mask = np.broadcast_to(semantics.allowed(e, i, j, n), (n, n))
    in_cols = (j >= cols[0]) & (j < cols[1])
    # the other terms: the pattern without its narrow columns, plus global rows (all keys)
    rest = mask & ~in_cols if "global" not in src else mask & ~(in_cols & (i >= cols[1]))
    col_tiles = set(range(cols[0] // bn, (cols[1] - 1) // bn + 1))
    want = 0
    for a in range(0, n, bm):
        other = {int(k) // bn for k in np.nonzero(rest[a:a + bm].any(0))[0]}
        if other & col_tiles:
            want += len(other | col_tiles) * bm * bn
        else:
            want += len(other) * bm * bn + bm * g
    assert walks.computed_pairs(e, n, bm, bn) == want
    assert walks.computed_pairs(e, n, bm, bn) < walks.visited_tiles(e, n, bm, bn) * bm * bn
    plain = parse("local(100)").at(n)
    assert walks.computed_pairs(plain, n, bm, bn) == walks.visited_tiles(plain, n, bm, bn) * bm * bn


def test_longest_walks_first_where_walks_grow():
    """Query tiles run last-first (REV) in the forward and dq kernels of passes whose later tiles walk
    more keys: causal, prefix-LM, fixed's summary pass (and its fused forward); not windows, sinks,
    dilated or random blocks; per head case."""
    want = {"causal": ([True], True), "causal | (queries(0, 2048) & keys(0, 2048))": ([True], True),
            "local(256)": ([False], False), "causal & (sink(4) | local(1024))": ([False], False),
            "local(256, dilation=4)": ([False], False), "local(127) | global(128) | random(3, block=64)": ([False], False),
            "causal & fixed(128, 8)": ([False, True], True)}
    for src, w in want.items():
        assert schedule.longest_walks_first(parse(src)) == [w], src
    heads = patternc.parse("pattern p = heads { 0..3: local(64), 4..7: causal }")
    assert schedule.longest_walks_first(heads) == [([False], False), ([True], True)]
    assert schedule.longest_walks_first(parse("causal | global(4)")) == [([True], True)]


def test_tile_walks_need_one_head():
    with pytest.raises(TypeError, match="one head's pattern"):
        walks.tile_walks(parse("heads { 0..0: local(3), 1..1: causal }").expr, 10, 16, 16)
    assert isinstance(parse("heads { 0..0: local(3), 1..1: causal }").expr, ir.Heads)


def test_row_classes_skip_rows_in_the_kernels():
    """rows_mod: a strided pass walks only its own residue class, and in token order the query
    tiles that hold no row of the class are skipped (the kernels' walk, simulated)."""
    n = 1024

    def pairs(src: str) -> int:
        return walks.computed_pairs(patternc.parse(f"pattern x = {src}").at(n), n, 16, 16)

    assert pairs("block(64) & stride(4) & rows_mod(4, 1)") * 4 == pairs("block(64) & stride(4)")
    assert pairs("local(40) & rows_mod(64, 5)") * 4 == pairs("local(40)")  # one query tile in four
