"""Context parallelism: layouts, the exchange plan against brute force, the analysis' report, and
gloo process groups of 2 and 4 ranks against the single-process result (forward, gradients and
the bytes sent), for every backend's module."""
from __future__ import annotations

import json

import pytest
import torch

import patternc
from patternc.api import analyze_cp
from patternc.runtime.cp_layout import balanced_pieces, cp_tile, heavy_rows, tile_weights
from patternc.runtime.cp_plan import exchange_plan, plan_bytes, span_rows

from cp_worker import PATTERNS, cases, run_all

TOL = 1e-10  # float64 throughout: any wrong key, missing merge or lost partial shows as O(1)

# Patterns for the plan against brute force: those of the distributed runs, and the other
# index spaces (dilation, summaries), random blocks, a global row at the end, and a filter.
PLAN_PATTERNS = dict(PATTERNS, **{
    "dilated": "pattern p = local(6, dilation=3)",
    "fixed": "pattern p = causal & fixed(16, 3)",
    "bigbird": "pattern p = local(8) | global(4) | random(2, block=16, seed=3)",
    "global_at_end": "pattern p = local(5) | global(at=[0, n - 1])",
    "band_minus": "pattern p = local(12) - local(2)",
})
EXACT = set(PLAN_PATTERNS) - {"band_minus"}  # the walk's ranges are a superset where a term has a filter


def _module(name: str, backend: str = "reference"):
    return patternc.load(PLAN_PATTERNS[name], backend=backend)


def _allowed(mod, n: int) -> torch.Tensor:
    """(n, n) bool: allowed in any head."""
    return mod.mask_rows(torch.arange(n)[:, None], torch.arange(n)[None, :], n, mod.NUM_HEADS or 1).any(0)


def _positions(ranges) -> set:
    return {x for lo, hi in ranges for x in range(lo, hi)}


# ---- the walk at explicit positions ------------------------------------------------------------

@pytest.mark.parametrize("name", ["longformer", "strided", "dilated", "fixed", "bigbird", "per_head", "prefix_lm"])
def test_walk_at_positions_is_attention_of_those_queries_over_those_keys(name):
    """walk_forward/backward with q_pos, k_pos: the attention of those queries restricted to those keys,
    with the pattern at the full length (every index space: residue classes, kept key columns,
    random blocks); the backward from a given delta."""
    from patternc.runtime.walk import walk_backward, walk_forward

    mod = _module(name)
    n, H, D = 157, mod.NUM_HEADS or 2, 8
    g = torch.Generator().manual_seed(1)
    q_pos = torch.sort(torch.randperm(n, generator=g)[:70]).values
    k_pos = torch.sort(torch.cat([torch.arange(20, 90), torch.randperm(n, generator=g)[:30]]).unique()).values
    q, do = (torch.randn(1, H, q_pos.numel(), D, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(1, H, k_pos.numel(), D, generator=g, dtype=torch.float64) for _ in range(2))
    keep = mod.mask_rows(q_pos[:, None], k_pos[None, :], n, H)[None]
    s = (q @ k.transpose(-1, -2) * D ** -0.5).masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    ref = p @ v
    out, got_lse = walk_forward(mod.SPEC, q, k, v, D ** -0.5, 16, q_pos=q_pos, k_pos=k_pos, n=n)
    assert (out - ref).abs().max() < TOL and torch.equal(torch.isinf(got_lse), torch.isinf(lse))
    assert (got_lse - lse).nan_to_num(0.0, 0.0, 0.0).abs().max() < TOL
    delta = torch.randn(lse.shape, generator=g, dtype=torch.float64)  # as if from the whole row's output
    dq, dk, dv = walk_backward(mod.SPEC, do, q, k, v, None, lse, D ** -0.5, 16, q_pos=q_pos, k_pos=k_pos, n=n,
                               delta=delta)
    ds = p * ((do @ v.transpose(-1, -2)) - delta[..., None])
    assert (dq - ds @ k * D ** -0.5).abs().max() < TOL
    assert (dk - ds.transpose(-1, -2) @ q * D ** -0.5).abs().max() < TOL
    assert (dv - p.transpose(-1, -2) @ do).abs().max() < TOL


# ---- layouts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(1, 1), (7, 3), (203, 2), (301, 4), (5, 4), (1000, 8)])
def test_contiguous_layout_is_consecutive_ranges_last_shorter(n, world):
    mod = _module("local")
    parts = [mod.cp_positions(n, world, r) for r in range(world)]
    assert all(p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts), torch.arange(n))
    c = -(-n // world)
    assert [p.numel() for p in parts] == [min(c, max(0, n - r * c)) for r in range(world)]


@pytest.mark.parametrize("name", ["causal", "longformer", "prefix_lm", "sink_local", "strided", "per_head"])
@pytest.mark.parametrize("n,world", [(203, 2), (301, 4), (1000, 8)])
def test_balanced_layout_balances_computed_pairs_within_one_tile(name, n, world):
    """Every rank computes total/P pairs, within the heaviest tile's; counted by brute force: a
    light row's pairs where it lives, a global row's pairs where their keys live."""
    mod = _module(name)
    parts = [mod.cp_positions(n, world, r, "balanced") for r in range(world)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(n))
    assert all(torch.equal(p, torch.sort(p).values) for p in parts)
    H = mod.NUM_HEADS or 1
    per_head = mod.mask_rows(torch.arange(n)[:, None], torch.arange(n)[None, :], n, H).sum(0)  # (n, n) head counts
    heavy = torch.zeros(n, dtype=torch.bool)
    for a, b in heavy_rows(mod.SPEC, n):
        heavy[a:b] = True
    weight = per_head[~heavy].sum(1).new_zeros(n)
    weight[~heavy] = per_head[~heavy].sum(1)
    weight += per_head[heavy].sum(0)
    work = [int(weight[p].sum()) for p in parts]
    tile = cp_tile(n, world)
    heaviest = max(int(weight[t:t + tile].sum()) for t in range(0, n, tile))
    assert max(abs(w - sum(work) / world) for w in work) <= heaviest
    if name == "causal":  # a zigzag: the first rank holds both ends, and tokens stay even
        assert parts[0][0] == 0 and parts[0][-1] == n - 1
        assert max(p.numel() for p in parts) - min(p.numel() for p in parts) <= 2 * tile
    if name == "longformer":  # even work: contiguous ranges
        assert all(torch.equal(p, torch.arange(p[0], p[-1] + 1)) for p in parts)


def test_balanced_pieces_zigzag_where_work_grows_contiguous_where_it_is_even():
    assert balanced_pieces([1] * 8, 10, 75, 2) == (((0, 40),), ((40, 75),))
    assert balanced_pieces(list(range(1, 17)), 10, 160, 2) == (((0, 40), (120, 160)), ((40, 120),))
    assert balanced_pieces([0] * 8, 10, 80, 2) == (((0, 40),), ((40, 80),))  # nothing to balance


def test_layout_weights_walk_equal_the_analysis_counter():
    from patternc.cp_report import _cases, tile_weights as counted

    for name in ("longformer", "strided", "prefix_lm", "per_head", "fixed", "bigbird", "global_at_end"):
        mod = _module(name)
        pattern = patternc.parse(PLAN_PATTERNS[name])
        for n in (97, 301):
            tile = cp_tile(n, 4)
            heavy = heavy_rows(mod.SPEC, n)
            assert tile_weights(mod.SPEC, n, tile) == counted(_cases(pattern, n), n, tile, heavy), (name, n)


@pytest.mark.parametrize("bad,match", [
    (dict(layout="zigzag"), "layout must be one of"),
    (dict(world_size=0), "world_size must be an int >= 1"),
    (dict(rank=4), r"rank must be an int in 0\.\.3"),
    (dict(n=0), "sequence length must be >= 1"),
])
def test_cp_positions_refuses_bad_arguments(bad, match):
    args = dict(n=100, world_size=4, rank=0, layout="contiguous")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        _module("local").cp_positions(**args)


# ---- the plan ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PLAN_PATTERNS))
@pytest.mark.parametrize("layout", ["contiguous", "balanced"])
def test_plan_pulls_exactly_the_keys_light_rows_meet(name, layout):
    """pull[r][s] is every key of rank s that one of rank r's light rows attends (a superset only
    where the pattern has a filter); push[r][s] is every global row of r with a key on s."""
    n, world = 157, 3
    mod = _module(name)
    allowed = _allowed(mod, n)
    plan = exchange_plan(mod.SPEC, n, world, layout)
    for r in range(world):
        light = sorted(_positions(plan.light[r]))
        heavy = sorted(_positions(plan.heavy[r]))
        assert sorted(light + heavy) == sorted(_positions(plan.shards[r]))
        for s in range(world):
            if s == r:
                assert plan.pull[r][s] == () and plan.push[r][s] == ()
                continue
            keys = torch.tensor(sorted(_positions(plan.shards[s])), dtype=torch.int64)
            need = set(keys[allowed[light][:, keys].any(0)].tolist()) if light else set()
            got = _positions(plan.pull[r][s])
            assert got >= need and (got == need or name not in EXACT), (r, s)
            assert got <= set(keys.tolist())
            pushed = set(torch.tensor(heavy, dtype=torch.int64)[allowed[heavy][:, keys].any(1)].tolist()) if heavy \
                else set()
            assert _positions(plan.push[r][s]) >= pushed
            assert _positions(plan.push[r][s]) <= set(heavy)


def test_plan_bytes_of_longformer_are_a_small_part_of_a_ring():
    mod = patternc.load("pattern p = local(256) | global(16)", backend="reference")
    n, world = 1 << 16, 8
    plan, ring = (exchange_plan(mod.SPEC, n, world, "contiguous", ring=r) for r in (False, True))
    sent = sum(x["total"] for x in plan_bytes(plan, 1, 16, 16, 128, 2, 4))
    ring_sent = sum(x["total"] for x in plan_bytes(ring, 1, 16, 16, 128, 2, 4))
    assert sent * 10 <= ring_sent
    # rank 1 pulls its neighbours' halos and the global columns, nothing else
    assert [span_rows(x) for x in plan.pull[1]] == [256 + 16, 0, 256] + [0] * 5
    assert plan.push[0] == ((),) + (((0, 16),),) * 7


# ---- the analysis' report ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "balanced"])
def test_analyze_cp_reports_the_runtime_plan(layout):
    n, world = 301, 4
    for name in ("longformer", "causal", "per_head"):
        mod = _module(name)
        rep = analyze_cp(PLAN_PATTERNS[name], n, world, layout, head_dim=8, dtype="float64")
        plan = exchange_plan(mod.SPEC, n, world, layout)  # the runtime's own layout and plan
        assert tuple(r.pieces for r in rep.ranks) == plan.shards
        H = rep.heads
        want = plan_bytes(plan, 1, H, H, 8, 8, 8)
        assert [r.bytes_forward for r in rep.ranks] == [w["forward"] for w in want]
        assert [r.bytes_backward for r in rep.ranks] == [w["backward"] for w in want]
        # pairs computed: every allowed pair exactly once over the ranks
        assert sum(r.pairs for r in rep.ranks) == int(mod.mask(n).sum()) * (1 if mod.NUM_HEADS else H)


def test_analyze_cli_prints_bytes_and_pairs_per_rank(cli, tmp_path):
    f = tmp_path / "lf.attn"
    f.write_text("pattern p = local(256) | global(16)\n")
    res = cli("analyze", f, "--n", 4096, "--cp", 4, "--cp-layout", "balanced", "--heads", 2, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["context_parallel"]
    assert data["world"] == 4 and data["layout"] == "balanced" and data["heads"] == 2 and len(data["ranks"]) == 4
    assert data["bytes_total"] == sum(r["bytes_total"] for r in data["ranks"])
    assert data["ring_ratio"] < 0.5
    table = analyze_cp(f, 4096, 4, heads=2).format_table()  # what the command prints after the analysis
    assert "context parallel: 4 ranks, contiguous layout, n = 4,096" in table
    assert "bytes total" in table and "pairs computed" in table and "planned / ring bytes" in table
    res = cli("analyze", f, "--n", 4096, "--cp", 4096)
    assert res.returncode == 1 and "--cp 4096 is too large" in res.stderr


# ---- gloo process groups ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each world size's ranks, spawned once, every case run in the same process group."""
    out = {}
    for world in (2, 4):
        out[world] = run_all(world, str(tmp_path_factory.mktemp(f"cp{world}")))
    return out


def _case_ids():
    return [(w, c[0]) for w in (2, 4) for c in cases(w)]


@pytest.mark.parametrize("world,case", _case_ids(), ids=[f"P{w}-{c}" for w, c in _case_ids()])
def test_context_parallel_matches_one_process(runs, world, case):
    """Forward and gradients of q, k and v equal the single-process result on every rank, the
    ranks' rows are their cp_positions, and each rank sent exactly the plan's bytes, which are
    those `patternc analyze --cp` reports for it."""
    got = [runs[world][r][case] for r in range(world)]
    for r, res in enumerate(got):
        assert "error" not in res, res.get("error")
        assert max(res["errors"]) < TOL, (r, res["errors"])
        assert res["sent"] == res["predicted"], r
        assert sum(res["sent"]) == res["analyzed"], r
    assert sorted(x for res in got for x in res["positions"]) == list(range(got[0]["n"]))


def test_planned_exchange_sends_far_less_than_the_ring(runs):
    """The same run (Longformer, batch 2) by the plan and by the ring: measured bytes."""
    for world in (2, 4):
        planned = sum(sum(res["plan_longformer"]["sent"]) for res in runs[world])
        ring = sum(sum(res["ring_longformer"]["sent"]) for res in runs[world])
        assert 0 < planned * 4 < ring, (world, planned, ring)


def test_ulysses_head_split_composes(runs):
    """Heads over one pair of ranks (Ulysses), the sequence over the other, the pattern unchanged."""
    for r, res in enumerate(runs[4]):
        assert "error" not in res["ulysses"], res["ulysses"].get("error")
        assert res["ulysses"]["head_shape"][1] == 2
        assert max(res["ulysses"]["errors"]) < TOL, (r, res["ulysses"]["errors"])


def test_context_parallel_attention_needs_a_process_group():
    mod = _module("local")
    q = torch.randn(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        mod.context_parallel_attention(q, q, q)


def test_every_backend_exports_the_context_parallel_functions():
    for backend in ("reference", "flex", "triton"):
        mod = patternc.load(PLAN_PATTERNS["longformer"], backend=backend)
        assert callable(mod.cp_positions) and callable(mod.context_parallel_attention)
        assert torch.equal(mod.cp_positions(100, 3, 1, "balanced"),
                           _module("longformer").cp_positions(100, 3, 1, "balanced"))
