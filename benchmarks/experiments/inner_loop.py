"""Experiment: what limits a short-walk (banded) forward on this GPU, and which Triton features
move it.  A hand-written band kernel (|i - j| <= W) with switches for how K/V are loaded
(pointers, a host TMA descriptor, a per-program TMA descriptor), warp specialisation of the
full-tile loop, and the softmax arithmetic; timed with the same do_bench median as bench.py.

    python benchmarks/experiments/inner_loop.py                 # on the GPU box, ~3 minutes
    python benchmarks/experiments/inner_loop.py --check-only    # correctness of every variant, small n

It is not part of the product: it decided the template's TMA loads and one program per tile
(docs/decisions.md: tma-loads, no-persistent-programs).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import torch
import triton
import triton.language as tl

import os
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@triton.jit
def _step(acc, m_i, l_i, q, k, v, keep, qk_scale, MASKED: tl.constexpr, FMA: tl.constexpr):
    s = tl.dot(q, tl.trans(k))
    if FMA:  # scale folded into the exponent's argument (one FMA per score)
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * qk_scale - m_use[:, None])
    else:  # what the generated kernels do today
        s = s * qk_scale
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _kv(K, V, kd, vd, row0, j, base, n, offs_d, DESC: tl.constexpr, MASKLOAD: tl.constexpr):
    if DESC == 1:  # host descriptor over (B*H*n, D): rows of the head start at zh * n
        k = kd.load([row0, 0])
        v = vd.load([row0, 0])
    elif DESC == 2:  # per-program descriptor over this head's (n, D)
        k = kd.load([row0, 0])
        v = vd.load([row0, 0])
    else:
        ptr = base + j.to(tl.int64)[:, None] * offs_d.shape[0] + offs_d[None, :]
        if MASKLOAD:
            k = tl.load(K + ptr, mask=(j < n)[:, None], other=0.0)
            v = tl.load(V + ptr, mask=(j < n)[:, None], other=0.0)
        else:
            k = tl.load(K + ptr)
            v = tl.load(V + ptr)
    return k, v


@triton.jit
def _band_keep(i, j, W, n):
    return (tl.abs(i[:, None] - j[None, :]) <= W) & (j < n)[None, :]


@triton.jit
def _finish(O, base, i, offs_d, acc, l_i, n):
    """Normalise and store one query tile's rows (shared by both kernels)."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + base + i.to(tl.int64)[:, None] * offs_d.shape[0] + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=(i < n)[:, None])


@triton.jit
def band_fwd(Q, K, V, O, kd, vd, n, W, qk_scale,
             BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DESC: tl.constexpr,
             WS: tl.constexpr, FMA: tl.constexpr, MASKLOAD: tl.constexpr):
    pid = tl.program_id(0)
    zh = tl.program_id(1)
    base = zh.to(tl.int64) * n * D
    a0 = pid * BM
    i = a0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + i.to(tl.int64)[:, None] * D + offs_d[None, :], mask=(i < n)[:, None], other=0.0)
    if DESC == 2:
        kd = tl.make_tensor_descriptor(K + base, shape=[n, D], strides=[D, 1], block_shape=[BN, D])
        vd = tl.make_tensor_descriptor(V + base, shape=[n, D], strides=[D, 1], block_shape=[BN, D])
        head0 = 0
    else:
        head0 = zh * n
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    lo = tl.maximum(0, a0 - W)
    hi = tl.minimum(n - 1, a0 + BM - 1 + W)
    t_lo = lo // BN
    t_hi = hi // BN + 1
    f_lo = tl.minimum(tl.maximum((tl.maximum(a0 + BM - 1 - W, 0) + BN - 1) // BN, t_lo), t_hi)
    f_hi = tl.minimum(tl.maximum(tl.minimum(n // BN, (a0 + W + 1) // BN), f_lo), t_hi)
    for kt in range(t_lo, f_lo):
        j = kt * BN + tl.arange(0, BN)
        k, v = _kv(K, V, kd, vd, head0 + kt * BN, j, base, n, offs_d, DESC, True)
        keep = _band_keep(i, j, W, n)
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, keep, qk_scale, True, FMA)
    for kt in tl.range(f_lo, f_hi, warp_specialize=WS):
        j = kt * BN + tl.arange(0, BN)
        k, v = _kv(K, V, kd, vd, head0 + kt * BN, j, base, n, offs_d, DESC, MASKLOAD)
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, 0, qk_scale, False, FMA)
    for kt in range(tl.maximum(f_hi, f_lo), t_hi):
        j = kt * BN + tl.arange(0, BN)
        k, v = _kv(K, V, kd, vd, head0 + kt * BN, j, base, n, offs_d, DESC, True)
        keep = _band_keep(i, j, W, n)
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, keep, qk_scale, True, FMA)
    _finish(O, base, i, offs_d, acc, l_i, n)


@triton.jit
def band_fwd_persistent(Q, K, V, O, kd, vd, n, W, qk_scale, tiles, BM: tl.constexpr, BN: tl.constexpr,
                        D: tl.constexpr, FLATTEN: tl.constexpr):
    """One program per SM slot, walking query tiles (pid, pid + P, ...) with one masked key loop, so
    that (with FLATTEN) the pipeliner can prefetch the next tile's keys during this tile's epilogue."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    per_head = tl.cdiv(n, BM)
    offs_d = tl.arange(0, D)
    for t in tl.range(pid, tiles, nprog, flatten=FLATTEN):
        zh = t // per_head
        a0 = (t % per_head) * BM
        base = zh.to(tl.int64) * n * D
        i = a0 + tl.arange(0, BM)
        q = tl.load(Q + base + i.to(tl.int64)[:, None] * D + offs_d[None, :], mask=(i < n)[:, None], other=0.0)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        lo = tl.maximum(0, a0 - W)
        hi = tl.minimum(n - 1, a0 + BM - 1 + W)
        for kt in tl.range(lo // BN, hi // BN + 1):
            j = kt * BN + tl.arange(0, BN)
            k = kd.load([zh * n + kt * BN, 0])
            v = vd.load([zh * n + kt * BN, 0])
            keep = _band_keep(i, j, W, n)
            acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, keep, qk_scale, True, True)
        _finish(O, base, i, offs_d, acc, l_i, n)


def run_persistent(q, k, v, W, BM, BN, warps, stages, per_sm, flatten):
    from triton.tools.tensor_descriptor import TensorDescriptor
    B, H, n, D = q.shape
    o = torch.empty_like(q)
    kd = TensorDescriptor.from_tensor(k.view(B * H * n, D), [BN, D])
    vd = TensorDescriptor.from_tensor(v.view(B * H * n, D), [BN, D])
    tiles = B * H * triton.cdiv(n, BM)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 2
    grid = (min(tiles, sms * per_sm),)
    band_fwd_persistent[grid](q, k, v, o, kd, vd, n, W, D ** -0.5 * 1.4426950408889634, tiles, BM=BM, BN=BN,
                              D=D, FLATTEN=flatten, num_warps=warps, num_stages=stages)
    return o


def run(q, k, v, W, BM, BN, warps, stages, desc, ws, fma, maskload):
    B, H, n, D = q.shape
    o = torch.empty_like(q)
    if desc == 1:
        from triton.tools.tensor_descriptor import TensorDescriptor
        kd = TensorDescriptor.from_tensor(k.view(B * H * n, D), [BN, D])
        vd = TensorDescriptor.from_tensor(v.view(B * H * n, D), [BN, D])
    else:
        kd = vd = 0
    grid = (triton.cdiv(n, BM), B * H)
    band_fwd[grid](q, k, v, o, kd, vd, n, W, D ** -0.5 * 1.4426950408889634, BM=BM, BN=BN, D=D,
                   DESC=desc, WS=ws, FMA=fma, MASKLOAD=maskload, num_warps=warps, num_stages=stages)
    return o


def reference(q, k, v, W):
    n = q.shape[2]
    i = torch.arange(n, device=q.device)
    allowed = (i[:, None] - i[None, :]).abs() <= W
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)


# First run (2026-11-29, third session) compared pointer loads, unmasked loads, FMA softmax,
# host and per-program TMA descriptors and warp specialisation (docs/decisions.md, tma-loads);
# this set keeps the baseline and the winner, and adds persistent programs.
VARIANTS = [  # (desc, ws, fma, maskload), or ("persistent", programs per SM, flatten)
    (0, False, False, True),    # today's template
    (1, False, False, False),   # host TMA descriptor, today's softmax
    (1, False, True, False),    # host TMA descriptor, FMA softmax
    ("persistent", 2, False),
    ("persistent", 2, True),
    ("persistent", 1, True),
]
TILES = [(64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2)]


def call(var, q, k, v, W, tile):
    if var[0] == "persistent":
        return run_persistent(q, k, v, W, *tile, var[1], var[2])
    return run(q, k, v, W, *tile, *var)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--w", type=int, nargs="+", default=[256, 1 << 20])
    ap.add_argument("--out", default=None, help="write JSON lines here")
    args = ap.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    torch.manual_seed(0)
    rows = []
    small = [torch.randn(1, 2, 1024, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3)]
    for W in (256, 48):
        ref = reference(*small, W)
        for var, tile in itertools.product(VARIANTS, TILES):
            try:
                out = call(var, *small, W, tile).float()
                err = ((out - ref).abs().max() / ref.abs().max()).item()
            except Exception as e:  # a variant this Triton cannot compile
                err = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if not isinstance(err, float) or err > 2e-2:
                print(f"check W={W} {var} {tile}: {err}", flush=True)
                rows.append(dict(check=W, variant=var, tile=tile, error=str(err)))
    if args.check_only:
        return
    B, H, D = 1, 16, 128
    for W in args.w:
        n = args.n if W < args.n else 16384
        q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        i = torch.arange(n, dtype=torch.float64)
        nnz = float(((torch.minimum(i + W, torch.tensor(n - 1.0)) - torch.clamp(i - W, min=0)) + 1).sum())
        for var, tile in itertools.product(VARIANTS, TILES):
            try:
                ms = triton.testing.do_bench(lambda: call(var, q, k, v, W, tile), warmup=25, rep=100,
                                             return_mode="median")
            except Exception as e:
                ms = None
            tf = 4 * nnz * D * H * B / (ms * 1e-3) / 1e12 if ms else None
            row = dict(n=n, W=W, variant=list(var), BM=tile[0],
                       BN=tile[1], warps=tile[2], stages=tile[3], ms=ms, tflops=tf)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
