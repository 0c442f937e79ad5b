"""The same kernel contract on a real GPU (compiled kernels, not the interpreter).

Run on a CUDA machine with:  pytest -m gpu tests/test_gpu.py
CI has no GPU, so these are skipped there; the interpreter suite (test_kernels.py and the
runtime's tests) covers every pattern at small sizes, and this file covers the large, bf16 matrix.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import patternc
from patternc.runtime import launch

from kernel_check import TOL, check_module

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from patterns import PATTERNS as _BENCH  # noqa: E402

# the benchmark's patterns (with a prefix that fits n = 1000) plus a per-head mix
PATTERNS = dict(_BENCH, prefix_lm="causal | (queries(0, 1000) & keys(0, 1000))",
                per_head="heads { 0..0: local(128), 1..1: causal & stride(64) }")

_mods: dict = {}


def module(name):
    if name not in _mods:
        p = patternc.parse(f"pattern p_{name} = {PATTERNS[name]}")
        _mods[name] = (p, patternc.load(p, backend="triton"))
    return _mods[name]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("n", [1000, 4099, 16384])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_bf16_against_float64(name, n, D):
    p, mod = module(name)
    H = 2
    res = check_module(mod, p, n, D=D, B=1, H=H, HK=1 if name != "per_head" else 2, dtype=torch.bfloat16,
                       device="cuda", backward=n <= 4099 or D == 64)
    assert res.lse_ok, res
    assert res.worst() <= TOL[torch.bfloat16], res


@pytest.mark.parametrize("name", ["longformer", "strided", "fixed", "bigbird"])
def test_fp32_and_fp16(name):
    torch.backends.cuda.matmul.allow_tf32 = False
    p, mod = module(name)
    for dtype in (torch.float32, torch.float16):
        res = check_module(mod, p, 777, D=64, B=2, H=4, HK=2, dtype=dtype, device="cuda")
        assert res.lse_ok and res.worst() <= TOL[dtype], (dtype, res)


@pytest.mark.parametrize("how", ["env", "torch"])
def test_deterministic_backward_on_gpu(how, monkeypatch):
    """By default dq is added atomically (order varies); deterministic mode must be bit-exact."""
    p, mod = module("bigbird")
    if how == "env":
        monkeypatch.setenv("PATTERNC_DETERMINISTIC", "1")
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    grads = []
    for _ in range(2):
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 4, 4096, 64, generator=g).cuda().bfloat16().requires_grad_(True)
                   for _ in range(3))
        mod.attention(q, k, v).float().pow(2).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["longformer", "strided", "causal_local"])
def test_atomic_dq_matches_the_dq_kernel_on_gpu(name, monkeypatch):
    """The fused backward (TMA reductions into float32 dq) against the separate dq kernel."""
    p, mod = module(name)
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v, do = (torch.randn(1, 2, 5000, 128, generator=g).cuda().bfloat16() for _ in range(4))
    grads = {}
    for fused in (1, 0):
        monkeypatch.setenv("PATTERNC_CONFIG", f"fused_dq={fused}")
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        mod.attention(qq, kk, vv).backward(do)
        grads[fused] = [t.grad.float() for t in (qq, kk, vv)]
    for a, b in zip(grads[1], grads[0]):
        assert (a - b).abs().max() <= 2e-2 * b.abs().max()


def test_torch_compile_on_gpu():
    """Under torch.compile (fullgraph) the custom ops give eager's output and gradients."""
    p, mod = module("longformer")
    q, k, v = (torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    f = torch.compile(lambda q, k, v: mod.attention(q, k, v).float().pow(2).sum(), fullgraph=True)
    loss = f(q, k, v)
    loss.backward()
    compiled = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    eager = mod.attention(q, k, v).float().pow(2).sum()
    eager.backward()
    assert abs(loss.item() - eager.item()) <= 1e-4 * abs(eager.item())
    for a, t in zip(compiled, (q, k, v)):  # (the compiled graph may round its upstream gradient differently)
        assert (a.float() - t.grad.float()).abs().max() <= 1e-2 * t.grad.float().abs().max()


def test_float64_takes_the_exact_pytorch_path_on_gpu():
    """float64 inputs on CUDA: the kernels do not take them, the sparse PyTorch walk does, exactly."""
    p, mod = module("bigbird")
    res = check_module(mod, p, 3001, D=64, B=1, H=2, HK=1, dtype=torch.float64, device="cuda")
    assert res.lse_ok and res.out < 1e-12 and res.worst() < 1e-6, res


@pytest.mark.parametrize("name", ["longformer", "bigbird", "streaming"])
def test_split_global_rows_in_small_chunks(name, monkeypatch):
    """The chunked walks of global rows/columns with many chunks (2 tiles each) on real kernels."""
    monkeypatch.setenv("PATTERNC_CONFIG", "split_chunk=2")
    p, mod = module(name)
    res = check_module(mod, p, 4099, D=64, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res


@pytest.mark.parametrize("src", ["causal & (sink(4) | local(200))", "local(100) | keys(100, 110)",
                                 "local(60) | keys(60, 64)", "causal & (local(300) | keys(0, 32) | keys(n - 3, n))"])
@pytest.mark.parametrize("D", [64, 128])
def test_narrow_key_columns_on_gpu(src, D):
    """Narrow key columns' own 16/32-key step (pointer loads) beside 64-key TMA tiles, compiled."""
    p = patternc.parse(f"pattern p_narrow = {src}")
    mod = patternc.load(p, backend="triton")
    assert "a step of its own" in patternc.compile(p, "triton")
    res = check_module(mod, p, 2051, D=D, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res


def test_settings_too_large_for_shared_memory_are_reduced(monkeypatch):
    """Tiles and stages beyond the GPU's shared memory raise OutOfResources; the module retries
    with fewer stages and smaller tiles and still computes the right thing."""
    p = patternc.parse(f"pattern p_longformer = {PATTERNS['longformer']}")
    mod = patternc.load(p, backend="triton")  # a fresh module: what it learns stays with it
    monkeypatch.setenv("PATTERNC_CONFIG", "BM=128,BN=256,num_stages=4,DKV_BN=256,dkv_stages=4")
    res = check_module(mod, p, 1000, D=128, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res
    assert mod._bound.triton.shrunk, "expected at least one reduction"


def test_autotune_on_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATTERNC_AUTOTUNE", "1")
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    p = patternc.parse(f"pattern p_local = {PATTERNS['local']}")
    mod = patternc.load(p, backend="triton")
    res = check_module(mod, p, 4099, D=128, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res
    assert len(mod._bound.triton.tuner.tuned) == 2 and list(tmp_path.glob("tuned-*.json"))


@pytest.mark.parametrize("name", ["local", "longformer", "bigbird"])
def test_pointer_loads_and_unaligned_layouts_on_gpu(name, monkeypatch):
    """The TMA path is the default; the pointer path serves PATTERNC_TMA=0, non-16-byte-aligned
    layouts (D = 20 in bf16: 40-byte rows) and (B, n, H, D) storage viewed as (B, H, n, D)."""
    p, mod = module(name)
    for D, env, noncontig in ((128, "0", False), (20, "1", False), (64, "1", True)):
        monkeypatch.setenv("PATTERNC_TMA", env)
        res = check_module(mod, p, 1999, D=D, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda",
                           noncontiguous=noncontig)
        assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], (D, env, res)


def test_first_call_compiles_every_kernel_at_once(monkeypatch, tmp_path):
    """The first forward and the first backward hand all their kernels' compilations to a
    thread pool before launching (two passes here, and the backward's five kernels); by default
    (PATTERNC_PARALLEL_COMPILE=2) each kernel's launcher is built in that pool while the kernel
    compiles (none is built at launch: the guessed launcher source was the right one), and the
    binaries load in a pool too, not one after the other at launch."""
    import threading
    import triton.runtime.build as build
    from triton.compiler.compiler import CompiledKernel
    threads, launchers = [], []
    real, real_build = CompiledKernel._init_handles, build._build

    def spy(self):
        if self.module is None:
            threads.append((self.name, threading.current_thread() is threading.main_thread()))
        return real(self)

    def build_spy(name, *args, **kw):
        if name == "__triton_launcher":
            launchers.append(threading.current_thread() is threading.main_thread())
        return real_build(name, *args, **kw)
    monkeypatch.setattr(CompiledKernel, "_init_handles", spy)
    monkeypatch.setattr(build, "_build", build_spy)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # every launcher built in this test
    monkeypatch.delenv("PATTERNC_PARALLEL_COMPILE", raising=False)  # the default: 2
    p = patternc.parse("pattern p_first_call = causal & (local(100) | stride(96))")  # a pattern no other test compiles
    mod = patternc.load(p, backend="triton")
    res = check_module(mod, p, 3001, D=64, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res
    assert {pl["key"][0] for pl in mod._bound.triton.plans.values() if pl.get("warmed")} == {"fwd", "bwd"}
    ours = [(name, main) for name, main in threads if name.startswith(("_fwd", "_dq", "_dkdv"))]
    assert len(ours) >= 4 and not any(main for _, main in ours), threads
    assert len(launchers) >= 2 and not any(launchers), launchers  # all in the pool, none at launch


@pytest.mark.parametrize("mode", ["1", "2"])  # 2: TMA descriptors encoded once (opt-in)
@pytest.mark.parametrize("name", ["longformer", "strided"])
def test_repeated_calls_launch_compiled_kernels_directly(name, mode, monkeypatch):
    """Direct launches (the default): from the second call on, each launch site calls its compiled
    kernel directly (host time); results must equal the first call's bit for bit, for the
    forward and every gradient, and a launch hook (a profiler) must still see launches (the JIT's
    path is taken then)."""
    monkeypatch.setenv("PATTERNC_DIRECT_LAUNCH", mode)
    p, mod = module(name)
    g = torch.Generator(device="cpu").manual_seed(3)
    q, k, v, do = (torch.randn(1, 2, 3000, 64, generator=g).cuda().bfloat16() for _ in range(4))
    runs = []
    for _ in range(3):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = mod.attention(qq, kk, vv)
        out.backward(do)
        runs.append([out] + [t.grad for t in (qq, kk, vv)])
    assert launch._DIRECT[0], "a direct call raised: launches fell back to the JIT"
    assert mod._bound.triton.launch.compiled, "no launch site kept its compiled kernel"
    if mode == "2":
        assert launch._DESC_ARGS, "no descriptor was encoded by the direct path"
    # atomic dq (strided's default) may differ in the last bits between runs; the rest may not
    for i in (0, 1, 2, 3) if not mod.SPEC.schedule.fused_dq else (0, 2, 3):
        assert torch.equal(runs[0][i], runs[2][i]), i
    import triton
    seen = []
    hook = lambda *a, **kw: seen.append(1)  # noqa: E731
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        torch.testing.assert_close(mod.attention(q, k, v), runs[0][0], rtol=0, atol=0)
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert seen


@pytest.mark.parametrize("src", ["local(200) & rows_mod(4, 1) | causal & local(0)",
                                 "block(512) | (block(1024) & stride(4) & rows_mod(4, 3))"])
@pytest.mark.parametrize("D", [64, 128])
def test_rows_mod_on_gpu(src, D):
    """LongNet's row classes: a filter with whole query tiles skipped, and one residue class of a
    strided pass (the other classes skipped whole), compiled for the GPU."""
    p = patternc.parse(f"pattern x = {src}")
    mod = patternc.load(p, backend="triton")
    res = check_module(mod, p, 4099, D=D, B=1, H=2, HK=1, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res


def test_longnet_heads_and_a_stack_on_gpu():
    """examples/longnet.attn's per-head LongNet, and a stack module's layers, on the GPU."""
    root = Path(__file__).resolve().parent.parent / "examples"
    p = patternc.parse(root / "longnet.attn", "longnet_heads", s=256)
    mod = patternc.load(p, backend="triton")
    res = check_module(mod, p, 4099, D=64, B=1, H=4, HK=2, dtype=torch.bfloat16, device="cuda")
    assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], res
    s = patternc.parse(root / "stacks.attn", w=512, pairs=2)
    stack = patternc.load(s, backend="triton")
    for i in (0, 1):
        res = check_module(stack.layer(i), s.layers[i], 3000, D=128, B=1, H=2, HK=1, dtype=torch.bfloat16,
                           device="cuda")
        assert res.lse_ok and res.worst() <= TOL[torch.bfloat16], (i, res)


# ---- decoding ------------------------------------------------------------------------------------

def decode_reference(mod, q, k, v, ns: list, page_table=None):
    """float64 rows n - t .. n - 1 of each batch row over keys 0..n-1 (contiguous caches)."""
    B, H, t, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for b, n in enumerate(ns):
        rows = torch.arange(n - t, n, device=q.device)[:, None]
        keys = torch.arange(n, device=q.device)[None, :]
        allowed = mod.mask_rows(rows, keys, n, H).to(q.device)  # (H, t, n)
        kk = k[b, :, :n].double().repeat_interleave(group, 0)
        vv = v[b, :, :n].double().repeat_interleave(group, 0)
        s = (q[b].double() @ kk.transpose(-1, -2)) / D ** 0.5
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
        out[b] = p @ vv
    return out


def pages_of(cache, table):
    """A contiguous cache stored in pages: row b's k-th page is page table[b, k]."""
    B, HK, L, D = cache.shape
    per = table.shape[1]
    page = L // per
    pages = torch.empty(B * per, HK, page, D, dtype=cache.dtype, device=cache.device)
    pages[table.view(-1).long()] = cache.view(B, HK, per, page, D).permute(0, 2, 1, 3, 4).reshape(-1, HK, page, D)
    return pages


@pytest.mark.parametrize("t", [1, 4, 17])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_decode_bf16_against_float64(name, t):
    """Every benchmark pattern, bf16, 32 query heads on 8 kv heads, ragged lengths (t itself, not a
    tile multiple, long), contiguous and paged (64-row pages) caches."""
    p, mod = module(name)
    H, HK, D, L = (2, 1, 128, 20480) if name == "per_head" else (32, 8, 128, 20480)
    ns = [t + 63, 4099, 20000]  # fixed(isqrt(n), 8) is defined from n = 64
    g = torch.Generator(device="cpu").manual_seed(t)
    q = torch.randn(3, H, t, D, generator=g).cuda().bfloat16()
    k, v = (torch.randn(3, HK, L, D, generator=g).cuda().bfloat16() for _ in range(2))
    seq = torch.tensor(ns, dtype=torch.int32, device="cuda")
    want = decode_reference(mod, q, k, v, ns)
    scale = want.abs().max().item()
    out = mod.decode(q, k, v, seq)
    assert (out.double() - want).abs().max().item() <= TOL[torch.bfloat16] * scale
    table = torch.randperm(3 * L // 64, generator=g).view(3, -1).to(device="cuda", dtype=torch.int32)
    out = mod.decode(q, pages_of(k, table), pages_of(v, table), seq, page_table=table)
    assert (out.double() - want).abs().max().item() <= TOL[torch.bfloat16] * scale


@pytest.mark.parametrize("name", ["streaming", "causal", "bigbird", "strided"])
def test_decode_step_captured_in_a_cuda_graph(name):
    """A decode step (kernels, splits and the combine) captured once and replayed with new inputs
    and new lengths gives, bit for bit, what an eager call gives: nothing is read on the host."""
    p, mod = module(name)
    B, H, HK, D, L = 8, 32, 8, 128, 8192
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g).cuda().bfloat16()
    k, v = (torch.randn(B, HK, L, D, generator=g).cuda().bfloat16() for _ in range(2))
    seq = torch.full((B,), 5000, dtype=torch.int32, device="cuda")
    mod.decode(q, k, v, seq)  # compile and plan outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mod.decode(q, k, v, seq)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mod.decode(q, k, v, seq)
    for step in range(3):
        q.copy_(torch.randn(B, H, 1, D, generator=g).cuda().bfloat16())
        seq.copy_(torch.tensor([100 + 997 * step + 61 * b for b in range(B)], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        eager = mod.decode(q, k, v, seq)
        assert torch.equal(out, eager), step
        want = decode_reference(mod, q, k, v, seq.tolist())
        assert (out.double() - want).abs().max().item() <= TOL[torch.bfloat16] * want.abs().max().item()


def test_kv_cache_generation_on_gpu():
    """StreamingLLM's cache on the GPU, bf16: 2,000 steps (a few of 4 tokens), every row against the
    full attention's; the cache stays at 4 sinks + the 1,025-key window (+ 3 for the chunks)."""
    p, mod = module("streaming")
    B, H, HK, D = 2, 8, 2, 128
    cache = mod.KVCache(B, HK, D, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    ks, vs, n = [], [], 0
    for step in range(2000):
        t = 4 if step % 97 == 0 else 1
        q, k, v = (torch.randn(B, h, t, D, generator=g).cuda().bfloat16() for h in (H, HK, HK))
        out = cache.attend(q, k, v)
        ks.append(k)
        vs.append(v)
        n += t
        if step % 50 == 0 or step > 1990:
            K, V = torch.cat(ks, 2), torch.cat(vs, 2)
            want = decode_reference(mod, q, K, V, [n] * B)
            assert (out.double() - want).abs().max().item() <= TOL[torch.bfloat16] * want.abs().max().item(), step
    assert cache.slots == 4 + 1025 + 3 and cache.memory_bytes() == 2 * B * HK * cache.slots * D * 2


# ---- packed documents and padded rows (runtime.varlen) ------------------------------------------

PACKED_LENS = [1, 2, 63, 64, 65, 127, 128, 129, 1000, 3001, 17]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("name", ["causal", "streaming", "longformer", "strided", "fixed", "bigbird", "per_head"])
def test_packed_bf16_against_float64(name, D):
    """Documents of lengths 1, 2, 63, 64, 65 (tile edges) up to 3001 in one packed row, bf16, GQA,
    forward and gradients, against the float64 block-diagonal reference; NaN nowhere."""
    from kernel_check import check_sequences, packed
    p, mod = module(name)
    lens = [m for m in PACKED_LENS if name != "fixed" or m >= 64]  # fixed(...) is not defined below 64
    cu, spans, total = packed(lens)
    H, HK = (2, 2) if name == "per_head" else (4, 2)
    check_sequences(mod, p, 1, H, HK, total, spans, dict(cu_seqlens=cu.cuda(), max_seqlen=max(lens)), D=D,
                    dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("name", ["causal", "longformer", "strided", "bigbird"])
def test_padded_bf16_against_float64(name):
    """Right padding, left padding, both and an empty row in one bf16 batch (padding holds NaN)."""
    from kernel_check import check_sequences, padded_batch
    p, mod = module(name)
    starts, lens, spans = padded_batch(2049)
    check_sequences(mod, p, 4, 2, 1, 2049, spans, dict(seq_lens=lens.cuda(), seq_starts=starts.cuda()), D=128,
                    dtype=torch.bfloat16, device="cuda")


def _compiled_kernels(mod) -> int:
    """How many compiled variants the module's pattern kernels hold (Triton's own caches)."""
    total = 0
    for case in mod.SPEC.cases:
        for x in case.passes:
            for kernel in (x.fwd, x.dq, x.dkdv):
                if kernel is not None:
                    total += sum(len(cache[0]) for cache in kernel.device_caches.values())
    return total


@pytest.mark.parametrize("name", ["strided", "longformer"])
def test_length_changes_compile_nothing_new_on_gpu(name):
    """New document lengths, counts, longest documents and totals every step: after the first step
    Triton compiles nothing (its kernel caches keep their size)."""
    import random
    p, mod = module(name)
    rng = random.Random(0)
    sizes = []
    for step in range(6):
        lens = [rng.randint(1, 3000) for _ in range(rng.randint(1, 9))]
        cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32, device="cuda")
        T = sum(lens)
        q, k, v = (torch.randn(1, 2, T, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        mod.attention(q, k, v, cu_seqlens=cu, max_seqlen=max(lens)).float().sum().backward()
        sl = torch.tensor([rng.randint(0, 1000) for _ in range(3)], dtype=torch.int32, device="cuda")
        q, k, v = (torch.randn(3, 2, 1000, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        mod.attention(q, k, v, seq_lens=sl).float().sum().backward()
        torch.cuda.synchronize()
        sizes.append(_compiled_kernels(mod))
    assert sizes[0] > 0 and len(set(sizes)) == 1, sizes


def test_many_short_documents_beyond_grid_axis_limits():
    """More documents x heads than a grid's second axis takes (65,535): equal to the plain call on
    the same documents as a batch."""
    p, mod = module("causal")
    docs, m, H = 5000, 8, 16
    cu = torch.arange(0, docs * m + 1, m, dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(1, H, docs * m, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = mod.attention(q, k, v, cu_seqlens=cu, max_seqlen=m)
    as_batch = lambda t: t[0].reshape(H, docs, m, 64).transpose(0, 1)  # noqa: E731
    q, k, v = as_batch(q), as_batch(k), as_batch(v)
    want = torch.cat([mod.attention(q[i:i + 1000], k[i:i + 1000], v[i:i + 1000]) for i in range(0, docs, 1000)])
    torch.testing.assert_close(as_batch(out), want, atol=1e-2, rtol=0)


def test_packed_under_torch_compile_on_gpu():
    p, mod = module("longformer")
    cu = torch.tensor([0, 700, 701, 3000], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(1, 2, 3000, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    f = torch.compile(lambda q, k, v: mod.attention(q, k, v, cu_seqlens=cu, max_seqlen=2299).float().pow(2).sum(),
                      fullgraph=True)
    loss = f(q, k, v)
    eager = mod.attention(q, k, v, cu_seqlens=cu, max_seqlen=2299).float().pow(2).sum()
    assert abs(loss.item() - eager.item()) <= 1e-4 * abs(eager.item())


@pytest.mark.parametrize("check", ["device", "host"])
def test_bad_cu_seqlens_on_gpu(check, tmp_path):
    """On the fast path a bad cu_seqlens stops the process with a device-side assertion (in a
    subprocess here: it ends the CUDA context); PATTERNC_CHECK_SEQUENCES=1 gives the clear error."""
    import os
    import subprocess
    script = tmp_path / "bad.py"
    script.write_text(
        "import torch, patternc\n"
        "mod = patternc.load(patternc.parse('pattern x = causal'))\n"
        "q = torch.randn(1, 2, 100, 64, device='cuda', dtype=torch.bfloat16)\n"
        "cu = torch.tensor([0, 60, 50, 100], dtype=torch.int32, device='cuda')\n"
        "mod.attention(q, q, q, cu_seqlens=cu, max_seqlen=60)\n"
        "torch.cuda.synchronize()\n")
    env = dict(os.environ, PATTERNC_CHECK_SEQUENCES="1" if check == "host" else "0")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0
    if check == "host":
        assert "cu_seqlens must not decrease, got cu_seqlens[2] = 50 < cu_seqlens[1] = 60" in r.stderr, r.stderr
    else:
        assert "assert" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("name", ["longformer", "causal"])
def test_packed_backward_is_deterministic_on_gpu(name):
    """Like the plain kernels, the document-aware backward (no atomics here) gives bit-identical
    gradients run to run."""
    p, mod = module(name)
    cu = torch.tensor([0, 1000, 1001, 3500, 3600], dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cpu").manual_seed(5)
    q, k, v, do = (torch.randn(1, 2, 3600, 128, generator=g).cuda().bfloat16() for _ in range(4))
    runs = []
    for _ in range(2):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        mod.attention(qq, kk, vv, cu_seqlens=cu, max_seqlen=2500).backward(do)
        runs.append([t.grad for t in (qq, kk, vv)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- select(...): learned block selection

SELECTED = "pattern nsa(w = 512, k = 16) = causal & (sink(4) | local(w) | select(k, block=64))"


def _selected_reference(q, k, v, blocks, scale):
    """(out, lse, block mass) in float64 on the GPU, from patternc.semantics and the blocks."""
    from test_select_runtime import reference

    return reference(SELECTED, q, k, v, blocks, scale)


@pytest.mark.parametrize("hs", ["1", "kv", "q"])
@pytest.mark.parametrize("n", [1000, 4099])
def test_selected_bf16_against_float64(n, hs):
    from test_select_runtime import adversarial_blocks

    mod = patternc.load(SELECTED, backend="triton")
    B, Hq, Hkv, D = 1, 4, 2, 128
    Hs = {"1": 1, "kv": Hkv, "q": Hq}[hs]
    blocks = adversarial_blocks(n, 16, 64, 64, B, Hs).cuda()
    g = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(B, Hq, n, D, device="cuda", generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(B, Hkv, n, D, device="cuda", generator=g).bfloat16().requires_grad_() for _ in range(2))
    out, lse, mass = mod.attention(q, k, v, return_lse=True, blocks=blocks, return_block_mass=True)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    out_r, lse_r, mass_r = _selected_reference(qr, kr, vr, blocks.cpu(), D ** -0.5)
    grads_r = torch.autograd.grad(out_r, (qr, kr, vr), do.double())
    tol = TOL[torch.bfloat16]
    assert (out.double() - out_r).abs().max() <= tol * max(out_r.abs().max(), 0.1)
    finite = torch.isfinite(lse_r)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (mass.double() - mass_r.to(mass.device)).abs().max() <= 2e-2 * max(mass_r.abs().max().item(), 1.0)
    for got, want in zip(grads, grads_r):
        assert (got.double() - want).abs().max() <= tol * max(want.abs().max(), 0.1)


def test_selected_backward_is_deterministic_and_inverts_once_on_gpu():
    mod = patternc.load(SELECTED, backend="triton")
    n, D = 8192, 128
    q = torch.randn(1, 16, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, 4, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    sel = mod.select_blocks(torch.randn(1, 8, n, 64, device="cuda", dtype=torch.bfloat16),
                            torch.randn(1, 4, n, 64, device="cuda", dtype=torch.bfloat16))
    runs = [torch.autograd.grad(mod.attention(q, k, v, blocks=sel).float().square().sum(), (q, k, v)) for _ in range(3)]
    assert sel.inverse_builds == 1
    assert all(torch.equal(a, b) for r in runs[1:] for a, b in zip(runs[0], r))


def test_select_blocks_kernel_matches_pytorch_on_gpu():
    from patternc.runtime.select_index import topk_blocks

    mod = patternc.load(SELECTED, backend="triton")
    n = 20000
    g = torch.Generator(device="cuda").manual_seed(0)
    qi = torch.randint(-2, 3, (1, 8, n, 64), device="cuda", generator=g).to(torch.bfloat16)  # exact scores
    ki = torch.randint(-2, 3, (1, 4, n, 64), device="cuda", generator=g).to(torch.bfloat16)
    assert torch.equal(mod.select_blocks(qi, ki).blocks, topk_blocks(mod.SPEC, qi, ki, None))


def test_selection_benchmark_runs_on_gpu(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import selection

    assert selection.main(["--n", "8192", "--no-fla", "--layers", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "selection.md").read_text().count("| 8192 |") >= 2


# ---- transformers (runtime.hf, runtime.hf_cache) ------------------------------------------------

def test_transformers_llama_bf16_forward_backward_and_generation_on_gpu():
    """A small bf16 Llama (GQA, D = 64) with StreamingLLM attention on the Triton kernels: logits and
    gradients against eager attention with the pattern's mask, a left-padded batch, torch.compile
    fullgraph (inductor), and cached greedy generation (pattern-shaped cache) equal to uncached."""
    import copy
    transformers = pytest.importorskip("transformers")
    mod = patternc.load("pattern hf_streaming(sinks = 4, w = 60) = causal & (sink(sinks) | local(w))")
    name = mod.register_hf()
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=name)
    ref = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    ref.load_state_dict(ours.state_dict())
    ours, ref = ours.cuda().bfloat16(), ref.cuda().bfloat16()
    n = 300
    ids = torch.randint(0, 512, (2, n), device="cuda")
    bias = torch.zeros(n, n, device="cuda").masked_fill(~mod.mask(n, device="cuda"), float("-inf"))
    out, want = ours(ids).logits, ref(ids, attention_mask=bias.bfloat16()[None, None].expand(2, 1, n, n)).logits
    assert (out.float() - want.float()).abs().max().item() < 0.05 * want.float().abs().max().item()
    out.float().square().mean().backward()
    want.float().square().mean().backward()
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert (a.grad.float() - b.grad.float()).abs().max().item() <= 0.05 * b.grad.float().abs().max().item() + 1e-4, k
    # left padding: the short row alone gives the same logits
    mask = torch.ones_like(ids)
    mask[1, :100] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = ours(ids, attention_mask=mask, position_ids=pos).logits
    alone = ours(ids[1:, 100:]).logits
    assert (padded[1, 100:].float() - alone[0].float()).abs().max().item() < 0.05 * alone.float().abs().max().item()
    # torch.compile, fullgraph, forward and backward
    compiled = torch.compile(copy.deepcopy(ours), fullgraph=True)
    loss = compiled(ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    eager_loss = ours(ids, attention_mask=mask, labels=ids).loss
    assert abs(loss.item() - eager_loss.item()) < 0.02 * abs(eager_loss.item())
    # generation: cached (the pattern's KVCache: decode kernels) against uncached
    ours.eval()
    prompt = ids[:1, :40]
    cache = mod.hf_cache(ours)
    cached = ours.generate(prompt, max_new_tokens=64, do_sample=False, cache=cache)
    uncached = ours.generate(prompt, max_new_tokens=64, do_sample=False, use_cache=False)
    agree = (cached == uncached).float().mean().item()
    assert agree > 0.9, agree  # bf16: decode and attention round differently, so a near-tie may flip late tokens
    assert cache.layers[0].kv.slots == sum(mod._bound.spec.cache_layout)
