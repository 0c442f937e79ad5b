"""Longformer at n = 1,048,576 on one GPU: forward and backward, time and peak memory.

    python benchmarks/scale_check.py [--n 1048576] [--heads 16] [--d 128]

The generated kernels hold no pattern metadata in device memory: only q, k, v, the output,
the log-sum-exp and the gradients are allocated, which this script reports.
"""
from __future__ import annotations

import argparse

import torch
import triton

import patternc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--d", type=int, default=128)
    a = ap.parse_args()
    mod = patternc.load(patternc.parse("pattern longformer(w = 256, g = 16) = local(w) | global(g)"))
    q, k, v = (torch.randn(1, a.heads, a.n, a.d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    inputs = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd = triton.testing.do_bench(lambda: mod.attention(q, k, v), warmup=5, rep=50, return_mode="median")
    fwd_peak = torch.cuda.max_memory_allocated() - inputs

    def step():
        mod.attention(q, k, v).backward(do)
    torch.cuda.reset_peak_memory_stats()
    fb = triton.testing.do_bench(step, warmup=2, rep=50, return_mode="median")
    fb_peak = torch.cuda.max_memory_allocated() - inputs
    tensor = q.numel() * q.element_size()
    print(f"longformer n={a.n} H={a.heads} D={a.d} bf16 on {torch.cuda.get_device_name()}: "
          f"forward {fwd:.2f} ms, forward+backward {fb:.2f} ms; memory beyond q/k/v/do: forward peak "
          f"{fwd_peak / 2**30:.2f} GiB, forward+backward peak {fb_peak / 2**30:.2f} GiB "
          f"(one (1,H,n,D) tensor is {tensor / 2**30:.2f} GiB); pattern metadata: 0 bytes")


if __name__ == "__main__":
    main()
