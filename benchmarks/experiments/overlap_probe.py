"""Experiment: does issuing the next key tile's QK^T before this tile's softmax speed up a long
forward walk on Hopper?

FlashAttention-3 overlaps the softmax of tile j with the tensor cores' work on tile j + 1
("intra-warpgroup pipelining"); Triton's kernels, ours included, compute S_j, then softmax,
then P_j V_j, so within one warpgroup the tensor cores idle during the exponentials. Here a
causal forward (128x64 tiles, host TMA descriptors, as the generated kernels at n = 65,536)
is written three ways: PIPE=0 as the template does it; PIPE=1 with S_{j+1} = Q K_{j+1}^T
issued before the softmax of S_j (Triton still waits for it at once); PIPE=2 with P_{j-1} V_{j-1}
first, whose wait covers S_j, then S_{j+1}, left in flight through softmax_j (the sm_90a PTX
shows it).  Measured on an H100 (docs/decisions.md, no-in-warpgroup-overlap): PIPE=2 is ~20% slower than PIPE=0.

    python benchmarks/experiments/overlap_probe.py                   # GPU box: timings against cuDNN causal
    python benchmarks/experiments/overlap_probe.py --check-only      # correctness, small n (CPU interpreter too)
    python benchmarks/experiments/overlap_probe.py --ptx             # CPU: compile for sm_90a, count wgmma waits

It is not part of the product: it decided what the template does not do (docs/decisions.md).
"""
from __future__ import annotations

import argparse
import json
import os

import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench import bench  # noqa: E402  (bench.py's median over at least 7 timed calls)

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@triton.jit
def _rows(desc, row, WIDEN: tl.constexpr):
    """One tile through its TMA descriptor (widened to fp32 under the CPU interpreter, whose bf16
    products are wrong in Triton 3.6)."""
    x = desc.load([row, 0])
    if WIDEN:
        x = x.to(tl.float32)
    return x


@triton.jit
def _softmax_pv(acc, m_i, l_i, s, v, keep, qk_scale, MASKED: tl.constexpr):
    """Online-softmax update with raw scores s (the template's arithmetic)."""
    s = s * qk_scale
    if MASKED:
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def causal_fwd(qd, kd, vd, O, n, qk_scale, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
               PIPE: tl.constexpr, WIDEN: tl.constexpr):
    pid = tl.program_id(0)
    zh = tl.program_id(1)
    t = tl.num_programs(0) - 1 - pid  # longest walks first, as the generated kernels
    a0 = t * BM
    row0 = zh * n
    i = a0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    q = _rows(qd, row0 + a0, WIDEN)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    full_hi = (a0 + 1) // BN  # key tiles entirely at or before the tile's first query
    hi = tl.minimum(a0 + BM - 1, n - 1) // BN + 1
    if PIPE == 1:
        k = _rows(kd, row0, WIDEN)
        s = tl.dot(q, tl.trans(k))
        for kt in range(0, full_hi):
            v = _rows(vd, row0 + kt * BN, WIDEN)
            kn = _rows(kd, row0 + tl.minimum(kt + 1, hi - 1) * BN, WIDEN)
            s_next = tl.dot(q, tl.trans(kn))  # in flight during this tile's softmax
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, 0, qk_scale, False)
            s = s_next
    elif PIPE == 2:  # P_{j-1} V_{j-1} first (its wait 0 lets S_{j+1} stay in flight), then softmax_j
        k = _rows(kd, row0, WIDEN)
        s = tl.dot(q, tl.trans(k))
        p = tl.zeros([BM, BN], tl.float32).to(q.dtype)
        alpha = tl.full([BM], 1.0, tl.float32)
        for kt in range(0, full_hi):
            v = _rows(vd, row0 + tl.maximum(kt - 1, 0) * BN, WIDEN)
            kn = _rows(kd, row0 + tl.minimum(kt + 1, hi - 1) * BN, WIDEN)
            acc = acc * alpha[:, None] + tl.dot(p, v)
            s_next = tl.dot(q, tl.trans(kn))
            s = s * qk_scale
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_use)
            p32 = tl.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p32, 1)
            p = p32.to(p.dtype)
            m_i = m_new
            s = s_next
        v = _rows(vd, row0 + tl.maximum(full_hi - 1, 0) * BN, WIDEN)
        acc = acc * alpha[:, None] + tl.dot(p, v)
    else:
        for kt in range(0, full_hi):
            k = _rows(kd, row0 + kt * BN, WIDEN)
            v = _rows(vd, row0 + kt * BN, WIDEN)
            s = tl.dot(q, tl.trans(k))
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, 0, qk_scale, False)
    for kt in range(full_hi, hi):  # the diagonal's tiles, masked
        j = kt * BN + tl.arange(0, BN)
        k = _rows(kd, row0 + kt * BN, WIDEN)
        v = _rows(vd, row0 + kt * BN, WIDEN)
        s = tl.dot(q, tl.trans(k))
        keep = (i[:, None] >= j[None, :]) & (j < n)[None, :]
        acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, keep, qk_scale, True)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    base = zh.to(tl.int64) * n * D
    tl.store(O + base + i.to(tl.int64)[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=(i < n)[:, None])


def run(q, k, v, pipe: bool, BM: int = 128, BN: int = 64, warps: int = 8, stages: int = 3):
    from triton.tools.tensor_descriptor import TensorDescriptor
    B, H, n, D = q.shape
    o = torch.empty_like(q)
    qd = TensorDescriptor.from_tensor(q.view(B * H * n, D), [BM, D])
    kd = TensorDescriptor.from_tensor(k.view(B * H * n, D), [BN, D])
    vd = TensorDescriptor.from_tensor(v.view(B * H * n, D), [BN, D])
    grid = (triton.cdiv(n, BM), B * H)
    causal_fwd[grid](qd, kd, vd, o, n, D ** -0.5 * 1.4426950408889634, BM=BM, BN=BN, D=D, PIPE=pipe,
                     WIDEN=DEV == "cpu" and q.dtype == torch.bfloat16, num_warps=warps, num_stages=stages)
    return o


def reference(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)


def check(n: int = 384) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    ref = reference(q, k, v)
    for pipe in (0, 1, 2):
        err = (run(q, k, v, pipe, BM=64, BN=32, warps=4).double() - ref).abs().max().item()
        print(f"PIPE={int(pipe)} n={n}: max error {err:.2e}", flush=True)
        assert err < 2e-2, err


def ptx_report(stages: int = 3) -> None:
    """Compile the variants for sm_90a here and print what decides the overlap: how many
    wgmma waits the loop has and with which pending counts, registers and spills."""
    import re
    import subprocess
    import tempfile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", 90, 32)
    for pipe in (0, 1, 2):
        desc = lambda bn: f"tensordesc<bf16[{bn}, 128]>"  # noqa: E731
        sig = {"qd": desc(128), "kd": desc(64), "vd": desc(64), "O": "*bf16", "n": "i32", "qk_scale": "fp32",
               "BM": "constexpr", "BN": "constexpr", "D": "constexpr", "PIPE": "constexpr", "WIDEN": "constexpr"}
        consts = {"BM": 128, "BN": 64, "D": 128, "PIPE": pipe, "WIDEN": False}
        src = ASTSource(fn=causal_fwd, signature=sig, constexprs=consts, attrs={(3,): [["tt.divisibility", 16]]})
        c = triton.compile(src, target=target, options={"num_warps": 8, "num_stages": stages})
        ptx = c.asm["ptx"]
        waits = re.findall(r"wgmma.wait_group.sync.aligned (\d+)", ptx)
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "k.ptx")
            open(p, "w").write(ptx)
            r = subprocess.run([ptxas, "-arch=sm_90a", "-v", p, "-o", os.path.join(tmp, "k.cubin")],
                               capture_output=True, text=True)
        usage = " ".join(re.findall(r"Used \d+ registers|\d+ bytes spill stores", r.stderr))
        print(f"PIPE={pipe} stages={stages}: wgmma waits {waits}, shared {c.metadata.shared} B, {usage}")
        if os.environ.get("PROBE_DUMP"):
            open(f"{os.environ['PROBE_DUMP']}-pipe{pipe}.ttgir", "w").write(c.asm["ttgir"])
            open(f"{os.environ['PROBE_DUMP']}-pipe{pipe}.ptx", "w").write(ptx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--ptx", action="store_true")
    ap.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--out", default=None, help="write JSON lines here")
    args = ap.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    if args.ptx:
        for st in (2, 3):
            ptx_report(st)
        return
    check()
    if args.check_only:
        return
    check(1000)
    B, H, D = 1, 16, 128
    rows = []
    for n in args.n:
        q, k, v = (torch.randn(B, H, n, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * (n * (n + 1) / 2) * D * H * B
        ref = run(q, k, v, False).float()
        cases = [("cudnn_causal", None), ("pipe0", (0, 3)), ("pipe2", (2, 3)), ("pipe2_s2", (2, 2)),
                 ("pipe1", (1, 3)), ("pipe0", (0, 3)), ("pipe2", (2, 3))]
        for name, cfg in cases:
            if cfg is None:
                from torch.nn.attention import SDPBackend, sdpa_kernel
                def fn():
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                def fn(cfg=cfg):
                    return run(q, k, v, cfg[0], stages=cfg[1])
            out = fn().float()
            diff = (out - ref).abs().max().item()
            ms = bench(fn)
            row = dict(n=n, variant=name, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, diff=diff)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
