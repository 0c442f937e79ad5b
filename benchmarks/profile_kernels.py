"""Run one pattern's kernels once, between cudaProfilerStart/Stop, for Nsight Compute.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \\
        python3 benchmarks/profile_kernels.py --pattern causal_local --what fwd

The bench says how fast a kernel is; this says why: the profiler reads hardware counters
(tensor-pipe activity, occupancy, warp stalls, memory traffic) of exactly the launches of one
call, after warm-up, so compilation and autotuning stay outside the profiled range.
`--what sdpa_causal` / `sdpa_dense` profile cuDNN's kernel at the same shape, the ceiling the
bench compares against.  `gpu_session.sh ncu` runs the cases of the issue-4 misses and
`ncu_summary.py` tabulates them.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402

from patterns import PATTERNS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="causal", choices=sorted(PATTERNS))
    ap.add_argument("--what", default="fwd", choices=("fwd", "bwd", "sdpa_causal", "sdpa_dense",
                                                       "sdpa_causal_bwd"))
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_kernels.py needs a CUDA GPU")
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.n, args.d, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
    do = torch.randn_like(q)
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    if args.what.startswith("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        causal = "causal" in args.what

        def call():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                if args.what.endswith("bwd"):
                    o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                    torch.autograd.grad(o, (qg, kg, vg), do)
                else:
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        mod = patternc.load(patternc.parse(f"pattern p_{args.pattern} = {PATTERNS[args.pattern]}"), backend="triton")
        if args.what == "fwd":
            def call():
                mod.attention(q, k, v)
        else:
            def call():
                o = mod.attention(qg, kg, vg)
                torch.autograd.grad(o, (qg, kg, vg), do)
    for _ in range(3):  # compile, tune and warm up outside the profiled range
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled {args.what} of {args.pattern if not args.what.startswith('sdpa') else 'cuDNN'} "
          f"at n={args.n}, D={args.d}, H={args.heads}")


if __name__ == "__main__":
    main()
