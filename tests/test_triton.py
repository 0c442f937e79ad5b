"""The generated Triton kernels, run for real under TRITON_INTERPRET=1 on the CPU.

Every check compares output, lse and dq/dk/dv with a float64 dense reference
on fresh random inputs at ragged sizes (n not a multiple of the 16-wide tiles
used under the interpreter).
"""
from __future__ import annotations

import json
import math
import re
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before any generated module defines its kernels

pytest.importorskip("triton")

import patternc  # noqa: E402
from patternc import ir, lower  # noqa: E402

from kernel_check import TOL, check_module, make_inputs, pattern_mask  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False

# One entry per primitive and operator, plus the shapes of every example.
PATTERNS = {
    "all": "all",
    "causal": "causal",
    "local": "local(5)",
    "dilated": "local(4, dilation=3)",
    "band": "band(-2, 9)",
    "band_lo": "band(lo=3)",
    "global": "global(3)",
    "global_at": "local(2) | global(at=[0, 17, 40])",
    "sink": "causal & (sink(4) | local(9))",
    "queries_keys": "causal | (queries(0, 20) & keys(0, 20))",
    "stride": "stride(7)",
    "strided": "causal & (local(7) | stride(8))",
    "strided_sqrt": "causal & (local(isqrt(n)) | stride(isqrt(n)))",
    "block": "block(24)",
    "fixed": "causal & (block(16) | summary(16, 3))",
    "summary": "summary(10, 2)",
    "random": "random(2, block=16, seed=3)",
    "bigbird": "local(16) | global(16) | random(2, block=16, seed=1)",
    "longformer": "local(12) | global(4)",
    "difference": "local(10) - stride(3)",
    "intersection": "local(20) & block(32)",
    "none": "none",
    "empty_rows": "queries(5, 29)",
    "heads": "heads { 0..0: local(4), 1..1: causal & stride(5) }",
    # wide enough that the 16-wide interpreter tiles are often full, so the unmasked path runs too
    "wide_local": "local(40)",
    "wide_causal_band": "causal & local(33) | sink(3)",
    "wide_band": "band(-5, 50)",
    "wide_block_fixed": "causal & fixed(48, 20)",
    "wide_stride": "causal & stride(3)",
    "wide_dilated": "local(20, dilation=2)",
    "wide_global_rows": "queries(0, 40) | local(20)",
}


def _load(src: str):
    p = patternc.parse(f"pattern x = {src}")
    return p, patternc.load(p, backend="triton")


_cache: dict = {}


def module(src: str):
    if src not in _cache:
        _cache[src] = _load(src)
    return _cache[src]


def assert_close(res, dtype=torch.float32):
    tol = TOL[dtype]
    assert res.lse_ok, "lse differs (or is NaN, or -inf in the wrong rows)"
    assert res.worst() <= tol, res


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_primitive_fp32(name):
    p, mod = module(PATTERNS[name])
    n = {"random": 90, "bigbird": 83, "heads": 45}.get(name, 103 if name.startswith("wide") else 61)
    assert_close(check_module(mod, p, n, D=16, H=2, HK=1, dtype=torch.float32))


@pytest.mark.parametrize("n", [1, 2, 17, 50])
def test_ragged_lengths(n):
    p, mod = module(PATTERNS["strided"])
    assert_close(check_module(mod, p, n, D=16, H=1, HK=1))


@pytest.mark.parametrize("name", ["longformer", "strided", "fixed", "dilated"])
def test_bf16(name):
    p, mod = module(PATTERNS[name])
    assert_close(check_module(mod, p, 70, D=32, H=2, HK=2, dtype=torch.bfloat16), torch.bfloat16)


def test_fp16_gqa_and_padded_head_dim():
    p, mod = module(PATTERNS["sink"])
    assert_close(check_module(mod, p, 40, D=24, B=2, H=4, HK=2, dtype=torch.float16), torch.float16)


def test_noncontiguous_inputs():
    p, mod = module(PATTERNS["longformer"])
    assert_close(check_module(mod, p, 37, D=16, H=2, HK=2, noncontiguous=True))


def test_empty_rows_give_zero_output_and_zero_gradients():
    p, mod = module(PATTERNS["empty_rows"])
    q, k, v = make_inputs(1, 1, 1, 40, 16, torch.float32, "cpu", seed=1)
    out, lse = mod.attention(q, k, v, return_lse=True)
    out.sum().backward()
    assert torch.all(out[:, :, :5] == 0) and torch.all(out[:, :, 29:] == 0)
    assert torch.all(torch.isinf(lse[:, :, :5])) and torch.all(lse[:, :, :5] < 0)
    assert torch.isfinite(lse[:, :, 5:29]).all()
    assert torch.all(q.grad[:, :, :5] == 0) and not torch.isnan(k.grad).any()


def test_poisoned_outputs_are_fully_written(monkeypatch):
    p, mod = module(PATTERNS["strided"])

    def poisoned(*shape, **kw):
        return torch.full(*shape, float("nan"), **kw) if isinstance(shape[0], tuple) else \
            torch.full(shape, float("nan"), **kw)

    monkeypatch.setattr(mod, "_alloc", poisoned)
    res = check_module(mod, p, 45, D=16, H=2, HK=1)
    assert_close(res)


@pytest.mark.parametrize("how", ["env", "torch", "config"])
def test_deterministic_mode_runs_the_dq_kernel(how, monkeypatch):
    """dq is added atomically by the dk/dv kernel unless determinism is asked for (three ways);
    then the dq kernel runs, and both ways give the float64 reference's gradients."""
    p, mod = _load(PATTERNS["bigbird"])
    launched = []
    for _, passes in mod._CASES:
        for desc in passes:
            real = desc["dq"]

            class Counted:
                def __getitem__(self, grid, real=real):
                    launched.append(grid)
                    return real[grid]
            desc["dq"] = Counted()
    assert_close(check_module(mod, p, 64, D=16, H=2, HK=1))
    assert not launched  # the default: fused
    if how == "env":
        monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    elif how == "config":
        monkeypatch.setenv("PATTERNC_CONFIG", "fused_dq=0")
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert_close(check_module(mod, p, 64, D=16, H=2, HK=1))
    assert launched


@pytest.mark.parametrize("name", ["wide_local", "longformer", "heads", "empty_rows", "sink", "queries_keys"])
def test_atomic_dq_on_patterns_that_default_to_the_dq_kernel(name, monkeypatch):
    monkeypatch.setenv("PATTERNC_CONFIG", "fused_dq=1")
    p, mod = module(PATTERNS[name])
    assert_close(check_module(mod, p, 83, D=16, H=2, HK=1))


def test_atomic_dq_is_the_default_only_where_it_measured_faster():
    """Random blocks and residue-class passes: on; windows, causal, globals: the dq kernel."""
    assert module(PATTERNS["bigbird"])[1]._FUSED_DQ == 1
    assert module(PATTERNS["strided"])[1]._FUSED_DQ == 1
    for name in ("wide_local", "causal", "longformer", "sink", "dilated"):
        assert module(PATTERNS[name])[1]._FUSED_DQ == 0, name


def test_backward_is_deterministic(monkeypatch):
    monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    p, mod = module(PATTERNS["bigbird"])
    grads = []
    for _ in range(2):
        q, k, v = make_inputs(1, 2, 1, 64, 16, torch.float32, "cpu", seed=7)
        mod.attention(q, k, v).pow(2).sum().backward()
        grads.append((q.grad.clone(), k.grad.clone(), v.grad.clone()))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_cpu_fallback_without_interpreter(monkeypatch):
    """Without TRITON_INTERPRET a CPU tensor takes the chunked PyTorch path: same numbers."""
    p, mod = module(PATTERNS["fixed"])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert_close(check_module(mod, p, 53, D=16, H=2, HK=1))


def test_torch_compile_has_no_graph_break():
    p, mod = module(PATTERNS["longformer"])
    q, k, v = make_inputs(1, 2, 1, 33, 16, torch.float32, "cpu", seed=3)

    def f(q, k, v):
        return mod.attention(q * 1.0, k, v).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert math.isclose(loss.item(), f(q, k, v).item(), rel_tol=1e-5, abs_tol=1e-5)


def test_generated_module_imports_only_torch_and_triton():
    p = patternc.parse(f"pattern x = {PATTERNS['bigbird']}")
    text = patternc.compile(p, "triton")
    imports = {line.split()[1].split(".")[0] for line in text.splitlines()
               if line.startswith(("import ", "from ")) and not line.startswith("from __future__")}
    assert imports <= {"torch", "triton", "math", "os", "functools", "json", "time"}, imports  # + stdlib
    assert "patternc" not in imports


def test_generated_code_has_no_dead_components():
    """A pattern without random blocks or strides emits no code for them."""
    text = patternc.compile(patternc.parse("pattern x = local(64) | global(4)"), "triton")
    assert "_hash32" not in text and "_random_block" not in text
    assert "_fwd_p0" in text and "_fwd_p1" not in text


def test_passes_never_certified_full_compile_one_masked_loop():
    """A later pass's tiles are never certified full (its mask subtracts earlier passes), so its
    kernels get one masked loop instead of three loops of which two are empty: less code for
    Triton to compile on the first call; the results are covered by every two-pass test."""
    text = patternc.compile(patternc.parse("pattern f = causal & fixed(16, 3)"), "triton")
    kernels = {chunk.split("(", 1)[0]: chunk for chunk in text.split("\ndef ")[1:]}
    for name in ("_dq_p1", "_dkdv_p1"):
        assert kernels[name].count("# every tile masked") == 1 and "# full tiles\n" not in kernels[name], name
    fwd = kernels["_fwd_p0"]  # the fused forward: pass 0 keeps its full-tile loop, pass 1 has one loop
    assert fwd.count("# every tile masked") == 1 and fwd.count("# full tiles\n") == 1


def test_one_interval_kernels_have_one_masked_loop_and_one_full_loop():
    """The partial tiles on both sides of the full run share one loop (less code to compile);
    that both sides are reached is covered by the window tests (wide_local, wide_band)."""
    text = patternc.compile(patternc.parse("pattern w = local(40)"), "triton")
    kernels = {chunk.split("(", 1)[0]: chunk for chunk in text.split("\ndef ")[1:]}
    for name in ("_fwd_p0", "_dq_p0", "_dkdv_p0"):
        k = kernels[name]
        assert k.count("# partial tiles, both sides") == 1 and k.count("# full tiles\n") == 1, name
        assert k.count("_tile(") == 2, name  # one masked and one unmasked call of the tile body


@pytest.mark.parametrize("src", ["local(256) | global(16)", "local(127) | global(128) | random(3, block=64)",
                                 "heads { 0..3: local(8), 4..7: causal & fixed(isqrt(n), 8) }"])
def test_wrapping_long_lines_keeps_the_generated_program(src, monkeypatch):
    """Generated modules wrap long lines for readers; the program must be the same one: equal
    syntax trees with and without wrapping, and most lines over 120 characters gone."""
    import ast

    from patternc.backends import triton as tb
    p = patternc.parse(f"pattern p = {src}")
    wrapped = tb.emit(p)
    monkeypatch.setattr(tb, "_wrap_long_lines", lambda text: text)
    plain = tb.emit(p)
    assert wrapped != plain
    assert ast.dump(ast.parse(wrapped)) == ast.dump(ast.parse(plain))
    def too_long(text):  # lines the wrapper may touch (no string literals) over 120 characters
        return [x for x in text.splitlines() if len(x) > 120 and "'" not in x and '"' not in x]
    assert len(too_long(wrapped)) <= len(too_long(plain)) // 4, too_long(wrapped)[:3]


def test_strided_uses_a_residue_pass_with_high_tile_efficiency():
    p = patternc.parse("pattern strided(s = 128) = causal & (local(s - 1) | stride(s))")
    pl = lower.plan(p.expr)
    assert [x.space.kind for x in pl.passes] == ["identity", "diag"]
    eff = lower.kernel_tile_efficiency(p.at(16384), 16384, *lower.choose_forward_tiles(p))
    assert eff >= 0.5, eff


def test_fixed_tile_efficiency():
    p = patternc.parse("pattern fx(l = 128, c = 8) = causal & (block(l) | summary(l, c))")
    assert lower.kernel_tile_efficiency(p.at(16384), 16384, *lower.choose_forward_tiles(p)) >= 0.5


def test_wrong_inputs_raise_clear_errors():
    p, mod = module(PATTERNS["local"])
    q = torch.randn(1, 2, 10, 16)
    with pytest.raises(ValueError, match="4 dimensions"):
        mod.attention(q[0], q, q)
    with pytest.raises(ValueError, match="multiple"):
        mod.attention(torch.randn(1, 3, 10, 16), q, q)
    with pytest.raises(TypeError, match="dtype"):
        mod.attention(q, q.half(), q)
    with pytest.raises(ValueError, match="n must be >= 1"):
        e = torch.randn(1, 2, 0, 16)
        mod.attention(e, e, e)
    with pytest.raises(ValueError, match="at most 256"):
        big = torch.randn(1, 1, 4, 300)
        mod.attention(big, big, big)


def test_mask_matches_semantics():
    p, mod = module(PATTERNS["bigbird"])
    assert torch.equal(mod.mask(83), pattern_mask(p, 83, 1, "cpu")[0, 0])
    p2, mod2 = module(PATTERNS["heads"])
    assert torch.equal(mod2.mask(30), pattern_mask(p2, 30, 2, "cpu")[0])


# ---- property-based: random pattern expressions, kernels vs the float64 oracle ----------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

ATOMS = st.one_of(
    st.just("causal"), st.just("all"),
    st.integers(0, 40).map(lambda w: f"local({w})"),
    st.tuples(st.integers(0, 30), st.integers(1, 4)).map(lambda t: f"local({t[0]}, dilation={t[1]})"),
    st.tuples(st.integers(-30, 30), st.integers(0, 40)).map(lambda t: f"band({t[0]}, {t[0] + t[1]})"),
    st.integers(0, 20).map(lambda k: f"global({k})"),
    st.integers(0, 10).map(lambda k: f"sink({k})"),
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: f"queries({min(t)}, {max(t)})"),
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: f"keys({min(t)}, {max(t)})"),
    st.integers(1, 9).map(lambda s_: f"stride({s_})"),
    st.integers(1, 40).map(lambda b: f"block({b})"),
    st.tuples(st.integers(1, 20), st.integers(0, 20)).map(lambda t: f"summary({t[0]}, {min(t)})"),
    st.tuples(st.integers(1, 3), st.sampled_from([16, 32]), st.integers(0, 99)).map(
        lambda t: f"random({t[0]}, block={t[1]}, seed={t[2]})"),
)
EXPRS = st.recursive(ATOMS, lambda inner: st.tuples(inner, st.sampled_from(["|", "&", "-"]), inner).map(
    lambda t: f"({t[0]} {t[1]} {t[2]})"), max_leaves=4)


@settings(max_examples=int(os.environ.get("PATTERNC_HYPOTHESIS_EXAMPLES", "10")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(EXPRS, st.integers(1, 90), st.booleans())
def test_random_expressions_match_the_oracle(src, n, gqa):
    p, mod = _load(src)
    res = check_module(mod, p, n, D=16, H=2, HK=1 if gqa else 2)
    assert res.lse_ok, (src, n, res)
    assert res.worst() <= TOL[torch.float32], (src, n, res)


@pytest.mark.parametrize("path,name", [("examples/strided.attn", None), ("examples/fixed.attn", None)])
def test_analyze_reports_kernel_tile_efficiency(path, name):
    """The issue's target: tile efficiency >= 0.5 for strided and fixed at s = 128, n = 16,384."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = patternc.parse(os.path.join(root, path), name)
    a = patternc.analyze(p, 16384)
    assert a.kernel_tile_efficiency >= 0.5, a.kernel_tile_efficiency
    assert a.tile_efficiency < 0.1  # what a plain 128-tile grid (FlexAttention's view) would compute
    assert a.to_dict()["kernel_tile_efficiency"] == a.kernel_tile_efficiency


# Global rows (columns) walk every key (query) tile: their walks are split into chunks and
# merged on the host.  Chunks of 2 tiles make the split happen at interpreter sizes.
SPLIT_PATTERNS = {  # (source, ranges of heavy query tiles, ranges of heavy key tiles)
    "longformer": ("local(20) | global(16)", 1, 1),
    "bigbird": ("local(15) | global(16) | random(2, block=16)", 1, 1),
    "sink_columns": ("causal & (sink(3) | local(20))", 0, 1),
    "late_global_rows": ("causal & (local(9) | queries(n - 5, n))", 1, 0),
    "two_passes": ("global(16) | stride(5)", 1, 1),
    "per_head": ("heads { 0..0: local(9) | global(16), 1..1: causal & local(7) }", 1, 1),
    "both_ends": ("local(9) | global(at=[0, n - 1])", 2, 2),  # two separate ranges of heavy tiles
}


@pytest.mark.parametrize("fused", [1, 0])
@pytest.mark.parametrize("name", sorted(SPLIT_PATTERNS))
def test_global_rows_split_into_chunks(name, fused, monkeypatch):
    src, rows_split, cols_split = SPLIT_PATTERNS[name]
    p, mod = module(src)
    monkeypatch.setenv("PATTERNC_CONFIG", f"split_chunk=2,fused_dq={fused}")
    calls = {"merge": 0, "add": 0}
    merge, add = mod._merge_rows, mod._add_rows

    def counted_merge(*a):
        calls["merge"] += 1
        return merge(*a)

    def counted_add(*a):
        calls["add"] += 1
        return add(*a)

    def poisoned(*shape, **kw):
        shape = shape[0] if isinstance(shape[0], (tuple, torch.Size)) else shape
        return torch.full(tuple(shape), float("nan"), **kw)
    monkeypatch.setattr(mod, "_merge_rows", counted_merge)
    monkeypatch.setattr(mod, "_add_rows", counted_add)
    monkeypatch.setattr(mod, "_alloc", poisoned)
    assert_close(check_module(mod, p, 150, D=16, B=2, H=2, HK=1))
    assert calls["merge"] == rows_split
    # per range: dq (unless the dk/dv kernel adds it atomically), dk and dv
    assert calls["add"] == rows_split * (1 - fused) + 2 * cols_split


@pytest.mark.parametrize("src, fused", [
    ("causal & fixed(16, 3)", [True]),
    ("heads { 0..0: causal & fixed(8, 2), 1..1: local(5) | global(2) }", [True, False]),
    ("causal & (local(7) | stride(8))", [False]),  # residue classes visit other query tiles
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_passes_over_the_same_query_tiles_share_one_forward_kernel(src, fused, dtype, monkeypatch):
    """A kept-key pass (Sparse Transformer fixed) continues the first pass's online softmax in the
    same program: one forward launch per head range instead of one per pass, and the result is
    written once, in the input dtype (poisoned allocations catch anything left unwritten)."""
    p, mod = _load(src)
    assert [lower.fused_forward(lower.plan(e)) for e in
            ([c.expr for c in p.expr.cases] if isinstance(p.expr, ir.Heads) else [p.expr])] == fused
    launches = []

    class Counted:
        def __init__(self, real, case):
            self.real, self.case = real, case

        def __getitem__(self, grid):
            launches.append(self.case)
            return self.real[grid]
    for ci, (_, descs) in enumerate(mod._CASES):
        assert [d["fwd"] is None for d in descs] == [bool(fused[ci]) and i > 0 for i in range(len(descs))]
        for d in descs:
            if d["fwd"] is not None:
                monkeypatch.setitem(d, "fwd", Counted(d["fwd"], ci))

    def poisoned(*shape, **kw):
        shape = shape[0] if isinstance(shape[0], (tuple, torch.Size)) else shape
        return torch.full(tuple(shape), float("nan"), **kw)
    monkeypatch.setattr(mod, "_alloc", poisoned)
    assert_close(check_module(mod, p, 150, D=16, H=2, HK=1, dtype=dtype, backward=dtype == torch.float32), dtype)
    assert [launches.count(ci) for ci in range(len(fused))] == \
        [1 if f else len(mod._CASES[ci][1]) for ci, f in enumerate(fused)]


@pytest.mark.parametrize("src", ["local(5) | global(2)", "causal & fixed(8, 2)",
                                 "heads { 0..0: local(3), 1..1: causal & (local(7) | stride(8)) }"])
def test_first_dq_launch_computes_delta_without_a_prologue_kernel(src, monkeypatch):
    """The first dq launch of each head range computes delta = rowsum(O * dO) and the log2-unit
    lse itself (no prologue kernel, one read of dO fewer); gradients are bit-identical to the
    prologue kernel's (pro_dq=0) and to the reference."""
    p, mod = _load(src)
    monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")  # dq kernels even where atomic dq is the default
    calls = []
    real = mod._bwd_prologue

    class Counted:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]
    monkeypatch.setattr(mod, "_bwd_prologue", Counted())
    q, k, v = make_inputs(1, 2, 1, 70, 16, torch.float32, "cpu", seed=11)
    do = torch.randn(1, 2, 70, 16, generator=torch.Generator().manual_seed(12))
    grads = {}
    for setting in ("", "pro_dq=0"):
        monkeypatch.setenv("PATTERNC_CONFIG", setting)
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        mod.attention(qq, kk, vv).backward(do)
        grads[setting] = [t.grad for t in (qq, kk, vv)]
        assert len(calls) == (0 if setting == "" else 1), (setting, calls)
    for a, b in zip(grads[""], grads["pro_dq=0"]):
        assert torch.equal(a, b)
    monkeypatch.setenv("PATTERNC_CONFIG", "")
    assert_close(check_module(mod, p, 70, D=16, H=2, HK=1))


def test_out_of_shared_memory_retries_with_smaller_settings(monkeypatch):
    """A GPU with less shared memory than the defaults assume: fewer stages, then smaller tiles."""
    from triton.runtime.errors import OutOfResources

    p, mod = _load("local(9) | global(3)")  # a fresh module: _SHRUNK starts empty
    desc = mod._CASES[0][1][0]
    real = desc["fwd"]
    seen = []

    class SmallGPU:  # rejects launches with more than one stage or tiles above 16
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((kw["BM"], kw["BN"], kw["num_stages"]))
                if kw["num_stages"] > 1 or kw["BM"] > 16 or kw["BN"] > 16:
                    raise OutOfResources(kw["num_stages"] * kw["BM"] * kw["BN"], 256, "shared memory")
                return real[grid](*args, **kw)
            return launch
    monkeypatch.setitem(desc, "fwd", SmallGPU())
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=32,BN=32,num_stages=2")
    assert_close(check_module(mod, p, 50, D=16, H=2, HK=1, backward=False))
    assert seen[0] == (32, 32, 2) and seen[-1] == (16, 16, 1)
    assert mod._SHRUNK == {(16, torch.float32, "cpu"): {"num_stages": 1, "BM": 16, "BN": 16}}
    n_before = len(seen)
    mod.attention(*make_inputs(1, 2, 1, 50, 16, torch.float32, "cpu", 0, False))
    assert len(seen) == n_before + 1  # remembered: the next call launches once


@pytest.mark.parametrize("src", [
    # found by hypothesis: a later random term skipped tiles an earlier one never visited
    "((local(12, dilation=2) | global(6)) & random(1, block=32, seed=92))",
    # ranges that start inside a tile: "seen" must test overlap, not the tile's first index
    "(keys(5, 40) | queries(3, 9) | local(2)) & random(1, block=16, seed=3)",
])
def test_several_random_terms_visit_each_tile_once(src):
    p, mod = module(src)
    for n in (21, 40):
        assert_close(check_module(mod, p, n, D=16, H=2, HK=1))


def test_random_blocks_backward_scans_many_query_blocks():
    """dk/dv find the query blocks that picked a key block 128 candidates at a time: n large
    enough for several scans (2100 / 16 = 132 query blocks), ragged."""
    p, mod = module("random(2, block=16, seed=7) | local(3)")
    assert_close(check_module(mod, p, 2100, D=16, H=1, HK=1))


def test_autotune_keeps_the_fastest_settings_and_caches_them(monkeypatch, tmp_path):
    """PATTERNC_AUTOTUNE=1: each candidate is timed on the real call, the fastest is kept, and a
    new process (a freshly loaded module) reads it from the cache file instead of timing again."""
    monkeypatch.setenv("PATTERNC_AUTOTUNE", "1")
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    p = patternc.parse("pattern x = local(9) | global(3)")
    mod = patternc.load(p, backend="triton")
    timed = []

    def fake_time(fn):  # "faster" = larger tiles, so the second candidates must win
        fn()
        cfg = mod._tiles(16, torch.float32, torch.device("cpu"), 50)
        timed.append(cfg["BM"] + cfg["DQ_BM"] + cfg["DKV_BN"])
        return 1.0 / timed[-1]
    monkeypatch.setattr(mod, "_time_call", fake_time)
    assert_close(check_module(mod, p, 50, D=16, H=2, HK=1))
    assert len(timed) == 4  # two forward and two backward candidates
    cfg = mod._tiles(16, torch.float32, torch.device("cpu"), 50)
    assert (cfg["BM"], cfg["DQ_BM"], cfg["DKV_BN"]) == (32, 32, 32)
    saved = json.loads(next(tmp_path.glob("tuned-*.json")).read_text())
    assert sorted(k.split("|")[0] for k in saved) == ["bwd", "fwd"]

    again = patternc.load(p, backend="triton")
    assert again is not mod and again._TUNED == {}
    monkeypatch.setattr(again, "_time_call", lambda fn: pytest.fail("tuned again despite the cache"))
    assert_close(check_module(again, p, 50, D=16, H=2, HK=1))
    assert again._tiles(16, torch.float32, torch.device("cpu"), 50)["BM"] == 32
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=16")  # an explicit setting wins over the tuned one
    assert again._tiles(16, torch.float32, torch.device("cpu"), 50)["BM"] == 16


def test_tma_descriptors_only_for_aligned_layouts(monkeypatch):
    """The host builds TMA descriptors only where the hardware accepts them; else None, and the
    kernels load through pointers (any strides)."""
    _, mod = module(PATTERNS["local"])
    d = mod._tma_desc(torch.randn(2, 3, 30, 16), 16, 16)
    assert d is not None and d.block_shape == [1, 1, 16, 16] and d.strides == [1440, 480, 16, 1]
    # (B, n, H, D) storage viewed as (B, H, n, D): aligned, different strides, still TMA
    d = mod._tma_desc(torch.randn(2, 30, 3, 16).transpose(1, 2), 32, 16)
    assert d is not None and d.strides == [1440, 16, 48, 1]
    # a size-1 dimension's stride is never stepped over: a misaligned value is replaced
    d = mod._tma_desc(torch.empty_strided((1, 2, 30, 16), (7, 480, 16, 1)), 16, 16)
    assert d is not None and d.strides == [960, 480, 16, 1]
    assert mod._tma_desc(torch.randn(1, 2, 30, 20, dtype=torch.bfloat16), 16, 32) is None  # 40-byte rows
    assert mod._tma_desc(torch.randn(1, 2, 16, 30).transpose(2, 3), 16, 16) is None  # D not innermost
    assert mod._tma_desc(torch.randn(1 + 1 * 2 * 30 * 16)[1:].view(1, 2, 30, 16), 16, 16) is None  # base
    monkeypatch.setenv("PATTERNC_TMA", "0")
    assert mod._tma_desc(torch.randn(2, 3, 30, 16), 16, 16) is None


def test_tma_loads_only_where_positions_are_contiguous():
    """Tokens in order and residue classes (one box of a (B, H, n/m, m, D) view; the host passes
    TMA=2 or False) may load through TMA; kept key columns (fixed's summary) pin TMA to False."""
    text = patternc.compile(patternc.parse("pattern s = causal & (local(7) | stride(8))"), backend="triton")
    text = re.sub(r",\n\s+", ", ", text)  # long calls are wrapped after commas: one line per call
    fwd_calls = [line for line in text.splitlines() if "= _fwd_tile(acc" in line]
    assert fwd_calls and all(line.rstrip().endswith("WIDEN, TMA)") for line in fwd_calls)
    # a query-major kernel's own rows (Q, dO): through TMA in the in-order pass only
    rows = [line for line in text.splitlines() if line.strip().startswith(("q = _tile_rows", "do = _tile_rows"))
            and "row_ok" in line]
    assert len(rows) == 6 and sum(line.rstrip().endswith("WIDEN, QTMA)") for line in rows) == 3, rows
    # the residue pass's dk/dv kernel never reduces dq through the 4-D descriptor
    dkdv = [line for line in text.splitlines() if "= _dkdv_tile(dk" in line]
    assert any(line.rstrip().endswith("FUSED, RED_TMA)") for line in dkdv)
    assert any(line.rstrip().endswith("FUSED, False)") for line in dkdv)
    text = re.sub(r",\n\s+", ", ", patternc.compile(patternc.parse("pattern f = causal & fixed(8, 2)"),
                                                    backend="triton"))
    fwd_calls = [line.rstrip() for line in text.splitlines() if "= _fwd_tile(acc" in line]
    assert any(x.endswith("WIDEN, TMA)") for x in fwd_calls) and any(x.endswith("WIDEN, False)") for x in fwd_calls)


def test_residue_class_descriptors_view_the_tensor_per_class():
    """A residue class of modulus m (m | n) is one TMA box of the (B, H, n/m, m, D) view;
    m not dividing n gives no descriptor (the pointer path)."""
    _, mod = module(PATTERNS["local"])
    t = torch.randn(2, 3, 32, 16)
    d = mod._tma_desc(t, 8, 16, True, m=4)
    assert d.shape == [2, 3, 8, 4, 16] and d.strides == [1536, 512, 64, 16, 1] and d.block_shape == [1, 1, 8, 1, 16]
    d = mod._tma_desc(torch.randn(2, 32, 3, 16).transpose(1, 2), 8, 16, True, m=4)  # (B, n, H, D) storage
    assert d.shape == [2, 3, 8, 4, 16] and d.strides == [1536, 16, 192, 48, 1]
    assert mod._tma_desc(torch.randn(2, 3, 30, 16), 8, 16, True, m=4) is None  # 4 does not divide 30
    assert mod._tma_desc(t, 8, 16, True) is not None  # the plain descriptor of the same tensor


@pytest.mark.parametrize("src, n", [(PATTERNS["dilated"], 60), (PATTERNS["dilated"], 61), (PATTERNS["strided"], 64),
                                    ("causal & (local(isqrt(n) - 1) | stride(isqrt(n)))", 81),
                                    ("heads { 0..0: local(8, dilation=4), 1..1: local(8) }", 48)])
def test_residue_classes_through_tma(src, n, monkeypatch):
    """class_tma=1: residue-class passes load their streamed tiles (K, V; Q, dO in dk/dv) through
    class descriptors where m divides n, pointer loads elsewhere; same results as float64, also
    for (B, n, H, D) storage and grouped heads."""
    p = patternc.parse(f"pattern p = {src}")
    mod = patternc.load(p, backend="triton")
    made = []
    real = mod._tma_desc

    def spy(t, rows, BD, on=None, m=None):
        d = real(t, rows, BD, on, m)
        made.append((m, d is not None))
        return d
    monkeypatch.setattr(mod, "_tma_desc", spy)
    monkeypatch.setenv("PATTERNC_CONFIG", "class_tma=1")
    for noncontiguous in (False, True):
        made.clear()
        H, HK = (p.num_heads, 1) if p.num_heads else (4, 2)
        assert_close(check_module(mod, p, n, D=16, H=H, HK=HK, noncontiguous=noncontiguous))
        m = mod._class_m(next(d for _, ps in mod._CASES for d in ps if d["space"] == "diag"),
                         mod._length_args(n), {"class_tma": 1})
        assert any(m_ for m_, _ in made), made  # the residue pass asked for class descriptors
        assert any(ok for m_, ok in made if m_) == (n % m == 0), (m, made)


@pytest.mark.parametrize("src, atomic", [(PATTERNS["strided"], True), (PATTERNS["dilated"], False)])
def test_residue_class_tma_by_default_except_beside_atomic_dq(src, atomic, monkeypatch):
    """The default (class_tma=2): a residue-class pass loads through class descriptors in the
    forward, and in the backward unless dq is added atomically (strided); same results."""
    p = patternc.parse(f"pattern p = {src}")
    mod = patternc.load(p, backend="triton")
    assert bool(mod._FUSED_DQ) == atomic
    made, phase = [], ["fwd"]
    real, real_fwd = mod._tma_desc, mod._forward_launches

    def spy(t, rows, BD, on=None, m=None):
        d = real(t, rows, BD, on, m)
        made.append((phase[0], m, d is not None))
        return d

    def forward(*args):
        phase[0] = "fwd"
        try:
            return real_fwd(*args)
        finally:
            phase[0] = "bwd"  # check_module runs the backward next
    monkeypatch.setattr(mod, "_tma_desc", spy)
    monkeypatch.setattr(mod, "_forward_launches", forward)
    monkeypatch.delenv("PATTERNC_CONFIG", raising=False)
    assert_close(check_module(mod, p, 48, D=16, H=2, HK=1))  # 48: both moduli (8, 3) divide it
    fwd = [ok for kind, m, ok in made if m and kind == "fwd"]
    bwd = [ok for kind, m, ok in made if m and kind != "fwd"]
    assert fwd and all(fwd), made
    assert bool(bwd) == (not atomic) and all(bwd), made


@pytest.mark.parametrize("name, setting", [("longformer", "PATTERNC_TMA=0"), ("bigbird", "PATTERNC_TMA=0"),
                                           ("wide_local", "PATTERNC_TMA=0"),
                                           ("longformer", "PATTERNC_CONFIG=row_tma=1"),
                                           ("strided", "PATTERNC_CONFIG=row_tma=1")])
def test_pointer_loads_without_tma(name, setting, monkeypatch):
    """PATTERNC_TMA=0 (and layouts TMA cannot serve) take the pointer path: same results; so does
    row_tma=1 (a measurement switch: the query-major kernels' own rows through TMA)."""
    monkeypatch.setenv(*setting.split("=", 1))
    p, mod = module(PATTERNS[name])
    assert_close(check_module(mod, p, 83, D=16, H=2, HK=1))


@pytest.mark.parametrize("name,D", [(name, 64) for name in ("longformer", "strided", "bigbird", "causal", "wide_local",
                                                            "wide_block_fixed")]
                         + [("queries_keys", 128), ("wide_causal_band", 128), ("longformer", 128)])
def test_kernels_compile_for_hopper_without_a_gpu(name, D, tmp_path, monkeypatch):
    """The interpreter accepts code the GPU compiler may reject (TMA descriptors, layouts):
    compile every kernel of a pattern for sm_90 with the ptxas that ships in the Triton wheel,
    with the settings an H100/H200 gets, and check that each fits an SM's shared memory
    (227 KiB; a kernel that does not fit fails its first launch and is recompiled smaller).
    At D = 128 the backward of a union of terms (prefix-LM, sink + window) fits only because
    each of its walks holds one tile loop (two loops in one walk gave dq 256 KiB)."""
    import subprocess
    import sys
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    src = tmp_path / "p.attn"
    src.write_text(f"pattern p = {PATTERNS[name]}\n")
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, script, str(src), "--arch", "90", "--d", str(D), "--n", "4096", "--regs",
                        "--launchers"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {line.split()[1] for line in r.stdout.splitlines() if line.strip()}
    assert {"fwd", "dq", "dkdv"} <= kinds, r.stdout
    # the prologue kernel (delta, lse2) runs where no dq kernel does: atomic dq
    assert ("bwd" in kinds) == (name in ("strided", "bigbird")), r.stdout
    if name == "longformer":  # global rows split at this n: the merge and the gradient sums too
        assert {"merge", "add"} <= kinds, r.stdout
    shared = [float(line.split()[-3]) for line in r.stdout.splitlines() if line.endswith("KiB shared")]
    assert shared and max(shared) <= 227, r.stdout
    if name == "longformer" and D == 128:  # 64-row forward tiles over a union: one loop, two programs per SM
        fwd = [float(line.split()[-3]) for line in r.stdout.splitlines() if " fwd " in line]
        assert fwd and max(fwd) <= 113.5, r.stdout
        # dq walks the union twice (full runs, then partial tiles): walks one after the other
        # share their buffers, so as much as a one-term dq (3 stages of K and V, Q and dO)
        dq = [float(line.split()[-3]) for line in r.stdout.splitlines() if " dq " in line]
        assert dq and max(dq) <= 161.5, r.stdout
    # ptxas's register report for every kernel (the tool that found the dk/dv kernels' spills)
    regs = [int(m) for m in re.findall(r"(\d+) regs, +\d+ B spilled", r.stdout)]
    assert len(regs) == len(shared) and all(0 < x <= 255 for x in regs), r.stdout
    # the launcher source guessed before compiling (PATTERNC_PARALLEL_COMPILE=2) is the compiled one's
    assert r.stdout.count("launcher guessed") == len(shared), r.stdout


def test_residue_class_tma_compiles_for_hopper(tmp_path, monkeypatch):
    """class_tma=1: the 5-D class descriptors compile for sm_90 in every kernel of a two-pass
    pattern with atomic dq (strided) at D = 128, within an SM's shared memory."""
    import subprocess
    import sys
    src = tmp_path / "p.attn"
    src.write_text("pattern p = causal & (local(isqrt(n) - 1) | stride(isqrt(n)))\n")
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PATTERNC_CONFIG="class_tma=1")
    r = subprocess.run([sys.executable, script, str(src), "--arch", "90", "--d", "128", "--n", "4096", "--launchers"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Error" not in r.stdout, r.stdout
    shared = [float(line.split()[-3]) for line in r.stdout.splitlines() if line.endswith("KiB shared")]
    assert len(shared) >= 5 and max(shared) <= 227, r.stdout
    assert r.stdout.count("launcher guessed") == len(shared), r.stdout  # 5-D descriptors lower to TMA too


def test_eager_path_matches_the_custom_op_bit_for_bit():
    """Outside torch.compile, attention() skips the custom op's dispatch (host time); both paths
    must give identical outputs and gradients."""
    p, mod = module(PATTERNS["longformer"])
    q, k, v = make_inputs(1, 2, 1, 53, 16, torch.float32, "cpu", seed=5)
    do = torch.randn(1, 2, 53, 16)
    out, lse = mod.attention(q, k, v, return_lse=True)
    out.backward(do)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    out2, lse2 = mod._attention_fwd(q, k, v, 0.25)
    out2.backward(do)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)
    assert all(torch.equal(a, t.grad) for a, t in zip(grads, (q, k, v)))
    with torch.no_grad():
        assert torch.equal(mod.attention(q, k, v), out)


@pytest.mark.parametrize("pro", [1, 0])
def test_warm_up_mode_compiles_instead_of_launching(pro, monkeypatch):
    """In warm-up mode (first call on a GPU) every launch of a call, including split launches and
    the backward prologue (where it runs: pro_dq=0), becomes a compile request; nothing runs."""
    p, mod = _load("causal & (local(9) | stride(8)) | global(2)")  # two passes, split global rows
    submitted = []

    class Kernel:
        def __init__(self, name):
            self.name = name

        def warmup(self, *args, grid, **kw):
            submitted.append((self.name, kw.get("PARTIAL", 0)))

        def __getitem__(self, grid):
            raise AssertionError("launched during warm-up")
    for ci, (_, passes) in enumerate(mod._CASES):
        for pi, desc in enumerate(passes):
            for kind in ("fwd", "dq", "dkdv"):
                monkeypatch.setitem(desc, kind, Kernel(f"{kind}{pi}"))
    monkeypatch.setattr(mod, "_bwd_prologue", Kernel("prologue"))
    monkeypatch.setenv("PATTERNC_CONFIG", f"split_chunk=2,fused_dq=0,pro_dq={pro}")  # (atomic dq: no dq kernels)
    q, k, v = make_inputs(1, 2, 1, 150, 16, torch.float32, "cpu", seed=0)
    monkeypatch.setattr(mod, "_WARMING", [True])
    mod._forward_launches(q, k, v, 0.25)
    o, lse = torch.zeros_like(q), torch.zeros(1, 2, 150)
    mod._backward_launches(torch.ones_like(q), q, k, v, o, lse, 0.25)
    names = {name for name, _ in submitted}
    assert names == {"fwd0", "fwd1", "dq0", "dq1", "dkdv0", "dkdv1"} | ({"prologue"} if not pro else set()), \
        submitted
    assert any(partial for _, partial in submitted)  # the split launch is compiled too


def test_direct_launch_calls_the_compiled_kernel_with_every_argument_in_order(monkeypatch):
    """Direct launches (the default): a launch site's first launch goes through the JIT and keeps the
    compiled kernel; later launches at the same site call it with the JIT's argument order
    (positional, then keywords in declaration order); a listening profiler, another kernel at the
    site, or a Triton that refuses the call send launches back through the JIT."""
    import triton
    p, mod = _load("local(3)")
    jit_calls, runs = [], []

    class Compiled:
        packed_metadata, function = "packed", "function"

        def run(self, *a):
            runs.append(a)

    class FakeJIT:
        arg_names = ["X", "Y", "n", "BM", "TMA"]

        def __getitem__(self, grid):
            def launch(*args, **kw):
                jit_calls.append((grid, args, kw))
                return Compiled()
            return launch
    monkeypatch.setattr(mod, "_JIT_TYPES", (FakeJIT,))
    monkeypatch.setattr(mod, "_stream", lambda device: 7)
    monkeypatch.setattr(mod, "_COMPILED", {})
    kernel, site = FakeJIT(), ("plan", 0)
    for _ in range(3):  # a 2-D grid: the compiled kernel's launcher still gets three axes
        mod._launcher(kernel, (4, 2), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 1 and len(runs) == 2
    assert runs[0] == (4, 2, 1, 7, "function", "packed", None, None, None, "x", "y", 100, 16, True)
    mod._launcher(FakeJIT(), (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)  # another kernel
    assert len(jit_calls) == 2
    for _ in range(2):  # the site now remembers the other kernel: the JIT once, then directly again
        mod._launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 3 and len(runs) == 3
    hook = lambda *a: None  # noqa: E731
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        mod._launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(jit_calls) == 4 and len(runs) == 3
    monkeypatch.setattr(mod, "_stream", lambda device: 1 / 0)  # a Triton that works differently
    mod._launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 5 and not mod._DIRECT[0]
    mod._DIRECT[0] = True


def test_direct_launch_encodes_each_tma_descriptor_once(monkeypatch):
    """Direct launches call the launcher's C function with each TMA descriptor's arguments
    encoded once per address and layout (Triton's own wrapper encodes them on every launch),
    in the launcher's argument order.  Opt-in: PATTERNC_DIRECT_LAUNCH=2."""
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "2")
    p, mod = _load("local(3)")
    jit_calls, calls, encoded = [], [], []

    def make_inner(launcher, tensordesc_indices, tensordesc_meta):  # the shape of Triton 3.6's wrapper
        def inner(*args):
            return launcher(*args), tensordesc_indices, tensordesc_meta
        return inner
    meta = dict(swizzle=128, elem_size=2, elem_type=1, block_size=[1, 1, 16, 16], fp4_padded=False)

    class Run:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid = launch_pdl = False
        launch = staticmethod(make_inner(lambda *a: calls.append(a), {1}, [meta]))

    class Compiled:
        packed_metadata, function, run = "packed", "function", Run()

    class FakeJIT:
        arg_names = ["X", "XD", "n", "BM"]

        def __getitem__(self, grid):
            jit_calls.append(grid)
            return lambda *a, **kw: Compiled()
    monkeypatch.setattr(mod, "_JIT_TYPES", (FakeJIT,))
    monkeypatch.setattr(mod, "_stream", lambda device: 7)
    monkeypatch.setattr(mod, "_COMPILED", {})
    monkeypatch.setattr(mod, "_DESC_ARGS", {})
    monkeypatch.setattr(mod, "_ENCODE", [lambda d, m: encoded.append(m) or ["map", *d.shape, *d.strides]])
    t = torch.zeros(1, 2, 32, 16)
    desc = mod._tma_desc(t, 16, 16, True)
    kernel = FakeJIT()
    for _ in range(3):
        mod._launcher(kernel, (4, 2), ("plan", 0))("x", desc, 32, BM=16)
    assert len(jit_calls) == 1 and len(calls) == 2 and encoded == [meta]
    assert calls[0] == (4, 2, 1, 7, "function", False, False, None, None, "packed", None, None, None,
                        "x", "map", 1, 2, 32, 16, 1024, 512, 16, 1, 32, 16)
    t2 = torch.zeros(1, 2, 32, 16)  # another address: encoded again
    mod._launcher(kernel, (4, 2), ("plan", 0))("x", mod._tma_desc(t2, 16, 16, True), 32, BM=16)
    assert len(encoded) == 2 and len(calls) == 3


def test_launch_plans_follow_settings(monkeypatch):
    """Plans are memoised per shape and settings: a changed PATTERNC_CONFIG, determinism switch
    or PATTERNC_DIRECT_LAUNCH gives a new plan; the same call reuses its plan."""
    p, mod = _load("local(5) | global(2)")
    q, k, v = make_inputs(1, 2, 1, 40, 16, torch.float32, "cpu", seed=0)
    monkeypatch.delenv("PATTERNC_DIRECT_LAUNCH", raising=False)
    a = mod._plan("fwd", q, k)
    assert mod._plan("fwd", q, k) is a and a["direct"]  # direct launches by default
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=32")
    b = mod._plan("fwd", q, k)
    assert b is not a and b["cfg"]["BM"] == 32
    monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    assert mod._plan("bwd", q, k)["fused"] is False
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "0")
    assert not mod._plan("fwd", q, k)["direct"]
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "1")
    assert mod._site(mod._plan("fwd", q, k), q, q, k, v) is None  # off CUDA: the JIT (interpreter) path


def test_union_walks_follow_the_walk_length():
    """A union is walked twice (full runs mask-free, then partial tiles) by every dq kernel, by
    64-row forwards and by dk/dv kernels whose key tiles walk many query tiles; the generated
    kernels say so."""
    from patternc.backends import triton as tb
    cases = {"causal | (queries(0, 2048) & keys(0, 2048))": {"fwd": False, "dq": True, "dkdv": True},
             "causal & (sink(4) | local(1024))": {"fwd": False, "dq": True, "dkdv": False},
             "local(256) | global(16)": {"fwd": True, "dq": True, "dkdv": False}}
    for src, want in cases.items():
        p = patternc.parse(f"pattern p = {src}")
        assert lower.choose_union_walks(p) == want, src
        text = tb.emit(p)
        for kind, two in want.items():
            body = text[text.index(f"def _{kind}_p0("):]
            body = body[:re.search(r"\n(@triton\.jit|# ---)", body).start()]
            assert ("# then the partial tiles" in body) == two, (src, kind)
            assert ("for kt in range(cur, seg):  # full tiles" in body or
                    "for at in range(cur, seg):  # full tiles" in body) == (two or kind == "fwd"), (src, kind)


def test_union_walk_switch_forces_one_way(monkeypatch):
    """PATTERNC_UNION_WALK (read when the backend is imported) overrides the per-kernel rule."""
    from patternc.backends import triton as tb
    p = patternc.parse("pattern p = local(256) | global(16)")
    monkeypatch.setattr(tb, "UNION_WALK", "two")
    assert tb.emit(p).count("# then the partial tiles") == 3  # forward, dq, dk/dv
    monkeypatch.setattr(tb, "UNION_WALK", "one")
    assert "# then the partial tiles" not in tb.emit(p)


def test_backward_settings_at_d64_follow_the_key_walk():
    """At D = 64 causal-like patterns (a 64-key tile meets >= 64 query tiles, on average over
    the heads) take 128x128 dq tiles and 3 dk/dv stages; windows, sinks and global rows keep
    128x64 dq tiles and the module's default stages; at D = 128 every pattern keeps them.
    The module uses them."""
    import torch as _t
    for src, wide in (("causal", True), ("causal | (queries(0, 2048) & keys(0, 2048))", True),
                      ("heads { 0..0: causal, 1..1: causal | (queries(0, 64) & keys(0, 64)) }", True),
                      ("local(256)", False), ("causal & (sink(4) | local(1024))", False),
                      ("local(256) | global(16)", False), ("heads { 0..0: local(8), 1..1: causal }", True)):  # the mean over heads
        p = patternc.parse(f"pattern p = {src}")
        assert lower.long_key_walk(p) == wide, src
        s64, s128 = lower.choose_bwd_settings(p, D=64), lower.choose_bwd_settings(p, D=128)
        assert (s64["DQ_BN"], s64["dkv_stages"]) == ((128, 3) if wide else (64, None)), src
        assert (s128["DQ_BN"], s128["dkv_stages"]) == (64, None), src
        mod = patternc.load(p, backend="triton")
        mod._HOPPER[0] = True
        cfg = mod._tiles(64, _t.bfloat16, _t.device("cuda", 0), 65536)
        assert (cfg["DQ_BN"], cfg["dkv_stages"]) == ((128, 3) if wide else (64, 2)), src
        cfg = mod._tiles(128, _t.bfloat16, _t.device("cuda", 0), 65536)
        assert (cfg["DQ_BN"], cfg["dkv_stages"]) == (64, 2), src


def test_long_comment_lines_keep_their_column():
    """A comment-only line longer than the wrap width is left as written (it lines up under
    the code above it), while long code lines are broken after a comma."""
    from patternc.backends import triton as tb
    comment = " " * 70 + "# a remark that runs past the hundredth column of the line"
    code = "x = f(" + ", ".join(f"argument_{k}" for k in range(12)) + ")"
    out = tb._wrap_long_lines(comment + "\n" + code + "\n").splitlines()
    assert out[0] == comment
    assert len(out) > 2 and all(len(x) <= 100 for x in out[1:])


def test_dkdv_tiles_follow_the_window_shape():
    """64-key dk/dv tiles on 4 warps for one-pass plans over tokens in order (bands, unions with
    globals, sinks or a prefix block) and for plans with block-diagonal or random terms, random
    ones with 32-query tiles at D = 128; residue classes and several passes keep 128 keys on 8 warps."""
    import torch as _t
    for src, tiles in (("local(256)", (64, 64, 4)), ("band(-5, 50)", (64, 64, 4)), ("local(n // 4)", (64, 64, 4)),
                       ("heads { 0..0: local(8), 1..1: local(100) }", (64, 64, 4)),
                       ("causal & local(256)", (64, 64, 4)), ("causal", (64, 64, 4)),
                       ("heads { 0..0: local(8), 1..1: causal }", (64, 64, 4)),
                       ("causal & fixed(isqrt(n), 8)", (64, 64, 4)),
                       ("local(127) | global(128) | random(3, block=64)", (32, 64, 4)),
                       ("local(256) | global(16)", (64, 64, 4)), ("causal & (sink(4) | local(1024))", (64, 64, 4)),
                       ("causal | (queries(0, 2048) & keys(0, 2048))", (64, 64, 4)),
                       ("heads { 0..0: local(8), 1..1: local(8) | global(2) }", (64, 64, 4)),
                       ("local(256, dilation=4)", (64, 128, 8)),
                       ("causal & (local(isqrt(n) - 1) | stride(isqrt(n)))", (64, 128, 8)),
                       ("heads { 0..0: local(8), 1..1: local(8, dilation=2) }", (64, 128, 8))):
        p = patternc.parse(f"pattern p = {src}")
        assert lower.choose_dkdv_tiles(p) == tiles, src
        mod = patternc.load(p, backend="triton")
        mod._HOPPER[0] = True
        cfg = mod._tiles(128, _t.bfloat16, _t.device("cuda", 0), 16384)
        assert (cfg["DKV_BM"], cfg["DKV_BN"], cfg["dkv_warps"]) == tiles, src
        cfg64 = mod._tiles(64, _t.bfloat16, _t.device("cuda", 0), 16384)  # nothing spills at D = 64
        assert (cfg64["DKV_BM"], cfg64["DKV_BN"], cfg64["dkv_warps"]) == (64,) + tiles[1:], src


def test_tile_walks_match_the_mask_per_query_tile():
    """lower.tile_walks gives each query tile's walk, in launch order: for causal the key tiles
    up to the diagonal, for local(w) the tiles the window touches; visited_tiles is their sum."""
    import numpy as np
    n, bm, bn = 1000, 128, 64
    for src in ("causal", "local(100)", "causal & local(300)"):
        e = patternc.parse(f"pattern p = {src}").at(n)
        [(walk, t)] = lower.tile_walks(e, n, bm, bn)
        i = np.arange(n)[:, None]
        j = np.arange(n)[None, :]
        mask = np.broadcast_to(patternc.semantics.allowed(e, i, j, n), (n, n))
        want = [len({int(k) // bn for k in np.nonzero(mask[a:a + bm].any(0))[0]}) for a in range(0, n, bm)]
        assert list(walk) == want, (src, list(walk), want)
        assert list(t) == list(range(len(want)))
        assert lower.visited_tiles(e, n, bm, bn) == sum(want)


@pytest.mark.parametrize("src,cols,g", [("causal & (sink(4) | local(150))", (0, 4), 16),
                                        ("local(100) | global(16)", (0, 16), 16),
                                        ("local(60) | keys(200, 230)", (200, 230), 32)])
@pytest.mark.parametrize("bm", [64, 128])
def test_computed_pairs_count_narrow_column_steps(src, cols, g, bm):
    """lower.computed_pairs (what `analyze` reports as kernel tile efficiency) counts a narrow
    column term's own step as bm x its step's keys where the kernel takes it -- no tile of the
    other terms (those of the mask without these columns) touches the columns' key tiles -- and
    a whole key tile in the walk elsewhere; checked against tile sets from the dense mask."""
    import numpy as np
    n, bn = 1999, 64
    e = patternc.parse(f"pattern p = {src}").at(n)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    mask = np.broadcast_to(patternc.semantics.allowed(e, i, j, n), (n, n))
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
    assert lower.computed_pairs(e, n, bm, bn) == want
    assert lower.computed_pairs(e, n, bm, bn) < lower.visited_tiles(e, n, bm, bn) * bm * bn
    plain = patternc.parse("pattern p = local(100)").at(n)
    assert lower.computed_pairs(plain, n, bm, bn) == lower.visited_tiles(plain, n, bm, bn) * bm * bn


def test_longest_walks_first_where_walks_grow():
    """Query tiles run last-first (REV) in the forward and dq kernels of passes whose later tiles
    walk more keys: causal, prefix-LM, fixed's summary pass (and its fused forward); not windows,
    sinks, dilated or random blocks; per head case; never for split global rows."""
    want = {"causal": ([True], True), "causal | (queries(0, 2048) & keys(0, 2048))": ([True], True),
            "local(256)": ([False], False), "causal & (sink(4) | local(1024))": ([False], False),
            "local(256, dilation=4)": ([False], False), "local(127) | global(128) | random(3, block=64)": ([False], False),
            "causal & fixed(128, 8)": ([False, True], True)}
    for src, w in want.items():
        assert lower.longest_walks_first(patternc.parse(f"pattern p = {src}")) == [w], src
    heads = patternc.parse("pattern p = heads { 0..3: local(64), 4..7: causal }")
    assert lower.longest_walks_first(heads) == [([False], False), ([True], True)]
    src = patternc.compile(heads, "triton")
    assert src.count("if REV:") == 2  # the causal heads' forward and dq kernels
    assert "'rev': {'fwd': True, 'dq': True}" in src and "'rev': {'fwd': False, 'dq': False}" in src
    grows_but_split = patternc.parse("pattern p = causal | global(4)")
    assert lower.longest_walks_first(grows_but_split) == [([True], True)]
    assert "if REV:" not in patternc.compile(grows_but_split, "triton")


@pytest.mark.parametrize("name", ["causal", "queries_keys", "wide_block_fixed", "heads", "strided_sqrt"])
@pytest.mark.parametrize("rev", ["0", "1"])
def test_tiles_last_first_give_the_same_result(name, rev, monkeypatch):
    """rev=1 (the default) and rev=0 compute the same attention and gradients as float64 at a
    ragged length; the kernels that grow take REV from the setting."""
    monkeypatch.setenv("PATTERNC_CONFIG", f"rev={rev}")
    p, mod = module(PATTERNS[name])
    seen = []
    real = mod._launcher

    def spy(kernel, grid, site=None):
        launch = real(kernel, grid, site)

        def call(*args, **kw):
            seen.append((kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), kw.get("REV")))
            return launch(*args, **kw)
        return call
    monkeypatch.setattr(mod, "_launcher", spy)
    H = p.num_heads or 2
    assert_close(check_module(mod, p, 83, D=16, H=H, HK=1))
    want = {}
    for _, ps in mod._CASES:
        for d in ps:
            for kind in ("fwd", "dq"):
                if d[kind] is not None:
                    want[d[kind].fn.__name__] = rev == "1" and d["rev"][kind]
    got = {name: r for name, r in seen if r is not None}
    assert got and got == {k: v for k, v in want.items() if k in got}, (got, want)
    assert any(got.values()) == (rev == "1"), got  # every one of these patterns has a growing pass


def test_launcher_pool_initialises_compiled_kernels_off_the_main_thread():
    """PATTERNC_PARALLEL_COMPILE=2's pool (`_init_in_pool`): every distinct compiled kernel (or
    future of one) is initialised once, off the calling thread; a kernel whose initialisation
    failed before its binary loaded is left to retry at launch, not to launch unloaded."""
    import threading

    _, mod = module(PATTERNS["causal"])

    class Kernel:
        def __init__(self, fail=False):
            self.module, self._run, self.fail, self.threads = None, None, fail, []

        def _init_handles(self):
            self.threads.append(threading.current_thread() is threading.main_thread())
            self._run = "launcher"
            if self.fail:
                raise RuntimeError("no binary")
            self.module = "loaded"

    class Future:
        def __init__(self, k):
            self.k = k

        def result(self):
            return self.k

    class Broken:
        def result(self):
            raise RuntimeError("compile failed")

    a, b, bad = Kernel(), Kernel(), Kernel(fail=True)
    mod._init_in_pool([a, Future(b), a, bad, Broken(), None], torch.device("cpu"))
    assert a.threads == [False] and b.threads == [False] and bad.threads == [False]
    assert a.module == b.module == "loaded" and a._run == "launcher"
    assert bad.module is None and bad._run is None  # the launch calls _init_handles again
    lone = Kernel()
    mod._init_in_pool([lone], torch.device("cpu"))  # one kernel: nothing to overlap, left to its launch
    assert lone.threads == [] and lone.module is None


def test_launchers_are_submitted_for_building_while_their_kernels_compile():
    """PATTERNC_PARALLEL_COMPILE=2's jit_cache_hook (`_prebuild_hook`): each distinct kernel
    specialisation submits one launcher build to the compile pool, with every tensor-descriptor
    argument guessed to lower to TMA; a hook installed before it runs first and may skip the
    compilation (then nothing is built); anything unexpected builds nothing and raises nothing."""
    from types import SimpleNamespace

    _, mod = module(PATTERNS["local"])

    class Pool:
        def __init__(self):
            self.jobs = []

        def submit(self, fn, *args):
            self.jobs.append((fn, args))

    class Kernel:  # what ASTSource reads of a JIT function
        __name__ = "kern"
        arg_names = ["X", "KD", "VD", "BM"]

    asked = []

    def previous(**kw):
        asked.append(kw["key"])
        return kw["key"] == "skip"

    pool = Pool()
    hook = mod._prebuild_hook(pool, previous)
    sig = {"X": "*bf16", "KD": "tensordesc<bf16[64, 128]>", "VD": "tensordesc<bf16[64, 128]>", "BM": "constexpr"}
    info = SimpleNamespace(jit_function=Kernel())
    for key, bm in (("a", 64), ("b", 64), ("c", 128), ("skip", 32)):
        out = hook(key=key, repr="", fn=info, compile={"signature": sig, "constants": {"BM": bm}},
                   is_manual_warmup=True, already_compiled=False)
        assert out == (True if key == "skip" else None)
    assert asked == ["a", "b", "c", "skip"]
    assert [fn for fn, _ in pool.jobs] == [mod._prebuild_launcher] * 2  # BM=64 once, BM=128 once
    srcs = [args[0] for _, args in pool.jobs]
    assert [s.constants for s in srcs] == [{(3,): 64}, {(3,): 128}]
    guess = mod._launcher_guess(srcs[0])
    assert guess.tensordesc_meta == [{}, {}] and guess.global_scratch_size == 0
    assert mod._launcher_guess(SimpleNamespace(signature={"X": "*bf16"})).tensordesc_meta is None
    assert hook(key="d", repr="", fn=None, compile={}, is_manual_warmup=True, already_compiled=False) is None
    assert len(pool.jobs) == 2
    mod._prebuild_launcher(srcs[0])  # no CUDA driver here: nothing built, nothing raised


@pytest.mark.parametrize("src,n,bm", [
    ("causal & (sink(4) | local(40))", 333, 32),  # StreamingLLM's shape: sink columns at 0
    ("local(20) | global(5)", 301, 32),  # Longformer's: global rows split into chunks, global columns
    ("local(9) | keys(100, 110)", 257, 32),  # columns mid-sequence: the windows near them reach their tile
    ("causal & (local(30) | keys(0, 32) | keys(n - 3, n))", 290, 32),  # 32 columns, and columns at the end
    # a 16-key step from key 60 reaches keys 64..75 of the next tile, which the window of the
    # query tile at 80 walks: the step must stop at the term's last column
    ("local(9) | keys(60, 64)", 150, 16),
])
def test_narrow_key_columns_take_a_step_of_their_own(src, n, bm, monkeypatch):
    """Terms that need a few fixed key columns (sinks, global columns) are walked by a 16- or
    32-key step of their own, in the forward and dq kernels, where no other term's tiles reach
    them; with 64-key tiles (the GPU's) the step runs in most query tiles and the walk in the rest."""
    p, mod = module(src)
    text = patternc.compile(p, "triton")
    assert "a step of its own" in text
    monkeypatch.setenv("PATTERNC_CONFIG", f"BM={bm},BN=64,DQ_BM={bm},DQ_BN=64,split_chunk=2")
    assert_close(check_module(mod, p, n, D=16, H=2, HK=1, dtype=torch.float32))
