"""The generated Triton module's numerics (CPU, TRITON_INTERPRET=1).

The cases run the kernels under the interpreter against a float64 reference and enforce the
error bounds of docs/guarantees.md; they are few and small (n <= 64, D = 16) because each
costs seconds.  Input validation, shared by every backend, is tests/test_validation.py.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before any generated module defines its kernels

pytest.importorskip("triton")

import patternc  # noqa: E402

from kernel_check import TOL, dense_reference, make_inputs, pattern_mask, rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PATTERN = "causal & (local(20) | sink(2)) | queries(50, 55) - queries(30, 34)"  # rows 30..33 see nothing
_modules: dict = {}


def module(body: str = PATTERN):
    if body not in _modules:
        p = patternc.parse(f"pattern x = {body}")
        _modules[body] = (p, patternc.load(p, backend="triton"))
    return _modules[body]


# ---------------------------------------------------------------- the documented error bounds

GRAD16_MAX_SCORE = 100.0  # 16-bit gradients are bounded up to this score scale; beyond, only finite


def bound(dtype, max_score: float, grad: bool = False) -> float:
    """Max |result - float64 reference| / max |reference| (see docs/guarantees.md).

    Scores s = scale * q.k are formed in fp32 (exact products of 16-bit inputs), so their
    rounding error grows with |s|: the bound adds 2**-22 * max|s|.  16-bit gradients lose
    more with the score scale: delta = rowsum(dO * O) is formed from the 16-bit output, and
    saturated softmax rows make the true gradients small by cancellation."""
    if grad and dtype != torch.float32:
        assert max_score <= GRAD16_MAX_SCORE, "no accuracy bound for 16-bit gradients at this score scale"
        return TOL[dtype] * (1 + max_score / 20)
    return TOL[dtype] + 2.0 ** -22 * max_score


def run_case(body, n, dtype, q_mul=1.0, v_mul=1.0, seed=0, H=2, HK=1, D=16, backward=True):
    p, mod = module(body)
    q, k, v = make_inputs(1, H, HK, n, D, dtype, DEVICE, seed)
    with torch.no_grad():
        q = (q.float() * q_mul).to(dtype).requires_grad_(True)
        v = (v.float() * v_mul).to(dtype).requires_grad_(True)
    scale = 1.0 / math.sqrt(D)
    out, lse = mod.attention(q, k, v, return_lse=True)
    allowed = pattern_mask(p, n, H, DEVICE)
    qq, kk, vv = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ro, rl = dense_reference(qq, kk, vv, allowed, scale)
    kx = kk.detach().repeat_interleave(H // HK, 1)
    s = torch.einsum("bhid,bhjd->bhij", qq.detach(), kx) * scale
    res = {"max_score": s.masked_fill(~allowed, 0).abs().max().item(), "out": out, "lse": lse, "ref": ro,
           "ref_lse": rl, "out_err": rel_err(out, ro)}
    if backward:
        g = torch.Generator().manual_seed(seed + 1)
        do = torch.randn(out.shape, generator=g).to(DEVICE, dtype)
        (out.float() * do.float()).sum().backward()
        (ro * do.double()).sum().backward()
        res["grads"] = (q.grad, k.grad, v.grad)
        res["ref_grads"] = (qq.grad, kk.grad, vv.grad)
        res["grad_errs"] = [rel_err(a, b) for a, b in zip(res["grads"], res["ref_grads"])]
    return res


def assert_within_bounds(res, dtype, grad_accuracy: bool = True):
    ms = res["max_score"]
    assert torch.isfinite(res["out"]).all(), "inf/NaN in the output"
    assert not torch.isnan(res["lse"]).any()
    assert torch.equal(torch.isinf(res["lse"]), torch.isinf(res["ref_lse"]))
    assert res["out_err"] <= bound(dtype, ms), (res["out_err"], bound(dtype, ms), ms)
    if "grads" in res:
        for name, g in zip("qkv", res["grads"]):
            assert torch.isfinite(g).all(), f"inf/NaN in d{name}"
        if grad_accuracy:
            worst = max(res["grad_errs"])
            assert worst <= bound(dtype, ms, grad=True), (res["grad_errs"], bound(dtype, ms, grad=True), ms)


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("dtype,q_mul", [
    (torch.float32, 2500.0),  # max |s| ~ 1e4: forward and gradients bounded
    (torch.float16, 2500.0),  # forward bounded, gradients finite
    (torch.bfloat16, 2500.0),
    (torch.float16, 25.0),  # max |s| ~ 1e2: gradients bounded too
    (torch.bfloat16, 25.0),
])
def test_large_scores_are_finite_and_accurate(dtype, q_mul):
    res = run_case(PATTERN, 64, dtype, q_mul=q_mul, seed=3)
    assert res["max_score"] > 3.5 * q_mul  # the case really is extreme (|q.k| / 4 ~ 4 for unit inputs)
    assert_within_bounds(res, dtype, grad_accuracy=dtype == torch.float32 or res["max_score"] <= GRAD16_MAX_SCORE)


def test_bounds_are_tight_enough_to_fail():
    """The bound is not vacuous: the same large-score case misses the plain fp32 tolerance of
    unit-scale inputs, and an output perturbed by 1% of its scale fails it."""
    res = run_case(PATTERN, 64, torch.float32, q_mul=2500.0, seed=3, backward=False)
    assert bound(torch.float32, res["max_score"]) < 1e-2
    bad = res["out"] + 0.01 * res["ref"].abs().max().float()
    assert rel_err(bad, res["ref"]) > bound(torch.float32, res["max_score"])


def test_fully_masked_rows_give_zeros_even_with_huge_scores():
    for dtype in (torch.float16, torch.bfloat16):
        res = run_case(PATTERN, 60, dtype, q_mul=3000.0 if dtype == torch.float16 else 100.0, seed=5)
        out, lse = res["out"], res["lse"]
        assert torch.all(out[:, :, 30:34] == 0)
        assert torch.all(torch.isinf(lse[:, :, 30:34])) and torch.all(lse[:, :, 30:34] < 0)
        assert torch.isfinite(lse[:, :, :30]).all() and torch.isfinite(out).all()
        dq, dk, dv = res["grads"]
        assert torch.all(dq[:, :, 30:34] == 0)
        assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_empty_pattern_gives_zeros_and_zero_gradients():
    res = run_case("none", 40, torch.float16, q_mul=3000.0, v_mul=15000.0, seed=2)
    assert torch.all(res["out"] == 0) and torch.all(torch.isinf(res["lse"]))
    assert all(torch.all(g == 0) for g in res["grads"])


def test_fp16_values_near_the_fp16_maximum_forward():
    """|v| up to ~6e4 (fp16 max 65504) and large q: outputs are convex combinations of v and
    must stay finite and accurate."""
    res = run_case(PATTERN, 64, torch.float16, q_mul=30.0, v_mul=15000.0, seed=1, backward=False)
    assert res["ref"].abs().max() > 3e4
    assert_within_bounds(res, torch.float16)


def test_fp16_values_near_the_fp16_maximum_backward():
    """|v| up to ~5e4 with fp16 inputs (dP = dO . V has a standard deviation of ~5e4): the
    gradients (max ~3e4, representable) come out within the fp16 bound, not as inf."""
    res = run_case(PATTERN, 64, torch.float16, q_mul=1.0, v_mul=12000.0, seed=1)
    assert 1e4 < max(g.abs().max().item() for g in res["ref_grads"]) < 65504
    assert_within_bounds(res, torch.float16)


def test_fp16_gradients_beyond_the_fp16_range_are_inf_not_garbage():
    """True dk above 65504 (q scaled by 3): the overflowing gradient is inf, the others stay exact."""
    res = run_case(PATTERN, 64, torch.float16, q_mul=3.0, v_mul=12000.0, seed=1)
    dq, dk, dv = res["grads"]
    rdq, rdk, rdv = res["ref_grads"]
    assert rdk.abs().max().item() > 65504 and torch.isinf(dk).any()
    assert not torch.isnan(dk).any()
    assert rel_err(dq, rdq) < 1e-2 and rel_err(dv, rdv) < 1e-2


def test_random_count_zero_at_this_length():
    res = run_case("local(2) | random(n // 100, block=16)", 50, torch.float32, seed=0)
    assert_within_bounds(res, torch.float32)


def test_host_mask_with_random_count_zero_at_this_length():
    p, mod = module("local(2) | random(n // 100, block=16)")
    assert torch.equal(mod.mask(50), pattern_mask(p, 50, 1, "cpu")[0, 0])
    assert torch.equal(mod.mask(250), pattern_mask(p, 250, 1, "cpu")[0, 0])


def _t(*shape):
    return torch.randn(*shape)


def test_length_dependent_pattern_checks(monkeypatch):
    """`causal & local(n - 60)` is invalid below n = 60: a clean ValueError naming the check and n,
    on the kernel path, the exact PyTorch path and mask()."""
    p, mod = module("causal & local(n - 60)")
    q = _t(1, 1, 50, 16)
    with pytest.raises(ValueError, match=r"local\(\): local window must be >= 0 \(n=50\)"):
        mod.attention(q, q, q)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor now takes the exact PyTorch path
    with pytest.raises(ValueError, match=r"local window must be >= 0 \(n=50\)"):
        mod.attention(q, q, q)
    with pytest.raises(ValueError, match="n=50"):
        mod.mask(50)
    assert mod.mask(61).shape == (61, 61)
