"""`attention(q, k, v, blocks=...)`, `Selection` and `select_blocks` against float64 references built
from the pattern's semantics and the blocks tensor: the Triton kernels (interpreter), the exact
PyTorch walk, the reference and flex backends; forward, gradients, block mass, GQA with every
selection-head count, ragged lengths, and blocks with duplicates, empty slots, blocks inside the
window, above the diagonal and the short last block."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import patternc
from patternc import ir, semantics
from patternc.runtime import select_index
from patternc.runtime.select_index import launch_index, topk_blocks
from patternc.runtime.selection import Selection, selection_inverse

NSA = "pattern nsa = causal & (sink(4) | local(24) | select(3, block=16))"
WIDE = "pattern wide = causal & (local(20) | select(2, block=32, qblock=16))"


def load(src: str, backend: str = "triton"):
    return patternc.load(src, backend=backend)


def adversarial_blocks(n: int, K: int, block: int, qblock: int, B: int, Hs: int, seed: int = 0) -> torch.Tensor:
    """Random blocks plus, in every row, a repeat, an empty slot, the query block's own (window)
    block, a block after it (above the diagonal) and the last, short block."""
    g = torch.Generator().manual_seed(seed)
    nqb, nkb = -(-n // qblock), -(-n // block)
    out = torch.randint(-1, nkb, (B, Hs, nqb, K), generator=g, dtype=torch.int32)
    qb = torch.arange(nqb, dtype=torch.int32)[None, None, :]
    own = (qb * qblock) // block
    specials = [out[..., 0], torch.full_like(out[..., 0], -1), own.expand_as(out[..., 0]),
                torch.clamp(own + 1, max=nkb - 1).expand_as(out[..., 0]), torch.full_like(out[..., 0], nkb - 1)]
    for s in range(1, K):
        out[..., s] = torch.where(torch.rand(out[..., s].shape, generator=g) < 0.6, specials[s % len(specials)],
                                  out[..., s])
    return out


def reference(src: str, q, k, v, blocks: torch.Tensor, scale: float):
    """(out, lse, block mass) in float64 from patternc.semantics with the selection, and the
    probabilities for the gradients (autograd of this formula)."""
    p = patternc.parse(src)
    B, H, n, D = q.shape
    Hs = blocks.shape[1]
    (atom,) = ir.selects(p.expr)
    K, b, qb = (e.value for e in ir.int_args(atom))
    e = p.at(n)
    keep = torch.stack([torch.stack([semantics.dense_mask(e, n, head=h, selection=blocks[z, h // (H // Hs)].long())
                                     for h in range(H)]) for z in range(B)]).to(q.device)
    group = H // k.shape[1]
    s = q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2) * scale
    s = s.masked_fill(~keep, -math.inf)
    empty = ~keep.any(-1, keepdim=True)
    mx = torch.where(empty, 0.0, s.amax(-1, keepdim=True)).detach()
    ex = torch.exp(s - mx)
    den = torch.where(empty, 1.0, ex.sum(-1, keepdim=True))
    prob = ex / den
    out = prob @ v.double().repeat_interleave(group, 1)
    lse = (mx + den.log()).masked_fill(empty, -math.inf).squeeze(-1)
    nqb, nkb = blocks.shape[2], -(-n // b)
    mass = torch.zeros(B, H, nqb, K, dtype=torch.float64)
    pr = prob.detach()
    for z in range(B):
        for h in range(H):
            for Q in range(nqb):
                seen = set()
                for s_ in range(K):
                    kb = int(blocks[z, h // (H // Hs), Q, s_])
                    if 0 <= kb < nkb and kb not in seen:
                        mass[z, h, Q, s_] = pr[z, h, Q * qb:(Q + 1) * qb, kb * b:(kb + 1) * b].sum().item()
                    seen.add(kb)
    return out, lse, mass


def inputs(B, Hq, Hkv, n, D, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g).to(dtype).requires_grad_() for H in (Hq, Hkv, Hkv)]


def check_against_reference(mod, src, n, Hs_kind, dtype=torch.float32, tol=2e-5, seed=0):
    B, Hq, Hkv, D = 2, 4, 2, 16
    K, b, qb = mod.SPEC.select
    Hs = {"1": 1, "kv": Hkv, "q": Hq}[Hs_kind]
    blocks = adversarial_blocks(n, K, b, qb, B, Hs, seed)
    q, k, v = inputs(B, Hq, Hkv, n, D, dtype)
    scale = 0.3
    out, lse, mass = mod.attention(q, k, v, scale, return_lse=True, blocks=blocks, return_block_mass=True)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    out_r, lse_r, mass_r = reference(src, qr, kr, vr, blocks, scale)
    dq_r, dk_r, dv_r = torch.autograd.grad(out_r, (qr, kr, vr), g)
    torch.testing.assert_close(out.double(), out_r.detach(), atol=tol, rtol=tol)
    finite = torch.isfinite(lse_r)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], lse_r[finite], atol=tol, rtol=tol)
    torch.testing.assert_close(mass.double(), mass_r, atol=tol, rtol=tol)
    for got, want in ((dq, dq_r), (dk, dk_r), (dv, dv_r)):
        torch.testing.assert_close(got.double(), want, atol=10 * tol, rtol=10 * tol)
    return blocks


# ---------------------------------------------------------------- the paths against the reference


@pytest.mark.parametrize("src,n,hs", [(NSA, 77, "1"), (WIDE, 70, "kv"), (NSA, 53, "q")])
def test_kernels_match_the_reference(src, n, hs):
    check_against_reference(load(src), src, n, hs)


@pytest.mark.parametrize("src,n,hs", [(NSA, 77, "1"), (NSA, 100, "kv"), (WIDE, 70, "q"),
                                      ("pattern s = select(2, block=16) | local(3)", 45, "1"),
                                      ("pattern t = causal & (stride(5) | select(2, block=16))", 61, "kv")])
def test_walk_matches_the_reference(src, n, hs):
    # float64 inputs take the exact PyTorch walk (the kernels take 16- and 32-bit floats)
    check_against_reference(load(src), src, n, hs, dtype=torch.float64, tol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_reference_and_flex_backends(backend):
    mod = load(NSA, backend)
    if backend == "reference":
        check_against_reference(mod, NSA, 77, "kv", dtype=torch.float64, tol=1e-10)
        return
    B, Hq, Hkv, n, D = 1, 4, 2, 77, 16
    blocks = adversarial_blocks(n, 3, 16, 16, B, Hkv)
    q, k, v = (t.detach() for t in inputs(B, Hq, Hkv, n, D, torch.float32))  # (flex has no CPU backward)
    out, lse = mod.attention(q, k, v, blocks=blocks, return_lse=True)
    out_r, lse_r, _ = reference(NSA, q, k, v, blocks, 1 / math.sqrt(D))
    torch.testing.assert_close(out.double(), out_r.detach(), atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="return_block_mass=True is computed by the triton and reference"):
        mod.attention(q, k, v, blocks=blocks, return_block_mass=True)


def test_heads_and_multi_pass_patterns():
    src = "pattern h = heads { 0..1: causal & (local(8) | select(2, block=16)), 2..3: causal & local(5) }"
    check_against_reference(load(src), src, 50, "q", dtype=torch.float64, tol=1e-10)


# ---------------------------------------------------------------- Selection and determinism


def test_inverse_lists_each_query_block_once():
    blocks = adversarial_blocks(100, 4, 16, 16, 2, 3)
    nkb = 7
    offsets, qbs = selection_inverse(blocks, nkb)
    for z in range(2):
        for s in range(3):
            g = z * 3 + s
            for kb in range(nkb):
                want = [Q for Q in range(blocks.shape[2]) if kb in blocks[z, s, Q].tolist()]
                lo, hi = int(offsets[g * nkb + kb]), int(offsets[g * nkb + kb + 1])
                assert qbs[lo:hi].tolist() == want


def test_one_inversion_for_every_layer_and_bitwise_gradients():
    mod = load(NSA)
    B, Hq, Hkv, n, D = 1, 2, 1, 64, 16
    sel = Selection(adversarial_blocks(n, 3, 16, 16, B, 1))
    layers = [inputs(B, Hq, Hkv, n, D, torch.float32, seed=s) for s in range(3)]

    def step():
        loss = sum(mod.attention(q, k, v, blocks=sel).square().sum() for q, k, v in layers)
        return torch.autograd.grad(loss, [t for layer in layers for t in layer])

    first = step()
    assert sel.inverse_builds == 1  # three layers, one inversion
    second = step()
    assert sel.inverse_builds == 1
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no atomics: bit-identical


# ---------------------------------------------------------------- input checks


def test_bad_blocks_give_one_clear_error():
    mod = load(NSA)
    plain = load("pattern w = causal & local(8)")
    q, k, v = (t.detach() for t in inputs(1, 4, 2, 40, 16, torch.float32))
    good = torch.zeros(1, 1, 3, 3, dtype=torch.int32)
    cases = [
        (dict(), ValueError, r"has select\(3, block=16\): pass blocks="),
        (dict(blocks=good.long()), TypeError, "blocks must be int32"),
        (dict(blocks=good.tolist()), TypeError, "blocks must be an int32 tensor of shape"),
        (dict(blocks=good[:, :, :2]), ValueError, r"blocks must have shape \(1, Hs, 3, 3\) with Hs in \(1, 2, 4\)"),
        (dict(blocks=torch.zeros(1, 3, 3, 3, dtype=torch.int32)), ValueError, "with Hs in"),
        (dict(blocks=torch.full((1, 1, 3, 3), 3, dtype=torch.int32)), ValueError,
         r"-1 \(an empty slot\) or a key block 0..2 \(n=40, block=16\); got 3 at \[0, 0, 0, 0\]"),
        (dict(blocks=torch.full((1, 1, 3, 3), -2, dtype=torch.int32)), ValueError, "got -2"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            mod.attention(q, k, v, **kw)
    with pytest.raises(ValueError, match="has no select"):
        plain.attention(q, k, v, blocks=good)
    with pytest.raises(ValueError, match="return_block_mass=True needs a pattern with select"):
        plain.attention(q, k, v, return_block_mass=True)
    with pytest.raises(ValueError, match="blocks must be on q's device"):
        mod.attention(q, k, v, blocks=good.to("meta"))


# ---------------------------------------------------------------- select_blocks


def brute_select(src: str, qi: np.ndarray, ki: np.ndarray, w, n: int) -> np.ndarray:
    """The documented score and rules, by loops: candidates are the blocks where selecting adds a
    pair (outer pattern and not the static part), top k by score, ties to the lower block."""
    p = patternc.parse(src)
    (atom,) = ir.selects(p.expr)
    K, b, qb = (e.value for e in ir.int_args(atom))
    e = p.at(n)
    adds = semantics.dense_mask_numpy(ir.outer_part(e), n) & ~semantics.dense_mask_numpy(ir.static_part(e), n)
    B, Hi = qi.shape[:2]
    keys = ki[:, None] if ki.ndim == 3 else ki
    Hs = keys.shape[1]
    nqb, nkb = -(-n // qb), -(-n // b)
    out = np.full((B, Hs, nqb, K), -1)
    for z in range(B):
        for s in range(Hs):
            means = [keys[z, s, kb * b:(kb + 1) * b].mean(0) for kb in range(nkb)]
            for Q in range(nqb):
                scored = []
                for kb in range(nkb):
                    if adds[Q * qb:(Q + 1) * qb, kb * b:(kb + 1) * b].any():
                        v = sum(w[z, h, i] * max(0.0, float(qi[z, h, i] @ means[kb]))
                                for h in range(s * (Hi // Hs), (s + 1) * (Hi // Hs)) for i in range(Q * qb, min(n, (Q + 1) * qb)))
                        scored.append((-v, kb))
                for t, (_, kb) in enumerate(sorted(scored)[:K]):
                    out[z, s, Q, t] = kb
    return out


@pytest.mark.parametrize("src,n,keys4,weights", [(NSA, 100, True, "token"), (NSA, 77, False, None),
                                                 (WIDE, 90, True, "head")])
def test_select_blocks_matches_brute_force(src, n, keys4, weights):
    mod = load(src, "reference")
    B, Hi, Di = 2, 4, 8
    g = torch.Generator().manual_seed(3)
    qi = torch.randint(-2, 3, (B, Hi, n, Di), generator=g).double()  # integers: exact scores, real ties
    ki = torch.randint(-2, 3, (B, 2, n, Di) if keys4 else (B, n, Di), generator=g).double()
    w = {None: None, "head": torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64),
         "token": torch.randint(-1, 3, (B, Hi, n), generator=g).double()}[weights]
    sel = mod.select_blocks(qi, ki, weights=w)
    wn = np.ones((B, Hi, n)) if w is None else np.broadcast_to(w.numpy()[:, None] if w.dim() == 1 else w.numpy(),
                                                               (B, Hi, n))
    want = brute_select(src, qi.numpy(), ki.numpy(), wn, n)
    assert isinstance(sel, Selection) and sel.blocks.dtype == torch.int32
    assert sel.blocks.tolist() == want.tolist()


def test_select_blocks_ties_go_to_the_lower_block_and_never_to_the_window():
    mod = load(NSA, "reference")
    n = 160
    qi = -torch.ones(1, 1, n, 8)  # every score is ReLU(negative) = 0: all candidates tie
    ki = torch.ones(1, n, 8)
    blocks = mod.select_blocks(qi, ki).blocks[0, 0]
    for Q in range(blocks.shape[0]):
        cands = [kb for kb in range(10) if (Q * 16 + 15) - kb * 16 > 24 and kb * 16 <= Q * 16 + 15]
        assert blocks[Q].tolist() == (cands[:3] + [-1] * 3)[:3]


def test_select_blocks_keeps_a_running_top_k(monkeypatch):
    """Scores are merged chunk by chunk: never a (query blocks x key blocks) matrix."""
    mod = load(NSA, "reference")
    seen = []
    merge = select_index._keep_best
    monkeypatch.setattr(select_index, "KEY_CHUNK", 4)
    monkeypatch.setattr(select_index, "_keep_best", lambda bv, bi, v, i, k: seen.append(v.shape) or merge(bv, bi, v, i, k))
    n = 400
    qi, ki = torch.randn(1, 2, n, 8), torch.randn(1, n, 8)
    got = mod.select_blocks(qi, ki).blocks
    assert seen and max(s[-1] for s in seen) <= 4 and len(seen) >= -(-n // 16) // 4
    monkeypatch.setattr(select_index, "KEY_CHUNK", 64)
    assert torch.equal(mod.select_blocks(qi, ki).blocks, got)


def test_the_triton_indexer_matches_pytorch():
    mod = load(NSA)
    B, Hi, n, Di = 2, 4, 100, 16
    g = torch.Generator().manual_seed(0)
    qi = torch.randint(-2, 3, (B, Hi, n, Di), generator=g).float()
    ki = torch.randint(-2, 3, (B, 2, n, Di), generator=g).float()
    for w in (None, torch.tensor([1.0, 0.5, 2.0, -1.0]), torch.randint(-1, 3, (B, Hi, n), generator=g).float()):
        assert torch.equal(launch_index(mod.SPEC, qi, ki, w), topk_blocks(mod.SPEC, qi, ki, w))


def test_the_triton_indexer_merges_many_chunks_like_pytorch(monkeypatch):
    """Chunks of 16 key blocks, so a query block merges up to 5 of them: each merge runs only as
    many rounds as the chunk has blocks above the running worst, ties across chunks included
    (small integer inputs tie often; the lower block must win)."""
    from patternc.runtime import select_index
    monkeypatch.setattr(select_index, "INDEX_KEYS", 16)
    mod = load(NSA)
    B, Hi, n, Di = 1, 2, 1200, 16
    g = torch.Generator().manual_seed(1)
    for lo, hi in ((-1, 2), (-3, 4)):
        qi = torch.randint(lo, hi, (B, Hi, n, Di), generator=g).float()
        ki = torch.randint(lo, hi, (B, 1, n, Di), generator=g).float()
        assert torch.equal(launch_index(mod.SPEC, qi, ki, None), topk_blocks(mod.SPEC, qi, ki, None))


@pytest.mark.parametrize("args,err,msg", [
    ((torch.randn(1, 2, 40, 8), torch.randn(1, 40, 4)), ValueError, r"k_index must have shape \(1, 40, 8\)"),
    ((torch.randn(1, 3, 40, 8), torch.randn(1, 2, 40, 8)), ValueError, "multiple of the key heads"),
    ((torch.randn(1, 2, 40, 8).int(), torch.randn(1, 40, 8)), TypeError, "must be a floating tensor"),
    ((torch.randn(2, 40, 8), torch.randn(1, 40, 8)), ValueError, r"q_index must have shape \(B, Hi, n, Di\)"),
])
def test_select_blocks_input_errors(args, err, msg):
    with pytest.raises(err, match=msg):
        load(NSA, "reference").select_blocks(*args)
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\) or \(1, 2, 40\)"):
        load(NSA, "reference").select_blocks(torch.randn(1, 2, 40, 8), torch.randn(1, 40, 8),
                                              weights=torch.ones(3))


def test_standalone_select_module_runs_without_patternc(tmp_path, cli):
    from test_walk import run_isolated

    src = tmp_path / "nsa.attn"
    src.write_text(NSA + "\n")
    r = cli("compile", src, "--standalone", "-o", tmp_path / "sa.py")
    assert r.returncode == 0, r.stderr
    code = '''
        import torch, sa
        assert not [m for m in sys.modules if m.startswith("patternc")]
        q, k, v = (torch.randn(1, 2, 50, 8, dtype=torch.float64) for _ in range(3))
        sel = sa.select_blocks(torch.randn(1, 2, 50, 8), torch.randn(1, 50, 8))
        out, mass = sa.attention(q, k, v, blocks=sel, return_block_mass=True)
        keep = sa.mask(50, blocks=sel)[0]
        s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
        ref = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
        assert (out - ref).abs().max() < 1e-10 and mass.shape == (1, 2, 4, 3)
        print("standalone ok")
    '''
    r = run_isolated(code, ("patternc",), tmp_path)
    assert r.returncode == 0 and "standalone ok" in r.stdout, r.stderr[-3000:]


def test_block_scores_are_the_documented_score_and_differentiable():
    mod = load(NSA, "reference")
    B, Hi, n, Di = 1, 2, 70, 8
    g = torch.Generator().manual_seed(2)
    qi = torch.randn(B, Hi, n, Di, generator=g, dtype=torch.float64, requires_grad=True)
    ki = torch.randn(B, n, Di, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    blocks = adversarial_blocks(n, 3, 16, 16, B, 1)
    got = mod.block_scores(qi, ki, blocks, weights=w)
    for Q in range(blocks.shape[2]):
        for s in range(3):
            kb = int(blocks[0, 0, Q, s])
            if kb < 0:
                assert got[0, 0, Q, s] == -math.inf
                continue
            mean = ki[0, kb * 16:(kb + 1) * 16].mean(0)
            want = sum(w[h] * torch.relu(qi[0, h, Q * 16:(Q + 1) * 16] @ mean).sum() for h in range(Hi))
            assert torch.isclose(got[0, 0, Q, s], want, atol=1e-12)
    got.masked_fill(~torch.isfinite(got), 0).sum().backward()
    assert torch.isfinite(qi.grad).all() and qi.grad.abs().sum() > 0


def test_custom_ops_for_torch_compile():
    """Under torch.compile the call goes through the pattern's custom ops (the backward rebuilds the
    inverse from the blocks it is given): same values and gradients as the eager call."""
    mod = load(NSA)
    q, k, v = inputs(1, 2, 1, 50, 8, torch.float64)
    blocks = adversarial_blocks(50, 3, 16, 16, 1, 1)
    out, lse, mass = mod._bound.selected_op(q, k, v, 0.3, blocks, True)
    want, want_lse, want_mass = mod.attention(q, k, v, 0.3, return_lse=True, blocks=blocks, return_block_mass=True)
    assert torch.equal(out, want) and torch.equal(mass, want_mass)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(want.sum(), (q, k, v))))
    compiled = torch.compile(lambda q, k, v: mod.attention(q, k, v, blocks=Selection(blocks)), backend="eager")
    torch.testing.assert_close(compiled(q, k, v), mod.attention(q, k, v, blocks=blocks), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_what_a_selection_does_not_combine_with_says_so(backend):
    """Packed/padded calls take no run-time selection yet: one clear error, naming what to do
    instead (not a crash inside a kernel, not a silently ignored argument)."""
    mod = patternc.load("pattern p = causal & (local(8) | select(2, block=16))", backend=backend)
    q = torch.randn(1, 2, 40, 16)
    blocks = torch.zeros(1, 1, 3, 2, dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="packed or padded sequences"):
        mod.attention(q, q, q, blocks=blocks, seq_lens=torch.tensor([30], dtype=torch.int32))


def test_kv_cache_generation_with_a_selection():
    """A KVCache of a pattern with select(...) keeps every position (the selection may pick any
    earlier block) and decodes each step with the selection it is handed: 50 steps of one token,
    then one of three, each equal to attention's last rows over everything so far."""
    src = "pattern p = causal & (sink(2) | local(8) | select(2, block=16))"
    mod, ref = patternc.load(src, backend="triton"), patternc.load(src, backend="reference")
    B, Hq, Hkv, D, steps = 2, 4, 2, 16, 53
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, h, steps, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    blocks = torch.randint(-1, 4, (B, Hkv, 4, 2), generator=g, dtype=torch.int32)
    cache = mod.KVCache(B, Hkv, D, dtype=torch.float64, device="cpu")
    assert not cache.bounded
    n = 0
    for t in [1] * 50 + [3]:
        out = cache.attend(q[:, :, n:n + t], k[:, :, n:n + t], v[:, :, n:n + t], blocks=blocks)
        n += t
        nqb = -(-n // 16)
        sel = torch.where(blocks[:, :, :nqb] * 16 >= n, -1, blocks[:, :, :nqb])  # blocks past n: no keys yet
        want = ref.attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], blocks=sel)[:, :, n - t:]
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="decode needs blocks="):
        cache.attend(q[:, :, :1], k[:, :, :1], v[:, :, :1])
    assert int(cache.seqlens[0]) == n  # the refused call wrote nothing


@pytest.mark.parametrize("backend", ["triton", "reference", "flex"])
@pytest.mark.parametrize("hs", ["1", "kv", "q"])
def test_decode_with_a_selection_is_the_last_rows_of_attention(backend, hs):
    """decode(..., blocks=) equals, row for row, the last t rows of attention over the row's first
    n positions with the selection's first ceil(n / qblock) query blocks: ragged lengths, t = 1
    and 3, GQA, duplicates, -1 slots, blocks inside the window, above the diagonal and past a
    row's length (keys that do not exist yet), against a float64 reference."""
    src = "pattern p = causal & (sink(2) | local(12) | select(3, block=16, qblock=16))"
    mod, ref = patternc.load(src, backend=backend), patternc.load(src, backend="reference")
    B, Hq, Hkv, D, L = 3, 4, 2, 16, 100
    Hs = {"1": 1, "kv": Hkv, "q": Hq}[hs]
    g = torch.Generator().manual_seed(7)
    k, v = (torch.randn(B, Hkv, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    blocks = torch.randint(-1, 7, (B, Hs, 7, 3), generator=g, dtype=torch.int32)
    blocks[0, 0, 2] = torch.tensor([1, 1, -1], dtype=torch.int32)  # a duplicate and an empty slot
    for t, lens in ((1, [1, 37, 100]), (3, [3, 64, 81])):
        q = torch.randn(B, Hq, t, D, generator=g, dtype=torch.float64)
        seq = torch.tensor(lens, dtype=torch.int32)
        out = mod.decode(q, k, v, seq, blocks=blocks)
        for b, n in enumerate(lens):
            qfull = torch.zeros(1, Hq, n, D, dtype=torch.float64)
            qfull[:, :, n - t:] = q[b:b + 1]
            sel = blocks[b:b + 1, :, :-(-n // 16)].clamp(max=-(-n // 16) - 1)  # in range at length n
            sel = torch.where(blocks[b:b + 1, :, :-(-n // 16)] * 16 >= n, -1, sel)  # past n: no keys yet
            want = ref.attention(qfull, k[b:b + 1, :, :n], v[b:b + 1, :, :n], blocks=sel)[:, :, n - t:]
            torch.testing.assert_close(out[b:b + 1], want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_decode_with_a_selection_from_a_paged_cache(backend):
    """The same step from a cache in shuffled pages of 16 rows: the selection names key blocks by
    position, and the page table says where each position lives."""
    from test_decode import paged
    src = "pattern p = causal & (local(12) | select(2, block=16))"
    mod = patternc.load(src, backend=backend)
    B, Hq, Hkv, D, L = 2, 4, 2, 16, 96
    g = torch.Generator().manual_seed(11)
    q = torch.randn(B, Hq, 2, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    blocks = torch.randint(-1, 6, (B, 1, 6, 2), generator=g, dtype=torch.int32)
    seq = torch.tensor([50, 96], dtype=torch.int32)
    table = torch.randperm(B * L // 16, generator=g).view(B, -1).to(torch.int32)
    want = mod.decode(q, k, v, seq, blocks=blocks)
    got = mod.decode(q, paged(k, table, 16), paged(v, table, 16), seq, page_table=table, blocks=blocks)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_decode_with_a_selection_refuses_bad_blocks():
    mod = patternc.load("pattern p = causal & (local(8) | select(2, block=16))", backend="triton")
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 1, 64, 16)
    seq = torch.tensor([64], dtype=torch.int32)
    with pytest.raises(ValueError, match="decode needs blocks="):
        mod.decode(q, k, k, seq)
    with pytest.raises(TypeError, match="blocks must be an int32 tensor"):
        mod.decode(q, k, k, seq, blocks=torch.zeros(1, 1, 4, 2))
    with pytest.raises(ValueError, match=r"blocks must be an int32 tensor of shape \(1, Hs, query blocks, 2\)"):
        mod.decode(q, k, k, seq, blocks=torch.zeros(1, 3, 4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="a key block 0..3 of the cache"):
        mod.decode(q, k, k, seq, blocks=torch.full((1, 1, 4, 2), 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="its new tokens lie in query block 3"):
        mod.decode(q, k, k, seq, blocks=torch.zeros(1, 1, 3, 2, dtype=torch.int32))
    plain = patternc.load("pattern p = causal & local(8)", backend="triton")
    with pytest.raises(ValueError, match="has no select"):
        plain.decode(q, k, k, seq, blocks=torch.zeros(1, 1, 4, 2, dtype=torch.int32))
