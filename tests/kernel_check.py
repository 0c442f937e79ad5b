"""Shared checks for generated attention modules: run one against a float64 dense oracle.

Used by the interpreter tests (CPU, TRITON_INTERPRET=1) and the GPU suite
(`pytest -m gpu`), so both assert exactly the same contract.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from patternc import semantics

# Max-normalized error allowed per input dtype. bf16 keeps 8 significant bits (unit roundoff
# 2^-8 = 0.0039); dq and dk go through three bf16 roundings (the stored O inside delta, dS before
# its matmul, the stored gradient), so unlucky draws reach ~3 units (0.0111 once in 120 seeded
# runs of the bf16 tests). 2e-2 (5 units) leaves margin; a wrong key or a missing rescale shows
# as errors of 0.1 and more. fp16 has 3 more bits, so 1e-2 is already ~20 units.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# lse is accumulated in fp32 whatever the input dtype (measured ~5e-7 on the CPU for all three).
LSE_TOL = 5e-3


def dense_reference(q, k, v, allowed: torch.Tensor, scale: float, dtype=torch.float64):
    """Masked softmax attention in high precision; fully masked rows give 0 and lse = -inf."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1)
    v = v.repeat_interleave(group, 1)
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe[..., None]).masked_fill(~allowed, 0.0)
    return torch.einsum("bhij,bhjd->bhid", p, v), lse


def pattern_mask(pattern, n: int, H: int, device) -> torch.Tensor:
    """(1, H or 1, n, n) boolean mask from the semantics oracle."""
    e = pattern.at(n)
    if pattern.num_heads:
        m = torch.stack([semantics.dense_mask(e.for_head(h), n) for h in range(H)])[None]
    else:
        m = semantics.dense_mask(e, n)[None, None]
    return m.to(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, with max |b| floored at 0.1 so that exactly-zero references
    (e.g. dq at n = 1) compare on an absolute scale (NaN anywhere counts as infinite error)."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return math.inf
    denom = b.abs().max().item()
    return (a - b).abs().max().item() / max(denom, 0.1)


@dataclass
class Result:
    out: float
    lse_ok: bool
    dq: float
    dk: float
    dv: float

    def worst(self) -> float:
        return max(self.out, self.dq, self.dk, self.dv)


def make_inputs(B, H, HK, n, D, dtype, device, seed=None, noncontiguous=False):
    g = torch.Generator(device="cpu")
    g.manual_seed(seed if seed is not None else torch.seed() % (2 ** 31))

    def rnd(h):
        if noncontiguous:  # (B, n, H, D) storage, viewed as (B, H, n, D)
            t = torch.randn(B, n, h, D, generator=g).transpose(1, 2)
        else:
            t = torch.randn(B, h, n, D, generator=g)
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    return rnd(H), rnd(HK), rnd(HK)


def check_module(mod, pattern, n: int, D: int = 16, B: int = 1, H: int = 2, HK: int = 1,
                 dtype=torch.float32, device="cpu", backward: bool = True, noncontiguous: bool = False,
                 seed=None, ref_dtype=torch.float64) -> Result:
    q, k, v = make_inputs(B, H, HK, n, D, dtype, device, seed, noncontiguous)
    if noncontiguous:
        assert not q.is_contiguous()
    scale = 1.0 / math.sqrt(D)
    out, lse = mod.attention(q, k, v, return_lse=True)
    allowed = pattern_mask(pattern, n, H, device)
    qq, kk, vv = (t.detach().to(ref_dtype).requires_grad_(True) for t in (q, k, v))
    ro, rl = dense_reference(qq, kk, vv, allowed, scale, ref_dtype)
    fin = torch.isfinite(rl)
    lse_ok = bool(torch.equal(torch.isinf(lse), torch.isinf(rl)) and not torch.isnan(lse).any()
                  and (not fin.any() or (lse.double() - rl.double())[fin].abs().max().item() < LSE_TOL))
    res = Result(rel_err(out, ro), lse_ok, 0.0, 0.0, 0.0)
    if backward:
        do = torch.randn_like(out)
        (out.float() * do.float()).sum().backward()
        (ro * do.to(ref_dtype)).sum().backward()
        res.dq, res.dk, res.dv = rel_err(q.grad, qq.grad), rel_err(k.grad, kk.grad), rel_err(v.grad, vv.grad)
    return res


# ---- packed documents and padded rows (runtime.varlen) -------------------------------------------

def sequence_mask(pattern, spans, B: int, n: int, H: int) -> torch.Tensor:
    """(B, H, n, n): each sequence's pattern at its own length on its diagonal block, from the semantics."""
    keep = torch.zeros(B, H, n, n, dtype=torch.bool)
    for b, s, m in spans:
        if m:
            e = pattern.at(m)
            block = torch.stack([semantics.dense_mask(e.for_head(h), m) for h in range(H)]) if pattern.num_heads \
                else semantics.dense_mask(e, m)[None]
            keep[b, :, s:s + m, s:s + m] = block
    return keep


def packed(lens: list) -> tuple:
    """(cu_seqlens, spans, total) of documents of these lengths."""
    cu = [0]
    for m in lens:
        cu.append(cu[-1] + m)
    return torch.tensor(cu, dtype=torch.int32), tuple((0, a, b - a) for a, b in zip(cu, cu[1:])), cu[-1]


def check_sequences(mod, pattern, B, H, HK, n, spans, kw, D=16, dtype=torch.float32, backward=True, seed=0,
                    device="cpu"):
    """Run `mod` with the sequences `kw` (index tensors on `device`) on NaN-padded inputs; assert out,
    lse and gradients match the float64 block-diagonal reference, and padding rows give 0, -inf and
    zero gradients (the shared contract of the interpreter tests and the GPU suite)."""
    g = torch.Generator().manual_seed(seed)
    inside = torch.zeros(B, n, dtype=torch.bool)
    for b, s, m in spans:
        inside[b, s:s + m] = True
    pad = ~inside[:, None, :, None]

    def make(h):
        t = torch.randn(B, h, n, D, generator=g).masked_fill(pad, float("nan"))
        return t.to(device=device, dtype=dtype).requires_grad_(backward)

    q, k, v = make(H), make(HK), make(HK)
    out, lse = mod.attention(q, k, v, return_lse=True, **kw)
    pad = pad.to(device)
    keep = sequence_mask(pattern, spans, B, n, H if pattern.num_heads else 1).to(device)
    qq, kk, vv = (t.detach().masked_fill(pad, 0).double().requires_grad_(backward) for t in (q, k, v))
    ro, rl = dense_reference(qq, kk, vv, keep, 1 / math.sqrt(D))
    tol = TOL.get(dtype, 1e-9)
    assert rel_err(out, ro) <= tol, rel_err(out, ro)
    assert torch.equal(torch.isinf(lse), torch.isinf(rl)) and not torch.isnan(lse).any()
    fin = torch.isfinite(rl)
    if fin.any():
        assert (lse.double() - rl)[fin].abs().max().item() < LSE_TOL
    assert torch.equal(out.masked_select(pad), torch.zeros_like(out).masked_select(pad))  # padding rows: 0
    if not backward:
        return
    do = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
    (out.float() * do.float()).sum().backward()
    (ro * do.double()).sum().backward()
    for name, a, b in (("dq", q.grad, qq.grad), ("dk", k.grad, kk.grad), ("dv", v.grad, vv.grad)):
        assert not torch.isnan(a).any(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))
        assert (a.masked_select(pad) == 0).all(), name  # padding rows: zero gradients


def padded_batch(n: int) -> tuple:
    """(seq_starts, seq_lens, spans) of four rows: right padding, left padding, both, and empty."""
    starts = [0, n - 23, 5, 3]
    lens = [n - 9, 23, n - 12, 0]
    spans = tuple((b, s, m) for b, (s, m) in enumerate(zip(starts, lens)))
    return torch.tensor(starts, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32), spans
