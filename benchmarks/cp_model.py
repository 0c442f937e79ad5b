"""A model of the context parallel step time, from one GPU: measured per-rank work plus the
plan's bytes over NVLink.

    python benchmarks/cp_model.py                          # Longformer and streaming, n = 1M and 4M, P = 2, 4, 8
    python benchmarks/cp_model.py --n 1048576 --world 8 --no-walk
    python benchmarks/cp_model.py --device cpu             # smoke: tiny sizes, the PyTorch walk for everything

For each pattern, n, P and layout it measures on this device (B = 1, H heads, D = 128, bf16):
  one_gpu      the module's attention over the whole sequence (its Triton kernels), forward +
               backward, when it fits;
  rank_kernel  the module's kernels on the busiest rank's shape: one sequence of L = its tokens +
               the key rows it pulls.  This stands for a kernel over a rank's position subsets
               (which does not exist yet): the same windows over L rows;
  rank_walk    the rank's own work as the code runs it today: the PyTorch walk at the rank's
               positions (its light rows against its own and the pulled keys, the global rows it
               hosts against its own keys), forward + backward (--no-walk skips it: slow at 4M);
and takes from the exchange plan the bytes the busiest rank sends and its collectives.  Then

  comm        = collectives x latency + bytes / bandwidth
  serial      = compute + comm                     (no overlap)
  overlapped  = max(compute, comm) + collectives x latency
  speedup     = one_gpu / step

for compute = rank_kernel (what the kernels would give) and rank_walk (what runs today).

Assumptions (not measured here): every rank is as busy as the busiest; the link gives
--link-gbps per GPU and direction to an all_to_all of these sizes (H100 SXM NVLink 4: 450 GB/s
nominal per direction; the default 360 is ~80% of it, what NCCL all-to-all reaches at large
messages), with --latency-us per collective; the kernels' time on L rows is the rank's time
(true for windows: the rows meet the same keys; the global rows hosted for others are a few
rows against the local keys, as at length L).  The multi-GPU run (benchmarks/context_parallel.py)
measures what this models.
Writes cp-model.md and .json to benchmarks/results/<gpu>/ (or --out; cpu: a temp dir).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402
from patternc.runtime.context_parallel import CP_CUDA_TILE  # noqa: E402
from patternc.runtime.cp_plan import exchange_plan, plan_bytes, span_rows  # noqa: E402
from patternc.runtime.walk import TILE, walk_backward, walk_forward  # noqa: E402

from context_parallel import PATTERNS  # noqa: E402


def median_ms(fn, reps: int, device) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def attention_ms(mod, L: int, args, device):
    """Forward + backward of the module's attention over L rows (its kernels on CUDA); None if OOM."""
    try:
        q, k, v = (torch.randn(1, args.heads, L, args.d, dtype=args.dtype, device=device, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        return median_ms(lambda: torch.autograd.grad(mod.attention(q, k, v), (q, k, v), do), args.reps, device)
    except torch.OutOfMemoryError:
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _pos(ranges, device) -> torch.Tensor:
    return torch.cat([torch.arange(lo, hi, device=device) for lo, hi in ranges]) if ranges else \
        torch.zeros(0, dtype=torch.int64, device=device)


def walk_ms(mod, plan, rank: int, args, device) -> float:
    """The rank's own forward + backward by the PyTorch walk, as context_parallel_attention runs it
    (without the exchange): light rows against own + pulled keys, hosted global rows against own keys."""
    spec, n = mod.SPEC, plan.n
    own = _pos(plan.shards[rank], device)
    keys = torch.sort(torch.cat([own] + [_pos(plan.pull[rank][s], device) for s in range(plan.world)])).values
    light = _pos(plan.light[rank], device)
    hosted = torch.sort(torch.cat([_pos(plan.heavy[rank], device)]
                                  + [_pos(plan.push[r][rank], device) for r in range(plan.world)])).values
    tile = CP_CUDA_TILE if device.type == "cuda" else TILE
    H, D = args.heads, args.d

    def x(m):
        return torch.randn(1, H, m, D, dtype=args.dtype, device=device)
    parts = [(x(light.numel()), x(keys.numel()), x(keys.numel()), light, keys),
             (x(hosted.numel()), x(own.numel()), x(own.numel()), hosted, own)]

    def step():
        for q, k, v, qp, kp in parts:
            o, lse = walk_forward(spec, q, k, v, D ** -0.5, tile, q_pos=qp, k_pos=kp, n=n)
            walk_backward(spec, torch.ones_like(o), q, k, v, o, lse, D ** -0.5, tile, q_pos=qp, k_pos=kp, n=n)
    return median_ms(step, args.reps, device)


def collectives(plan) -> tuple:
    """(forward, backward) messages of the busiest rank: collectives, or ring hops."""
    P = plan.world
    if plan.ring:
        return P - 1, 2 * P - 1
    kv = any(plan.pull[r][s] for r in range(P) for s in range(P))
    q = any(plan.push[r][s] for r in range(P) for s in range(P))
    return kv + 2 * q, kv + 3 * q


def model(compute_ms: float, nbytes: int, messages: int, args) -> dict:
    comm = messages * args.latency_us * 1e-3 + nbytes / (args.link_gbps * 1e9) * 1e3
    return dict(comm_ms=comm, serial_ms=compute_ms + comm,
                overlapped_ms=max(compute_ms, comm) + messages * args.latency_us * 1e-3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--n", type=int, nargs="+", default=None, help="default 1048576 4194304 (cpu: 4096)")
    ap.add_argument("--world", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "balanced"])
    ap.add_argument("--patterns", default="longformer,streaming")
    ap.add_argument("--heads", type=int, default=None, help="default 8 (cpu: 2)")
    ap.add_argument("--d", type=int, default=None, help="default 128 (cpu: 16)")
    ap.add_argument("--reps", type=int, default=None, help="default 5 (cpu: 1)")
    ap.add_argument("--link-gbps", type=float, default=360.0, help="GB/s per GPU and direction (default 360)")
    ap.add_argument("--latency-us", type=float, default=30.0, help="per collective or hop (default 30)")
    ap.add_argument("--no-walk", action="store_true", help="skip timing the PyTorch walk per rank")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        sys.exit("cp_model.py needs a CUDA GPU (or --device cpu for the smoke run)")
    if cpu:
        torch.set_num_threads(1)
    device = torch.device(args.device)
    args.n = args.n or ([4096] if cpu else [1 << 20, 1 << 22])
    args.heads = args.heads or (2 if cpu else 8)
    args.d = args.d or (16 if cpu else 128)
    args.reps = args.reps or (1 if cpu else 5)
    args.dtype = torch.float32 if cpu else torch.bfloat16
    elem, acc = torch.finfo(args.dtype).bits // 8, 4
    rows = []
    for name in [p for p in args.patterns.split(",") if p]:
        mod = patternc.load(PATTERNS[name], backend="triton")
        for n in args.n:
            one = attention_ms(mod, n, args, device)
            for P in args.world:
                for layout in args.layouts:
                    plan = exchange_plan(mod.SPEC, n, P, layout, device=device)
                    ring = exchange_plan(mod.SPEC, n, P, layout, ring=True, pieces=plan.shards)
                    sent = plan_bytes(plan, 1, args.heads, args.heads, args.d, elem, acc)
                    ring_sent = plan_bytes(ring, 1, args.heads, args.heads, args.d, elem, acc)
                    busiest = max(range(P), key=lambda r: span_rows(plan.shards[r])
                                  + sum(span_rows(plan.pull[r][s]) for s in range(P)))
                    L = span_rows(plan.shards[busiest]) + sum(span_rows(plan.pull[busiest][s]) for s in range(P))
                    row = dict(pattern=name, n=n, world=P, layout=layout, one_gpu_ms=one, rank_rows=L,
                               bytes_max=max(x["total"] for x in sent), bytes_total=sum(x["total"] for x in sent),
                               ring_bytes_total=sum(x["total"] for x in ring_sent))
                    row["plan_over_ring"] = row["bytes_total"] / row["ring_bytes_total"]
                    msgs = sum(collectives(plan))
                    row["rank_kernel_ms"] = attention_ms(mod, L, args, device)
                    if row["rank_kernel_ms"] is not None:
                        row["kernel"] = model(row["rank_kernel_ms"], row["bytes_max"], msgs, args)
                    if not args.no_walk:
                        row["rank_walk_ms"] = walk_ms(mod, plan, busiest, args, device)
                        row["walk"] = model(row["rank_walk_ms"], row["bytes_max"], msgs, args)
                    ring_msgs = sum(collectives(ring))
                    if row["rank_kernel_ms"] is not None:
                        row["kernel_ring"] = model(row["rank_kernel_ms"], max(x["total"] for x in ring_sent),
                                                   ring_msgs, args)
                    for key in ("kernel", "walk", "kernel_ring"):
                        if key in row and one is not None:
                            row[key]["speedup_overlapped"] = one / row[key]["overlapped_ms"]
                            row[key]["speedup_serial"] = one / row[key]["serial_ms"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    meta = dict(device=torch.cuda.get_device_name() if not cpu else platform.processor() or "cpu",
                torch=torch.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(["python benchmarks/cp_model.py"] + sys.argv[1:]), heads=args.heads, d=args.d,
                dtype=str(args.dtype).replace("torch.", ""), link_gbps=args.link_gbps, latency_us=args.latency_us)
    if cpu:
        args.out = args.out or tempfile.mkdtemp(prefix="patternc-cp-model-")
    else:
        from results_dir import results_dir
        args.out = args.out or results_dir()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cp-model.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    text = markdown(meta, rows)
    with open(os.path.join(args.out, "cp-model.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {os.path.join(args.out, 'cp-model.md')} and .json")


def markdown(meta: dict, rows: list) -> str:
    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)
    lines = [f"# Context parallel step model: {meta['device']}", "",
             f"- date: {meta['date']}; torch {meta['torch']}; command: `{meta['command']}`",
             f"- B = 1, H = {meta['heads']}, D = {meta['d']}, {meta['dtype']}; forward + backward; link "
             f"{meta['link_gbps']} GB/s per GPU and direction, {meta['latency_us']} us per collective (assumed)",
             "- kernel: the module's kernels on the busiest rank's rows (a stand-in for a position-subset kernel); "
             "walk: the PyTorch walk the code runs per rank today", "",
             "| pattern | n | P | layout | one GPU ms | rank rows | kernel ms | walk ms | bytes (busiest) | plan/ring "
             "| step kernel ms (overlap..serial) | speedup kernel | speedup walk | ring step kernel ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k, w, kr = r.get("kernel", {}), r.get("walk", {}), r.get("kernel_ring", {})
        lines.append(
            f"| {r['pattern']} | {r['n']} | {r['world']} | {r['layout']} | {f(r['one_gpu_ms'])} | {r['rank_rows']:,} | "
            f"{f(r['rank_kernel_ms'])} | {f(r.get('rank_walk_ms'))} | {r['bytes_max']:,} | {r['plan_over_ring']:.2e} | "
            f"{f(k.get('overlapped_ms'))}..{f(k.get('serial_ms'))} | {f(k.get('speedup_overlapped'), '{:.2f}x')} | "
            f"{f(w.get('speedup_overlapped'), '{:.2f}x')} | {f(kr.get('overlapped_ms'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
