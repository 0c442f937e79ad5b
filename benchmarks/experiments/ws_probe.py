"""Does Triton's automatic warp specialization pay for a band forward on Hopper?

A question to answer before changing the emitter (docs/decisions.md, no-warp-specialization).  Compiling for
sm_90 on a machine without a GPU showed that Triton 3.6 specializes warps (a producer warp
group feeding two consumer groups, 12 warps in all) only for a kernel with ONE loop over tensor
descriptors made on the device, 4 warps, and no `if` inside the loop body; our generated
kernels have three loops (masked edges, full tiles) and descriptors made on the host, so the
pass leaves them as they are (or fails: two loops, 'PassManager::run failed').  A specialized
version would walk every tile of a query tile in one loop and mask edge tiles without a branch.

This probe is that kernel for a band (keys i - left <= j <= i + right) united with the first
SINK keys and a PREFIX block (rows and keys below PREFIX) -- local, causal window, causal,
streaming and prefix-LM -- timed with and without warp specialization, beside the generated
module's forward for the same pattern, in one run.  The union of the two tile ranges is walked
as one flat loop (the tile index jumps from the leading range to the band).

    python benchmarks/experiments/ws_probe.py --compile-only            # any machine: what sm_90 gets
    TRITON_INTERPRET=1 python benchmarks/experiments/ws_probe.py --check  # CPU: the probe kernel is right
    python benchmarks/experiments/ws_probe.py --n 16384 65536           # on the GPU box
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import patternc  # noqa: E402
from patterns import PATTERNS  # noqa: E402

# pattern name -> (left, right, sink, prefix): keys (i - left <= j or j < sink) and j <= i + right,
# or i, j < prefix; None: n (no limit on that side)
BANDS = {"local": (256, 256, 0, 0), "causal_local": (256, 0, 0, 0), "causal": (None, 0, 0, 0),
         "streaming": (1024, 0, 4, 0), "prefix_lm": (None, 0, 0, 2048)}


@triton.jit
def _band_fwd(Q, K, V, O, n, left, right, sink, prefix, qk_scale, BM: tl.constexpr, BN: tl.constexpr,
              D: tl.constexpr, WS: tl.constexpr):
    """One query tile against every key tile it can meet, in one loop (the shape the warp
    specialization pass accepts).  Q, K, V: (B, H, n, D) contiguous."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    qd = tl.make_tensor_descriptor(Q, shape=[tl.num_programs(1), n, D], strides=[n * D, D, 1],
                                   block_shape=[1, BM, D])
    kd = tl.make_tensor_descriptor(K, shape=[tl.num_programs(1), n, D], strides=[n * D, D, 1],
                                   block_shape=[1, BN, D])
    vd = tl.make_tensor_descriptor(V, shape=[tl.num_programs(1), n, D], strides=[n * D, D, 1],
                                   block_shape=[1, BN, D])
    a0 = pid * BM
    a1 = a0 + BM - 1
    i = a0 + tl.arange(0, BM)
    q = qd.load([bh, a0, 0]).reshape(BM, D)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    # the band's key tiles, and a leading range from key 0 (sink keys; the prefix block)
    t_lo = tl.maximum(a0 - left, 0) // BN
    t_hi = tl.minimum(a1 + right, n - 1) // BN + 1
    lead = tl.maximum(tl.cdiv(sink, BN), tl.where(a0 < prefix, tl.cdiv(prefix, BN), 0))
    band0 = tl.maximum(t_lo, lead)  # the band's tiles not already in the leading range
    walk = lead + tl.maximum(t_hi - band0, 0)
    for t in tl.range(0, walk, warp_specialize=WS):
        kt = tl.where(t < lead, t, band0 + (t - lead))
        b0 = kt * BN
        j = b0 + tl.arange(0, BN)
        k = kd.load([bh, b0, 0]).reshape(BN, D)
        v = vd.load([bh, b0, 0]).reshape(BN, D)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        # a tile with a pair outside the pattern (or keys past n) is masked, without a branch
        full = ((b0 >= a1 - left) & (b0 + BN - 1 <= a0 + right)) | \
            ((b0 + BN <= sink) & (b0 + BN - 1 <= a0 + right)) | ((a1 < prefix) & (b0 + BN <= prefix))
        full = full & (b0 + BN <= n)
        jj = j[None, :]
        keep = (((jj >= i[:, None] - left) | (jj < sink)) & (jj <= i[:, None] + right)) | \
            ((i[:, None] < prefix) & (jj < prefix))
        s = tl.where((keep & (jj < n)) | full, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = O + bh.to(tl.int64) * n * D + i.to(tl.int64)[:, None] * D + tl.arange(0, D)[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(i < n)[:, None])


CONFIGS = [  # (BM, BN, num_warps, num_stages, warp_specialize); the specialised ones last: on the
    # H200 with Triton 3.6 each of them hung (docs/decisions.md, no-warp-specialization), hiding what came after
    (128, 64, 8, 3, False), (128, 64, 4, 3, False), (128, 128, 8, 2, False),
    (128, 64, 4, 2, True), (128, 64, 4, 3, True), (128, 128, 4, 2, True),
]


def _allocator(size: int, alignment: int, stream):
    """Scratch for descriptors made on the device (Triton asks the caller for it)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def band_forward(q, k, v, band: tuple, cfg) -> torch.Tensor:
    B, H, n, D = q.shape
    left, right, sink, prefix = band
    BM, BN, warps, stages, ws = cfg
    o = torch.empty_like(q)
    grid = (triton.cdiv(n, BM), B * H)
    _band_fwd[grid](q, k, v, o, n, n if left is None else left, right, sink, prefix, D ** -0.5 * 1.4426950408889634,
                    BM=BM, BN=BN, D=D, WS=ws, num_warps=warps, num_stages=stages)
    return o


def compile_only(D: int) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "n": "i32", "left": "i32", "right": "i32",
           "sink": "i32", "prefix": "i32", "qk_scale": "fp32", "BM": "constexpr", "BN": "constexpr", "D": "constexpr", "WS": "constexpr"}
    for BM, BN, warps, stages, ws in CONFIGS:
        src = ASTSource(fn=_band_fwd, signature=sig, constexprs={"BM": BM, "BN": BN, "D": D, "WS": ws},
                        attrs={(a,): [["tt.divisibility", 16]] for a in range(4)})
        t0 = time.perf_counter()
        try:
            c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
        except Exception as e:  # report and go on
            print(f"BM={BM} BN={BN} warps={warps} stages={stages} ws={ws}: {type(e).__name__}: "
                  f"{str(e).strip().splitlines()[-1][:200]}")
            continue
        print(f"BM={BM} BN={BN} warps={warps} stages={stages} ws={int(ws)}: specialized "
              f"{'ttg.warp_specialize' in c.asm['ttgir']}, {c.metadata.num_warps} warps, "
              f"{c.metadata.shared / 1024:.1f} KiB shared, compiled in {time.perf_counter() - t0:.2f} s", flush=True)


def check() -> None:
    """The probe kernel against a float64 band reference (under TRITON_INTERPRET=1 on a CPU)."""
    for name, (left, right, sink, prefix) in BANDS.items():
        for n in (45, 100):
            g = torch.Generator().manual_seed(n)
            q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
            band = (n if left is None else min(left, 20), min(right, 20), min(sink, 3), min(prefix, 37))
            out = band_forward(q, k, v, band, (16, 16, 4, 1, False))
            i = torch.arange(n)[:, None]
            j = torch.arange(n)[None, :]
            allowed = (((j >= i - band[0]) | (j < band[2])) & (j <= i + band[1])) | ((i < band[3]) & (j < band[3]))
            s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) / math.sqrt(16)
            ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v.double()
            err = (out.double() - ref).abs().max().item()
            print(f"{name:13s} n={n:3d} (left, right, sink, prefix) = {band}: max error {err:.2e}")
            assert err < 1e-4, name


def run(ns: list[int], D: int, names: list[str]) -> None:
    triton.set_allocator(_allocator)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"B=1 H=16 D={D} bf16, forward, do_bench median ms", flush=True)
    for n in ns:
        q, k, v = (torch.randn(1, 16, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for name in names:
            band = BANDS[name]
            mod = patternc.load(patternc.parse(f"pattern p_{name} = {PATTERNS[name]}"), backend="triton")
            ref = mod.attention(q, k, v)
            ms = triton.testing.do_bench(lambda: mod.attention(q, k, v), warmup=25, rep=100, return_mode="median")
            print(f"n={n} {name:13s} generated module          {ms:7.3f} ms", flush=True)
            for cfg in CONFIGS:
                try:
                    out = band_forward(q, k, v, band, cfg)
                    err = (out.float() - ref.float()).abs().max().item()
                    t = triton.testing.do_bench(lambda: band_forward(q, k, v, band, cfg), warmup=25,
                                                rep=100, return_mode="median")
                    print(f"n={n} {name:13s} BM={cfg[0]} BN={cfg[1]} w={cfg[2]} s={cfg[3]} ws={int(cfg[4])} "
                          f"{t:7.3f} ms  (x{ms / t:.2f} of the module; max diff {err:.3g})", flush=True)
                except Exception as e:  # a config that does not compile or fit: say so, go on
                    print(f"n={n} {name:13s} {cfg}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}",
                          flush=True)
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--patterns", default=",".join(BANDS), help="comma-separated, of: " + ", ".join(BANDS))
    ap.add_argument("--compile-only", action="store_true", help="compile for sm_90 here; no GPU needed")
    ap.add_argument("--check", action="store_true", help="correctness under TRITON_INTERPRET=1")
    args = ap.parse_args()
    if args.compile_only:
        compile_only(args.d)
    elif args.check:
        check()
    else:
        run(args.n, args.d, [p for p in args.patterns.split(",") if p])


if __name__ == "__main__":
    main()
