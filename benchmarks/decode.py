"""Benchmark decoding (one step against a KV cache) against FlexAttention and SDPA, in one run.

    python benchmarks/decode.py                                  # every pattern, 32k/128k (+1M if bounded), t = 1, 4
    python benchmarks/decode.py --patterns streaming,causal --contexts 131072 --t 1
    python benchmarks/decode.py --device cpu                     # a smoke run at tiny sizes (no GPU)

Shapes: B = 8, Hq = 32, Hkv = 8, D = 128, bf16 (a per-head pattern runs with its own head count, Hkv =
Hq / 4).  Patterns: every example pattern that is causal, plus Longformer and BigBird (decoded by
the definition: the last t rows of the pattern at length n), plus `causal` itself.  Each step
decodes t new rows per batch row against a cache of n positions (every row at length n).

For each pattern, context and t it times, with triton.testing.do_bench (median):
  - patternc's module: `decode` eagerly (launches included) and replayed from a CUDA graph (the
    GPU's time alone), and `decode` over the KVCache's ring for a bounded pattern;
  - FlexAttention's decode path: `flex_attention` (torch.compile'd) with a one-row-block BlockMask
    at the right offset (query rows n - t .. n - 1 over KV_LEN = n);
  - SDPA over the whole cache (what a model does today), with enable_gqa.
It also reports the bytes of allowed K/V a step reads (the union of the t rows' allowed keys,
per kv head) as GB/s against the GPU's peak, the host time of one eager step (CPU, no graph),
and the KVCache's memory against a full cache.  Results go to benchmarks/results/<gpu>/ as
decode[-TAG].md and .json (results_dir.py).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402
from patternc import ir  # noqa: E402
from patternc.frontend import Stack, parse_program, resolve  # noqa: E402
from patternc.lower import is_causal  # noqa: E402

from results_dir import gpu_slug, results_dir  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# Peak memory bandwidth (GB/s) of the GPUs the project runs on, by results_dir.gpu_slug.
PEAK_GBS = {"h100": 3350, "h100-pcie": 2000, "h100-nvl": 3900, "h200": 4800, "a100": 2039}
MB = 1 << 20


def patterns() -> dict:
    """name -> Pattern: every causal example, Longformer and BigBird, and causal; one per IR hash (a
    file's default pattern, its last, first)."""
    out, seen = {}, set()
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.attn"))):
        with open(path) as f:
            prog = parse_program(f.read(), path)
        for name in reversed(list(prog.definitions)):
            p = resolve(prog, name, {})
            if isinstance(p, Stack) or ir.has_select(p.expr):  # a stack's layers are patterns of the file;
                continue                                         # select(...) has no decode
            if (is_causal(p.expr) or name in ("longformer", "bigbird")) and p.hash not in seen:
                seen.add(p.hash)
                out[name] = p
    out["causal"] = patternc.parse("pattern causal_only = causal")
    return out


class Timer:
    """Median time of a function, in ms: do_bench on CUDA, a perf_counter loop elsewhere."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            import triton

            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[2] * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def host_us(fn, timer: Timer, calls: int = 100) -> float:
    """CPU time of one call, launches queued but not waited for (no graph)."""
    fn()
    timer.sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    timer.sync()
    return elapsed / calls * 1e6


def graph_ms(fn, timer: Timer):
    """Median time of `fn` replayed from a CUDA graph (None off CUDA)."""
    if not timer.cuda:
        return None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timer(graph.replay)


def allowed_keys(mod, n: int, t: int, H: int, group: int, device) -> int:
    """Allowed keys one step reads per batch row: per kv head, the union over its query heads and the
    t new rows (one head's pattern when every head shares it)."""
    rows = torch.arange(n - t, n, device=device)[:, None]
    keys = torch.arange(n, device=device)[None, :]
    heads = H if mod.NUM_HEADS else 1
    m = mod.mask_rows(rows, keys, n, heads).to(device)  # (heads, t, n)
    if heads == 1:
        return int(m.any(1).sum()) * (H // group)
    return int(m.view(H // group, group, t, n).any(2).any(1).sum())


def flex_step(p, n: int, t: int, device: str):
    """FlexAttention's decode for this pattern: a BlockMask of the t new rows at offset n - t."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    inner = patternc.load(p, backend="flex").make_mask_mod(n)

    def mask_mod(b, h, q_idx, kv_idx):
        return inner(b, h, q_idx + (n - t), kv_idx)

    block_mask = create_block_mask(mask_mod, None, p.num_heads, t, n, device=device, BLOCK_SIZE=128)
    fn = torch.compile(flex_attention, dynamic=False) if device == "cuda" else flex_attention
    return lambda q, k, v: fn(q, k, v, block_mask=block_mask, enable_gqa=True)


def kv_caches(caches: dict, HK: int, n: int, args) -> tuple:
    """(k, v) caches of n positions, kept while the context lasts (one at a time: 17 GB each at 1M)."""
    if (HK, n) not in caches:
        caches.clear()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        g = torch.Generator(device=args.device).manual_seed(0)  # on the device: 17 GB on the host is slow
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        caches[HK, n] = tuple(torch.randn(args.b, HK, n, args.d, generator=g, device=args.device, dtype=dtype)
                              for _ in range(2))
    return caches[HK, n]


def run_one(name: str, p, n: int, t: int, args, timer: Timer, caches: dict) -> dict:
    dev = args.device
    H = p.num_heads or args.hq
    HK = H // 4 if p.num_heads else args.hkv
    B, D = args.b, args.d
    k, v = kv_caches(caches, HK, n, args)
    dtype = k.dtype
    q = torch.randn(B, H, t, D, device=dev, dtype=dtype)
    seq = torch.full((B,), n, dtype=torch.int32, device=dev)
    mod = patternc.load(p, backend="triton")
    row = dict(pattern=name, n=n, t=t, B=B, Hq=H, Hkv=HK, D=D)
    t0 = time.perf_counter()
    out = mod.decode(q, k, v, seq)
    timer.sync()
    row["first_call_s"] = time.perf_counter() - t0
    step = lambda: mod.decode(q, k, v, seq)  # noqa: E731
    row["ms"] = timer(step)
    row["ms_graph"] = graph_ms(step, timer)
    row["host_us"] = host_us(step, timer)
    keys = allowed_keys(mod, n, t, H, H // HK, dev)
    row["allowed_kv_bytes"] = 2 * B * keys * D * k.element_size()  # K and V of every allowed key
    best = row["ms_graph"] or row["ms"]
    row["gbs"] = row["allowed_kv_bytes"] / best / 1e6
    peak = PEAK_GBS.get(gpu_slug(torch.cuda.get_device_name())) if dev == "cuda" else None
    row["peak_gbs"] = peak
    row["pct_peak"] = None if peak is None else 100 * row["gbs"] / peak
    layout = mod.SPEC.cache_layout
    row["full_cache_mb"] = 2 * B * HK * n * D * k.element_size() / MB
    if layout is not None:  # the KVCache's ring: what a bounded pattern keeps
        cache = mod.KVCache(B, HK, D, dtype=dtype, device=dev)
        if t > 1:
            cache.attend(q, *(torch.zeros(B, HK, t, D, device=dev, dtype=dtype),) * 2)  # room for t tokens
        row["kv_cache_mb"] = cache.memory_bytes() / MB
        kr = torch.randn(cache.k.shape, device=dev, dtype=dtype)
        ring = cache.ring
        ring_step = lambda: mod._bound.cache_decode(q, kr, kr, seq, None, None, ring)  # noqa: E731
        row["ring_ms"] = graph_ms(ring_step, timer) or timer(ring_step)
    if not args.no_flex:
        try:
            t0 = time.perf_counter()
            flex = flex_step(p, n, t, dev)
            ref = flex(q, k, v)
            timer.sync()
            row["flex_first_call_s"] = time.perf_counter() - t0
            row["flex_ms"] = timer(lambda: flex(q, k, v))
            row["max_abs_diff_vs_flex"] = (ref.float() - out.float()).abs().max().item()
            row["vs_flex"] = row["flex_ms"] / row["ms"]
        except Exception as e:  # record and go on
            row["flex_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def sdpa_row(n: int, t: int, args, timer: Timer, caches: dict) -> dict:
    """SDPA over the whole cache: every key, whatever the pattern."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        k, v = kv_caches(caches, args.hkv, n, args)
        q = torch.randn(args.b, args.hq, t, args.d, device=args.device, dtype=k.dtype)
        return dict(pattern="sdpa (whole cache)", n=n, t=t, ms=timer(lambda: sdpa(q, k, v, enable_gqa=True)),
                    allowed_kv_bytes=2 * k.numel() * k.element_size())
    except Exception as e:  # e.g. out of memory at 1M
        return dict(pattern="sdpa (whole cache)", n=n, t=t, error=f"{type(e).__name__}: {str(e)[:200]}")


def fmt(r: dict, key: str, spec: str = "{:.3f}") -> str:
    v = r.get(key)
    return "-" if v is None else spec.format(v)


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# Decode benchmark: {meta['gpu']}", "",
             f"- date: {meta['date']}", f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}",
             f"- command: `{meta['command']}`",
             f"- shape: B={meta['B']}, Hq={meta['Hq']}, Hkv={meta['Hkv']}, D={meta['D']}, {meta['dtype']}; every row of "
             "the batch at length n; medians of triton.testing.do_bench",
             "- ms: eager decode (launches included); graph: replayed from a CUDA graph; ring: over the KVCache's "
             "ring (bounded patterns); host: CPU time of one eager step; GB/s: allowed K/V bytes / graph time",
             "", "| pattern | n | t | ms | graph ms | ring ms | host us | flex ms | vs flex | sdpa ms | vs sdpa | "
             "allowed K/V MB | GB/s | % peak | KVCache MB | full cache MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sdpa = {(r["n"], r["t"]): r for r in rows if r["pattern"].startswith("sdpa")}
    for r in rows:
        if r["pattern"].startswith("sdpa") or "error" in r:
            continue
        s = sdpa.get((r["n"], r["t"]), {})
        vs_sdpa = f"{s['ms'] / r['ms']:.2f}x" if "ms" in s and r.get("ms") else "-"
        lines.append(f"| {r['pattern']} | {r['n']} | {r['t']} | {fmt(r, 'ms')} | {fmt(r, 'ms_graph')} | "
                     f"{fmt(r, 'ring_ms')} | {fmt(r, 'host_us', '{:.0f}')} | {fmt(r, 'flex_ms')} | "
                     f"{fmt(r, 'vs_flex', '{:.2f}x')} | {fmt(s, 'ms')} | {vs_sdpa} | "
                     f"{r['allowed_kv_bytes'] / MB:.1f} | {fmt(r, 'gbs', '{:.0f}')} | {fmt(r, 'pct_peak', '{:.0f}%')} | "
                     f"{fmt(r, 'kv_cache_mb', '{:.1f}')} | {fmt(r, 'full_cache_mb', '{:.1f}')} |")
    errors = [r for r in rows if "error" in r or "flex_error" in r]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['pattern']} n={r['n']} t={r['t']}: "
                                        f"{r.get('error') or r.get('flex_error')}" for r in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a smoke run at tiny sizes (B=1, Hq=4, Hkv=2, D=16, n=256 and 1024)")
    ap.add_argument("--patterns", default="", help="comma-separated names (default: all)")
    ap.add_argument("--contexts", type=int, nargs="+", default=None, help="default 32k, 128k")
    ap.add_argument("--long", type=int, default=1 << 20,
                    help="the context only bounded patterns run at, after the others (0: none)")
    ap.add_argument("--t", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--out", default=None, help="folder for the results (default: benchmarks/results/<gpu>/; "
                                                "none in the cpu smoke run)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("decode.py needs a CUDA GPU (or --device cpu for a smoke run)")
    cpu = args.device == "cpu"
    if cpu:
        torch.set_num_threads(1)
    args.b, args.hq, args.hkv, args.d = (1, 4, 2, 16) if cpu else (8, 32, 8, 128)
    contexts = args.contexts or ([256, 1024] if cpu else [32768, 131072])
    long = None if cpu or not args.long else args.long
    table = patterns()
    names = args.patterns.split(",") if args.patterns else list(table)
    timer = Timer(args.device)
    import triton

    meta = dict(gpu=torch.cuda.get_device_name() if not cpu else "cpu (smoke run)", torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(["python benchmarks/decode.py"] + sys.argv[1:]), B=args.b, Hq=args.hq, Hkv=args.hkv,
                D=args.d, dtype="float32" if cpu else "bfloat16")
    out_dir = args.out or (None if cpu else results_dir())
    stem = "decode" + (f"-{args.tag}" if args.tag else "")
    rows: list = []

    def save():
        if out_dir is None:
            return
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, stem + ".json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(os.path.join(out_dir, stem + ".md"), "w") as f:
            f.write(markdown(meta, rows))

    caches: dict = {}
    for n in contexts + ([long] if long else []):
        for t in args.t:
            for name in names:
                p = table[name]
                if n == long and patternc.load(p, backend="reference").SPEC.cache_layout is None:
                    continue  # unbounded: 1M is for bounded patterns
                try:
                    row = run_one(name, p, n, t, args, timer, caches)
                except Exception as e:  # one failure must not lose the run
                    row = dict(pattern=name, n=n, t=t, error=f"{type(e).__name__}: {str(e)[:300]}")
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if not isinstance(v, float)} |
                                 {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}), flush=True)
                save()
            if n != long:  # last: a dense kernel at full power slows what runs next (decisions.md: bench-ceilings-last)
                rows.append(sdpa_row(n, t, args, timer, caches))
                save()
    caches.clear()
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
