"""Learned block selection on the GPU: `causal & (sink(4) | local(512) | select(16, block=64))`.

Setup of issue 24: B = 1, Hq = 16, Hkv = 4, D = 128, bf16, n = 65,536 and 131,072; selections
from the module's `select_blocks` on random indexer inputs (Di = 64, 8 indexer heads, one
selection per GQA group: Hs = Hkv).  Everything below runs in one process, peers included:

- patternc: forward, forward+backward (the Selection's inverse built once, then reused), and
  `select_blocks` alone;
- FlexAttention with `BlockMask.from_kv_blocks` made from the same selection (window, sink and
  selected blocks of 64, a mask_mod for the partial ones): the kernel alone, and build + kernel
  (what a training step pays when the selection changes every step);
- fla's NSA selected-attention kernel (`fla.ops.nsa.parallel.ParallelNSAFunction`), if fla is
  importable (fla-core and einops are pure Python + Triton: carry their wheels to the GPU box),
  against this module's `causal & select(k, block=b)` on the same blocks, forward and
  forward+backward; fla needs a GQA group of 16 or more, so that pair runs at Hkv = Hq // 16;
  otherwise the row says why it is missing;
- cuDNN dense causal attention (SDPA), for useful TFLOP/s: 4 · (pairs the pattern allows with
  this selection) · D · H / time;
- four layers sharing one Selection against per-layer selection: each shared layer's
  attention time against a layer handed precomputed blocks (its inverse already built), and
  the whole stack's indexer + attention time both ways.

Targets (issue 24): forward >= 1.3x Flex's kernel and >= 2x Flex's build + kernel;
forward+backward >= 1.2x Flex's kernel; useful TFLOP/s >= 40% of cuDNN dense; select_blocks
<= 15% of the forward at 131,072; a shared layer within 3% of a precomputed one.

    python benchmarks/selection.py                       # GPU: writes benchmarks/results/<gpu>/selection.{md,json}
    python benchmarks/selection.py --n 65536 --no-fla    # one length, without fla
    python benchmarks/selection.py --device cpu          # smoke test at tiny sizes (no timing claims)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

import patternc  # noqa: E402
from patternc import ir  # noqa: E402
from patternc.counting import count_nnz, count_rect  # noqa: E402

from results_dir import results_dir  # noqa: E402

PATTERN = "pattern nsa(w = 512, k = 16, b = 64) = causal & (sink(4) | local(w) | select(k, block=b))"
TARGETS = dict(fwd_vs_flex_kernel=1.3, fwd_vs_flex_build=2.0, fwd_bwd_vs_flex_kernel=1.2, useful_vs_cudnn=0.4,
               select_share=0.15, shared_layer=1.03)


# ---------------------------------------------------------------- timing

def timer(device: str):
    """ms of fn(): CUDA events around a median of repeats (GPU), or perf_counter (CPU smoke)."""
    def gpu(fn, warmup: int = 3, reps: int = 10) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    def cpu(fn, warmup: int = 1, reps: int = 2) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    return gpu if device == "cuda" else cpu


# ---------------------------------------------------------------- the selection's pairs

def useful_pairs(pattern, n: int, blocks: torch.Tensor, heads: int) -> int:
    """Pairs the pattern allows with this selection, over all heads: the static part's count per
    head plus, for every listed block (once), the pairs it adds (outer pattern, not static)."""
    e = pattern.at(n)
    static = ir.static_part(e)
    adds = ir.inter([ir.outer_part(e), ir.neg(static)])
    k, b, qb = (x.value for x in ir.int_args(ir.selects(e)[0]))
    total = count_nnz(static, n) * heads * blocks.shape[0]
    srt = blocks.to(torch.int64).sort(-1).values
    first = torch.ones_like(srt, dtype=torch.bool)
    first[..., 1:] = srt[..., 1:] != srt[..., :-1]
    z, s, q, slot = torch.nonzero((srt >= 0) & first, as_tuple=True)
    a0, b0 = (q * qb).cpu().numpy(), (srt[z, s, q, slot] * b).cpu().numpy()
    per = count_rect(adds, n, a0, a0 + qb, b0, b0 + b)
    return int(total + per.sum() * (heads // blocks.shape[1]))


# ---------------------------------------------------------------- FlexAttention from the same selection

def flex_from_selection(blocks: torch.Tensor, n: int, heads: int, w: int, sinks: int, blk: int, flex_blk: int):
    """A BlockMask (window, sink block, selected blocks; in blocks of flex_blk, a multiple of the
    selection's blk) made with BlockMask.from_kv_blocks, and a mask_mod for the pairs inside
    them: what a step pays when its selection changes."""
    from torch.nn.attention.flex_attention import BlockMask

    B, Hs, nqb, K = blocks.shape
    nkb = -(-n // blk)
    dev = blocks.device
    q_blk = torch.arange(nqb, device=dev)[:, None]
    k_blk = torch.arange(nkb, device=dev)[None, :]
    static = (k_blk <= q_blk) & ((q_blk - k_blk) * blk <= w + blk) | ((k_blk * blk < sinks) & (k_blk <= q_blk))
    listed = torch.zeros(B, Hs, nqb, nkb + 1, dtype=torch.bool, device=dev)
    listed.scatter_(3, torch.where(blocks >= 0, blocks.long(), nkb), True)
    listed = listed[..., :nkb] & (k_blk <= q_blk)
    use = (listed | static).repeat_interleave(heads // Hs, 1)  # (B, H, nqb, nkb)
    f = flex_blk // blk
    if f > 1:  # coarser blocks: one listed where any of its parts is
        pad = (0, -nkb % f, 0, -nqb % f)
        use = torch.nn.functional.pad(use, pad).view(B, heads, -(-nqb // f), f, -(-nkb // f), f).any(5).any(3)
    counts = use.sum(-1, dtype=torch.int32)
    order = torch.sort((~use).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)  # listed first
    table = listed  # (B, Hs, nqb, nkb): the selected blocks, for the mask_mod
    group = heads // Hs

    def mask_mod(b, h, q_idx, kv_idx):
        causal = kv_idx <= q_idx
        return causal & ((kv_idx < sinks) | (q_idx - kv_idx <= w) | table[b, h // group, q_idx // blk, kv_idx // blk])
    return BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=flex_blk, mask_mod=mask_mod, seq_lengths=(n, n))


# ---------------------------------------------------------------- fla's NSA kernel (optional)

def fla_compare(q, k, v, blocks: torch.Tensor, blk: int, k_sel: int, ms, do) -> dict:
    """fla's NSA selected-attention kernel against this module's `causal & select(k, block=b)` on
    the same blocks: the same set of pairs, so a like-for-like peer.  fla's kernel tiles a GQA
    group of query heads and wants at least 16 of them, so both run at Hkv = Hq // 16 with one
    selection for all heads (head 0's).  fla takes its blocks per query token, (B, T, Hkv, S)."""
    from fla.ops.nsa.parallel import ParallelNSAFunction  # ImportError says it is missing

    B, Hq, n, D = q.shape
    hk = max(1, Hq // 16)
    k1, v1 = k[:, :hk].contiguous(), v[:, :hk].contiguous()
    shared = blocks[:, :1].contiguous()
    per_token = shared.expand(B, hk, -1, -1).repeat_interleave(blk, 2)[:, :, :n]
    idx = per_token.permute(0, 2, 1, 3).contiguous()
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k1, v1))
    scale = D ** -0.5
    only = patternc.load(patternc.parse(f"pattern selected_only = causal & select({k_sel}, block={blk})"),
                         backend="triton")

    def fla():
        return ParallelNSAFunction.apply(qt, kt, vt, idx, k_sel, blk, scale, None)

    def ours():
        return only.attention(q, k1, v1, blocks=shared, scale=scale)
    a, b = ours().float(), fla().transpose(1, 2).float()
    rows_ok = torch.isfinite(b).all(-1) & (b.abs().sum(-1) > 0)  # fla leaves rows with no key undefined
    out = {"fla_kv_heads": hk, "fla_max_abs_diff": (a - b)[rows_ok].abs().max().item(),
           "fla_nsa_ms": ms(fla), "ours_selected_only_ms": ms(ours)}
    qg, kg, vg = (t.detach().requires_grad_() for t in (qt, kt, vt))
    qo, ko, vo = (t.detach().requires_grad_() for t in (q, k1, v1))
    dot = do.transpose(1, 2).contiguous()
    out["fla_nsa_fwd_bwd_ms"] = ms(lambda: torch.autograd.grad(
        ParallelNSAFunction.apply(qg, kg, vg, idx, k_sel, blk, scale, None), (qg, kg, vg), dot))
    out["ours_selected_only_fwd_bwd_ms"] = ms(lambda: torch.autograd.grad(
        only.attention(qo, ko, vo, blocks=shared, scale=scale), (qo, ko, vo), do))
    out["fwd_vs_fla"] = out["fla_nsa_ms"] / out["ours_selected_only_ms"]
    out["fwd_bwd_vs_fla"] = out["fla_nsa_fwd_bwd_ms"] / out["ours_selected_only_fwd_bwd_ms"]
    return out


# ---------------------------------------------------------------- one length

def run_length(args, n: int, ms) -> dict:
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    pattern = patternc.parse(PATTERN, w=args.window, k=args.k, b=args.block)
    mod = patternc.load(pattern, backend="triton")
    B, Hq, Hkv, D, Hi, Di = 1, args.heads, args.kv_heads, args.d, args.index_heads, args.di
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, Hq, n, D, device=dev, dtype=dtype, generator=g)
    k, v = (torch.randn(B, Hkv, n, D, device=dev, dtype=dtype, generator=g) for _ in range(2))
    qi = torch.randn(B, Hi, n, Di, device=dev, dtype=dtype, generator=g)
    ki = torch.randn(B, Hkv, n, Di, device=dev, dtype=dtype, generator=g)
    do = torch.randn_like(q)
    row: dict = dict(n=n, heads=Hq, kv_heads=Hkv, D=D, index_heads=Hi, Di=Di, k=args.k, block=args.block,
                     window=args.window)
    sel = mod.select_blocks(qi, ki)
    row["select_ms"] = ms(lambda: mod.select_blocks(qi, ki))
    pairs = useful_pairs(pattern, n, sel.blocks, Hq)
    row["useful_pairs"] = pairs
    flops = 4 * pairs * D
    row["fwd_ms"] = ms(lambda: mod.attention(q, k, v, blocks=sel))
    row["fwd_mass_ms"] = ms(lambda: mod.attention(q, k, v, blocks=sel, return_block_mass=True))
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    row["fwd_bwd_ms"] = ms(lambda: torch.autograd.grad(mod.attention(qg, kg, vg, blocks=sel), (qg, kg, vg), do))
    row["useful_tflops_fwd"] = flops / row["fwd_ms"] / 1e9
    row["select_share"] = row["select_ms"] / row["fwd_ms"]

    # ---- four layers: one shared Selection against one per layer (fwd+bwd, indexer included)
    layers = [[t.detach().clone().requires_grad_() for t in (q, k, v)] for _ in range(args.layers)]

    def stack(shared: bool):
        s = mod.select_blocks(qi, ki) if shared else None
        outs = []
        for lq, lk, lv in layers:
            outs.append(mod.attention(lq, lk, lv, blocks=s if shared else mod.select_blocks(qi, ki)))
        torch.autograd.grad(sum(o.float().sum() for o in outs), [t for layer in layers for t in layer])
    row["stack_shared_ms"] = ms(lambda: stack(True))
    row["stack_per_layer_ms"] = ms(lambda: stack(False))
    pre = mod.Selection(sel.blocks.clone())
    pre.inverse(-(-n // args.block))  # a precomputed layer: its inverse built beforehand
    lq, lk, lv = layers[0]
    row["layer_precomputed_ms"] = ms(lambda: torch.autograd.grad(mod.attention(lq, lk, lv, blocks=pre), (lq, lk, lv),
                                                                 do))
    row["layer_shared_ms"] = ms(lambda: torch.autograd.grad(mod.attention(lq, lk, lv, blocks=sel), (lq, lk, lv), do))
    row["shared_layer_ratio"] = row["layer_shared_ms"] / row["layer_precomputed_ms"]

    # ---- FlexAttention from the same selection
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False) if dev == "cuda" else flex_attention

        def build():
            return flex_from_selection(sel.blocks, n, Hq, args.window, 4, args.block, row["flex_block"])
        for fb in (args.block, 128):  # the selection's blocks if flex's kernels take them, else 128
            row["flex_block"] = fb
            try:
                bm = build()
                out = flex(q, k, v, block_mask=bm, enable_gqa=True)
                break
            except Exception as e:
                if fb == 128:
                    raise
                row["flex_block_64_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        ref = mod.attention(q, k, v, blocks=sel)
        row["flex_max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
        row["flex_kernel_ms"] = ms(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True))
        row["flex_build_ms"] = ms(build)
        row["flex_build_kernel_ms"] = ms(lambda: flex(q, k, v, enable_gqa=True, block_mask=build()))
        if dev == "cuda":
            row["flex_fwd_bwd_ms"] = ms(lambda: torch.autograd.grad(flex(qg, kg, vg, block_mask=bm, enable_gqa=True),
                                                                    (qg, kg, vg), do))
    except Exception as e:  # report and go on
        row["flex_error"] = f"{type(e).__name__}: {str(e)[:300]}"

    # ---- fla's NSA selected branch
    if args.fla:
        try:
            row.update(fla_compare(q, k, v, sel.blocks, args.block, args.k, ms, do))
        except Exception as e:
            row["fla_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        row["fla_error"] = "skipped (--no-fla)"

    # ---- cuDNN dense causal, for useful TFLOP/s
    if dev == "cuda":
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kq, vq = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                t = ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, kq, vq, is_causal=True))
            row["cudnn_causal_ms"] = t
            row["cudnn_tflops"] = 4 * (n * (n + 1) // 2) * D * Hq * B / t / 1e9
            row["useful_vs_cudnn"] = row["useful_tflops_fwd"] / row["cudnn_tflops"]
        except Exception as e:
            row["cudnn_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    for key, a, b in (("fwd_vs_flex_kernel", "flex_kernel_ms", "fwd_ms"),
                      ("fwd_vs_flex_build", "flex_build_kernel_ms", "fwd_ms"),
                      ("fwd_bwd_vs_flex_kernel", "flex_fwd_bwd_ms", "fwd_bwd_ms")):
        if a in row:
            row[key] = row[a] / row[b]
    return row


def markdown(meta: dict, rows: list) -> str:
    def f(r, key, fmt="{:.3f}"):
        return fmt.format(r[key]) if key in r else "-"

    lines = [f"# Learned block selection: `{PATTERN.split(') = ', 1)[1]}`", "",
             ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| n | select ms | fwd ms | fwd+mass ms | fwd+bwd ms | useful TFLOP/s | cuDNN causal TFLOP/s | "
             "flex kernel ms | flex build+kernel ms | flex fwd+bwd ms | fla NSA ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {f(r, 'select_ms')} | {f(r, 'fwd_ms')} | {f(r, 'fwd_mass_ms')} | "
                     f"{f(r, 'fwd_bwd_ms')} | {f(r, 'useful_tflops_fwd', '{:.0f}')} | {f(r, 'cudnn_tflops', '{:.0f}')} | "
                     f"{f(r, 'flex_kernel_ms')} | {f(r, 'flex_build_kernel_ms')} | {f(r, 'flex_fwd_bwd_ms')} | "
                     f"{f(r, 'fla_nsa_ms') if 'fla_nsa_ms' in r else r.get('fla_error', '-')[:60]} |")
    lines += ["", "| n | target | measured | met |", "|---|---|---|---|"]
    for r in rows if "smoke" not in meta["device"] else ():
        for key, want in TARGETS.items():
            if key not in r and not (key == "shared_layer" and "shared_layer_ratio" in r):
                continue
            got = r.get(key, r.get("shared_layer_ratio"))
            lower_better = key in ("select_share", "shared_layer")
            ok = got <= want if lower_better else got >= want
            lines.append(f"| {r['n']} | {key} {'<=' if lower_better else '>='} {want} | {got:.3f} | "
                         f"{'yes' if ok else 'NO'} |")
    if any("fla_nsa_ms" in r for r in rows):
        lines += ["", "fla's NSA selected kernel against `causal & select(k, block=b)` on the same blocks "
                  "(Hkv = Hq // 16, fla's smallest group):", "",
                  "| n | Hkv | fla fwd ms | ours fwd ms | fla/ours | fla fwd+bwd ms | ours fwd+bwd ms | fla/ours | "
                  "max abs diff |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "fla_nsa_ms" in r:
                lines.append(f"| {r['n']} | {r['fla_kv_heads']} | {f(r, 'fla_nsa_ms')} | {f(r, 'ours_selected_only_ms')} | "
                             f"{f(r, 'fwd_vs_fla', '{:.2f}')} | {f(r, 'fla_nsa_fwd_bwd_ms')} | "
                             f"{f(r, 'ours_selected_only_fwd_bwd_ms')} | {f(r, 'fwd_bwd_vs_fla', '{:.2f}')} | "
                             f"{f(r, 'fla_max_abs_diff', '{:.2g}')} |")
    lines += ["", "| n | stack shared ms | stack per-layer ms | layer shared ms | layer precomputed ms |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {f(r, 'stack_shared_ms')} | {f(r, 'stack_per_layer_ms')} | "
                     f"{f(r, 'layer_shared_ms')} | {f(r, 'layer_precomputed_ms')} |")
    errors = [(r["n"], k, r[k]) for r in rows for k in ("flex_error", "fla_error", "cudnn_error") if k in r]
    if errors:
        lines += ["", "Not measured:"] + [f"- n={n} {k}: {v}" for n, k, v in errors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--n", type=int, nargs="+", default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--index-heads", type=int, default=8)
    ap.add_argument("--di", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-fla", dest="fla", action="store_false")
    ap.add_argument("--out", default=None, help="folder for selection.{md,json} (default: benchmarks/results/<gpu>/; "
                                                "the CPU smoke test writes nothing unless given)")
    args = ap.parse_args(argv)
    smoke = args.device == "cpu"
    if not smoke and not torch.cuda.is_available():
        sys.exit("selection.py needs a CUDA GPU (or --device cpu for the smoke test)")
    # the setup on the GPU; tiny and quick on the CPU (the exact PyTorch path, no timing claims)
    args.n = args.n or ([512] if smoke else [65536, 131072])
    args.heads = args.heads or (4 if smoke else 16)
    args.kv_heads = args.kv_heads or (2 if smoke else 4)
    args.d = args.d or (32 if smoke else 128)
    args.window, args.k, args.block = (64, 2, 64) if smoke else (512, 16, 64)
    if smoke:
        torch.set_num_threads(1)
        args.layers, args.index_heads, args.di = 2, 2, 16
    meta = dict(device=torch.cuda.get_device_name() if not smoke else "cpu (smoke test)", torch=torch.__version__,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command="python benchmarks/selection.py " + " ".join(sys.argv[1:] if argv is None else argv))
    ms = timer(args.device)
    rows = []
    out = args.out or (None if smoke else results_dir())
    for n in args.n:
        rows.append(run_length(args, n, ms))
        print(json.dumps(rows[-1]), flush=True)
        if out:  # after each length: a run cut short keeps what it measured
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "selection.json"), "w") as f:
                json.dump(dict(meta=meta, rows=rows), f, indent=1)
            with open(os.path.join(out, "selection.md"), "w") as f:
                f.write(markdown(meta, rows))
    print(markdown(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
