"""The PyTorch path on a CPU: the sparse walk against the dense chunked path modules ran before.

A triton-backend module without a GPU (and without TRITON_INTERPRET) runs the exact sparse walk
of patternc.runtime.walk.  Before, it compared every query chunk with all n keys (the "dense
chunked" path, reproduced below as the baseline): O(n^2) whatever the pattern.  This times both
in the same run, forward and forward + backward, fp32, and writes a markdown table.

    python benchmarks/cpu_path.py                                  # Longformer, n = 4k, 16k, 64k
    python benchmarks/cpu_path.py --pattern examples/streaming.attn --n 4096 16384 --dense-max 16384

The dense baseline is skipped above --dense-max (its time grows as n^2: an hour at 64k).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ["TRITON_INTERPRET"] = "0"  # the PyTorch path, as on a machine without a GPU

import torch  # noqa: E402

import patternc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def dense_chunked(mod, q, k, v, scale: float):
    """The path modules ran before the walk: query rows in chunks, each against all n keys, masked by
    the pattern's formula (its memory is O(chunk * n); its time O(n^2))."""
    B, H, n, D = q.shape
    group = H // k.shape[1]
    kx, vx = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    j = torch.arange(n)[None, :]
    chunk = max(1, min(n, (1 << 22) // n))
    outs = []
    for start in range(0, n, chunk):
        i = torch.arange(start, min(n, start + chunk))[:, None]
        keep = mod.mask_rows(i, j, n, H)
        s = torch.einsum("bhid,bhjd->bhij", q[:, :, start:start + chunk], kx) * scale
        s = s.masked_fill(~keep[None], float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
        outs.append(torch.einsum("bhij,bhjd->bhid", p, vx))
    return torch.cat(outs, 2)


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` runs (after one warm-up run when repeat > 1)."""
    if repeat > 1:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(mod, n: int, H: int, D: int, dense: bool, repeat: int) -> dict:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, H, n, D, generator=g, requires_grad=True) for _ in range(3))
    scale = D ** -0.5
    row = {"n": n}

    def sparse_fwd():
        with torch.no_grad():
            return mod.attention(q, k, v)

    def sparse_fwd_bwd():
        mod.attention(q, k, v).sum().backward()

    row["walk fwd"] = timed(sparse_fwd, repeat)
    row["walk fwd+bwd"] = timed(sparse_fwd_bwd, repeat)
    if dense:
        def dense_fwd():
            with torch.no_grad():
                return dense_chunked(mod, q, k, v, scale)

        def dense_fwd_bwd():
            dense_chunked(mod, q, k, v, scale).sum().backward()
        row["dense fwd"] = timed(dense_fwd, 1)
        row["dense fwd+bwd"] = timed(dense_fwd_bwd, 1)
        with torch.no_grad():  # the same function: the walk is exact
            row["max |walk - dense|"] = float((mod.attention(q, k, v) - dense_chunked(mod, q, k, v, scale)).abs().max())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pattern", default=os.path.join(HERE, "..", "examples", "longformer.attn"))
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dense-max", type=int, default=16384, help="largest n at which the dense path runs too")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the walk per size (median)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mod = patternc.load(patternc.parse(args.pattern), backend="triton")
    cols = ["n", "walk fwd", "walk fwd+bwd", "dense fwd", "dense fwd+bwd", "speedup fwd+bwd", "walk us/token",
            "max |walk - dense|"]
    lines = [f"# PyTorch path on a CPU: {mod.PATTERN_NAME}, B = 1, H = {args.heads}, D = {args.d}, fp32",
             "",
             f"command: `python benchmarks/cpu_path.py {' '.join(os.sys.argv[1:])}`  ",
             f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
             f"torch {torch.__version__}, patternc {patternc.__version__}, {time.strftime('%Y-%m-%d')}",
             "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    print("\n".join(lines), flush=True)
    for n in args.n:
        row = run(mod, n, args.heads, args.d, n <= args.dense_max, args.repeat)
        if "dense fwd+bwd" in row:
            row["speedup fwd+bwd"] = row["dense fwd+bwd"] / row["walk fwd+bwd"]
        row["walk us/token"] = row["walk fwd+bwd"] / n * 1e6
        cells = []
        for c in cols:
            x = row.get(c)
            cells.append("-" if x is None else f"{x:.3g}" if isinstance(x, float) and c.startswith("max") else
                         f"{x:.2f}" if isinstance(x, float) else str(x))
        line = "| " + " | ".join(cells) + " |"
        lines.append(line)
        print(line, flush=True)
    lines += ["", "Times in seconds (walk: median of --repeat runs; dense: one run).  speedup: dense / walk.",
              "walk us/token: forward + backward per token; flat for a pattern whose cost is linear in n."]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
