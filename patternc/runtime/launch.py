"""Kernel launches: direct calls of compiled kernels, and parallel compilation on first calls.

Two host costs matter for short kernels (a window at n = 16,384 runs in ~0.1-0.2 ms):

- Triton's JIT front door binds arguments on every launch (25-34 us).  A launch site seen
  before (same plan, layouts and device, so the same specialisation) calls its compiled
  kernel directly instead: 7-10 us (decisions.md: direct-launch).
- A first call launches several kernels, which Triton would compile one after the other.
  The first call of a plan runs its launch code once in warm-up mode, which submits every
  kernel's compilation to a thread pool and builds each launcher there too
  (decisions.md: parallel-compile).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from .jit import HAVE_TRITON, triton

_JIT_TYPES = (triton.runtime.jit.JITFunction,) if HAVE_TRITON else ()
_DIRECT = [True]  # off after any surprise (a Triton whose compiled kernels are called differently)
_DESC_ARGS: dict = {}  # a TMA descriptor's encoded launch arguments, per address and layout
_ENCODE = [None]  # Triton's encoder of a descriptor's launch arguments (found by fast_launch)


def _stream(device: int):
    return triton.runtime.driver.active.get_current_stream(device)


class Launcher:
    """The launch state of one compiled pattern: its launch sites' compiled kernels, and the
    warm-up mode of a first call."""

    def __init__(self):
        self.compiled: dict = {}  # launch site -> (kernel, compiled kernel, argument names, fast path)
        self.warming = False
        self.warmed: list = []  # what the warm-up's launches compiled (compiled kernels or futures)

    def __call__(self, kernel, grid, site=None):
        """kernel[grid]; while warming up, a call that only submits the kernel's compilation.
        With a `site` (unless PATTERNC_DIRECT_LAUNCH=0), a launch site seen before calls its
        compiled kernel directly."""
        if self.warming:
            return lambda *args, **kw: self.warmed.append(kernel.warmup(*args, grid=grid, **kw))
        if site is None or not _DIRECT[0] or not isinstance(kernel, _JIT_TYPES):
            return kernel[grid]
        grid = tuple(grid) + (1,) * (3 - len(grid))  # a compiled kernel's launcher takes all three axes
        key = (site, grid)
        hit = self.compiled.get(key)
        if hit is None or hit[0] is not kernel:
            return self._first(kernel, grid, key)
        return _direct(kernel, grid, site, *hit[1:])

    def _first(self, kernel, grid, key):
        def first(*args, **kw):
            compiled = kernel[grid](*args, **kw)
            names = list(kernel.arg_names[len(args):])
            if hasattr(compiled, "packed_metadata") and all(a in kw for a in names):
                if len(self.compiled) > 1024:
                    self.compiled.clear()
                # PATTERNC_DIRECT_LAUNCH=2: descriptors encoded once too (opt-in: not yet run on a GPU)
                fast = fast_launch(compiled) if os.environ.get("PATTERNC_DIRECT_LAUNCH") == "2" else None
                self.compiled[key] = (kernel, compiled, names, fast)
            return compiled
        return first

    def precompile(self, run, q, plan: dict, *args) -> None:
        """Compile every kernel of `run(*args)` at once, in a thread pool, on its plan's first call."""
        if not q.is_cuda or plan.get("warmed") or os.environ.get("PATTERNC_PARALLEL_COMPILE", "1") == "0":
            return
        plan["warmed"] = True
        try:
            from triton.runtime._async_compile import AsyncCompileMode
        except ImportError:  # a Triton without asynchronous compilation: kernels compile at launch
            return
        # PATTERNC_PARALLEL_COMPILE=2 (the default): each launcher is also built in the pool while its
        # kernel compiles, and the binaries load in a pool; =1: compiles only
        pooled = os.environ.get("PATTERNC_PARALLEL_COMPILE", "2") == "2"
        runtime = triton.knobs.runtime
        previous = runtime.jit_cache_hook
        self.warming = True
        self.warmed = []
        try:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, AsyncCompileMode(pool):
                if pooled and q.device.type == "cuda":
                    runtime.jit_cache_hook = prebuild_hook(pool, previous)
                try:
                    run(*args)
                finally:
                    runtime.jit_cache_hook = previous
        except Exception:  # whatever failed here fails (or succeeds) again, with its message, at launch
            pass
        finally:
            self.warming = False
        warmed, self.warmed = self.warmed, []
        if pooled:
            init_in_pool(warmed, q.device)


def _direct(kernel, grid, site, compiled, names, fast):
    def direct(*args, **kw):
        try:
            hooks = triton.knobs.runtime
            if any(h is not None and getattr(h, "calls", True) for h in (hooks.launch_enter_hook,
                                                                          hooks.launch_exit_hook)):
                return kernel[grid](*args, **kw)  # a profiler is listening: the JIT's path
            stream = _stream(site[1])
            run = compiled.run
        except Exception:  # not the Triton this was written for: launch the usual way from now on
            _DIRECT[0] = False
            return kernel[grid](*args, **kw)
        if fast is None:
            run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                *args, *[kw[a] for a in names])
            return compiled
        launch, descs, coop, pdl = fast
        out = [grid[0], grid[1], grid[2], stream, compiled.function, coop, pdl, None, None,
               compiled.packed_metadata, None, None, None]
        kargs = (*args, *[kw[a] for a in names])
        prev = 0
        for pos, meta in descs:
            out += kargs[prev:pos]
            out += desc_args(kargs[pos], meta)
            prev = pos + 1
        out += kargs[prev:]
        launch(*out)
        return compiled
    return direct


def fast_launch(compiled):
    """How to call a compiled kernel's launch function with TMA descriptors encoded once per
    address and layout: (C launch function, [(argument position, descriptor metadata)],
    cooperative grid, PDL).  Triton 3.6's launcher encodes every descriptor on every launch and
    walks every argument in Python (~25-70 us per launch with descriptors).  None (the launcher's
    own path) for a launcher of another shape, or one that needs scratch memory."""
    try:
        from triton.backends.nvidia import driver as nv

        run = compiled.run
        fn = run.launch
        if run.global_scratch_size or run.profile_scratch_size or nv._BASE_ARGS_FORMAT_LEN != 13:
            return None
        code = getattr(fn, "__code__", None)
        if code is None:  # the C launch function itself: no descriptors to encode
            return fn, (), run.launch_cooperative_grid, run.launch_pdl
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__)))
        if set(cells) != {"launcher", "tensordesc_indices", "tensordesc_meta"}:
            return None
        where = sorted(cells["tensordesc_indices"])
        metas = cells["tensordesc_meta"] or [None] * len(where)
        if len(metas) != len(where) or any(m is None for m in metas):
            return None
        _ENCODE[0] = _ENCODE[0] or nv.make_tensordesc_arg
        return cells["launcher"], tuple(zip(where, metas)), run.launch_cooperative_grid, run.launch_pdl
    except Exception:
        return None


def desc_args(desc, meta) -> list:
    """Launch arguments of one TMA descriptor: encoded once per address, layout and block."""
    key = (desc.base.data_ptr(), tuple(desc.shape), tuple(desc.strides), desc.padding, meta["swizzle"],
           meta["elem_size"], meta["elem_type"], tuple(meta["block_size"]), meta["fp4_padded"])
    hit = _DESC_ARGS.get(key)
    if hit is None:
        if len(_DESC_ARGS) > 4096:
            _DESC_ARGS.clear()
        hit = _DESC_ARGS[key] = _ENCODE[0](desc, meta)
    return hit


class LauncherGuess:
    """What a kernel's launcher is built from, known before the kernel compiles: on sm_90 and
    later every tensor-descriptor argument lowers to TMA (Triton then passes it as an encoded
    descriptor); no scratch memory, one CTA.  Only whether descriptors lower to TMA enters the
    launcher's C source; the rest is read at launch, which this guess never serves."""

    def __init__(self, descriptors: int):
        self.tensordesc_meta = [{}] * descriptors or None
        self.num_ctas = 1
        self.global_scratch_size = self.profile_scratch_size = 0
        self.global_scratch_align = self.profile_scratch_align = 1
        self.launch_cooperative_grid = self.launch_pdl = False


def launcher_guess(src) -> LauncherGuess:
    return LauncherGuess(sum(isinstance(t, str) and t.startswith("tensordesc") for t in src.signature.values()))


def prebuild_hook(pool, previous):
    """A Triton jit_cache_hook (called as each kernel's compilation is submitted) that also builds
    that kernel's launcher in the pool.  Triton keeps built launchers on disk by their C source,
    so the kernel's first launch finds it there when the guess was right (otherwise it builds
    its own, as without this)."""
    built: set = set()

    def hook(**kw):
        if previous is not None:  # someone else's hook first; it may skip the compilation
            skip = previous(**kw)
            if skip:
                return skip
        try:
            info, c = kw["fn"], kw["compile"]
            src = triton.compiler.ASTSource(info.jit_function, c["signature"], c["constants"])
            key = (info.jit_function, repr(sorted(src.signature.items())), repr(sorted(src.constants.items())))
            if key not in built:
                built.add(key)
                pool.submit(prebuild_launcher, src)
        except Exception:  # a Triton whose hook or sources differ: launchers are built at launch
            pass
        return None
    return hook


def prebuild_launcher(src) -> None:
    try:
        triton.runtime.driver.active.launcher_cls(src, launcher_guess(src))
    except Exception:  # built at the kernel's first launch instead
        pass


def init_in_pool(warmed: list, device) -> None:
    """Build the launchers and load the binaries of the warm-up's compiled kernels (or futures of
    them) in a thread pool, as Triton would at each one's first launch."""
    kernels = {}
    for k in warmed:
        try:
            k = k.result() if hasattr(k, "result") else k
        except Exception:  # a compile that failed: it fails again, with its message, at launch
            continue
        if k is not None and hasattr(k, "_init_handles"):
            kernels[id(k)] = k
    if len(kernels) < 2:
        return

    def init(compiled):
        try:
            if device.type == "cuda":
                with torch.cuda.device(device):  # this thread's current device: the tensors'
                    compiled._init_handles()
            else:
                compiled._init_handles()
        except Exception:  # e.g. too much shared memory: raised again, and handled, at launch
            if compiled.module is None:
                compiled._run = None  # so that the launch retries, not runs a kernel never loaded
    with ThreadPoolExecutor(max_workers=min(8, len(kernels))) as pool:
        list(pool.map(init, kernels.values()))
