"""Context parallel runs for the tests: one gloo process group per world size runs every case.

Starting processes costs far more than the cases (each imports torch), so test_context_parallel
spawns the ranks once per world size; each rank runs every case of CASES against the
single-process result it computes itself, and writes what it measured to a JSON file.
"""
from __future__ import annotations

import json
import os
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import patternc
from patternc.api import analyze_cp
from patternc.runtime.context_parallel import cp_traffic, ulysses_to_heads, ulysses_to_sequence
from patternc.runtime.cp_plan import exchange_plan, plan_bytes

# The patterns of the issue, small enough for CI (windows, global rows and columns, strides,
# prefixes, sinks), plus a per-head pattern.
PATTERNS = {
    "local": "pattern p = local(13)",
    "longformer": "pattern p = local(9) | global(5)",
    "strided": "pattern p = causal & (local(7) | stride(8))",
    "causal": "pattern p = causal",
    "prefix_lm": "pattern p = causal | (queries(0, 37) & keys(0, 37))",
    "sink_local": "pattern p = causal & (sink(4) | local(20))",
    "per_head": "pattern p = heads { 0..1: local(11), 2..3: causal & local(30) | global(3) }",
}
LENGTHS = {2: 203, 4: 301}  # ragged: neither divides by the world size nor by a tile


def cases(world: int) -> list:
    """(name, pattern, layout, exchange, backend, H, HK, B, pass n, n) of every run at this world size."""
    n = LENGTHS[world]
    out = []
    for name in PATTERNS:
        H = 4 if name == "per_head" else 2
        for layout in ("contiguous", "balanced"):
            out.append((name, name, layout, "plan", "reference", H, H if name != "longformer" else 1, 1, True, n))
    out.append(("ring_longformer", "longformer", "contiguous", "ring", "reference", 2, 2, 2, True, n))
    out.append(("plan_longformer", "longformer", "contiguous", "plan", "reference", 2, 2, 2, True, n))
    out.append(("ring_causal_balanced", "causal", "balanced", "ring", "reference", 2, 1, 1, True, n))
    out.append(("n_default", "sink_local", "balanced", "plan", "reference", 2, 2, 1, False, n))
    # three tokens: with 4 ranks one holds none
    out.append(("tiny_plan", "longformer", "contiguous", "plan", "reference", 2, 2, 1, False, 3))
    out.append(("tiny_ring", "causal", "balanced", "ring", "reference", 2, 2, 1, True, 3))
    if world == 2:  # the other backends bind the same runtime: one run each
        out.append(("triton_module", "longformer", "balanced", "plan", "triton", 2, 2, 1, True, n))
        out.append(("flex_module", "strided", "contiguous", "plan", "flex", 2, 2, 1, True, n))
    return out


def _inputs(n: int, H: int, HK: int, B: int, D: int = 8, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, HK, n, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v, torch.randn(B, H, n, D, generator=g, dtype=torch.float64)


def _reference(mod, q, k, v, do) -> tuple:
    """The single-process result: (out, dq, dk, dv)."""
    qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
    out = mod.attention(qf, kf, vf)
    out.backward(do)
    return out.detach(), qf.grad, kf.grad, vf.grad


def _err(a, b) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def run_case(case: tuple, rank: int, world: int, group=None) -> dict:
    name, pat, layout, exchange, backend, H, HK, B, pass_n, n = case
    mod = patternc.load(PATTERNS[pat], backend=backend)
    ref_mod = patternc.load(PATTERNS[pat], backend="reference")
    q, k, v, do = _inputs(n, H, HK, B)
    ref = _reference(ref_mod, q, k, v, do)
    pos = mod.cp_positions(n, world, rank, layout)
    qs, ks, vs = (t[:, :, pos].clone().requires_grad_() for t in (q, k, v))
    with cp_traffic() as sent:
        out = mod.context_parallel_attention(qs, ks, vs, group=group, layout=layout, n=n if pass_n else None,
                                             exchange=exchange)
        out.backward(do[:, :, pos])
    plan = exchange_plan(mod.SPEC, n, world, layout, exchange == "ring")
    want = plan_bytes(plan, B, H, HK, q.shape[-1], 8, 8)[rank]
    report = analyze_cp(PATTERNS[pat], n, world, layout, heads=H, kv_heads=HK, head_dim=q.shape[-1], batch=B,
                        dtype="float64").ranks[rank]  # what `patternc analyze --cp` prints
    got = (out.detach(), qs.grad, ks.grad, vs.grad)
    return {"errors": [_err(a, b[:, :, pos]) for a, b in zip(got, ref)], "n": n,
            "positions": pos.tolist(), "sent": [sent.forward, sent.backward],
            "predicted": [want["forward"], want["backward"]],
            "analyzed": report.ring_bytes_total if exchange == "ring" else report.bytes_total}


def run_ulysses(rank: int, world: int) -> dict:
    """A 2 x 2 mesh: heads split over pairs of ranks (Ulysses), context parallel over the other
    pairs, with the pattern unchanged; against the single-process result."""
    cp_size, u_size = 2, 2
    c, u = divmod(rank, u_size)
    u_groups = [dist.new_group([cc * u_size + uu for uu in range(u_size)]) for cc in range(cp_size)]
    cp_groups = [dist.new_group([cc * u_size + uu for cc in range(cp_size)]) for uu in range(u_size)]
    n, H = LENGTHS[world], 4
    mod = patternc.load(PATTERNS["longformer"], backend="reference")
    q, k, v, do = _inputs(n, H, H, 1)
    ref = _reference(mod, q, k, v, do)
    shard = mod.cp_positions(n, cp_size, c, "balanced")  # the sequence group's rows ...
    cut = [len(x) for x in torch.tensor_split(shard, u_size)]  # ... split over the head group
    mine = torch.tensor_split(shard, u_size)[u]
    qs, ks, vs = (t[:, :, mine].clone().requires_grad_() for t in (q, k, v))
    heads = [ulysses_to_heads(t, cut, u_groups[c]) for t in (qs, ks, vs)]  # (1, H/2, len(shard), D)
    o = mod.context_parallel_attention(*heads, group=cp_groups[u], layout="balanced", n=n)
    out = ulysses_to_sequence(o, cut, u_groups[c])
    out.backward(do[:, :, mine])
    got = (out.detach(), qs.grad, ks.grad, vs.grad)
    return {"errors": [_err(a, b[:, :, mine]) for a, b in zip(got, ref)], "head_shape": list(heads[0].shape)}


def worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    results = {}
    for case in cases(world):
        t0 = time.perf_counter()
        try:
            results[case[0]] = run_case(case, rank, world)
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            results[case[0]] = {"error": traceback.format_exc()}
        results[case[0]]["seconds"] = time.perf_counter() - t0
    if world == 4:
        try:
            results["ulysses"] = run_ulysses(rank, world)
        except Exception:  # noqa: BLE001
            results["ulysses"] = {"error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def run_all(world: int, out_dir: str, timeout: float = 600) -> list:
    """Spawn `world` ranks, run every case, and return each rank's results (a dict per rank)."""
    ctx = mp.start_processes(worker, args=(world, os.path.join(out_dir, "rendezvous"), out_dir), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"context parallel ranks ({world}) still running after {timeout} s")
    out = []
    for r in range(world):
        with open(os.path.join(out_dir, f"rank{r}.json")) as f:
            out.append(json.load(f))
    return out
