"""Host-side cost of one call: where short kernels lose time before the GPU starts.

For each pattern: GPU time (do_bench median, as bench.py) with TMA descriptors on and off, the
host time per call (50 calls without synchronisation), and a profile of the host side.

    python benchmarks/host_overhead.py --n 16384 --patterns local,longformer
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import patternc  # noqa: E402
from patterns import PATTERNS  # noqa: E402


def host_us(fn, calls: int = 50) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--patterns", default="local,longformer,causal_local")
    ap.add_argument("--profile", default="longformer")
    ap.add_argument("--launch-cost", action="store_true",
                    help="split one forward call's host time: our Python, Triton's launch, descriptors")
    ap.add_argument("--backward", action="store_true",
                    help="forward + backward as bench.py times it, with each kernel's GPU time")
    args = ap.parse_args()
    H, D = 16, 128
    q, k, v = (torch.randn(1, H, args.n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name in args.patterns.split(","):
        p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
        mod = patternc.load(p, backend="triton")
        if args.launch_cost:
            launch_cost(mod, name, q, k, v)
            continue
        if args.backward:
            backward(mod, name, q, k, v, profile=name == args.profile)
            continue
        for tma in ("1", "0"):
            os.environ["PATTERNC_TMA"] = tma
            mod.attention(q, k, v)
            ms = triton.testing.do_bench(lambda: mod.attention(q, k, v), warmup=25, rep=100, return_mode="median")
            us = host_us(lambda: mod.attention(q, k, v))
            print(f"{name:14s} TMA={tma}: gpu {ms:.3f} ms, host {us:.0f} us/call", flush=True)
            if name == args.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(50):
                    mod.attention(q, k, v)
                prof.disable()
                torch.cuda.synchronize()
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
                print(s.getvalue().replace(os.getcwd(), "."), flush=True)
    os.environ.pop("PATTERNC_TMA", None)


@triton.jit
def _empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20,
           a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31, a32, a33, a34, a35, a36, a37, a38, a39):
    pass


def launch_cost(mod, name: str, q, k, v) -> None:
    """Host microseconds per forward call, and the parts: the call with every kernel launch
    replaced by a no-op (our Python), a bare Triton launch of a kernel with 40 arguments
    (9 tensors, 31 ints: about our kernels' count), and one TMA descriptor."""
    with torch.no_grad():
        full = host_us(lambda: mod.attention(q, k, v), calls=200)
        path = mod._bound.triton
        real = path.launch

        class NoLaunch:  # the runtime's launcher with every launch a no-op
            def __call__(self, kernel, grid, site=None):
                return lambda *a, **kw: None

            def __getattr__(self, name):
                return getattr(real, name)
        path.launch = NoLaunch()
        try:
            ours = host_us(lambda: mod.attention(q, k, v), calls=200)
        finally:
            path.launch = real
    args = [q] * 9 + [4096 + 16 * i for i in range(31)]
    _empty[(1,)](*args)
    bare = host_us(lambda: _empty[(1,)](*args), calls=500)
    kernel = _empty.run(*args, grid=(1,), warmup=False)
    stream = torch.cuda.current_stream().cuda_stream

    def direct():
        kernel.run(1, 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None, *args)
    direct()
    bypass = host_us(direct, calls=500)
    from patternc.runtime.tma import tma_desc
    desc = host_us(lambda: tma_desc(k, 64, 128), calls=500)
    print(f"{name:14s} forward call {full:.0f} us: our Python {ours:.0f} us (no launches); "
          f"a bare Triton launch (40 args) {bare:.0f} us, {bypass:.0f} us calling the compiled kernel "
          f"directly; one TMA descriptor {desc:.1f} us", flush=True)


def backward(mod, name: str, q, k, v, profile: bool) -> None:
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(q)

    def fwd_bwd():
        mod.attention(qg, kg, vg).backward(do)
    fwd_bwd()
    ms = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100, return_mode="median")
    us = host_us(fwd_bwd, calls=20)
    # Autograd runs a CUDA graph's backward on its own device thread, which cProfile (one thread)
    # does not see: the profile of v5 showed that time as run_backward's own.  With multithreading
    # off the backward runs on this thread: the host time tells what the hand-off costs, and the
    # profile below shows our backward's Python and Triton's launches.
    with torch.autograd.set_multithreading_enabled(False):
        fwd_bwd()
        us_one = host_us(fwd_bwd, calls=20)
    print(f"{name:14s} fwd+bwd: gpu {ms:.3f} ms, host {us:.0f} us/call "
          f"({us_one:.0f} us with the backward on the calling thread)", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fwd_bwd()
        torch.cuda.synchronize()
    for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]:
        print(f"    {ev.key[:60]:60s} {ev.device_time_total / 5 / 1000:8.3f} ms/call  x{ev.count // 5}", flush=True)
    if profile:
        prof = cProfile.Profile()
        with torch.autograd.set_multithreading_enabled(False):  # the backward on this thread: profiled
            prof.enable()
            for _ in range(20):
                fwd_bwd()
            prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(22)
        print(s.getvalue().replace(os.getcwd(), "."), flush=True)


if __name__ == "__main__":
    main()
