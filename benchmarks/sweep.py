"""Sweep tile shapes, warps and stages of the generated kernels on one GPU (for tuning).

    python benchmarks/sweep.py --n 16384 --d 128 --patterns local,longformer \\
        --fwd "BM=128,BN=64,num_warps=8" "BM=64,BN=64,num_warps=4" \\
        --bwd "DQ_BM=64,DQ_BN=64,dq_warps=4,DKV_BM=64,DKV_BN=64,dkv_warps=4"

Each config is a PATTERNC_CONFIG string (see docs/triton.md).  The forward is timed alone;
the backward is timed alone too (autograd.grad on a saved graph), so the two can be tuned
apart.  Every config's output and gradients are compared with the first config's: a config
that computes something else is reported, not timed.  One JSON line per measurement is
appended to --out (default benchmarks/results/<gpu>/sweep.jsonl) as it is made, so a run cut
short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402

from bench import bench  # noqa: E402
from patterns import PATTERNS  # noqa: E402
from results_dir import results_dir  # noqa: E402


def timed(fn) -> float:
    """The benchmark's timing (do_bench median), with a shorter budget per config."""
    return bench(fn, warmup=10, rep=40)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude (bf16 rounding gives ~1e-2)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def with_config(config: str, fn):
    old = os.environ.get("PATTERNC_CONFIG")
    os.environ["PATTERNC_CONFIG"] = config
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["PATTERNC_CONFIG"]
        else:
            os.environ["PATTERNC_CONFIG"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--patterns", default="local,longformer")
    ap.add_argument("--fwd", nargs="*", default=[])
    ap.add_argument("--bwd", nargs="*", default=[])
    ap.add_argument("--out", default=None, help="JSON lines file (default: benchmarks/results/<gpu>/sweep.jsonl)")
    args = ap.parse_args()
    n, D, H = args.n, args.d, args.heads
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, do = (torch.randn(1, H, n, D, generator=g).to("cuda", torch.bfloat16) for _ in range(4))
    if args.out is None:
        os.makedirs(results_dir(), exist_ok=True)
        args.out = os.path.join(results_dir(), "sweep.jsonl")
    out = open(args.out, "a")

    def record(**row):
        row.update(n=n, D=D, H=H, gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=triton.__version__)
        out.write(json.dumps(row) + "\n")
        out.flush()
        extra = f" max diff {row['diff']:.1e}" if "diff" in row else ""
        print(f"{row['pattern']:13s} {row['kind']:3s} {row['ms'] if 'ms' in row else row.get('error', '')!s:>10.10s}"
              f" ms  {row['config']}{extra}", flush=True)

    for name in args.patterns.split(","):
        p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
        mod = patternc.load(p, backend="triton")
        first = None
        for cfg in args.fwd:
            try:
                t0 = time.perf_counter()
                o = with_config(cfg, lambda: mod.attention(q, k, v))
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                diff = 0.0 if first is None else rel_diff(o, first)
                first = o if first is None else first
                if diff > 0.05:
                    record(pattern=name, kind="fwd", config=cfg, error="differs", diff=diff)
                    continue
                ms = with_config(cfg, lambda: timed(lambda: mod.attention(q, k, v)))
                record(pattern=name, kind="fwd", config=cfg, ms=ms, compile_s=compile_s, diff=diff)
            except Exception as e:  # e.g. out of shared memory: record and go on
                record(pattern=name, kind="fwd", config=cfg, error=f"{type(e).__name__}: {str(e)[:200]}")
        ref = None
        for cfg in args.bwd:
            try:
                qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                o = mod.attention(qg, kg, vg)
                t0 = time.perf_counter()
                grads = with_config(cfg, lambda: torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True))
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                diff = 0.0 if ref is None else max(rel_diff(a, b) for a, b in zip(grads, ref))
                ref = grads if ref is None else ref
                if diff > 0.05:
                    record(pattern=name, kind="bwd", config=cfg, error="differs", diff=diff)
                    continue
                ms = with_config(cfg, lambda: timed(
                    lambda: torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True)))
                record(pattern=name, kind="bwd", config=cfg, ms=ms, compile_s=compile_s, diff=diff)
            except Exception as e:
                record(pattern=name, kind="bwd", config=cfg, error=f"{type(e).__name__}: {str(e)[:200]}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
