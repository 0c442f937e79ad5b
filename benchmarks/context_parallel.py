"""Context parallel attention on several GPUs (NCCL): the planned exchange against the ring
exchange of the same code, one GPU, and PyTorch's context_parallel, in one run.

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 8 benchmarks/context_parallel.py   # 1M and 4M tokens
    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 benchmarks/context_parallel.py --n 1048576
    python benchmarks/context_parallel.py --device cpu                             # smoke: gloo, 2 processes

For each pattern (Longformer `local(256) | global(16)`, and `causal & (sink(4) | local(4096))`),
length, layout and exchange ("plan": only the key rows the pattern needs; "ring": every shard
visits every rank), with B = 1, H heads, D = 128, bf16:
  - the step: forward, and forward + backward of context_parallel_attention; each repetition's
    time is the slowest rank's (CUDA events, all_reduce max), and the median is reported;
  - the bytes each rank handed to NCCL (counted by runtime.context_parallel.cp_traffic) beside
    the plan's prediction (runtime.cp_plan.plan_bytes), and the plan / ring ratio;
  - one GPU: the module's attention (its Triton kernels) over the whole sequence on rank 0, when
    it fits; speedup = one GPU / step;
  - PyTorch's context_parallel (torch.distributed.tensor.experimental) with SDPA: it runs full and
    causal attention only, so it cannot run these patterns; it is timed on plain causal
    attention at the same shapes, as the cost of a ring of whole shards, and labelled so.
Each rank's own computation is the runtime's exact sparse PyTorch walk (the Triton kernels take
positions 0..n-1 only); see docs/context_parallel.md for what that means for these numbers.

Rank 0 writes context-parallel-P<world>.md and .json to benchmarks/results/<gpu>/ (or --out).
NVLink multicast (NVLS) must stay off on the shared boxes: NCCL_NVLS_ENABLE=0 (set here too).
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

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402
from patternc.runtime.context_parallel import cp_traffic  # noqa: E402
from patternc.runtime.cp_plan import exchange_plan, plan_bytes  # noqa: E402

PATTERNS = {
    "longformer": "pattern longformer = local(256) | global(16)",
    "streaming": "pattern streaming = causal & (sink(4) | local(4096))",
}


def timed(fn, reps: int, device) -> float:
    """Median over reps of the slowest rank's milliseconds for fn()."""
    out = []
    for _ in range(reps):
        dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = 1e3 * (time.perf_counter() - t0)
        t = torch.tensor([ms], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out.append(float(t))
    return statistics.median(out)


def _inputs(shape_q, shape_kv, dtype, device, grad: bool):
    q = torch.randn(shape_q, dtype=dtype, device=device)
    k, v = (torch.randn(shape_kv, dtype=dtype, device=device) for _ in range(2))
    return [t.requires_grad_(grad) for t in (q, k, v)]


def run_cp(args, mod, name: str, n: int, layout: str, exchange: str, device) -> dict:
    world, rank = dist.get_world_size(), dist.get_rank()
    row = dict(pattern=name, n=n, layout=layout, exchange=exchange, world=world)
    pos = mod.cp_positions(n, world, rank, layout, device=device)
    B, H, D = 1, args.heads, args.d
    q, k, v = _inputs((B, H, pos.numel(), D), (B, H, pos.numel(), D), args.dtype, device, True)
    do = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            mod.context_parallel_attention(q, k, v, layout=layout, n=n, exchange=exchange)

    def fwd_bwd():
        out = mod.context_parallel_attention(q, k, v, layout=layout, n=n, exchange=exchange)
        torch.autograd.grad(out, (q, k, v), do)

    with cp_traffic() as sent:  # also the warm-up: plan, layout and caches
        fwd_bwd()
    plan = exchange_plan(mod.SPEC, n, world, layout, exchange == "ring")
    elem = q.element_size()
    want = plan_bytes(plan, B, H, H, D, elem, 8 if args.dtype == torch.float64 else 4)
    got = [None] * world
    dist.all_gather_object(got, [sent.forward, sent.backward])
    row["bytes_sent"] = [sum(x) for x in got]
    row["bytes_predicted"] = [w["total"] for w in want]
    row["bytes_match"] = all(g == [w["forward"], w["backward"]] for g, w in zip(got, want))
    row["tokens_per_rank_max"] = max(sum(hi - lo for lo, hi in p) for p in plan.shards)
    row["ms_fwd"] = timed(fwd, args.reps, device)
    row["ms_fwd_bwd"] = timed(fwd_bwd, args.reps, device)
    return row


def run_one_gpu(args, mod, name: str, n: int, device) -> dict:
    """The whole sequence on rank 0 (the others wait); None where it does not fit."""
    row = dict(pattern=name, n=n)
    res = [None]
    if dist.get_rank() == 0:
        try:
            q, k, v = _inputs((1, args.heads, n, args.d), (1, args.heads, n, args.d), args.dtype, device, True)
            do = torch.randn_like(q)
            t = {}
            for what, fn in (("ms_fwd", lambda: mod.attention(q.detach(), k.detach(), v.detach())),
                             ("ms_fwd_bwd", lambda: torch.autograd.grad(mod.attention(q, k, v), (q, k, v), do))):
                fn()
                times = []
                for _ in range(args.reps):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(1e3 * (time.perf_counter() - t0))
                t[what] = statistics.median(times)
            res = [t]
        except torch.OutOfMemoryError as e:
            res = [dict(error=f"does not fit one GPU: {str(e).splitlines()[0][:120]}")]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.broadcast_object_list(res, src=0)
    row.update(res[0])
    return row


def run_torch_cp(args, n: int, device) -> dict:
    """PyTorch's context_parallel (ring attention of SDPA) on causal attention at the same shapes."""
    row = dict(pattern="causal (torch context_parallel; not the same pattern)", n=n)
    if device.type != "cuda":
        row["error"] = "needs CUDA"
        return row
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        mesh = init_device_mesh("cuda", (dist.get_world_size(),))
        q, k, v = _inputs((1, args.heads, n, args.d), (1, args.heads, n, args.d), args.dtype, device, False)
        do = torch.randn_like(q)
        with context_parallel(mesh, buffers=[q, k, v, do], buffer_seq_dims=[2, 2, 2, 2]):  # sharded in place
            qs, ks, vs = (t.detach().requires_grad_() for t in (q, k, v))

            def fwd():
                with torch.no_grad():
                    sdpa(qs, ks, vs, is_causal=True)

            def fwd_bwd():
                torch.autograd.grad(sdpa(qs, ks, vs, is_causal=True), (qs, ks, vs), do)
            fwd_bwd()
            row["ms_fwd"] = timed(fwd, args.reps, device)
            row["ms_fwd_bwd"] = timed(fwd_bwd, args.reps, device)
    except Exception as e:  # noqa: BLE001 - an API missing in this torch, or out of memory: reported
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return row


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# Context parallel: {meta['world']} x {meta['gpu']}", "",
             f"- date: {meta['date']}", f"- torch {meta['torch']}, python {meta['python']}, backend {meta['backend']}",
             f"- command: `{meta['command']}`",
             f"- B = 1, H = {meta['heads']}, D = {meta['d']}, {meta['dtype']}; step times are the median over "
             f"{meta['reps']} repetitions of the slowest rank; each rank's own work is the PyTorch walk", "",
             "| pattern | n | layout | exchange | fwd ms | fwd+bwd ms | one GPU fwd+bwd ms | speedup | bytes sent (all ranks) "
             "| = plan | plan / ring |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    one = {(r["pattern"], r["n"]): r for r in rows if r.get("kind") == "one_gpu"}
    ring = {(r["pattern"], r["n"], r["layout"]): sum(r["bytes_sent"]) for r in rows
            if r.get("kind") == "cp" and r["exchange"] == "ring" and "bytes_sent" in r}
    for r in rows:
        if r.get("kind") != "cp":
            continue
        if "error" in r:
            lines.append(f"| {r['pattern']} | {r['n']} | {r['layout']} | {r['exchange']} | error: {r['error']} |")
            continue
        o = one.get((r["pattern"], r["n"]), {})
        single = f"{o['ms_fwd_bwd']:.1f}" if "ms_fwd_bwd" in o else o.get("error", "-")[:40]
        speed = f"{o['ms_fwd_bwd'] / r['ms_fwd_bwd']:.2f}x" if "ms_fwd_bwd" in o else "-"
        rb = ring.get((r["pattern"], r["n"], r["layout"]))
        ratio = f"{sum(r['bytes_sent']) / rb:.2e}" if rb else "-"
        lines.append(f"| {r['pattern']} | {r['n']} | {r['layout']} | {r['exchange']} | {r['ms_fwd']:.1f} | "
                     f"{r['ms_fwd_bwd']:.1f} | {single} | {speed} | {sum(r['bytes_sent']):,} | "
                     f"{'yes' if r['bytes_match'] else 'NO'} | {ratio} |")
    lines += ["", "| PyTorch context_parallel | n | fwd ms | fwd+bwd ms |", "|---|---|---|---|"]
    for r in rows:
        if r.get("kind") == "torch_cp":
            body = f"{r['ms_fwd']:.1f} | {r['ms_fwd_bwd']:.1f}" if "ms_fwd" in r else f"error: {r.get('error')} | -"
            lines.append(f"| {r['pattern']} | {r['n']} | {body} |")
    return "\n".join(lines) + "\n"


def worker(rank: int, world: int, args, rendezvous: str) -> None:
    cuda = args.device == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    world = dist.get_world_size()
    rows = []
    for name in args.patterns:
        mod = patternc.load(PATTERNS[name], backend="triton")
        for n in args.n:
            for layout in args.layouts:
                for exchange in args.exchanges:
                    try:
                        row = run_cp(args, mod, name, n, layout, exchange, device)
                    except torch.OutOfMemoryError as e:
                        row = dict(pattern=name, n=n, layout=layout, exchange=exchange,
                                   error=f"out of memory: {str(e).splitlines()[0][:100]}")
                    rows.append(dict(row, kind="cp"))
                    if cuda:
                        torch.cuda.empty_cache()
                    if rank == 0:
                        print(json.dumps(rows[-1]), flush=True)
            if not args.no_one_gpu:
                rows.append(dict(run_one_gpu(args, mod, name, n, device), kind="one_gpu"))
                if rank == 0:
                    print(json.dumps(rows[-1]), flush=True)
    if not args.no_torch_cp:
        for n in args.n:
            rows.append(dict(run_torch_cp(args, n, device), kind="torch_cp"))
            if rank == 0:
                print(json.dumps(rows[-1]), flush=True)
    if rank == 0:
        meta = dict(world=world, gpu=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                    torch=torch.__version__, python=platform.python_version(), backend=dist.get_backend(),
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    command=" ".join(["python benchmarks/context_parallel.py"] + sys.argv[1:]), heads=args.heads,
                    d=args.d, dtype=str(args.dtype).replace("torch.", ""), reps=args.reps)
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"context-parallel-P{world}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(markdown(meta, rows))
        print(markdown(meta, rows))
        print(f"wrote {stem}.md and .json")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--n", type=int, nargs="+", default=None, help="lengths (default 1048576 4194304; cpu: 4096)")
    ap.add_argument("--patterns", default="longformer,streaming")
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "balanced"])
    ap.add_argument("--exchanges", nargs="+", default=["plan", "ring"])
    ap.add_argument("--heads", type=int, default=None, help="default 8 (cuda), 2 (cpu)")
    ap.add_argument("--d", type=int, default=None, help="head dim (default 128; cpu: 16)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; cpu: 1)")
    ap.add_argument("--world", type=int, default=2, help="cpu: processes to spawn (cuda: torchrun's)")
    ap.add_argument("--no-one-gpu", action="store_true", help="skip the whole sequence on one GPU")
    ap.add_argument("--no-torch-cp", action="store_true", help="skip PyTorch's context_parallel")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/<gpu>/; cpu: a temp dir)")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    args.patterns = [p for p in args.patterns.split(",") if p]
    args.n = args.n or ([4096] if cpu else [1 << 20, 1 << 22])
    args.heads = args.heads or (2 if cpu else 8)
    args.d = args.d or (16 if cpu else 128)
    args.reps = args.reps or (1 if cpu else 5)
    args.dtype = torch.float32 if cpu else torch.bfloat16
    if cpu:
        args.out = args.out or tempfile.mkdtemp(prefix="patternc-cp-")
        rendezvous = "file://" + os.path.join(tempfile.mkdtemp(prefix="patternc-cp-rdv-"), "rdv")
        mp.start_processes(worker, args=(args.world, args, rendezvous), nprocs=args.world, start_method="spawn")
    else:
        if not torch.cuda.is_available():
            sys.exit("context_parallel.py needs CUDA GPUs (or --device cpu for the smoke run)")
        if "RANK" not in os.environ:
            sys.exit("run it under torchrun: NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 8 benchmarks/context_parallel.py")
        from results_dir import results_dir
        args.out = args.out or results_dir()
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, "env://")


if __name__ == "__main__":
    main()
