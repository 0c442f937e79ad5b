"""The runtime library (patternc.runtime), unit by unit: settings, plans, launches, descriptors,
autotuning, first-call compilation, and the contract between kernels and launches (abi)."""
from __future__ import annotations

import inspect
import json
import os
import re
import threading
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

import patternc  # noqa: E402
from patternc.runtime import abi, autotune, config, launch, tma, triton_path  # noqa: E402
from patternc.runtime.random_blocks import HASH_MUL, HASH_QB, HASH_SEED, HASH_T  # noqa: E402
from patternc import semantics  # noqa: E402

from kernel_check import make_inputs  # noqa: E402
from kernel_patterns import PATTERNS, LaunchSpy, assert_close, fresh, module  # noqa: E402
from kernel_check import check_module  # noqa: E402


# ---- the kernel ABI -----------------------------------------------------------------------------

@pytest.mark.parametrize("src", ["local(256) | global(16)", "causal & (local(7) | stride(isqrt(n)))",
                                 "causal & fixed(16, 3)", "heads { 0..0: local(4), 1..1: causal & stride(5) }",
                                 "local(16) | global(16) | random(2, block=16, seed=1)"])
def test_every_kernel_signature_is_the_abi_table(src):
    """Each generated kernel's parameters are exactly the runtime's table for its kind, split and
    seeding, in order: the launches (by these names) and the signatures cannot drift apart."""
    p, mod = fresh(src)
    text = patternc.compile(p, "triton")
    for case in mod.SPEC.cases:
        for pi, x in enumerate(case.passes):
            for kind, kernel, split in (("fwd", x.fwd, bool(x.heavy_q)), ("dq", x.dq, bool(x.heavy_q)),
                                        ("dkdv", x.dkdv, bool(x.heavy_k)), ("decode", x.decode, False)):
                if kernel is None:
                    continue
                seeded = kind == "fwd" and pi > 0
                rev = {"fwd": x.rev_fwd, "dq": x.rev_dq}.get(kind, False)
                # a decode kernel computes the length-dependent arguments itself, from cache_seqlens
                args = () if kind == "decode" else mod.SPEC.arg_names
                want = abi.param_names(kind, split, args, seeded, rev)
                assert tuple(kernel.arg_names) == want, (src, kind, pi)
                name = kernel.fn.__name__
                deco = re.search(rf"(@triton\.jit[^\n]*)\ndef {name}\(", text).group(1)
                free = re.findall(r"'(\w+)'", deco)
                assert set(free) == set(abi.unspecialized(kind, split)), (src, kind, deco)


def test_launches_pass_a_value_for_every_parameter(monkeypatch):
    """Every name of every kernel's table gets a value at launch (a missing one would be a TypeError
    at the first call on a GPU): record the keywords of real launches."""
    p, mod = fresh("heads { 0..0: local(9) | global(16), 1..1: causal & fixed(8, 2) }")
    seen = {}

    def hook(kernel, grid, site, kw):
        seen[kernel.fn.__name__] = set(kw) - {"num_warps", "num_stages"}
    monkeypatch.setattr(mod._bound.triton, "launch", LaunchSpy(mod._bound.triton.launch, hook))
    monkeypatch.setenv("PATTERNC_CONFIG", "split_chunk=2")
    assert_close(check_module(mod, p, 150, D=16, H=2, HK=1))
    generated = {k for k in seen if k.startswith(("_fwd", "_dq", "_dkdv"))}
    assert len(generated) >= 5
    for name in generated:
        assert seen[name] == set(getattr(mod, name).arg_names), name
    monkeypatch.setattr(mod._bound.decoder, "launch", LaunchSpy(mod._bound.decoder.launch, hook))
    q, k = torch.randn(1, 2, 3, 16), torch.randn(1, 1, 40, 16)
    mod.decode(q, k, k, torch.tensor([37], dtype=torch.int32))
    decoded = {k for k in seen if k.startswith("_dec")}
    assert len(decoded) == 3, seen.keys()  # one kernel per pass: 1 + 2
    for name in decoded:
        assert seen[name] == set(getattr(mod, name).arg_names), name


def test_random_hash_constants_are_the_languages():
    assert (HASH_SEED, HASH_QB, HASH_T, HASH_MUL) == (semantics.HASH_SEED, semantics.HASH_QB, semantics.HASH_T,
                                                      semantics.HASH_MUL)
    from patternc.runtime.random_blocks import picked_blocks, random_pick
    for r, b, seed, n in ((2, 16, 3, 100), (3, 64, 1, 1000), (5, 16, 7, 50)):
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        want = semantics.random_allowed(r, b, seed, i, j, n)
        assert torch.equal(random_pick(i, j, r, b, seed, n), want)
        for qb in range(-(-n // b)):
            blocks = set(picked_blocks(qb, r, b, seed, n))
            assert blocks == {int(k) // b for k in torch.nonzero(want[qb * b]).flatten()}


# ---- settings and plans -------------------------------------------------------------------------

def test_config_rejects_bad_items(monkeypatch):
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=32,bogus=1")
    with pytest.raises(ValueError, match="PATTERNC_CONFIG: bad item 'bogus=1'"):
        config.overrides()
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=x")
    with pytest.raises(ValueError, match="expected KEY=INT"):
        config.overrides()


def test_launch_plans_follow_settings(monkeypatch):
    """Plans are memoised per shape and settings: a changed PATTERNC_CONFIG, determinism switch
    or PATTERNC_DIRECT_LAUNCH gives a new plan; the same call reuses its plan."""
    p, mod = fresh("local(5) | global(2)")
    path = mod._bound.triton
    q, k, v = make_inputs(1, 2, 1, 40, 16, torch.float32, "cpu", seed=0)
    monkeypatch.delenv("PATTERNC_DIRECT_LAUNCH", raising=False)
    a = path.plan("fwd", q, k)
    assert path.plan("fwd", q, k) is a and a["direct"]  # direct launches by default
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=32")
    b = path.plan("fwd", q, k)
    assert b is not a and b["cfg"]["BM"] == 32
    monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    assert path.plan("bwd", q, k)["fused"] is False
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "0")
    assert not path.plan("fwd", q, k)["direct"]
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "1")
    assert path.site(path.plan("fwd", q, k), q, q, k, v) is None  # off CUDA: the JIT (interpreter) path


def test_out_of_shared_memory_retries_with_smaller_settings(monkeypatch):
    """A GPU with less shared memory than the defaults assume: fewer stages, then smaller tiles,
    remembered for the next call."""
    from triton.runtime.errors import OutOfResources

    p, mod = fresh("local(9) | global(3)")
    path = mod._bound.triton
    fwd = mod.SPEC.cases[0].passes[0].fwd
    seen = []

    def small_gpu(kernel, grid, site, kw):  # rejects forwards with more than one stage or tiles above 16
        if kernel is fwd:
            seen.append((kw["BM"], kw["BN"], kw["num_stages"]))
            if kw["num_stages"] > 1 or kw["BM"] > 16 or kw["BN"] > 16:
                raise OutOfResources(kw["num_stages"] * kw["BM"] * kw["BN"], 256, "shared memory")
    monkeypatch.setattr(path, "launch", LaunchSpy(path.launch, small_gpu))
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=32,BN=32,num_stages=2")
    assert_close(check_module(mod, p, 50, D=16, H=2, HK=1, backward=False))
    assert seen[0] == (32, 32, 2) and seen[-1] == (16, 16, 1)
    assert path.shrunk == {(16, torch.float32, "cpu"): {"num_stages": 1, "BM": 16, "BN": 16}}
    n_before = len(seen)
    mod.attention(*make_inputs(1, 2, 1, 50, 16, torch.float32, "cpu", 0, False))
    assert len(seen) == n_before + 1  # remembered: the next call launches once


def test_autotune_keeps_the_fastest_settings_and_caches_them(monkeypatch, tmp_path):
    """PATTERNC_AUTOTUNE=1: each candidate is timed on the real call, the fastest is kept, and a
    new process (a freshly loaded module) reads it from the cache file instead of timing again."""
    monkeypatch.setenv("PATTERNC_AUTOTUNE", "1")
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    p, mod = fresh("local(9) | global(3)")
    path = mod._bound.triton
    timed = []

    def fake_time(fn):  # "faster" = larger tiles, so the second candidates must win
        fn()
        cfg = path.tiles(16, torch.float32, torch.device("cpu"), 50)
        timed.append(cfg["BM"] + cfg["DQ_BM"] + cfg["DKV_BN"])
        return 1.0 / timed[-1]
    monkeypatch.setattr(autotune, "time_call", fake_time)
    assert_close(check_module(mod, p, 50, D=16, H=2, HK=1))
    assert len(timed) == 4  # two forward and two backward candidates
    cfg = path.tiles(16, torch.float32, torch.device("cpu"), 50)
    assert (cfg["BM"], cfg["DQ_BM"], cfg["DKV_BN"]) == (32, 32, 32)
    saved = json.loads(next(tmp_path.glob("tuned-*.json")).read_text())
    assert sorted(k.split("|")[0] for k in saved) == ["bwd", "fwd"]

    _, again = fresh("local(9) | global(3)")
    assert again._bound.triton.tuner.tuned == {}
    monkeypatch.setattr(autotune, "time_call", lambda fn: pytest.fail("tuned again despite the cache"))
    assert_close(check_module(again, p, 50, D=16, H=2, HK=1))
    assert again._bound.triton.tiles(16, torch.float32, torch.device("cpu"), 50)["BM"] == 32
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=16")  # an explicit setting wins over the tuned one
    assert again._bound.triton.tiles(16, torch.float32, torch.device("cpu"), 50)["BM"] == 16


@pytest.mark.parametrize("src, wide", [
    ("causal", True), ("causal | (queries(0, 2048) & keys(0, 2048))", True),
    ("heads { 0..0: causal, 1..1: causal | (queries(0, 64) & keys(0, 64)) }", True),
    ("local(256)", False), ("causal & (sink(4) | local(1024))", False), ("local(256) | global(16)", False),
    ("heads { 0..0: local(8), 1..1: causal }", True)])  # the mean over heads
def test_gpu_settings_take_the_schedule(src, wide, monkeypatch):
    """On an sm_90 GPU the settings are the pattern's compile-time schedule: 128x128 dq tiles and 3
    dk/dv stages at D = 64 for long key walks, 128x64 and 2 stages otherwise and at D = 128."""
    monkeypatch.setitem(tma._HOPPER, 0, True)
    p, mod = fresh(src)
    path = mod._bound.triton
    cfg = path.tiles(64, torch.bfloat16, torch.device("cuda", 0), 65536)
    assert (cfg["DQ_BN"], cfg["dkv_stages"]) == ((128, 3) if wide else (64, 2)), src
    cfg = path.tiles(128, torch.bfloat16, torch.device("cuda", 0), 65536)
    assert (cfg["DQ_BN"], cfg["dkv_stages"]) == (64, 2), src
    assert (cfg["BM"], cfg["BN"]) == mod.SPEC.schedule.fwd_tiles


# ---- TMA descriptors ----------------------------------------------------------------------------

def test_tma_descriptors_only_for_aligned_layouts(monkeypatch):
    """Descriptors only where the hardware accepts them; else None, and the kernels load through
    pointers (any strides)."""
    d = tma.tma_desc(torch.randn(2, 3, 30, 16), 16, 16)
    assert d is not None and d.block_shape == [1, 1, 16, 16] and d.strides == [1440, 480, 16, 1]
    # (B, n, H, D) storage viewed as (B, H, n, D): aligned, different strides, still TMA
    d = tma.tma_desc(torch.randn(2, 30, 3, 16).transpose(1, 2), 32, 16)
    assert d is not None and d.strides == [1440, 16, 48, 1]
    # a size-1 dimension's stride is never stepped over: a misaligned value is replaced
    d = tma.tma_desc(torch.empty_strided((1, 2, 30, 16), (7, 480, 16, 1)), 16, 16)
    assert d is not None and d.strides == [960, 480, 16, 1]
    assert tma.tma_desc(torch.randn(1, 2, 30, 20, dtype=torch.bfloat16), 16, 32) is None  # 40-byte rows
    assert tma.tma_desc(torch.randn(1, 2, 16, 30).transpose(2, 3), 16, 16) is None  # D not innermost
    assert tma.tma_desc(torch.randn(1 + 1 * 2 * 30 * 16)[1:].view(1, 2, 30, 16), 16, 16) is None  # base
    monkeypatch.setenv("PATTERNC_TMA", "0")
    assert tma.tma_desc(torch.randn(2, 3, 30, 16), 16, 16) is None


def test_residue_class_descriptors_view_the_tensor_per_class():
    """A residue class of modulus m (m | n) is one TMA box of the (B, H, n/m, m, D) view; m not
    dividing n gives no descriptor (the pointer path)."""
    t = torch.randn(2, 3, 32, 16)
    d = tma.tma_desc(t, 8, 16, True, m=4)
    assert d.shape == [2, 3, 8, 4, 16] and d.strides == [1536, 512, 64, 16, 1] and d.block_shape == [1, 1, 8, 1, 16]
    d = tma.tma_desc(torch.randn(2, 32, 3, 16).transpose(1, 2), 8, 16, True, m=4)  # (B, n, H, D) storage
    assert d.shape == [2, 3, 8, 4, 16] and d.strides == [1536, 16, 192, 48, 1]
    assert tma.tma_desc(torch.randn(2, 3, 30, 16), 8, 16, True, m=4) is None  # 4 does not divide 30
    assert tma.tma_desc(t, 8, 16, True) is not None  # the plain descriptor of the same tensor


# ---- launches -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pro", [1, 0])
def test_warm_up_mode_compiles_instead_of_launching(pro, monkeypatch):
    """In warm-up mode (first call on a GPU) every launch of a call, including split launches and
    the backward prologue (where it runs: pro_dq=0), becomes a compile request; nothing runs."""
    p, mod = fresh("causal & (local(9) | stride(8)) | global(2)")  # two passes, split global rows
    path = mod._bound.triton
    submitted = []
    names = {}
    for pi, x in enumerate(mod.SPEC.cases[0].passes):
        for kind in ("fwd", "dq", "dkdv"):
            if getattr(x, kind) is not None:
                names[getattr(x, kind).fn] = f"{kind}{pi}"
    names[triton_path.bwd_prologue.fn] = "prologue"
    names[triton_path.merge_rows.__globals__["merge_kernel"].fn] = "merge"
    names[triton_path.add_rows.__globals__["add_kernel"].fn] = "add"

    def warmup(self, *args, grid, **kw):
        submitted.append((names[self.fn], kw.get("PARTIAL", 0)))
    monkeypatch.setattr(type(mod.SPEC.cases[0].passes[0].dq), "warmup", warmup)
    monkeypatch.setenv("PATTERNC_CONFIG", f"split_chunk=2,fused_dq=0,pro_dq={pro}")  # (atomic dq: no dq kernels)
    q, k, v = make_inputs(1, 2, 1, 150, 16, torch.float32, "cpu", seed=0)
    path.launch.warming = True
    try:
        path.forward_launches(q, k, v, 0.25)
        o, lse = torch.zeros_like(q), torch.zeros(1, 2, 150)
        path.backward_launches(torch.ones_like(q), q, k, v, o, lse, 0.25)
    finally:
        path.launch.warming = False
    kinds = {name for name, _ in submitted}
    assert {"fwd0", "fwd1", "dq0", "dq1", "dkdv0", "dkdv1"} <= kinds
    assert ("prologue" in kinds) == (not pro), submitted
    assert any(partial for _, partial in submitted)  # the split launch is compiled too


def test_direct_launch_calls_the_compiled_kernel_with_every_argument_in_order(monkeypatch):
    """A launch site's first launch goes through the JIT and keeps the compiled kernel; later
    launches at the same site call it with the JIT's argument order (positional, then keywords in
    declaration order); a listening profiler, another kernel at the site, or a Triton that refuses
    the call send launches back through the JIT."""
    import triton
    jit_calls, runs = [], []

    class Compiled:
        packed_metadata, function = "packed", "function"

        def run(self, *a):
            runs.append(a)

    class FakeJIT:
        arg_names = ["X", "Y", "n", "BM", "TMA"]

        def __getitem__(self, grid):
            def go(*args, **kw):
                jit_calls.append((grid, args, kw))
                return Compiled()
            return go
    monkeypatch.setattr(launch, "_JIT_TYPES", (FakeJIT,))
    monkeypatch.setattr(launch, "_stream", lambda device: 7)
    launcher = launch.Launcher()
    kernel, site = FakeJIT(), ("plan", 0)
    for _ in range(3):  # a 2-D grid: the compiled kernel's launcher still gets three axes
        launcher(kernel, (4, 2), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 1 and len(runs) == 2
    assert runs[0] == (4, 2, 1, 7, "function", "packed", None, None, None, "x", "y", 100, 16, True)
    launcher(FakeJIT(), (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)  # another kernel
    assert len(jit_calls) == 2
    for _ in range(2):  # the site now remembers the other kernel: the JIT once, then directly again
        launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 3 and len(runs) == 3
    hook = lambda *a: None  # noqa: E731
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(jit_calls) == 4 and len(runs) == 3
    monkeypatch.setattr(launch, "_stream", lambda device: 1 / 0)  # a Triton that works differently
    monkeypatch.setattr(launch, "_DIRECT", [True])
    launcher(kernel, (4, 2, 1), site)("x", "y", 100, TMA=True, BM=16, num_warps=4)
    assert len(jit_calls) == 5 and not launch._DIRECT[0]


def test_direct_launch_encodes_each_tma_descriptor_once(monkeypatch):
    """PATTERNC_DIRECT_LAUNCH=2: the launcher's C function is called with each TMA descriptor's
    arguments encoded once per address and layout, in the launcher's argument order."""
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", "2")
    jit_calls, calls, encoded = [], [], []

    def make_inner(launcher, tensordesc_indices, tensordesc_meta):  # the shape of Triton 3.6's wrapper
        def inner(*args):
            return launcher(*args), tensordesc_indices, tensordesc_meta
        return inner
    meta = dict(swizzle=128, elem_size=2, elem_type=1, block_size=[1, 1, 16, 16], fp4_padded=False)

    class Run:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid = launch_pdl = False
        launch = staticmethod(make_inner(lambda *a: calls.append(a), {1}, [meta]))

    class Compiled:
        packed_metadata, function, run = "packed", "function", Run()

    class FakeJIT:
        arg_names = ["X", "XD", "n", "BM"]

        def __getitem__(self, grid):
            jit_calls.append(grid)
            return lambda *a, **kw: Compiled()
    monkeypatch.setattr(launch, "_JIT_TYPES", (FakeJIT,))
    monkeypatch.setattr(launch, "_stream", lambda device: 7)
    monkeypatch.setattr(launch, "_DESC_ARGS", {})
    monkeypatch.setattr(launch, "_ENCODE", [lambda d, m: encoded.append(m) or ["map", *d.shape, *d.strides]])
    launcher = launch.Launcher()
    t = torch.zeros(1, 2, 32, 16)
    desc = tma.tma_desc(t, 16, 16, True)
    kernel = FakeJIT()
    for _ in range(3):
        launcher(kernel, (4, 2), ("plan", 0))("x", desc, 32, BM=16)
    assert len(jit_calls) == 1 and len(calls) == 2 and encoded == [meta]
    assert calls[0] == (4, 2, 1, 7, "function", False, False, None, None, "packed", None, None, None,
                        "x", "map", 1, 2, 32, 16, 1024, 512, 16, 1, 32, 16)
    t2 = torch.zeros(1, 2, 32, 16)  # another address: encoded again
    launcher(kernel, (4, 2), ("plan", 0))("x", tma.tma_desc(t2, 16, 16, True), 32, BM=16)
    assert len(encoded) == 2 and len(calls) == 3


def test_launcher_pool_initialises_compiled_kernels_off_the_main_thread():
    """The first call's pool (`init_in_pool`): every distinct compiled kernel (or future of one) is
    initialised once, off the calling thread; a kernel whose initialisation failed before its binary
    loaded is left to retry at launch, not to launch unloaded."""
    class Kernel:
        def __init__(self, fail=False):
            self.module, self._run, self.fail, self.threads = None, None, fail, []

        def _init_handles(self):
            self.threads.append(threading.current_thread() is threading.main_thread())
            self._run = "launcher"
            if self.fail:
                raise RuntimeError("no binary")
            self.module = "loaded"

    class Future:
        def __init__(self, k):
            self.k = k

        def result(self):
            return self.k

    class Broken:
        def result(self):
            raise RuntimeError("compile failed")

    a, b, bad = Kernel(), Kernel(), Kernel(fail=True)
    launch.init_in_pool([a, Future(b), a, bad, Broken(), None], torch.device("cpu"))
    assert a.threads == [False] and b.threads == [False] and bad.threads == [False]
    assert a.module == b.module == "loaded" and a._run == "launcher"
    assert bad.module is None and bad._run is None  # the launch calls _init_handles again
    lone = Kernel()
    launch.init_in_pool([lone], torch.device("cpu"))  # one kernel: nothing to overlap, left to its launch
    assert lone.threads == [] and lone.module is None


def test_launchers_are_submitted_for_building_while_their_kernels_compile():
    """The first call's jit_cache_hook (`prebuild_hook`): each distinct kernel specialisation submits
    one launcher build to the compile pool, with every tensor-descriptor argument guessed to lower
    to TMA; a hook installed before it runs first and may skip the compilation (then nothing is
    built); anything unexpected builds nothing and raises nothing."""
    class Pool:
        def __init__(self):
            self.jobs = []

        def submit(self, fn, *args):
            self.jobs.append((fn, args))

    class Kernel:  # what ASTSource reads of a JIT function
        __name__ = "kern"
        arg_names = ["X", "KD", "VD", "BM"]

    asked = []

    def previous(**kw):
        asked.append(kw["key"])
        return kw["key"] == "skip"

    pool = Pool()
    hook = launch.prebuild_hook(pool, previous)
    sig = {"X": "*bf16", "KD": "tensordesc<bf16[64, 128]>", "VD": "tensordesc<bf16[64, 128]>", "BM": "constexpr"}
    info = SimpleNamespace(jit_function=Kernel())
    for key, bm in (("a", 64), ("b", 64), ("c", 128), ("skip", 32)):
        out = hook(key=key, repr="", fn=info, compile={"signature": sig, "constants": {"BM": bm}},
                   is_manual_warmup=True, already_compiled=False)
        assert out == (True if key == "skip" else None)
    assert asked == ["a", "b", "c", "skip"]
    assert [fn for fn, _ in pool.jobs] == [launch.prebuild_launcher] * 2  # BM=64 once, BM=128 once
    srcs = [args[0] for _, args in pool.jobs]
    assert [s.constants for s in srcs] == [{(3,): 64}, {(3,): 128}]
    guess = launch.launcher_guess(srcs[0])
    assert guess.tensordesc_meta == [{}, {}] and guess.global_scratch_size == 0
    assert launch.launcher_guess(SimpleNamespace(signature={"X": "*bf16"})).tensordesc_meta is None
    assert hook(key="d", repr="", fn=None, compile={}, is_manual_warmup=True, already_compiled=False) is None
    assert len(pool.jobs) == 2
    launch.prebuild_launcher(srcs[0])  # no CUDA driver here: nothing built, nothing raised


def test_runtime_state_is_per_pattern():
    """Two patterns never share plans, tuned or shrunk settings, or launch sites."""
    _, a = fresh("local(5)")
    _, b = fresh("causal")
    pa, pb = a._bound.triton, b._bound.triton
    assert pa is not pb and pa.plans is not pb.plans and pa.launch is not pb.launch
    assert pa.tuner.path() != pb.tuner.path()


def test_module_source_has_no_host_logic():
    """What a module binds is the runtime's: its own text holds no launch, autograd or fallback code."""
    _, mod = module(PATTERNS["longformer"])
    text = inspect.getsource(mod)
    for word in ("torch.autograd", "custom_op", "TensorDescriptor", "def attention", "_plan(", "cudaMalloc"):
        assert word not in text, word
