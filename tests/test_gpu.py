"""The same kernel contract on a real GPU (compiled kernels, not the interpreter).

Run on a CUDA machine with:  pytest -m gpu tests/test_gpu.py
CI has no GPU, so these are skipped there; the interpreter suite (test_triton.py)
covers every pattern at small sizes, and this file covers the large, bf16 matrix.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import patternc

from kernel_check import TOL, check_module

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from patterns import PATTERNS as _BENCH  # noqa: E402

# the benchmark's patterns (with a prefix that fits n = 1000) plus a per-head mix
PATTERNS = dict(_BENCH, prefix_lm="causal | (queries(0, 1000) & keys(0, 1000))",
                per_head="heads { 0..0: local(128), 1..1: causal & stride(64) }")

_mods: dict = {}


def module(name):
    if name not in _mods:
        p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
        _mods[name] = (p, patternc.load(p, backend="triton"))
    return _mods[name]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("n", [1000, 4099, 16384])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_bf16_against_float64(name, n, D):
    p, mod = module(name)
    H = 2
    res = check_module(mod, p, n, D=D, B=1, H=H, HK=1 if name != "per_head" else 2, dtype=torch.bfloat16,
                       device="cuda", backward=n <= 4099 or D == 64)
    assert res.lse_ok, res
    assert res.worst() <= TOL[torch.bfloat16], res


@pytest.mark.parametrize("name", ["longformer", "strided", "fixed", "bigbird"])
def test_fp32_and_fp16(name):
    torch.backends.cuda.matmul.allow_tf32 = False
    p, mod = module(name)
    for dtype in (torch.float32, torch.float16):
        res = check_module(mod, p, 777, D=64, B=2, H=4, HK=2, dtype=dtype, device="cuda")
        assert res.lse_ok and res.worst() <= TOL[dtype], (dtype, res)


def test_deterministic_backward_on_gpu():
    p, mod = module("bigbird")
    grads = []
    for _ in range(2):
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 4, 4096, 64, generator=g).cuda().bfloat16().requires_grad_(True)
                   for _ in range(3))
        mod.attention(q, k, v).float().pow(2).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_torch_compile_on_gpu():
    p, mod = module("longformer")
    q, k, v = (torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    f = torch.compile(lambda q, k, v: mod.attention(q, k, v).float().sum(), fullgraph=True)
    f(q, k, v).backward()
    assert torch.isfinite(q.grad).all()
