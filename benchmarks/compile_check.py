"""Compile a pattern's generated kernels for a GPU target on a machine without a GPU.

Triton ships ptxas, so kernels can be compiled for sm_90 (H100/H200) anywhere.  The module runs
once on CPU tensors with the GPU's tile settings; each launch is intercepted, its
arguments turned into a Triton signature, and the kernel compiled for the target instead of run.
This catches kernels that the interpreter accepts but the GPU compiler rejects (before spending
device time), measures compile time (most of a pattern's first call) and reports each kernel's
shared memory (an H100/H200 SM has 228 KiB: two programs per SM need <= ~113 KiB each).
With --regs, ptxas (shipped with Triton) also reports each kernel's registers per thread and
the bytes it spills to local memory (255 registers and a spill: the tile is too big for its
warps).

    python benchmarks/compile_check.py examples/bigbird.attn            # sm_90, bf16, D = 128
    python benchmarks/compile_check.py --all --arch 90 --d 64
    PATTERNC_CONFIG=DKV_BM=32 python benchmarks/compile_check.py --regs examples/sliding_window.attn
    COMPILE_CHECK_PTX_DIR=/some/dir python benchmarks/compile_check.py ...    # also write each kernel's PTX
    python benchmarks/compile_check.py --launchers examples/longformer.attn  # launcher sources guessed right?
    python benchmarks/compile_check.py --packed --all                        # the document-aware kernels too

Decode kernels (one per pass) and their combine kernel are compiled too: t = 1 new token over a
plain cache, t = 4 over a paged one and (for a bounded pattern) over the KVCache's ring, 32 query
heads on 8 kv heads (--no-decode skips them).

With --launchers, each kernel's CUDA launcher source (the C file Triton builds at a kernel's first
launch) is made twice: from the compiled kernel's metadata, and from what the module guesses
before compiling (`runtime.launch.launcher_guess`, used on first calls to build launchers while
the kernels compile).  A mismatch means the prebuilt launcher would miss Triton's cache.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be JIT functions, not interpreted ones

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

import patternc  # noqa: E402
from patternc.runtime import Selection, config, launch, tma  # noqa: E402
from patternc.runtime.select_index import INDEX_KEYS, block_means  # noqa: E402
from patternc.runtime.varlen import PACKED, PADDED, Seqs  # noqa: E402

_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
          torch.int64: "i64"}


def gpu_settings(mod, D: int, dtype, n: int, arch: int) -> dict:
    """The settings the module's runtime picks on a CUDA GPU of this compute capability."""
    tma._HOPPER[0] = arch >= 90
    return mod._bound.triton.tiles(D, dtype, torch.device("cuda", 0), n)


def _sig(value) -> tuple:
    """(Triton type, divisibility-16 hint) of one launch argument."""
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype], True
    if isinstance(value, TensorDescriptor):
        return f"tensordesc<{_TYPES[value.base.dtype]}{list(value.block_shape)}>", False
    if isinstance(value, bool) or value is None:
        return "constexpr", False
    if isinstance(value, int):
        return ("i64" if abs(value) >= 2 ** 31 else "i32"), value % 16 == 0 and value != 0
    if isinstance(value, float):
        return "fp32", False
    return "constexpr", False


def ptxas_usage(ptx: str, arch: int) -> str:
    """'R regs, S B spilled' for one kernel's PTX, from `ptxas -v` (Triton's own ptxas)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", src,
                            "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    if not regs:
        return "regs ?"
    return f"{regs.group(1):>3s} regs, {spill.group(1) if spill else '?':>3s} B spilled"


class _Captured(Exception):
    pass


def launcher_source(src, metadata) -> str:
    """The C source of the CUDA launcher Triton would build for a kernel with this metadata
    (captured from Triton's own launcher class instead of compiled: no CUDA driver needed)."""
    from triton.backends.nvidia import driver as nv
    seen = []

    def grab(src, **_):
        seen.append(src)
        raise _Captured

    saved = nv.compile_module_from_src, nv.library_dirs
    nv.compile_module_from_src, nv.library_dirs = grab, lambda: []
    try:
        nv.CudaLauncher(src, metadata)
    except _Captured:
        pass
    finally:
        nv.compile_module_from_src, nv.library_dirs = saved
    return seen[0]


def compile_launch(fn, args: tuple, kw: dict, target: GPUTarget, regs: bool = False, guess=None) -> tuple:
    """Compile one intercepted launch for the target: (seconds taken, shared memory bytes,
    registers and spills or None, and with `guess` whether the launcher source guessed before
    compiling matches the compiled kernel's)."""
    jit = fn
    names = jit.arg_names
    kw["WIDEN"] = False  # set for bf16 on CPU tensors: an interpreter-only widening
    values = dict(zip(names, args))
    options = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
    values.update(kw)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        value = values[name]
        if i in [p.num for p in jit.params if p.is_constexpr]:
            signature[name] = "constexpr"
            constexprs[name] = value
            continue
        ty, div16 = _sig(value)
        if ty == "i32" and value == 1 and name not in getattr(jit, "do_not_specialize", ()) and \
                i not in getattr(jit, "do_not_specialize", ()):
            ty = "constexpr"  # Triton's launcher turns an int argument equal to 1 into a constant
        signature[name] = ty
        if ty == "constexpr":
            constexprs[name] = value
        elif div16 and name not in getattr(jit, "do_not_specialize", ()) and \
                i not in getattr(jit, "do_not_specialize", ()):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=target, options=options)
    seconds = time.perf_counter() - t0
    if os.environ.get("COMPILE_CHECK_PTX_DIR"):  # keep the PTX, e.g. to read where wgmma waits
        with open(os.path.join(os.environ["COMPILE_CHECK_PTX_DIR"], f"{jit.__name__}.ptx"), "w") as f:
            f.write(compiled.asm["ptx"])
    usage = ptxas_usage(compiled.asm["ptx"], target.arch) if regs else None
    if guess is not None:
        same = launcher_source(src, compiled.metadata) == launcher_source(src, guess(src))
        usage = ((usage + "  ") if usage else "") + ("launcher guessed" if same else "launcher MISMATCH")
    return seconds, compiled.metadata.shared, usage


def _label(mod, fn) -> str:
    """"fwd case 0 pass 1" for a pattern's kernel, else the runtime kernel's name ("merge", "bwd prologue")."""
    for ci, case in enumerate(mod.SPEC.cases):
        for pi, x in enumerate(case.passes):
            for kind in ("fwd", "dq", "dkdv", "decode"):
                kernel = getattr(x, kind)
                if kernel is not None and kernel.fn is fn:
                    return f"{kind} case {ci} pass {pi}"
    return {"bwd_prologue": "bwd prologue", "merge_kernel": "merge", "add_kernel": "add",
            "decode_combine": "decode combine"}.get(fn.__name__, fn.__name__)


def decode_launches(mod, D: int, dtype, n: int, sms: int) -> None:
    """Run the module's decode launches (intercepted by the caller) for the caches a server uses:
    t = 1 over a plain cache (also split in two, for the combine kernel), t = 4 over a paged one (64-row pages) and over the KVCache's ring."""
    from patternc.runtime.decode_inputs import Ring

    runner = mod._bound.decoder
    runner.gpu_sms = sms
    B, H, HK = 8, 32, 8
    seq = torch.full((B,), n, dtype=torch.int32)
    q1, q4 = (torch.randn(B, H, t, D, dtype=dtype) for t in (1, 4))
    k = torch.randn(B, HK, n, D, dtype=dtype)
    runner.run(q1, k, k, seq, D ** -0.5, None, n, None)
    runner.splits, runner.plans = 2, {}  # split-K and its combine kernel, whether or not n needs them
    runner.run(q1, k, k, seq, D ** -0.5, None, n, None)
    runner.splits, runner.plans = None, {}
    pages = torch.arange(B * (n // 64), dtype=torch.int32).view(B, -1)
    kp = torch.randn(B * (n // 64), HK, 64, D, dtype=dtype)
    runner.run(q4, kp, kp, seq, D ** -0.5, pages, n, None)
    if mod.SPEC.cache_layout is not None:
        ring = Ring(mod.SPEC.cache_layout[0], mod.SPEC.cache_layout[1] + 3)
        kr = torch.randn(B, HK, ring.slots, D, dtype=dtype)
        runner.run(q4, kr, kr, seq, D ** -0.5, None, ring.slots, ring)


def sequences(n: int, B: int) -> tuple:
    """Packed documents (B = 1) and padded rows (B rows) over n positions, for the document-aware
    launches (DOCS = 1 and 2: each compiles a kernel of its own)."""
    lens = [n // 4, n // 2, n - n // 4 - n // 2]
    cu = torch.tensor([0, lens[0], lens[0] + lens[1], n], dtype=torch.int32)
    packed = Seqs(PACKED, cu, None, 3, max(lens), n, tuple((0, int(a), m) for a, m in zip(cu, lens)))
    starts, rows = torch.zeros(B, dtype=torch.int32), torch.full((B,), n - 3, dtype=torch.int32)
    padded = Seqs(PADDED, starts, rows, B, n, n, tuple((b, 0, n - 3) for b in range(B)))
    return packed, padded


def check(path: str, n: int, D: int, dtype, target: GPUTarget, backward: bool = True, regs: bool = False,
          launchers: bool = False, decode: bool = True, sms: int = 132, packed: bool = False) -> list:
    p = patternc.parse(path)
    mod = patternc.load(p, backend="triton")
    user = os.environ.pop("PATTERNC_CONFIG", "")  # KEY=VALUE items on top of the GPU's settings
    cfg = gpu_settings(mod, D, dtype, n, target.arch)
    os.environ["PATTERNC_CONFIG"] = ",".join([f"{k}={v}" for k, v in cfg.items() if k in config.TILE_KEYS] +
                                             [item for item in user.split(",") if item.strip()])
    results = []
    seen: set = set()
    runner = mod._bound.triton

    def grab(kernel, grid, site=None):
        """Stands in for the module's launcher: compiles each new launch for the target instead of running it."""
        fn = getattr(kernel, "fn", kernel)
        label = _label(mod, fn)

        def compile_instead(*args, **kw_only):
            kw = dict(zip(getattr(kernel, "arg_names", ()), args)) | kw_only  # by name, however passed
            key = (label, kw.get("SEEDED"), kw.get("FUSED"), kw.get("PAGE"), kw.get("RING"), kw.get("T"),
                   kw.get("DOCS"), kw.get("MASS"))
            if key in seen:
                return
            seen.add(key)
            name = label + (" (atomic dq)" if kw.get("FUSED") else "") + (" (block mass)" if kw.get("MASS") else "") \
                + {1: " (packed)", 2: " (padded)"}.get(kw.get("DOCS"), "")
            if "PAGE" in kw:  # a decode kernel: which cache and how many new rows
                name += f" t={kw['T']}" + (" paged" if kw["PAGE"] else " ring" if kw["RING"] else "")
            try:
                results.append((name, *compile_launch(kernel, args, dict(kw_only), target, regs,
                                                      launch.launcher_guess if launchers else None), None))
            except Exception as e:  # report and go on: the point is the list
                results.append((name, None, None, None, f"{type(e).__name__}: "
                                + str(e).strip().splitlines()[-1][:300]))
        return compile_instead

    runner.launch = grab
    B, H = 1, 2
    q, k, v = (torch.randn(B, H, n, D, dtype=dtype) for _ in range(3))
    sel = None
    if mod.SPEC.select is not None:  # select(...): a random selection, the forward with and without block mass
        K, block, qblock = mod.SPEC.select
        sel = Selection(torch.randint(-1, -(-n // block), (B, 1, -(-n // qblock), K), dtype=torch.int32))
        runner.forward_launches(q, k, v, D ** -0.5, None, sel, True)
        results.append(("select_blocks indexer", *_index(mod, n, dtype, target, regs), None))
    # packed and padded launches: not with a selection (runtime.module refuses the two together)
    for seqs in (None,) + (sequences(n, B) if packed and sel is None else ()):
        runner.forward_launches(q, k, v, D ** -0.5, seqs, sel, False)  # outputs are garbage: no kernel runs
        if backward:
            o, lse = torch.randn(B, H, n, D, dtype=dtype), torch.randn(B, H, n)
            runner.backward_launches(torch.randn_like(o), q, k, v, o, lse, D ** -0.5, seqs, sel)
            if mod.SPEC.schedule.fused_dq:  # atomic dq by default: the deterministic mode's dq kernels too
                os.environ["PATTERNC_DETERMINISTIC"] = "1"
                try:
                    runner.backward_launches(torch.randn_like(o), q, k, v, o, lse, D ** -0.5, seqs, sel)
                finally:
                    os.environ.pop("PATTERNC_DETERMINISTIC")
    if decode and sel is None:  # a pattern with select(...) has no decode kernels
        mod._bound.decoder.launch = grab
        decode_launches(mod, D, dtype, n, sms)
    os.environ["PATTERNC_CONFIG"] = user
    return results


def _index(mod, n: int, dtype, target: GPUTarget, regs: bool, heads: int = 4, di: int = 64) -> tuple:
    """Compile the module's select_blocks kernel (runtime.select_index.launch_index's launch)."""
    K, block, qblock = mod.SPEC.select
    nkb = -(-n // block)
    qi = torch.randn(1, heads, n, di, dtype=dtype)
    means = block_means(torch.randn(1, 1, n, di), block, torch.float32).to(dtype)
    kw = dict(QI=qi, KM=means, W=torch.ones(1), OUT=torch.empty(1, 1, -(-n // qblock), K, dtype=torch.int32), n=n,
              NKB=nkb, HS=1, **mod.SPEC.length_args(n), HI=heads, PER=heads, DI=di, BDI=di, QBLK=qblock, BLK=block,
              K=K, KPAD=max(16, 1 << (K - 1).bit_length()), BKB=INDEX_KEYS, W_MODE=0, num_warps=4)
    return compile_launch(mod.SPEC.select_index, (), kw, target, regs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--all", action="store_true", help="every examples/*.attn file")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode kernels")
    ap.add_argument("--warm-cache", action="store_true", help="keep Triton's on-disk cache (default: a fresh one)")
    ap.add_argument("--regs", action="store_true", help="also registers per thread and spilled bytes (ptxas -v)")
    ap.add_argument("--packed", action="store_true",
                    help="also the document-aware launches: packed documents and padded rows (DOCS = 1, 2)")
    ap.add_argument("--launchers", action="store_true",
                    help="also check the launcher source guessed before compiling against the compiled kernel's")
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    files = args.files or (sorted(glob.glob(os.path.join(here, "examples", "*.attn"))) if args.all else [])
    if not files:
        ap.error("give .attn files or --all")
    if not args.warm_cache:  # time real compilations, not Triton's on-disk cache
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="patternc-compile-check-")
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for path in files:
        for name, t, smem, usage, err in check(path, args.n, args.d, torch.bfloat16, target, not args.fwd_only,
                                               args.regs, args.launchers, not args.no_decode,
                                               packed=args.packed):
            print(f"{os.path.basename(path):22s} {name:32s} " + (f"{usage}  " if usage else "")
                  + (f"{t:6.2f} s  {smem / 1024:6.1f} KiB shared" if err is None else f"FAILED {err}"), flush=True)
            failed += err is not None or "MISMATCH" in (usage or "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
