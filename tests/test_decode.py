"""decode(q, k_cache, v_cache, cache_seqlens) and KVCache, against a float64 dense reference.

The reference is the definition: for batch row b with n = cache_seqlens[b], the last t rows of
masked softmax attention over keys 0..n-1, masked by the semantics oracle at length n.  The
Triton decode kernels run under the interpreter (TRITON_INTERPRET=1, set by conftest); the exact
decode walk runs where the kernels do not (TRITON_INTERPRET=0 here); the reference backend
decodes through the dense definition, the flex backend through the walk."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import patternc
from patternc import ir, semantics
from patternc.frontend import Stack, parse_program, resolve
from patternc.runtime.decode_inputs import MAX_DECODE_T

from kernel_check import TOL
from kernel_patterns import PATTERNS

EXTRA = {"prefix_half": "causal | (queries(0, n // 2) & keys(0, n // 2))",
         "two_randoms": "causal & (local(3) | random(1, block=16, seed=5) | random(2, block=32, seed=9))",
         "summary_window": "causal & (local(5) | summary(16, 3))"}
ALL = dict(PATTERNS, **EXTRA)
_mods: dict = {}


def module(src: str, backend: str = "triton"):
    """(pattern, module), loaded once per source, backend and interpreter switch (Triton reads the
    switch when a module defines its kernels)."""
    key = (src, backend, os.environ.get("TRITON_INTERPRET"))
    if key not in _mods:
        p = patternc.parse(f"pattern x = {src}")
        _mods[key] = (p, patternc.load(p, backend=backend))
    return _mods[key]


def rows_mask(expr, n: int, t: int) -> torch.Tensor:
    """(t, n): the oracle's rows n - t .. n - 1 at length n."""
    i, j = torch.arange(n - t, n)[:, None], torch.arange(n)[None, :]
    return torch.broadcast_to(semantics.allowed(expr, i, j, n), (t, n))


def reference(p, q, k_full, v_full, ns: list) -> tuple:
    """(out, lse) in float64 of the last t rows at each row's length, from the oracle's mask."""
    B, H, t, D = q.shape
    group = H // k_full.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((B, H, t), float("-inf"), dtype=torch.float64)
    for b, n in enumerate(ns):
        e = p.at(n)
        for h in range(H):
            m = rows_mask(e.for_head(h) if p.num_heads else e, n, t)
            s = q[b, h].double() @ k_full[b, h // group, :n].double().T / math.sqrt(D)
            s = s.masked_fill(~m, float("-inf"))
            lse[b, h] = torch.logsumexp(s, -1)
            w = torch.exp(s - torch.where(torch.isinf(lse[b, h]), 0.0, lse[b, h])[:, None])
            out[b, h] = w @ v_full[b, h // group, :n].double()
    return out, lse


def paged(cache: torch.Tensor, table: torch.Tensor, page: int) -> torch.Tensor:
    """`cache` stored in pages of `page` rows: row b's k-th page is page table[b, k]."""
    B, HK, L, D = cache.shape
    per = table.shape[1]
    padded = torch.zeros(B, HK, per * page, D, dtype=cache.dtype)
    padded[:, :, :L] = cache
    out = torch.empty(B * per, HK, page, D, dtype=cache.dtype)
    out[table.view(-1).long()] = padded.view(B, HK, per, page, D).permute(0, 2, 1, 3, 4).reshape(B * per, HK, page, D)
    return out


def inputs(t: int, ns: list, H: int, HK: int, D: int = 16, L: int = 150, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = len(ns)
    q = torch.randn(B, H, t, D, generator=g).to(dtype)
    k = torch.randn(B, HK, L, D, generator=g).to(dtype)
    v = torch.randn(B, HK, L, D, generator=g).to(dtype)
    return q, k, v, torch.tensor(ns, dtype=torch.int32), g


def check(mod, p, t: int, ns: list, H: int = 4, HK: int = 2, page=None, dtype=torch.float32, D: int = 16,
          L: int = 150):
    q, k, v, seq, g = inputs(t, ns, H, HK, D=D, L=L, dtype=dtype, seed=t + len(ns))
    want, want_lse = reference(p, q, k, v, ns)
    if page is None:
        out, lse = mod.decode(q, k, v, seq, return_lse=True)
    else:  # the same rows in shuffled pages
        table = torch.randperm(len(ns) * -(-L // page), generator=g).view(len(ns), -1).to(torch.int32)
        out, lse = mod.decode(q, paged(k, table, page), paged(v, table, page), seq, page_table=table,
                              return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    err = (out.double() - want).abs().max().item() / max(want.abs().max().item(), 0.1)
    assert err <= TOL[dtype], err
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    fin = torch.isfinite(want_lse)
    if fin.any():
        assert (lse.double() - want_lse)[fin].abs().max() < 5e-3


def lengths(t: int) -> list:
    """Ragged rows: the shortest possible (t), one past a tile boundary, and a long one."""
    return [t, 65 + t, 137]


@pytest.fixture
def walk_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


# ---- the kernels (interpreter) ---------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 3, 17])
@pytest.mark.parametrize("name", sorted(ALL))
def test_decode_kernels_match_the_float64_reference(name, t):
    """Four query heads on one kv head (a per-head pattern: one on each), packed in one tile."""
    p, mod = module(ALL[name])
    check(mod, p, t, lengths(t), H=p.num_heads or 4, HK=1 if not p.num_heads else p.num_heads)


@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("name", ["longformer", "bigbird", "strided", "fixed", "heads", "two_randoms"])
def test_every_split_of_the_keys_adds_up(name, splits, monkeypatch):
    """Split-K: whatever the number of splits (more than a row has tiles, too), the combine gives the
    same rows; one split and one pass write the output directly."""
    p, mod = module(ALL[name])
    monkeypatch.setattr(mod._bound.decoder, "splits", splits)
    check(mod, p, 2, [2, 90, 140], H=p.num_heads or 4, HK=2)


@pytest.mark.parametrize("page", [16, 32, 64])
@pytest.mark.parametrize("name", ["sink", "bigbird", "strided", "fixed"])
def test_paged_caches(name, page):
    p, mod = module(ALL[name])
    check(mod, p, 3, [3, 77, 140], H=4, HK=2, page=page)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_gqa(dtype):
    p, mod = module(ALL["longformer"])
    check(mod, p, 4, [4, 100, 149], H=8, HK=2, dtype=dtype, D=32)


def test_gqa_groups_larger_than_a_tile():
    """32 query heads on one kv head with t = 17: 544 rows, cut into row groups of a tile each."""
    p, mod = module(ALL["sink"])
    check(mod, p, 17, [17, 90], H=32, HK=1)


def test_an_empty_pattern_gives_zero_rows():
    p, mod = module("none")
    q, k, v, seq, _ = inputs(2, [5, 9], 2, 1)
    out, lse = mod.decode(q, k, v, seq, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()


# ---- the PyTorch paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
def test_decode_walk_matches_the_float64_reference(name, walk_path):
    p, mod = module(ALL[name])
    H = p.num_heads or 4
    for t in (1, 3, 17):
        check(mod, p, t, lengths(t), H=H, HK=2 if H % 2 == 0 else 1)
    check(mod, p, 3, [3, 130], H=H, HK=1, page=16)


def test_float64_takes_the_walk_exactly():
    p, mod = module(ALL["bigbird"])
    q, k, v, seq, _ = inputs(3, [3, 120], 4, 2, dtype=torch.float64)
    want, _ = reference(p, q, k, v, [3, 120])
    assert (mod.decode(q, k, v, seq) - want).abs().max() < 1e-12


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.attn"))


def example_patterns() -> list:
    out = []
    for f in EXAMPLES:
        prog = parse_program(f.read_text(), str(f))
        # a stack's layers are patterns of the file: they are tested as those
        # a pattern with select(...) decodes with its blocks (test_select_runtime.py)
        out += [(f.stem, name) for name in prog.definitions
                if not isinstance(resolve(prog, name, {}), Stack) and not ir.has_select(resolve(prog, name, {}).expr)]
    return out


def example(file: str, name: str):
    f = next(x for x in EXAMPLES if x.stem == file)
    return resolve(parse_program(f.read_text(), str(f)), name, {})


@pytest.mark.parametrize("file,name", example_patterns())
def test_every_example_decodes(file, name, walk_path):
    """Every example pattern at lengths where its windows, blocks and globals all matter (300 and
    1,100): the triton backend's walk for t = 1, 3 and 17, the dense definition (reference backend)
    and the flex backend (the same walk, printed into its module)."""
    p = example(file, name)
    H = p.num_heads or 2
    mod = patternc.load(p, backend="triton")
    for t in (1, 3, 17):
        check(mod, p, t, [t + 283, 1100], H=H, HK=H // 2, D=8, L=1100)
    check(patternc.load(p, backend="reference"), p, 3, [300, 1100], H=H, HK=1, D=8, L=1100)
    check(patternc.load(p, backend="flex"), p, 1, [300, 1100], H=H, HK=1, D=8, L=1100)


@pytest.mark.parametrize("file,name", example_patterns())
def test_every_example_decodes_in_the_kernels(file, name):
    p = example(file, name)
    mod = patternc.load(p, backend="triton")
    for t in (1, 17):
        check(mod, p, t, [t + 40, 700], H=p.num_heads or 2, HK=1, L=700)


# ---- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["triton", "reference", "flex"])
def test_bad_inputs_give_one_clear_error(backend):
    _, mod = module("causal & local(4)", backend)
    q, k, v, seq, _ = inputs(2, [4, 9], 4, 2)
    cases = [
        (dict(q=q.double()), TypeError, "share one dtype"),
        (dict(q=q[0]), ValueError, "q must have 4 dimensions"),
        (dict(k_cache=k[:, :, :, :8], v_cache=v[:, :, :, :8]), ValueError, "must have shape"),
        (dict(v_cache=v[:, :, :100]), ValueError, "same shape"),
        (dict(q=torch.randn(2, 3, 2, 16)), ValueError, "multiple of the cache's kv heads"),
        (dict(q=torch.randn(2, 4, MAX_DECODE_T + 1, 16)), ValueError, "decode takes 1 to"),
        (dict(cache_seqlens=seq.float()), ValueError, "cache_seqlens must be an int32 tensor of shape"),
        (dict(cache_seqlens=seq[:1]), ValueError, r"shape \(2,\)"),
        (dict(cache_seqlens=torch.tensor([1, 9], dtype=torch.int32)), ValueError, "less than t = 2"),
        (dict(cache_seqlens=torch.tensor([4, 151], dtype=torch.int32)), ValueError, "more than the cache holds"),
        (dict(page_table=torch.zeros(2, 3)), ValueError, "page_table must be an int32 tensor"),
        (dict(k_cache=torch.randn(8, 2, 24, 16), v_cache=torch.randn(8, 2, 24, 16),
              page_table=torch.zeros(2, 4, dtype=torch.int32)), ValueError, "power of two >= 16"),
    ]
    for change, err, msg in cases:
        args = dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seq)
        args.update({x: y for x, y in change.items() if x != "page_table"})
        with pytest.raises(err, match=msg):
            mod.decode(args["q"], args["k_cache"], args["v_cache"], args["cache_seqlens"],
                       page_table=change.get("page_table"))


# ---- KVCache -------------------------------------------------------------------------------------

STREAM = "causal & (sink(4) | local(60))"


def generate(mod, p, steps: list, B: int = 2, H: int = 4, HK: int = 2, D: int = 16, page_size=None):
    """Run KVCache.attend over `steps` (new tokens per call); every output row against the full
    attention's row; returns the cache and the memory it held after each step."""
    g = torch.Generator().manual_seed(1)
    cache = mod.KVCache(B, HK, D, dtype=torch.float32, device="cpu", page_size=page_size)
    total = sum(steps)
    K, V = (torch.randn(B, HK, total, D, generator=g, dtype=torch.float64) for _ in range(2))
    memory = []
    n = 0
    for t in steps:
        q = torch.randn(B, H, t, D, generator=g, dtype=torch.float64)
        out = cache.attend(q.float(), K[:, :, n:n + t].float(), V[:, :, n:n + t].float())
        n += t
        memory.append(cache.memory_bytes())
        kk = K[:, :, :n].float().double().repeat_interleave(H // HK, 1)
        vv = V[:, :, :n].float().double().repeat_interleave(H // HK, 1)
        sc = (q.float().double() @ kk.transpose(-1, -2) / math.sqrt(D)).masked_fill(~rows_mask(p.at(n), n, t),
                                                                                      float("-inf"))
        want = torch.softmax(sc, -1) @ vv
        assert (out.double() - want).abs().max() < 1e-4, n
    assert cache.length == n and torch.equal(cache.seqlens, torch.full((B,), n, dtype=torch.int32))
    return cache, memory


def test_kv_cache_generation_of_3000_steps(walk_path):
    """A streaming pattern decoded token by token for 3,000 steps: every output row is the full
    attention's, and the cache holds its bound (4 sinks + a 61-key window) from the first step."""
    p, mod = module(STREAM)
    cache, memory = generate(mod, p, [1] * 3000, B=1, H=2, HK=1)
    slots = 4 + 61
    assert set(memory) == {2 * 1 * 1 * slots * 16 * 4}  # k and v: B x Hkv x slots x D float32
    assert cache.slots == slots and mod.SPEC.cache_layout == (4, 61)


@pytest.mark.parametrize("page_size", [None, 16])
def test_kv_cache_in_the_kernels(page_size):
    """The ring through the decode kernels, with calls of 1 to 17 new tokens (the ring grows once to
    hold a chunk's keys), contiguous and paged."""
    p, mod = module(STREAM)
    steps = [1, 3, 1, 17, 1, 2] * 4 + [1] * 10  # 105 tokens: past the 65-key bound
    cache, memory = generate(mod, p, steps, page_size=page_size)
    assert cache.ring.window == 61 + 31  # room for a chunk of up to 32 tokens
    assert len(set(memory[3:])) == 1


@pytest.mark.parametrize("backend", ["reference", "flex", "triton"])
def test_kv_cache_of_every_backend(backend, walk_path):
    p, mod = module("local(7) | global(3)", backend)
    generate(mod, p, [1, 2, 1, 5] * 10, page_size=16 if backend == "flex" else None)


def test_unbounded_patterns_keep_every_position(walk_path):
    """causal: every key stays live, so the store grows (doubling from 256) and its docstring says so."""
    p, mod = module("causal & (local(5) | stride(7))")
    assert mod.SPEC.cache_layout is None and "unbounded" in mod.KVCache.__doc__
    cache, memory = generate(mod, p, [100, 100, 1, 100, 17])
    assert cache.slots == 512 and memory[-1] == 2 * memory[0]
    capped = mod.KVCache(1, 1, 8, dtype=torch.float32, device="cpu", max_len=40)
    assert capped.slots == 40


def test_kv_cache_errors_and_reset():
    _, mod = module(STREAM)
    cache = mod.KVCache(2, 2, 16, dtype=torch.float32, device="cpu", max_len=5)
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 3, 16)
    with pytest.raises(TypeError, match="has dtype torch.float64, but the cache holds torch.float32"):
        cache.attend(q.double(), k, k)
    with pytest.raises(ValueError, match="k_new and v_new must have shape"):
        cache.attend(q, k[:, :1], k[:, :1])
    with pytest.raises(ValueError, match="attend takes 1 to"):
        cache.attend(torch.randn(2, 4, MAX_DECODE_T + 1, 16), *(torch.randn(2, 2, MAX_DECODE_T + 1, 16),) * 2)
    cache.attend(q, k, k)
    with pytest.raises(ValueError, match="3 \\+ 3 tokens is more than max_len = 5"):
        cache.attend(q, k, k)
    assert cache.length == 3
    cache.reset()
    assert cache.length == 0 and int(cache.seqlens.sum()) == 0
    cache.attend(q, k, k)
    with pytest.raises(ValueError, match="page_size must be a power of two"):
        mod.KVCache(1, 1, 8, dtype=torch.float32, device="cpu", page_size=24)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mod.KVCache(0, 1, 8, dtype=torch.float32, device="cpu")


def test_kv_cache_memory_against_a_full_cache():
    """The tutorial's numbers: StreamingLLM (4 sinks, 1,020-key window) at 8 x 8 kv heads x 128, bf16,
    holds 1,025 slots, against 2^20 for a full cache of a million tokens."""
    p = patternc.parse(Path(__file__).resolve().parent.parent / "examples" / "streaming.attn")
    mod = patternc.load(p, backend="reference")
    cache = mod.KVCache(8, 8, 128, dtype=torch.bfloat16, device="meta")
    assert cache.slots == 1025 and cache.memory_bytes() == 2 * 8 * 8 * 1025 * 128 * 2


def test_decode_benchmark_smoke_run(tmp_path):
    """benchmarks/decode.py --device cpu runs end to end at tiny sizes and writes its table and JSON."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "decode.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--patterns", "streaming,causal", "--t", "1",
                        "4", "--contexts", "300", "--no-flex", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    ours = [x for x in rows if x["pattern"] in ("streaming", "causal")]
    assert len(ours) == 4 and all("ms" in x and "host_us" in x for x in ours), rows
    assert {x["pattern"] for x in rows} >= {"sdpa (whole cache)"}
    stream = next(x for x in ours if x["pattern"] == "streaming")  # 4 sinks + local(1020): 1,025 slots
    assert stream["kv_cache_mb"] * (1 << 20) == 2 * 1 * 2 * 1025 * 16 * 4  # K and V, B x Hkv x slots x D float32
    assert "| streaming | 300 | 1 |" in (tmp_path / "decode.md").read_text()


def test_decode_checks_each_kind_of_call_once_and_still_refuses_bad_input(monkeypatch):
    """A decode step's host time is its budget: shapes, dtypes and devices checked once per kind of
    call (runtime.decode_inputs.DecodeChecks), yet a call of another kind is checked in full."""
    from patternc.runtime import decode_inputs
    mod = patternc.load(patternc.parse("pattern p = causal & local(8)"), backend="reference")
    calls = []
    real = decode_inputs.check_decode
    monkeypatch.setattr(decode_inputs, "check_decode", lambda *a: calls.append(1) or real(*a))
    q, k = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 20, 16)
    seq = torch.tensor([5, 20], dtype=torch.int32)
    first = mod.decode(q, k, k, seq)
    for _ in range(3):
        assert torch.equal(mod.decode(q, k, k, seq), first)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="cache_seqlens must be an int32 tensor"):
        mod.decode(q, k, k, seq.float())
    with pytest.raises(TypeError, match="must share one dtype"):
        mod.decode(q.double(), k, k, seq)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        mod.decode(q.tolist(), k, k, seq)
    assert len(calls) == 4
