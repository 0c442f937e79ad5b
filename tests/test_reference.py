"""The reference backend against attention written out row by row in float64 numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import patternc
from patternc import semantics

from conftest import resolve_source

PATTERNS = {
    "causal": "causal",
    "local": "local(3)",
    "strided": "causal & (local(isqrt(n)) | stride(isqrt(n)))",
    "bigbird": "local(2) | global(2) | random(2, block=4, seed=1)",
    "fixed": "causal & (block(8) | summary(8, 2))",
    "holes": "causal - local(0) - queries(10, 13)",  # rows 0 and 10..12 have no key
    "heads": "heads { 0..1: causal & local(4), 2..2: sink(2) | band(0, 1), 3..3: none }",
}


def load(src: str):
    return patternc.load(resolve_source(src), backend="reference")


def oracle_mask(src: str, n: int, H: int) -> np.ndarray:
    """(H, n, n) from the semantics oracle."""
    p = resolve_source(src)
    e = p.at(n)
    return np.stack([semantics.dense_mask_numpy(e, n, head=h) for h in range(H)])


def numpy_attention(q, k, v, allowed, scale):
    """Softmax over the allowed keys of each row, one row at a time; empty rows give 0, -inf."""
    q, k, v = (np.asarray(t.detach().double()) for t in (q, k, v))
    B, H, n, D = q.shape
    group = H // k.shape[1]
    out = np.zeros((B, H, n, D))
    lse = np.full((B, H, n), -np.inf)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                keys = np.nonzero(allowed[h][i])[0]
                if len(keys) == 0:
                    continue
                s = k[b, h // group, keys] @ q[b, h, i] * scale
                m = s.max()
                e = np.exp(s - m)
                lse[b, h, i] = m + math.log(e.sum())
                out[b, h, i] = (e / e.sum()) @ v[b, h // group, keys]
    return out, lse


def inputs(B, H, HK, n, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, D, generator=g).to(dtype) for h in (H, HK, HK))


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("H,HK", [(2, 2), (4, 1), (4, 2)])
def test_matches_row_by_row_softmax(name, H, HK):
    src = PATTERNS[name]
    mod = load(src)
    if mod.NUM_HEADS is not None and H != mod.NUM_HEADS:
        H = mod.NUM_HEADS
    n, D = 29, 8
    q, k, v = inputs(2, H, HK, n, D, seed=H * 10 + HK)
    allowed = oracle_mask(src, n, H)
    out, lse = mod.attention(q, k, v, return_lse=True)
    want_out, want_lse = numpy_attention(q, k, v, allowed, 1 / math.sqrt(D))
    assert out.dtype == torch.float32 and out.shape == q.shape and lse.shape == (2, H, n)
    np.testing.assert_allclose(out.double().numpy(), want_out, atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(np.isinf(lse.numpy()), np.isinf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse.numpy()[finite], want_lse[finite], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_mask_matches_semantics(name):
    mod = load(PATTERNS[name])
    for n in (1, 5, 33):
        m = mod.mask(n)
        want = oracle_mask(PATTERNS[name], n, mod.NUM_HEADS or 1)
        assert m.dtype == torch.bool
        if mod.NUM_HEADS is None:
            assert m.shape == (n, n)
            want = want[0]
        else:
            assert m.shape == (mod.NUM_HEADS, n, n)
        np.testing.assert_array_equal(m.numpy(), want)


def test_float64_is_exact_and_custom_scale():
    mod = load(PATTERNS["strided"])
    q, k, v = inputs(1, 2, 1, 40, 16, dtype=torch.float64, seed=3)
    out, lse = mod.attention(q, k, v, scale=0.3, return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    want, want_lse = numpy_attention(q, k, v, oracle_mask(PATTERNS["strided"], 40, 2), 0.3)
    np.testing.assert_allclose(out.numpy(), want, atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(lse.numpy(), want_lse, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_cast_back(dtype):
    mod = load(PATTERNS["bigbird"])
    q, k, v = inputs(1, 2, 2, 24, 8, dtype=dtype, seed=5)
    out = mod.attention(q, k, v)
    assert out.dtype == dtype
    want, _ = numpy_attention(q, k, v, oracle_mask(PATTERNS["bigbird"], 24, 2), 1 / math.sqrt(8))
    np.testing.assert_allclose(out.double().numpy(), want, atol=2e-2, rtol=2e-2)


def test_empty_rows_give_zero_output_minus_inf_lse_and_zero_grad():
    mod = load(PATTERNS["holes"])
    n = 16
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 2, 2, n, 4, seed=7))
    out, lse = mod.attention(q, k, v, return_lse=True)
    empty = [0, 10, 11, 12]
    assert torch.all(out[:, :, empty] == 0)
    assert torch.all(torch.isneginf(lse[:, :, empty]))
    assert torch.isfinite(lse[:, :, [1, 2, 9, 13, 15]]).all()
    (out.sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[:, :, empty] == 0)
    assert q.grad[:, :, 1].abs().sum() > 0


def test_fully_masked_head_and_pattern():
    mod = load("none")
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 1, 1, 5, 4))
    out, lse = mod.attention(q, k, v, return_lse=True)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    out.sum().backward()
    assert torch.all(q.grad == 0) and torch.all(k.grad == 0) and torch.all(v.grad == 0)
    heads = load(PATTERNS["heads"])
    q, k, v = inputs(1, 4, 2, 9, 4)
    out, lse = heads.attention(q, k, v, return_lse=True)
    assert torch.all(out[:, 3] == 0) and torch.all(torch.isneginf(lse[:, 3]))
    assert torch.all(out[:, 0].abs().sum(-1) > 0)


@pytest.mark.parametrize("name", ["holes", "heads", "bigbird"])
def test_gradients_are_right(name):
    mod = load(PATTERNS[name])
    H = mod.NUM_HEADS or 2
    q, k, v = (t.double().requires_grad_(True) for t in inputs(1, H, H // 2 or 1, 13, 3, seed=11))
    assert torch.autograd.gradcheck(lambda a, b, c: mod.attention(a, b, c), (q, k, v), fast_mode=True)

    def lse_only(a, b, c):
        _, lse = mod.attention(a, b, c, return_lse=True)
        return torch.where(torch.isinf(lse), 0.0, lse)

    assert torch.autograd.gradcheck(lse_only, (q, k, v), fast_mode=True)


def _bad(**changes):
    q, k, v = inputs(1, 4, 2, 8, 4)
    args = {"q": q, "k": k, "v": v}
    args.update(changes)
    return args


@pytest.mark.parametrize("args,exc,message", [
    (_bad(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    (_bad(q=torch.randn(4, 8, 4)), ValueError, "q must have 4 dimensions"),
    (_bad(k=torch.randn(1, 2, 8, 4, 1)), ValueError, "k must have 4 dimensions"),
    (_bad(v=torch.ones(1, 2, 8, 4, dtype=torch.int64)), TypeError, "v must be float16, bfloat16, float32 or float64"),
    (_bad(k=torch.randn(1, 2, 8, 4, dtype=torch.float64), v=torch.randn(1, 2, 8, 4, dtype=torch.float64)),
     TypeError, "share one dtype"),
    (_bad(k=torch.randn(1, 2, 8, 4, device="meta"), v=torch.randn(1, 2, 8, 4, device="meta")),
     ValueError, "on one device"),
    (_bad(k=torch.randn(2, 2, 8, 4), v=torch.randn(2, 2, 8, 4)), ValueError, "k and v must have shape (1, Hkv, 8, 4)"),
    (_bad(k=torch.randn(1, 2, 9, 4), v=torch.randn(1, 2, 9, 4)), ValueError, "k and v must have shape (1, Hkv, 8, 4)"),
    (_bad(k=torch.randn(1, 2, 8, 5), v=torch.randn(1, 2, 8, 5)), ValueError, "k and v must have shape (1, Hkv, 8, 4)"),
    (_bad(v=torch.randn(1, 1, 8, 4)), ValueError, "k and v must have the same shape"),
    (_bad(k=torch.randn(1, 3, 8, 4), v=torch.randn(1, 3, 8, 4)), ValueError, "multiple of k/v heads (3)"),
    (_bad(q=torch.randn(1, 4, 0, 4), k=torch.randn(1, 2, 0, 4), v=torch.randn(1, 2, 0, 4)),
     ValueError, "n must be >= 1, got 0"),
])
def test_input_validation(args, exc, message):
    mod = load("causal")
    with pytest.raises(exc) as e:
        mod.attention(**args)
    assert message in str(e.value)


def test_validation_specific_to_the_pattern():
    heads = load(PATTERNS["heads"])
    with pytest.raises(ValueError, match="defines 4 heads, but q has 2"):
        heads.attention(*inputs(1, 2, 2, 8, 4))
    late = load("local(n - 10)")
    with pytest.raises(ValueError, match=r"local window must be >= 0 \(n=8\)"):
        late.attention(*inputs(1, 1, 1, 8, 4))
    with pytest.raises(ValueError, match="n=0"):
        late.mask(0)
    with pytest.raises(TypeError, match="n must be an int"):
        late.mask(12.0)
    with pytest.raises(TypeError, match="scale must be a real number"):
        load("causal").attention(*inputs(1, 1, 1, 4, 4), scale="big")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be finite"):
            load("causal").attention(*inputs(1, 1, 1, 4, 4), scale=bad)


def test_generated_text_is_deterministic_and_binds_the_runtime():
    p = resolve_source("pattern p(w = 8) = causal & (local(w) | stride(isqrt(n)) | random(1, block=4))")
    a, b = patternc.compile(p, "reference"), patternc.compile(resolve_source(
        "pattern p(w = 8) = causal & (local(w) | stride(isqrt(n)) | random(1, block=4))"), "reference")
    assert a == b
    imports = sorted(line for line in a.splitlines() if line.startswith(("import ", "from ")))
    assert imports == ["from __future__ import annotations", "from patternc.runtime import Case, Pass, Spec, bind",
                       "from patternc.runtime.random_blocks import random_pick",
                       "from patternc.runtime.varlen import seq_isqrt", "import math"]
    assert p.hash in a and "params:   w=8" in a and "pattern:  p" in a
    ns: dict = {}
    exec(compile(a, "<generated>", "exec"), ns)  # runs without patternc's help
    assert ns["PATTERN"] == p.source


def test_hostile_source_text_is_embedded_safely():
    src = 'pattern p = causal  # a comment with """ quotes, \\ backslashes and \'\'\' too\n'
    p = resolve_source(src)
    p = type(p)(p.name, p.expr, p.params, p.checks, p.source, 'we"ird\\name\n""".attn')
    text = patternc.compile(p, "reference")
    ns: dict = {}
    exec(compile(text, "<generated>", "exec"), ns)
    assert ns["PATTERN"] == src
    assert 'we"ird\\name\n""".attn' in ns["__doc__"]
