"""A/B two builds of patternc's kernels on one GPU, in one process: a regression check for changes
that must not change speed (a refactor, a new code generator).

The "before" build is a folder of generated modules, one per benchmark pattern, written with the
older checkout of patternc (`--emit`); the "after" build is this checkout's.  Both run in the same
process on the same inputs, alternately, so clocks and thermals treat them alike:

    PYTHONPATH=/path/to/old/checkout python benchmarks/ab.py --emit before/   # on any machine
    python benchmarks/ab.py --before before/ --n 16384 65536 --d 128          # on the GPU

For each pattern and size it reports do_bench medians of the forward and of forward + backward for
both builds (each timed twice, in the order A B B A, taking the lower median of each), their ratio,
and the first call (compile and run, forward + backward, a fresh Triton cache, a process of its own)
at the first size.  Writes markdown and JSON (--out).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from patterns import PATTERNS  # noqa: E402


def emit(folder: str) -> None:
    """Write one generated module per benchmark pattern with whichever patternc is importable."""
    import patternc

    os.makedirs(folder, exist_ok=True)
    for name, src in PATTERNS.items():
        text = patternc.compile(patternc.parse(f"pattern p_{name} = {src}"), "triton")
        with open(os.path.join(folder, f"ab_{name}.py"), "w") as f:
            f.write(text)
    print(f"{len(PATTERNS)} modules written to {folder} by patternc {patternc.__version__}")


def load_file(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


FIRST_CALL = """
import sys, time, torch, importlib.util
spec = importlib.util.spec_from_file_location("m", sys.argv[1]); m = importlib.util.module_from_spec(spec)
sys.modules["m"] = m; spec.loader.exec_module(m)
n, D = int(sys.argv[2]), int(sys.argv[3])
q, k, v = (torch.randn(1, 16, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
torch.cuda.synchronize(); t = time.perf_counter()
m.attention(q, k, v).sum().backward(); torch.cuda.synchronize()
print(time.perf_counter() - t)
"""


def first_call(path: str, n: int, D: int) -> float:
    """Seconds of the first forward + backward of a module in a fresh process with a fresh Triton cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        r = subprocess.run([sys.executable, "-c", FIRST_CALL, path, str(n), str(D)], capture_output=True, text=True,
                           env=env, timeout=300)
    if r.returncode:
        raise RuntimeError(r.stderr[-500:])
    return float(r.stdout.strip().splitlines()[-1])


def write(args, meta: dict, rows: list) -> str:
    """ab-<tag>.md and .json in args.out; called after every row, so a run cut short keeps its rows."""
    lines = [f"# A/B: before against after, {meta['gpu']}, B = 1, H = {args.heads}, D = {args.d}, bf16", "",
             f"command: `{meta['command']}`  ", f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}", "",
             "| pattern | n | fwd before (ms) | fwd after | ratio | fwd+bwd before | fwd+bwd after | ratio | "
             "first call before (s) | after | max diff |", "|" + "---|" * 11]
    for r in rows:
        first = (f"{r['before_first_s']:.2f} | {r['after_first_s']:.2f}" if "after_first_s" in r else "- | -")
        lines.append(f"| {r['pattern']} | {r['n']} | {r['before_fwd_ms']:.3f} | {r['after_fwd_ms']:.3f} | "
                     f"{r['fwd_ratio']:.3f} | {r['before_fwd_bwd_ms']:.3f} | {r['after_fwd_bwd_ms']:.3f} | "
                     f"{r['fwd_bwd_ratio']:.3f} | {first} | {r['max_diff']:.2g} |")
    lines += ["", "ratio: after / before (under 1: faster).  Times: the lower of two do_bench medians per build, "
              "timed A B B A.  max diff: the forward outputs' largest difference (bf16)."]
    os.makedirs(args.out, exist_ok=True)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, f"{args.tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, f"{args.tag}.json"), "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emit", metavar="FOLDER", help="write this checkout's modules into FOLDER and stop")
    ap.add_argument("--before", metavar="FOLDER", help="the other build's modules (from --emit)")
    ap.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--patterns", help="comma-separated subset of benchmarks/patterns.py")
    ap.add_argument("--no-first-call", action="store_true")
    ap.add_argument("--out", default=".", help="folder for ab-<tag>.md and .json")
    ap.add_argument("--tag", default="ab")
    args = ap.parse_args()
    if args.emit:
        return emit(args.emit)
    if not args.before:
        ap.error("give --before FOLDER (or --emit FOLDER)")
    import torch

    import triton

    from bench import bench

    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), command="python benchmarks/ab.py " + " ".join(sys.argv[1:]))

    after_dir = tempfile.mkdtemp(prefix="patternc-ab-")
    emit(after_dir)
    names = args.patterns.split(",") if args.patterns else list(PATTERNS)
    rows = []
    for n in args.n:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, args.heads, n, args.d, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
        do = torch.randn_like(q)
        for name in names:
            mods = {"before": load_file(os.path.join(args.before, f"ab_{name}.py"), f"ab_before_{name}"),
                    "after": load_file(os.path.join(after_dir, f"ab_{name}.py"), f"ab_after_{name}")}
            row = {"pattern": name, "n": n, "D": args.d}
            for which, mod in mods.items():  # compile and check that both agree before timing
                out = mod.attention(q, k, v)
                row[f"_{which}"] = out.float()
            row["max_diff"] = float((row.pop("_before") - row.pop("_after")).abs().max())
            for kind in ("fwd", "fwd_bwd"):
                for which in ("before", "after", "after", "before"):
                    mod = mods[which]
                    if kind == "fwd":
                        def fn(mod=mod):
                            return mod.attention(q, k, v)
                    else:
                        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))

                        def fn(mod=mod, qq=qq, kk=kk, vv=vv):
                            mod.attention(qq, kk, vv).backward(do)
                    with torch.no_grad() if kind == "fwd" else torch.enable_grad():
                        ms = bench(fn)
                    key = f"{which}_{kind}_ms"
                    row[key] = min(row.get(key, float("inf")), ms)
                row[f"{kind}_ratio"] = row[f"after_{kind}_ms"] / row[f"before_{kind}_ms"]
            if n == args.n[0] and not args.no_first_call:
                for which, folder in (("before", args.before), ("after", after_dir)):
                    row[f"{which}_first_s"] = first_call(os.path.join(folder, f"ab_{name}.py"), n, args.d)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, meta, rows)
    print(write(args, meta, rows))


if __name__ == "__main__":
    main()
