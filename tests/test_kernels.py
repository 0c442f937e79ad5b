"""The generated Triton kernels, run for real under TRITON_INTERPRET=1 on the CPU.

Every check compares output, lse and dq/dk/dv with a float64 dense reference on fresh random
inputs at ragged sizes (n not a multiple of the 16-wide tiles used under the interpreter).
The launch settings are varied through PATTERNC_CONFIG, the same switch the GPU sweeps use.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before any generated module defines its kernels

pytest.importorskip("triton")

import patternc  # noqa: E402
from patternc.runtime import triton_path  # noqa: E402

from kernel_check import TOL, check_module, make_inputs, pattern_mask  # noqa: E402
from kernel_patterns import PATTERNS, LaunchSpy, assert_close, fresh, module, poisoned  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False


class Recorder:
    """Records each kernel a pattern's runtime launches, with its keywords."""

    def __init__(self):
        self.launched = []

    def __call__(self, kernel, grid, site, kw):
        self.launched.append((getattr(kernel, "fn", kernel), kw))

    def count(self, kernels) -> int:
        fns = {getattr(k, "fn", k) for k in kernels if k is not None}
        return sum(fn in fns for fn, _ in self.launched)


def record(mod, monkeypatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(mod._bound.triton, "launch", LaunchSpy(mod._bound.triton.launch, rec))
    return rec


def kernels(mod, kind: str) -> list:
    return [getattr(p, kind) for c in mod.SPEC.cases for p in c.passes]


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
    monkeypatch.setattr(mod._bound.triton, "alloc", poisoned)
    assert_close(check_module(mod, p, 45, D=16, H=2, HK=1))


@pytest.mark.parametrize("how", ["env", "torch", "config"])
def test_deterministic_mode_runs_the_dq_kernel(how, monkeypatch):
    """dq is added atomically by the dk/dv kernel unless determinism is asked for (three ways);
    then the dq kernel runs, and both ways give the float64 reference's gradients."""
    p, mod = fresh(PATTERNS["bigbird"])
    rec = record(mod, monkeypatch)
    assert_close(check_module(mod, p, 64, D=16, H=2, HK=1))
    assert rec.count(kernels(mod, "dq")) == 0  # the default: fused
    if how == "env":
        monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    elif how == "config":
        monkeypatch.setenv("PATTERNC_CONFIG", "fused_dq=0")
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert_close(check_module(mod, p, 64, D=16, H=2, HK=1))
    assert rec.count(kernels(mod, "dq")) > 0


@pytest.mark.parametrize("name", ["wide_local", "longformer", "heads", "empty_rows", "sink", "queries_keys"])
def test_atomic_dq_on_patterns_that_default_to_the_dq_kernel(name, monkeypatch):
    monkeypatch.setenv("PATTERNC_CONFIG", "fused_dq=1")
    p, mod = module(PATTERNS[name])
    assert_close(check_module(mod, p, 83, D=16, H=2, HK=1))


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


def test_torch_compile_has_no_graph_break():
    p, mod = module(PATTERNS["longformer"])
    q, k, v = make_inputs(1, 2, 1, 33, 16, torch.float32, "cpu", seed=3)

    def f(q, k, v):
        return mod.attention(q * 1.0, k, v).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert abs(loss.item() - f(q, k, v).item()) <= 1e-5 * max(1.0, abs(loss.item()))


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
    st.tuples(st.integers(1, 9), st.integers(0, 8)).map(lambda t: f"rows_mod({t[0]}, {t[1] % t[0]})"),
    st.tuples(st.integers(1, 3), st.sampled_from([16, 32]), st.integers(0, 99)).map(
        lambda t: f"random({t[0]}, block={t[1]}, seed={t[2]})"),
)
EXPRS = st.recursive(ATOMS, lambda inner: st.tuples(inner, st.sampled_from(["|", "&", "-"]), inner).map(
    lambda t: f"({t[0]} {t[1]} {t[2]})"), max_leaves=4)


@settings(max_examples=int(os.environ.get("PATTERNC_HYPOTHESIS_EXAMPLES", "10")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(EXPRS, st.integers(1, 90), st.booleans())
def test_random_expressions_match_the_oracle(src, n, gqa):
    p, mod = fresh(src)
    res = check_module(mod, p, n, D=16, H=2, HK=1 if gqa else 2)
    assert res.lse_ok, (src, n, res)
    assert res.worst() <= TOL[torch.float32], (src, n, res)


# ---- global rows split into chunks -------------------------------------------------------------

# Global rows (columns) walk every key (query) tile: their walks are split into chunks and merged
# by the runtime.  Chunks of 2 tiles make the split happen at interpreter sizes.
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
    merge, add = triton_path.merge_rows, triton_path.add_rows

    def counted_merge(*a):
        calls["merge"] += 1
        return merge(*a)

    def counted_add(*a):
        calls["add"] += 1
        return add(*a)
    monkeypatch.setattr(triton_path, "merge_rows", counted_merge)
    monkeypatch.setattr(triton_path, "add_rows", counted_add)
    monkeypatch.setattr(mod._bound.triton, "alloc", poisoned)
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
    p, mod = fresh(src)
    for ci, case in enumerate(mod.SPEC.cases):
        assert [x.fwd is None for x in case.passes] == [fused[ci] and i > 0 for i in range(len(case.passes))]
    rec = record(mod, monkeypatch)
    monkeypatch.setattr(mod._bound.triton, "alloc", poisoned)
    assert_close(check_module(mod, p, 150, D=16, H=2, HK=1, dtype=dtype, backward=dtype == torch.float32), dtype)
    for ci, case in enumerate(mod.SPEC.cases):
        assert rec.count([x.fwd for x in case.passes]) == (1 if fused[ci] else len(case.passes))


@pytest.mark.parametrize("src", ["local(5) | global(2)", "causal & fixed(8, 2)",
                                 "heads { 0..0: local(3), 1..1: causal & (local(7) | stride(8)) }"])
def test_first_dq_launch_computes_delta_without_a_prologue_kernel(src, monkeypatch):
    """The first dq launch of each head range computes delta = rowsum(O * dO) and the log2-unit
    lse itself (no prologue kernel, one read of dO fewer); gradients are bit-identical to the
    prologue kernel's (pro_dq=0) and to the reference."""
    p, mod = fresh(src)
    monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")  # dq kernels even where atomic dq is the default
    rec = record(mod, monkeypatch)
    q, k, v = make_inputs(1, 2, 1, 70, 16, torch.float32, "cpu", seed=11)
    do = torch.randn(1, 2, 70, 16, generator=torch.Generator().manual_seed(12))
    grads = {}
    for setting in ("", "pro_dq=0"):
        monkeypatch.setenv("PATTERNC_CONFIG", setting)
        rec.launched.clear()
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        mod.attention(qq, kk, vv).backward(do)
        grads[setting] = [t.grad for t in (qq, kk, vv)]
        assert rec.count([triton_path.bwd_prologue]) == (0 if setting == "" else 1), setting
    for a, b in zip(grads[""], grads["pro_dq=0"]):
        assert torch.equal(a, b)
    monkeypatch.setenv("PATTERNC_CONFIG", "")
    assert_close(check_module(mod, p, 70, D=16, H=2, HK=1))


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


@pytest.mark.parametrize("src, n", [(PATTERNS["dilated"], 60), (PATTERNS["dilated"], 61), (PATTERNS["strided"], 64),
                                    ("causal & (local(isqrt(n) - 1) | stride(isqrt(n)))", 81),
                                    ("heads { 0..0: local(8, dilation=4), 1..1: local(8) }", 48)])
def test_residue_classes_through_tma(src, n, monkeypatch):
    """class_tma=1: residue-class passes load their streamed tiles (K, V; Q, dO in dk/dv) through
    class descriptors where m divides n, pointer loads elsewhere; same results as float64, also
    for (B, n, H, D) storage and grouped heads."""
    from patternc.runtime import tma

    p, mod = fresh(src)
    made = []
    real = tma.tma_desc

    def spy(t, rows, BD, on=None, m=None):
        d = real(t, rows, BD, on, m)
        made.append((m, d is not None))
        return d
    monkeypatch.setattr(tma, "tma_desc", spy)
    monkeypatch.setattr(triton_path, "tma_desc", spy)
    monkeypatch.setenv("PATTERNC_CONFIG", "class_tma=1")
    for noncontiguous in (False, True):
        made.clear()
        H, HK = (p.num_heads, 1) if p.num_heads else (4, 2)
        assert_close(check_module(mod, p, n, D=16, H=H, HK=HK, noncontiguous=noncontiguous))
        diag = next(x for c in mod.SPEC.cases for x in c.passes if x.space == "diag")
        m = triton_path.TritonPath._class_m(diag, mod.SPEC.length_args(n), {"class_tma": 1})
        assert any(m_ for m_, _ in made), made  # the residue pass asked for class descriptors
        assert any(ok for m_, ok in made if m_) == (n % m == 0), (m, made)


@pytest.mark.parametrize("src, atomic", [(PATTERNS["strided"], True), (PATTERNS["dilated"], False)])
def test_residue_class_tma_by_default_except_beside_atomic_dq(src, atomic, monkeypatch):
    """The default (class_tma=2): a residue-class pass loads through class descriptors in the
    forward, and in the backward unless dq is added atomically (strided); same results."""
    from patternc.runtime import tma

    p, mod = fresh(src)
    assert mod.SPEC.schedule.fused_dq == atomic
    made, phase = [], ["fwd"]
    real = tma.tma_desc
    path = mod._bound.triton
    real_fwd = path.forward_launches

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
    monkeypatch.setattr(tma, "tma_desc", spy)
    monkeypatch.setattr(triton_path, "tma_desc", spy)
    monkeypatch.setattr(path, "forward_launches", forward)
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
    out2, lse2 = mod._bound._op(q, k, v, 0.25)
    out2.backward(do)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)
    assert all(torch.equal(a, t.grad) for a, t in zip(grads, (q, k, v)))
    with torch.no_grad():
        assert torch.equal(mod.attention(q, k, v), out)


@pytest.mark.parametrize("name", ["causal", "queries_keys", "wide_block_fixed", "heads", "strided_sqrt"])
@pytest.mark.parametrize("rev", ["0", "1"])
def test_tiles_last_first_give_the_same_result(name, rev, monkeypatch):
    """rev=1 (the default) and rev=0 compute the same attention and gradients as float64 at a
    ragged length; the kernels that grow take REV from the setting."""
    monkeypatch.setenv("PATTERNC_CONFIG", f"rev={rev}")
    p, mod = module(PATTERNS[name])
    rec = record(mod, monkeypatch)
    H = p.num_heads or 2
    assert_close(check_module(mod, p, 83, D=16, H=H, HK=1))
    want = {}
    for c in mod.SPEC.cases:
        for x in c.passes:
            if x.fwd is not None:
                want[x.fwd.fn] = rev == "1" and x.rev_fwd
            want[x.dq.fn] = rev == "1" and x.rev_dq
    got = {fn: kw["REV"] for fn, kw in rec.launched if "REV" in kw}
    assert got and got == {k: v for k, v in want.items() if k in got}, (got, want)
    assert any(got.values()) == (rev == "1"), got  # every one of these patterns has a growing pass


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
    assert "a step of its own" in patternc.compile(p, "triton")
    monkeypatch.setenv("PATTERNC_CONFIG", f"BM={bm},BN=64,DQ_BM={bm},DQ_BN=64,split_chunk=2")
    assert_close(check_module(mod, p, n, D=16, H=2, HK=1, dtype=torch.float32))
