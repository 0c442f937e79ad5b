"""Packed documents: patternc's document-aware kernels against FlexAttention with a document
mask_mod and torch's varlen FlashAttention, in one run, on one GPU.

    python benchmarks/packed.py                        # 65,536 and 262,144 tokens per step, H = 16, D = 128
    python benchmarks/packed.py --tokens 65536 --patterns causal,streaming
    python benchmarks/packed.py --device cpu           # a tiny smoke run of the same code, no GPU

Each step packs new documents: lengths drawn from a log-normal with median 2,048 (sigma 1,
fixed seed), clipped to [64, 32,768], until the step's tokens are filled (the last document
takes what is left).  Every measurement cycles through the same STEPS steps, so each call sees
new lengths, and reports the time per step (median over repetitions of all steps):

  - ours: attention(q, k, v, cu_seqlens=..., max_seqlen=...), forward and forward + backward;
  - ours on one unpacked sequence of the same total length: the efficiency reference (useful
    TFLOP/s packed within 10% of it is the target; document boundaries are the only extra work);
  - FlexAttention (torch.compile'd flex_attention) with a document mask_mod, timed two ways:
    the kernel alone (BlockMasks built beforehand), and create_block_mask + the kernel per step
    (what a training loop pays).  Its mask_mod reads the step's document ids from a buffer
    updated in place (one compiled kernel for every step; the copy is timed with it);
  - for causal, torch's varlen FlashAttention (torch.nn.attention.varlen.varlen_attn) where
    this torch ships it, on its own (T, H, D) layout.

Useful TFLOP/s = 4 * nnz * D * H / time, nnz summed over the step's documents (2.5x that for
forward + backward).  Tile efficiency: allowed / computed pairs of our forward kernel, per
document (patternc.analyze(doc_lens=...)), and for the unpacked sequence.  Writes
packed[-TAG].md and .json to benchmarks/results/<gpu>/ (results_dir.py); --device cpu prints
only (or writes to --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import patternc  # noqa: E402
from patternc import printer  # noqa: E402
from patternc.algebra import eval_int  # noqa: E402
from patternc.closed_form import closed_form  # noqa: E402
from patternc.counting import count_nnz  # noqa: E402

from patterns import PATTERNS as BENCH_PATTERNS  # noqa: E402

PATTERNS = {"causal": BENCH_PATTERNS["causal"], "streaming": BENCH_PATTERNS["streaming"],
            "longformer": BENCH_PATTERNS["longformer"]}
GPU = dict(tokens=[65536, 262144], heads=16, d=128, median=2048, lo=64, hi=32768, steps=8, dtype=torch.bfloat16)
CPU = dict(tokens=[384], heads=2, d=16, median=48, lo=4, hi=160, steps=2, dtype=torch.float32)  # the smoke run
CPU_NAME = "cpu (smoke run)"
SIGMA = 1.0  # of the log-normal's log: about 2/3 of the documents within a factor e of the median


def document_lengths(tokens: int, median: int, lo: int, hi: int, rng) -> list:
    """One step's document lengths: log-normal, clipped to [lo, hi], until `tokens` are filled (the
    last document takes the rest)."""
    lens = []
    while sum(lens) < tokens:
        m = int(min(hi, max(lo, round(math.exp(rng.normalvariate(math.log(median), SIGMA))))))
        lens.append(min(m, tokens - sum(lens)))
    return lens


def nnz_of(pattern, lengths: list) -> int:
    """Allowed pairs summed over documents (the closed form; exact counts where there is none)."""
    f = closed_form(pattern.expr)
    return sum(eval_int(f, m) if f is not None else count_nnz(pattern.at(m), m) for m in lengths)


def doc_mask_mod(pattern, n: int, doc, start):
    """FlexAttention's document mask_mod: the same document, and the pattern at positions from its
    start (printed from the same IR as the kernels; the benchmark's patterns do not depend on n).
    `doc` and `start` are buffers of every token's document and first row, updated in place."""
    args = printer.ArgTable()
    body = printer.mask_expr(pattern.at(n), "i", "j", args, hash_fn="_random_pick")
    env: dict = {}
    exec(compile("def inner(i, j):\n    return " + body + "\n", "<doc-mask>", "exec"), env)
    inner = env["inner"]

    def mask_mod(b, h, q_idx, kv_idx):
        i = (q_idx - start[q_idx]).to(torch.int64)
        j = (kv_idx - start[kv_idx]).to(torch.int64)
        return (doc[q_idx] == doc[kv_idx]) & inner(i, j)
    return mask_mod


def timer(device: str):
    """A function timing fn() in ms: triton.testing.do_bench's median on CUDA (at least 7 timed
    calls, as bench.py), a median of perf_counter runs on the CPU."""
    if device == "cuda":
        from bench import bench
        return bench

    def cpu(fn, warmup=1, rep=3):
        fn()
        times = []
        for _ in range(rep):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return cpu


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(args, save=lambda rows: None) -> list:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev, cfg = args.device, (GPU if args.device == "cuda" else CPU)
    bench = timer(dev)
    H, D, dtype = args.heads or cfg["heads"], args.d or cfg["d"], cfg["dtype"]
    names = args.patterns.split(",") if args.patterns else list(PATTERNS)
    flex = torch.compile(flex_attention, dynamic=False) if dev == "cuda" else flex_attention
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    rows = []
    for T in args.tokens or cfg["tokens"]:
        rng = __import__("random").Random(args.seed)
        steps = []
        for _ in range(args.steps or cfg["steps"]):
            lens = document_lengths(T, cfg["median"], cfg["lo"], cfg["hi"], rng)
            cu = [0]
            for m in lens:
                cu.append(cu[-1] + m)
            doc = torch.repeat_interleave(torch.arange(len(lens), dtype=torch.int32), torch.tensor(lens))
            start = torch.tensor(cu[:-1], dtype=torch.int32).repeat_interleave(torch.tensor(lens))
            steps.append(dict(lens=lens, cu=torch.tensor(cu, dtype=torch.int32, device=dev), max=max(lens),
                              doc=doc.to(dev), start=start.to(dev)))
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v, do = (torch.randn(1, H, T, D, generator=g).to(dev, dtype) for _ in range(4))
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        doc_buf = torch.zeros(T, dtype=torch.int32, device=dev)
        start_buf = torch.zeros(T, dtype=torch.int32, device=dev)
        S = len(steps)
        for name in names:
            p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
            mod = patternc.load(p, backend="triton")
            nnz = [nnz_of(p, s["lens"]) for s in steps]
            flops = 4 * D * H * sum(nnz) / S  # per step, on average
            row = dict(tokens=T, heads=H, D=D, pattern=name, steps=S,
                       documents=statistics.mean(len(s["lens"]) for s in steps),
                       median_len=statistics.median(m for s in steps for m in s["lens"]),
                       max_len=max(s["max"] for s in steps), nnz_per_step=sum(nnz) / S)
            a = patternc.analyze(p, heads=1, doc_lens=steps[0]["lens"])
            row["tile_efficiency"] = a.kernel_tile_efficiency
            row["tile_efficiency_unpacked"] = patternc.analyze(p, T, heads=1).kernel_tile_efficiency

            # ---- ours, packed
            def ours_fwd():
                for s in steps:
                    mod.attention(q, k, v, cu_seqlens=s["cu"], max_seqlen=s["max"])

            def ours_fwd_bwd():
                for s in steps:
                    o = mod.attention(qg, kg, vg, cu_seqlens=s["cu"], max_seqlen=s["max"])
                    torch.autograd.grad(o, (qg, kg, vg), do)  # as bench.py: no .grad accumulation
            t0 = time.perf_counter()
            out = mod.attention(q, k, v, cu_seqlens=steps[0]["cu"], max_seqlen=steps[0]["max"])
            sync(dev)
            row["first_call_s"] = time.perf_counter() - t0
            row["ms_fwd"] = bench(ours_fwd) / S
            row["ms_fwd_bwd"] = bench(ours_fwd_bwd, warmup=3, rep=10) / S
            row["tflops_fwd"] = flops / row["ms_fwd"] / 1e9
            row["tflops_fwd_bwd"] = 2.5 * flops / row["ms_fwd_bwd"] / 1e9

            # ---- ours, one unpacked sequence of the same total length
            flops_unpacked = 4 * D * H * nnz_of(p, [T])
            row["unpacked_ms_fwd"] = bench(lambda: mod.attention(q, k, v))
            row["unpacked_ms_fwd_bwd"] = bench(lambda: torch.autograd.grad(mod.attention(qg, kg, vg), (qg, kg, vg),
                                                                           do), warmup=3, rep=10)
            row["unpacked_tflops_fwd"] = flops_unpacked / row["unpacked_ms_fwd"] / 1e9
            row["unpacked_tflops_fwd_bwd"] = 2.5 * flops_unpacked / row["unpacked_ms_fwd_bwd"] / 1e9
            row["efficiency_vs_unpacked_fwd"] = row["tflops_fwd"] / row["unpacked_tflops_fwd"]
            row["efficiency_vs_unpacked_fwd_bwd"] = row["tflops_fwd_bwd"] / row["unpacked_tflops_fwd_bwd"]

            # ---- FlexAttention with a document mask_mod
            try:
                mask_mod = doc_mask_mod(p, T, doc_buf, start_buf)

                def load(s):
                    doc_buf.copy_(s["doc"])
                    start_buf.copy_(s["start"])

                def build(s):
                    return create_block_mask(mask_mod, None, None, T, T, device=dev, BLOCK_SIZE=128)
                masks = []
                for s in steps:
                    load(s)
                    masks.append(build(s))
                load(steps[0])
                ref = flex(q, k, v, block_mask=masks[0])
                sync(dev)
                row["max_abs_diff_vs_flex"] = (ref.float() - out.float()).abs().max().item()

                def flex_fwd():
                    for s, bm in zip(steps, masks):
                        load(s)
                        flex(q, k, v, block_mask=bm)

                def flex_build_fwd():
                    for s in steps:
                        load(s)
                        flex(q, k, v, block_mask=build(s))
                row["flex_ms_fwd"] = bench(flex_fwd) / S
                row["flex_build_ms_fwd"] = bench(flex_build_fwd, warmup=2, rep=5) / S
                row["flex_ms_mask"] = row["flex_build_ms_fwd"] - row["flex_ms_fwd"]
                if dev == "cuda":  # FlexAttention has no backward on the CPU
                    def flex_fwd_bwd():
                        for s, bm in zip(steps, masks):
                            load(s)
                            torch.autograd.grad(flex(qg, kg, vg, block_mask=bm), (qg, kg, vg), do)

                    def flex_build_fwd_bwd():
                        for s in steps:
                            load(s)
                            torch.autograd.grad(flex(qg, kg, vg, block_mask=build(s)), (qg, kg, vg), do)
                    row["flex_ms_fwd_bwd"] = bench(flex_fwd_bwd, warmup=3, rep=10) / S
                    row["flex_build_ms_fwd_bwd"] = bench(flex_build_fwd_bwd, warmup=2, rep=5) / S
                    row["speedup_fwd_bwd"] = row["flex_ms_fwd_bwd"] / row["ms_fwd_bwd"]
                    row["speedup_build_fwd_bwd"] = row["flex_build_ms_fwd_bwd"] / row["ms_fwd_bwd"]
                row["speedup_fwd"] = row["flex_ms_fwd"] / row["ms_fwd"]
                row["speedup_build_fwd"] = row["flex_build_ms_fwd"] / row["ms_fwd"]
                row["flex_tflops_fwd"] = flops / row["flex_ms_fwd"] / 1e9
            except Exception as e:  # record and go on
                row["flex_error"] = f"{type(e).__name__}: {str(e)[:300]}"

            # ---- torch's varlen FlashAttention, for causal
            if name == "causal" and varlen_attn is not None and dev == "cuda":
                try:
                    qt, kt, vt, dot = (t[0].transpose(0, 1).contiguous() for t in (q, k, v, do))
                    qtg, ktg, vtg = (t.detach().requires_grad_(True) for t in (qt, kt, vt))

                    def va(a, b, c, s):
                        return varlen_attn(a, b, c, s["cu"], s["cu"], s["max"], s["max"], window_size=(-1, 0))
                    ref = va(qt, kt, vt, steps[0])
                    row["max_abs_diff_vs_varlen"] = (ref.float() - out[0].transpose(0, 1).float()).abs().max().item()
                    row["varlen_ms_fwd"] = bench(lambda: [va(qt, kt, vt, s) for s in steps]) / S
                    row["varlen_ms_fwd_bwd"] = bench(lambda: [torch.autograd.grad(va(qtg, ktg, vtg, s), (qtg, ktg, vtg),
                                                                                  dot) for s in steps],
                                                     warmup=3, rep=10) / S
                    row["varlen_tflops_fwd"] = flops / row["varlen_ms_fwd"] / 1e9
                except Exception as e:
                    row["varlen_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print_row(row)
            save(rows)
            del out
            if dev == "cuda":
                torch.cuda.empty_cache()
    return rows


TARGETS = (("speedup_fwd", 1.3, "fwd vs Flex kernel"), ("speedup_fwd_bwd", 1.3, "fwd+bwd vs Flex kernel"),
           ("speedup_build_fwd", 3.0, "fwd vs Flex mask + kernel"),
           ("speedup_build_fwd_bwd", 3.0, "fwd+bwd vs Flex mask + kernel"),
           ("efficiency_vs_unpacked_fwd", 0.9, "fwd TFLOP/s vs unpacked"),
           ("efficiency_vs_unpacked_fwd_bwd", 0.9, "fwd+bwd TFLOP/s vs unpacked"))


def verdicts(row: dict) -> str:
    out = []
    for key, want, what in TARGETS:
        if key in row:
            out.append(f"{what} {row[key]:.2f}x {'ok' if row[key] >= want else f'MISSED (target {want}x)'}")
    return "; ".join(out)


def print_row(r: dict) -> None:
    f = lambda k, fmt="{:.3f}": fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
    print(f"  T={r['tokens']} {r['pattern']:10s} docs {r['documents']:.0f}  ours {f('ms_fwd')} / {f('ms_fwd_bwd')} ms "
          f"({f('tflops_fwd', '{:.0f}')} TF/s, unpacked {f('unpacked_tflops_fwd', '{:.0f}')})  flex {f('flex_ms_fwd')} / "
          f"{f('flex_ms_fwd_bwd')} ms, +mask {f('flex_build_ms_fwd')}  varlen {f('varlen_ms_fwd')}  "
          f"eff {f('tile_efficiency', '{:.2f}')} (unpacked {f('tile_efficiency_unpacked', '{:.2f}')})"
          + (f"  flex error {r['flex_error'][:80]}" if "flex_error" in r else ""), flush=True)
    print("    " + verdicts(r), flush=True)


def markdown(meta: dict, rows: list) -> str:
    f = lambda r, k, fmt="{:.3f}": fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
    lines = [f"# Packed documents: {meta['gpu']}", "",
             f"- date: {meta['date']}", f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}",
             f"- command: `{meta['command']}`",
             f"- B=1, H={meta['heads']}, D={meta['d']}, {meta['dtype']}; document lengths log-normal (median "
             f"{meta['median']}, sigma {SIGMA}, seed {meta['seed']}) clipped to [{meta['lo']}, {meta['hi']}], new "
             f"lengths every step, {meta['steps']} steps; times per step (medians over repetitions of all steps)",
             f"- Flex: {'torch.compile' + chr(39) + 'd' if meta['gpu'] != CPU_NAME else 'eager'} flex_attention, "
             "document mask_mod; 'kernel' has its BlockMasks built beforehand, '+mask' builds one per step "
             "(create_block_mask)"] + (["- a smoke run on the CPU: it checks the code; its times mean nothing"]
                                       if meta["gpu"] == CPU_NAME else []) + ["",
             "| tokens | pattern | docs/step | ours fwd ms | ours fwd+bwd ms | ours TFLOP/s fwd | unpacked TFLOP/s fwd "
             "| packed/unpacked fwd | packed/unpacked fwd+bwd | flex fwd ms | flex fwd+bwd ms | flex +mask fwd ms "
             "| flex +mask fwd+bwd ms | vs flex fwd | vs flex fwd+bwd | vs flex+mask fwd | vs flex+mask fwd+bwd "
             "| varlen fwd ms | varlen fwd+bwd ms | tile eff (unpacked) |",
             "|" + "---|" * 21]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['pattern']} | {r['documents']:.1f} | {f(r, 'ms_fwd')} | {f(r, 'ms_fwd_bwd')} | "
            f"{f(r, 'tflops_fwd', '{:.0f}')} | {f(r, 'unpacked_tflops_fwd', '{:.0f}')} | "
            f"{f(r, 'efficiency_vs_unpacked_fwd', '{:.2f}')} | {f(r, 'efficiency_vs_unpacked_fwd_bwd', '{:.2f}')} | "
            f"{f(r, 'flex_ms_fwd')} | {f(r, 'flex_ms_fwd_bwd')} | {f(r, 'flex_build_ms_fwd')} | "
            f"{f(r, 'flex_build_ms_fwd_bwd')} | {f(r, 'speedup_fwd', '{:.2f}x')} | {f(r, 'speedup_fwd_bwd', '{:.2f}x')} | "
            f"{f(r, 'speedup_build_fwd', '{:.2f}x')} | {f(r, 'speedup_build_fwd_bwd', '{:.2f}x')} | "
            f"{f(r, 'varlen_ms_fwd')} | {f(r, 'varlen_ms_fwd_bwd')} | "
            f"{f(r, 'tile_efficiency', '{:.2f}')} ({f(r, 'tile_efficiency_unpacked', '{:.2f}')}) |")
    lines += ["", "Targets (issue 22): >= 1.3x Flex's kernel alone, >= 3x Flex's mask build + kernel, useful TFLOP/s "
                  "within 10% of one unpacked sequence of the same total length.", ""]
    lines += [f"- {r['tokens']} {r['pattern']}: {verdicts(r)}" for r in rows]
    errors = [f"- {r['tokens']} {r['pattern']}: {r[k]}" for r in rows for k in ("flex_error", "varlen_error") if k in r]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a tiny smoke run (384 tokens, H = 2, D = 16, float32, forward only for Flex)")
    ap.add_argument("--tokens", type=int, nargs="+", help="tokens per step (default 65536 262144)")
    ap.add_argument("--heads", type=int)
    ap.add_argument("--d", type=int)
    ap.add_argument("--steps", type=int, help="steps, each with new document lengths (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patterns", default="", help=f"comma-separated, of {', '.join(PATTERNS)}")
    ap.add_argument("--out", default=None, help="folder for the results (default: benchmarks/results/<gpu>/)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("packed.py needs a CUDA GPU (or --device cpu for the smoke run)")
    if args.device == "cpu":
        torch.set_num_threads(1)
    cfg = GPU if args.device == "cuda" else CPU
    import triton

    meta = dict(gpu=torch.cuda.get_device_name() if args.device == "cuda" else CPU_NAME,
                torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("PATTERNC_")]
                                 + ["python benchmarks/packed.py"] + sys.argv[1:]),
                heads=args.heads or cfg["heads"], d=args.d or cfg["d"], dtype=str(cfg["dtype"]).replace("torch.", ""),
                median=cfg["median"], lo=cfg["lo"], hi=cfg["hi"], steps=args.steps or cfg["steps"], seed=args.seed)
    out = args.out
    if out is None and args.device == "cuda":
        from results_dir import results_dir
        out = results_dir()
    stem = "packed" + (f"-{args.tag}" if args.tag else "")

    def save(rows):
        if out is None:
            return
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, stem + ".json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(os.path.join(out, stem + ".md"), "w") as f:
            f.write(markdown(meta, rows))

    rows = run(args, save)
    save(rows)
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
