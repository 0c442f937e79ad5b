"""Benchmark generated kernels against FlexAttention and SDPA, in one run, on one GPU.

    python benchmarks/bench.py                       # every pattern, n = 16384 and 65536, D = 128 and 64
    python benchmarks/bench.py --n 16384 --d 128 --patterns local,strided

For each pattern it times, with triton.testing.do_bench (median, after warm-up):
  - patternc's generated Triton module: forward, and forward + backward;
  - FlexAttention (torch.compile'd flex_attention) with a BlockMask for the same pattern
    (the mask_mod is printed from the same IR); BlockMask build time is reported apart;
  - SDPA dense and causal on the cuDNN and flash backends (the ceiling).
Useful TFLOP/s = 4 * nnz * D * H * B / time (forward), 2.5x that for forward + backward.
It writes a markdown table and JSON, with GPU, versions, date and command, to benchmarks/results/<gpu>/
(results_dir.py: a slug of the device name, e.g. h200), as bench[-TAG].md and .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402
from patternc import printer  # noqa: E402
from patternc.runtime.random_blocks import random_pick  # noqa: E402
from patternc.backends.schedule import choose_forward_tiles  # noqa: E402
from patternc.backends.walks import kernel_tile_efficiency  # noqa: E402

from patterns import PATTERNS  # noqa: E402
from results_dir import results_dir  # noqa: E402


def nnz_of(pattern, n: int) -> int:
    """Exact allowed-pair count, evaluated on the GPU in row chunks from the semantics oracle."""
    from patternc.semantics import allowed

    expr = pattern.at(n)
    j = torch.arange(n, device="cuda")[None, :]
    total = 0
    for s in range(0, n, 1024):
        i = torch.arange(s, min(n, s + 1024), device="cuda")[:, None]
        total += int(allowed(expr, i, j, n).expand(i.shape[0], n).sum().item())
    return total


def flex_mask_mod(pattern, n: int):
    """A FlexAttention mask_mod printed from the same IR the kernels are compiled from."""
    args = printer.ArgTable()
    expr = pattern.at(n)
    body = printer.mask_expr(expr, "q_idx", "kv_idx", args, hash_fn="random_pick")
    src = "def mask_mod(b, h, q_idx, kv_idx):\n    return " + body + "\n"
    env: dict = {"n": n, "random_pick": random_pick}
    exec(compile(src, "<flex-mask>", "exec"), env)
    inner = env["mask_mod"]

    def mask_mod(b, h, q_idx, kv_idx):  # FlexAttention passes int32 indices: widen for the hash
        return inner(b, h, q_idx.to(torch.int64), kv_idx.to(torch.int64))
    return mask_mod


MIN_SAMPLES = 7  # do_bench times rep // (estimated ms) calls: at 80 ms a call, rep = 50 gave one


def bench(fn, warmup=25, rep=100) -> float:
    """do_bench's median, over at least MIN_SAMPLES timed calls: one-sample medians of an 80 ms
    forward+backward spread over 79-98 ms between runs of the same kernels (docs/decisions.md,
    bench-min-samples)."""
    est = triton.testing.do_bench(fn, warmup=1, rep=1, return_mode="median")
    rep = max(rep, MIN_SAMPLES * est)
    return triton.testing.do_bench(fn, warmup=max(warmup, 2 * est), rep=rep, return_mode="median")


def run(args, save=lambda rows: None) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = "cuda"
    rows = []
    names = args.patterns.split(",") if args.patterns else list(PATTERNS)
    for n in args.n:
        for D in args.d:
            B, H = 1, args.heads
            g = torch.Generator(device="cpu").manual_seed(0)
            q, k, v = (torch.randn(B, H, n, D, generator=g).to(dev, torch.bfloat16) for _ in range(3))
            do = torch.randn_like(q)
            for name in names:
                p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
                nnz = nnz_of(p, n)
                flops = 4 * nnz * D * H * B
                row = dict(n=n, D=D, pattern=name, nnz=nnz, density=nnz / n / n)
                # ---- ours
                try:
                    ours(p, q, k, v, do, row, flops, n)
                except Exception as e:  # record and go on: one failure must not lose the run
                    row["error"] = f"{type(e).__name__}: {str(e)[-300:]}"
                    rows.append(row)
                    print(f"  n={n} D={D} {name}: ERROR {row['error'][:200]}", flush=True)
                    continue
                out = row.pop("_out")
                qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                # ---- FlexAttention with a BlockMask for the same pattern
                try:
                    torch._dynamo.reset()  # a fresh compile per pattern: no recompile-limit fallback to eager
                    flex = torch.compile(flex_attention, dynamic=False)
                    mm = flex_mask_mod(p, n)
                    t0 = time.perf_counter()
                    bmask = create_block_mask(mm, None, None, n, n, device=dev, BLOCK_SIZE=128)
                    torch.cuda.synchronize()
                    row["flex_mask_s_first"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    bmask = create_block_mask(mm, None, None, n, n, device=dev, BLOCK_SIZE=128)
                    torch.cuda.synchronize()
                    row["flex_mask_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    flex(q, k, v, block_mask=bmask)
                    torch.cuda.synchronize()
                    row["flex_first_call_s"] = time.perf_counter() - t0
                    row["flex_ms_fwd"] = bench(lambda: flex(q, k, v, block_mask=bmask))

                    def flex_fwd_bwd():
                        o = flex(qg, kg, vg, block_mask=bmask)
                        torch.autograd.grad(o, (qg, kg, vg), do)  # no .grad accumulation (see fwd_bwd)
                    row["flex_ms_fwd_bwd"] = bench(flex_fwd_bwd, warmup=10, rep=50)
                    row["flex_tflops_fwd"] = flops / row["flex_ms_fwd"] / 1e9
                    row["speedup_fwd"] = row["flex_ms_fwd"] / row["ms_fwd"]
                    row["speedup_fwd_bwd"] = row["flex_ms_fwd_bwd"] / row["ms_fwd_bwd"]
                    # agreement check: both compute the same function
                    ref = flex(q, k, v, block_mask=bmask)
                    row["max_abs_diff_vs_flex"] = (ref.float() - out.float()).abs().max().item()
                except Exception as e:
                    row["flex_error"] = str(e)[:300]
                rows.append(row)
                print_table([row])
                save(rows)  # results survive a run cut short
                del out
                torch.cuda.empty_cache()
            # ---- SDPA ceilings, after the patterns: a dense kernel at full power for seconds slows
            # whatever runs next (docs/decisions.md, bench-ceilings-last)
            for backend, bname in ((SDPBackend.CUDNN_ATTENTION, "sdpa_cudnn"), (SDPBackend.FLASH_ATTENTION, "sdpa_flash")):
                for causal in (False, True):
                    try:
                        sdpa = torch.nn.functional.scaled_dot_product_attention
                        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                        with sdpa_kernel([backend]):
                            ms = bench(lambda: sdpa(q, k, v, is_causal=causal))
                            ms_fb = bench(lambda: torch.autograd.grad(sdpa(qg, kg, vg, is_causal=causal),
                                                                      (qg, kg, vg), do), warmup=10, rep=50)
                        nnz = n * n if not causal else n * (n + 1) // 2
                        rows.append(dict(n=n, D=D, impl=bname, pattern="causal" if causal else "dense", ms_fwd=ms,
                                         tflops_fwd=4 * nnz * D * H * B / ms / 1e9, ms_fwd_bwd=ms_fb,
                                         tflops_fwd_bwd=2.5 * 4 * nnz * D * H * B / ms_fb / 1e9))
                    except Exception as e:  # a backend may be missing for a shape
                        rows.append(dict(n=n, D=D, impl=bname, pattern="causal" if causal else "dense", error=str(e)[:200]))
            print_table(rows[-4:])
            time.sleep(3)  # let the clocks recover before the next group's first pattern
    return dict(rows=rows)


def ours(p, q, k, v, do, row: dict, flops: int, n: int) -> None:
    """Time the generated module; fills `row`."""
    t0 = time.perf_counter()
    mod = patternc.load(p, backend="triton")
    out = mod.attention(q, k, v)
    torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - t0
    del out
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = mod.attention(q, k, v)  # one call, outside do_bench (whose L2-flush buffer is 256 MiB)
    torch.cuda.synchronize()
    row["extra_mem_bytes"] = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    row["ms_fwd"] = bench(lambda: mod.attention(q, k, v))
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

    def fwd_bwd():
        # autograd.grad, not backward(): in a model q, k, v come from projections and their
        # gradients flow on; .backward() on leaf tensors would add three accumulations into
        # .grad (about 0.5 ms at n = 65536, D = 128) to both sides of the comparison.
        o = mod.attention(qg, kg, vg)
        torch.autograd.grad(o, (qg, kg, vg), do)
    row["ms_fwd_bwd"] = bench(fwd_bwd, warmup=10, rep=50)
    row["tflops_fwd"] = flops / row["ms_fwd"] / 1e9
    row["tflops_fwd_bwd"] = 2.5 * flops / row["ms_fwd_bwd"] / 1e9
    bm, bn = choose_forward_tiles(p)
    row["tiles"] = f"{bm}x{bn}"
    row["tile_efficiency"] = kernel_tile_efficiency(p.at(n), n, bm, bn, nnz=row["nnz"])
    row["_out"] = out


def print_table(rows):
    for r in rows:
        if "pattern" in r and "impl" in r:
            if "error" in r:
                print(f"  n={r['n']:6d} D={r['D']:3d} {r['impl']:11s} {r['pattern']:8s} error: {r['error'][:80]}")
            else:
                print(f"  n={r['n']:6d} D={r['D']:3d} {r['impl']:11s} {r['pattern']:8s} {r['ms_fwd']:8.3f} ms "
                      f"{r['tflops_fwd']:6.1f} TFLOP/s")
            continue
        if "error" in r:
            continue
        s = (f"  n={r['n']:6d} D={r['D']:3d} {r['pattern']:13s} ours {r['ms_fwd']:8.3f} ms {r['tflops_fwd']:6.1f} TF/s"
             f" fb {r['ms_fwd_bwd']:8.3f} ms | eff {r['tile_efficiency']:.2f} {r['tiles']}")
        if "flex_ms_fwd" in r:
            s += (f" | flex {r['flex_ms_fwd']:8.3f} ms fb {r['flex_ms_fwd_bwd']:8.3f} | x{r['speedup_fwd']:.2f} "
                  f"fb x{r['speedup_fwd_bwd']:.2f} diff {r['max_abs_diff_vs_flex']:.1e}")
        else:
            s += f" | flex error {r.get('flex_error', '')[:80]}"
        print(s, flush=True)


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# Benchmark: {meta['gpu']}", "",
             f"- date: {meta['date']}", f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}",
             f"- command: `{meta['command']}`", f"- compile caches: {meta.get('compile_caches', 'as found')}",
             f"- shape: B=1, H={meta['heads']}, bf16; times are medians of "
             f"triton.testing.do_bench (at least {MIN_SAMPLES} timed calls); fwd+bwd = forward, then torch.autograd.grad for q, k, v", "",
             "| n | D | pattern | ours fwd ms | ours TFLOP/s | flex fwd ms | flex TFLOP/s | fwd speedup | "
             "ours fwd+bwd ms | flex fwd+bwd ms | fwd+bwd speedup | tile eff | first call s (ours / flex) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "impl" in r:
            continue
        f = lambda k, fmt="{:.3f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
        lines.append(f"| {r['n']} | {r['D']} | {r['pattern']} | {f('ms_fwd')} | {f('tflops_fwd', '{:.0f}')} | "
                     f"{f('flex_ms_fwd')} | {f('flex_tflops_fwd', '{:.0f}')} | {f('speedup_fwd', '{:.2f}x')} | "
                     f"{f('ms_fwd_bwd')} | {f('flex_ms_fwd_bwd')} | {f('speedup_fwd_bwd', '{:.2f}x')} | "
                     f"{f('tile_efficiency', '{:.2f}')} | {f('first_call_s', '{:.2f}')} / {f('flex_first_call_s', '{:.2f}')} |")
    lines += ["", "| n | D | SDPA backend | pattern | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "impl" in r and "ms_fwd" in r:
            fb = f"{r['ms_fwd_bwd']:.3f} | {r['tflops_fwd_bwd']:.0f}" if "ms_fwd_bwd" in r else "- | -"
            lines.append(f"| {r['n']} | {r['D']} | {r['impl']} | {r['pattern']} | {r['ms_fwd']:.3f} | "
                         f"{r['tflops_fwd']:.0f} | {fb} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--d", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--patterns", default="")
    ap.add_argument("--out", default=None, help="folder for the results (default: benchmarks/results/<gpu>/)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep Triton's and Inductor's on-disk compile caches (default: fresh ones, cold first calls)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.py needs a CUDA GPU")
    if not args.warm_cache:
        # First calls are compared cold: Triton's and Inductor's on-disk caches (both read their
        # folder when they compile) start empty, else a device call that ran the GPU tests first
        # would hand both sides compiled kernels.
        root = tempfile.mkdtemp(prefix="patternc-bench-cache-")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"), command=" ".join(  # with the PATTERNC_* settings it ran under
                        [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("PATTERNC_")]
                        + ["python benchmarks/" + os.path.basename(sys.argv[0])] + sys.argv[1:]), heads=args.heads,
                compile_caches="as found (--warm-cache)" if args.warm_cache else "fresh (cold first calls)")
    args.out = args.out or results_dir()
    os.makedirs(args.out, exist_ok=True)
    stem = "bench" + (f"-{args.tag}" if args.tag else "")

    def save(rows):
        with open(os.path.join(args.out, stem + ".json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(os.path.join(args.out, stem + ".md"), "w") as f:
            f.write(markdown(meta, rows))

    result = run(args, save)
    save(result["rows"])
    print(markdown(meta, result["rows"]))


if __name__ == "__main__":
    main()
