"""Input validation: one validator (patternc.runtime.validate) shared by every backend, so the same
bad input gets the same one clear error from the triton, reference and flex modules alike."""
from __future__ import annotations

import pytest
import torch

import patternc

BACKENDS = ("triton", "reference", "flex")
PATTERN = "causal & (local(20) | sink(2)) | queries(50, 55) - queries(30, 34)"
_modules: dict = {}


def module(backend: str, body: str = PATTERN):
    if (backend, body) not in _modules:
        _modules[backend, body] = patternc.load(patternc.parse(f"pattern x = {body}"), backend=backend)
    return _modules[backend, body]


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype) if dtype.is_floating_point else \
        torch.ones(*shape, dtype=dtype, device=device)


QKV = (1, 2, 8, 16)
backends = pytest.mark.parametrize("backend", BACKENDS)


@backends
@pytest.mark.parametrize("which", [0, 1, 2])
def test_wrong_number_of_dimensions(backend, which):
    args = [_t(*QKV), _t(1, 1, 8, 16), _t(1, 1, 8, 16)]
    args[which] = args[which][0]
    with pytest.raises(ValueError, match=rf"^{'qkv'[which]} must have 4 dimensions \(B, H, n, D\), got shape \("):
        module(backend).attention(*args)


@backends
@pytest.mark.parametrize("which", [0, 1, 2])
def test_not_a_tensor(backend, which):
    args = [_t(*QKV), _t(1, 1, 8, 16), _t(1, 1, 8, 16)]
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"^{'qkv'[which]} must be a torch.Tensor of shape \(B, H, n, D\)"):
        module(backend).attention(*args)


@backends
@pytest.mark.parametrize("k_shape,v_shape,match", [
    ((2, 1, 8, 16), (2, 1, 8, 16), r"k and v must have shape \(1, Hkv, 8, 16\) to match q of shape \(1, 2, 8, 16\)"),
    ((1, 1, 9, 16), (1, 1, 9, 16), r"k and v must have shape \(1, Hkv, 8, 16\)"),  # n
    ((1, 1, 8, 32), (1, 1, 8, 32), r"k and v must have shape \(1, Hkv, 8, 16\)"),  # D
    ((1, 1, 8, 16), (1, 1, 8, 8), r"k and v must have the same shape \(B, Hkv, n, D\)"),
    ((1, 1, 8, 16), (1, 1, 7, 16), r"k and v must have the same shape"),
    ((1, 3, 8, 16), (1, 3, 8, 16), r"q heads \(2\) must be a positive multiple of k/v heads \(3\)"),
    ((1, 0, 8, 16), (1, 0, 8, 16), r"multiple of k/v heads \(0\)"),
])
def test_mismatched_shapes(backend, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        module(backend).attention(_t(*QKV), _t(*k_shape), _t(*v_shape))


@backends
@pytest.mark.parametrize("shape,match", [
    ((1, 1, 8, 0), r"batch size and head dim must be >= 1"),
    ((1, 1, 0, 16), r"sequence length n must be >= 1, got 0 \(q has shape \(1, 1, 0, 16\)\)"),
    ((0, 1, 8, 16), r"batch size and head dim must be >= 1"),
])
def test_degenerate_sizes(backend, shape, match):
    with pytest.raises(ValueError, match=match):
        module(backend).attention(_t(*shape), _t(*shape), _t(*shape))


@backends
def test_zero_query_heads(backend):
    with pytest.raises(ValueError, match=r"q heads \(0\) must be a positive multiple"):
        module(backend).attention(_t(1, 0, 8, 16), _t(1, 1, 8, 16), _t(1, 1, 8, 16))


@backends
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_unsupported_dtypes(backend, dtype):
    bad = torch.zeros(1, 1, 8, 16, dtype=dtype)
    with pytest.raises(TypeError, match=rf"^k must be float16, bfloat16, float32 or float64, got {dtype}"):
        module(backend).attention(_t(*QKV), bad, _t(1, 1, 8, 16))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_every_backend_takes_float64_and_wide_heads(backend, monkeypatch):
    """float64 and D > 256: computed exactly by every backend (the triton module's PyTorch path)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    mod = module(backend)
    q, k, v = (torch.randn(1, 1, 40, 300, dtype=torch.float64) for _ in range(3))
    ref = module("reference").attention(q, k, v)
    assert (mod.attention(q, k, v) - ref).abs().max() < 1e-10


@backends
def test_integer_tensors_are_refused_first(backend):
    q = torch.ones(*QKV, dtype=torch.int64)
    with pytest.raises(TypeError, match="q must be float16, bfloat16, float32 or float64"):
        module(backend).attention(q, _t(1, 1, 8, 16).requires_grad_(True), _t(1, 1, 8, 16))


@backends
def test_mixed_dtypes(backend):
    with pytest.raises(TypeError, match=r"q, k and v must share one dtype, got torch.float32, torch.float16"):
        module(backend).attention(_t(*QKV), _t(1, 1, 8, 16, dtype=torch.float16), _t(1, 1, 8, 16))


@backends
def test_mixed_devices(backend):
    with pytest.raises(ValueError, match=r"q, k and v must be on one device, got cpu, meta"):
        module(backend).attention(_t(*QKV), _t(1, 1, 8, 16, device="meta"), _t(1, 1, 8, 16))


@backends
def test_per_head_pattern_needs_its_head_count(backend):
    with pytest.raises(ValueError, match="pattern 'x' defines 3 heads, but q has 2"):
        module(backend, "heads { 0..1: local(2), 2..2: causal }").attention(_t(*QKV), _t(1, 1, 8, 16), _t(1, 1, 8, 16))


@backends
@pytest.mark.parametrize("scale,exc,match", [
    (float("nan"), ValueError, "scale must be finite, got nan"),
    (float("inf"), ValueError, "scale must be finite, got inf"),
    ("0.5", TypeError, "scale must be a real number or None, got str"),
    (True, TypeError, "got bool"),
    (torch.ones(2), TypeError, "got Tensor"),
])
def test_bad_scale(backend, scale, exc, match):
    with pytest.raises(exc, match=match):
        module(backend).attention(_t(*QKV), _t(1, 1, 8, 16), _t(1, 1, 8, 16), scale=scale)


@backends
@pytest.mark.parametrize("n,exc,match", [(0, ValueError, "n=0"), (12.0, TypeError, "n must be an int"),
                                         ("a", TypeError, "n must be an int, got str"),
                                         (True, TypeError, "n must be an int, got bool")])
def test_bad_lengths_for_masks(backend, n, exc, match):
    mod = module(backend, "local(3)")
    with pytest.raises(exc, match=match):
        mod.mask(n)
    with pytest.raises(exc, match=match):
        mod.mask_rows(torch.arange(3)[:, None], torch.arange(3)[None, :], n)


@backends
def test_mask_rows_on_every_backend(backend):
    mod = module(backend, "heads { 0..0: local(1), 1..1: causal }")
    i, j = torch.arange(5)[:, None], torch.arange(5)[None, :]
    m = mod.mask_rows(i, j, 5, H=2)
    assert m.shape == (2, 5, 5) and torch.equal(m, mod.mask(5))
