"""Packed documents and padded batches (runtime.varlen) on every backend and path, against a float64
reference that builds the block-diagonal mask from each sequence's own mask (the semantics at
its own length, positions from its start).

The Triton kernels run under the interpreter (TRITON_INTERPRET=1, 16-wide tiles, so lengths 15,
16, 17 and 63, 64, 65 straddle tile boundaries); the PyTorch walk, the reference and the flex
backend run as they are.  Padding rows hold NaN: no path may read them.
"""
from __future__ import annotations

import importlib.util
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import patternc  # noqa: E402
from patternc.runtime import module as runtime_module  # noqa: E402

from kernel_check import check_sequences as check, dense_reference, packed, padded_batch, rel_err, \
    sequence_mask  # noqa: E402
from kernel_patterns import PATTERNS, module  # noqa: E402

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


# ---- the Triton kernels (interpreter) -------------------------------------------------------------

ISSUE_LENGTHS = {"one": [65], "two": [1, 64], "seven": [63, 64, 65, 1, 2, 17, 30]}


@needs_triton
@pytest.mark.parametrize("name", ["causal", "longformer", "strided_sqrt"])
@pytest.mark.parametrize("docs", sorted(ISSUE_LENGTHS))
def test_packed_kernels_at_the_issues_lengths(name, docs):
    """1, 2 and 7 documents of lengths 1, 2, 63, 64, 65 (tile edges): forward and gradients, GQA."""
    p, mod = module(PATTERNS[name])
    cu, spans, total = packed(ISSUE_LENGTHS[docs])
    check(mod, p, 1, 2, 1, total, spans, dict(cu_seqlens=cu, max_seqlen=max(ISSUE_LENGTHS[docs])))


@needs_triton
@pytest.mark.parametrize("name", ["fixed", "bigbird", "heads", "empty_rows", "difference", "dilated", "sink",
                                  "wide_global_rows", "queries_keys", "all"])
def test_packed_kernels_every_kind_of_pass(name):
    """Random document lengths (one of them empty) through residue classes, kept key columns, random
    blocks, per-head patterns, several passes, global rows and rows with no key."""
    p, mod = module(PATTERNS[name])
    rng = random.Random(name)
    lens = [rng.randint(1, 33) for _ in range(2)] + [0, 17]
    cu, spans, total = packed(lens)
    H = p.num_heads or 2
    check(mod, p, 1, H, 1, total, spans, dict(cu_seqlens=cu, max_seqlen=max(lens)), seed=3)


@needs_triton
@pytest.mark.parametrize("name", ["causal", "longformer", "strided_sqrt", "wide_block_fixed"])
def test_padded_kernels(name):
    """Right padding, left padding, both at once and a zero-length row in one batch; GQA."""
    p, mod = module(PATTERNS[name])
    n = 41
    starts, lens, spans = padded_batch(n)
    check(mod, p, 4, 2, 1, n, spans, dict(seq_lens=lens, seq_starts=starts))


@needs_triton
def test_kernels_without_max_seqlen_and_with_a_loose_one():
    p, mod = module(PATTERNS["longformer"])
    cu, spans, total = packed([20, 3, 33])
    check(mod, p, 1, 2, 2, total, spans, dict(cu_seqlens=cu), backward=False)
    check(mod, p, 1, 2, 2, total, spans, dict(cu_seqlens=cu, max_seqlen=total), backward=False)
    starts, lens, spans = padded_batch(40)
    check(mod, p, 4, 2, 2, 40, spans, dict(seq_lens=lens, seq_starts=starts, max_seqlen=31), backward=False)


@needs_triton
def test_seq_starts_alone_means_sequences_to_the_end():
    p, mod = module(PATTERNS["causal"])
    starts = torch.tensor([0, 7, 30], dtype=torch.int32)
    spans = ((0, 0, 30), (1, 7, 23), (2, 30, 0))
    check(mod, p, 3, 2, 1, 30, spans, dict(seq_starts=starts), backward=False)


@needs_triton
def test_packed_bf16_under_the_interpreter():
    p, mod = module(PATTERNS["longformer"])
    cu, spans, total = packed([17, 40, 2])
    check(mod, p, 1, 2, 1, total, spans, dict(cu_seqlens=cu, max_seqlen=40), dtype=torch.bfloat16)


@needs_triton
def test_one_document_is_the_plain_call():
    """A single document spanning the row gives exactly what the plain call gives."""
    p, mod = module(PATTERNS["longformer"])
    q, k, v = (torch.randn(1, 2, 50, 16) for _ in range(3))
    cu = torch.tensor([0, 50], dtype=torch.int32)
    a, la = mod.attention(q, k, v, return_lse=True)
    b, lb = mod.attention(q, k, v, return_lse=True, cu_seqlens=cu, max_seqlen=50)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=1e-6)


# ---- the PyTorch walk, the reference and flex ----------------------------------------------------

@pytest.fixture
def pytorch_path(monkeypatch):
    """The Triton backend's exact PyTorch walk (as on a CPU without the interpreter)."""
    monkeypatch.setattr(runtime_module, "_kernels_run_on", lambda q: False)


@pytest.mark.parametrize("name", ["causal", "longformer", "strided_sqrt", "fixed", "bigbird", "heads", "empty_rows"])
def test_packed_and_padded_walk(name, pytorch_path):
    p, mod = module(PATTERNS[name])
    H = p.num_heads or 2
    cu, spans, total = packed([63, 64, 65, 1, 2, 0, 30])
    check(mod, p, 1, H, 1, total, spans, dict(cu_seqlens=cu))
    starts, lens, spans = padded_batch(45)
    check(mod, p, 4, H, 1, 45, spans, dict(seq_lens=lens, seq_starts=starts), dtype=torch.float64)


@pytest.mark.parametrize("backend", ["reference", "flex"])
@pytest.mark.parametrize("name", ["causal", "longformer", "strided_sqrt", "bigbird", "heads"])
def test_packed_and_padded_reference_and_flex(backend, name):
    if backend == "flex":
        pytest.importorskip("torch.nn.attention.flex_attention")
    p = patternc.parse(f"pattern x = {PATTERNS[name]}")
    mod = patternc.load(p, backend=backend)
    H = p.num_heads or 2
    grads = backend == "reference"  # FlexAttention has no backward on the CPU
    cu, spans, total = packed([63, 64, 65, 1, 2, 0, 30])
    check(mod, p, 1, H, 1, total, spans, dict(cu_seqlens=cu, max_seqlen=65), backward=grads)
    starts, lens, spans = padded_batch(45)
    check(mod, p, 4, H, 1, 45, spans, dict(seq_lens=lens, seq_starts=starts), backward=grads)


def test_documents_may_use_n_dependent_arguments_per_document():
    """n is each document's own length: prefix_lm(n // 2) gives each document its own prefix."""
    p = patternc.parse("pattern x = causal | (queries(0, n // 2) & keys(0, n // 2))")
    mod = patternc.load(p, backend="reference")
    cu, spans, total = packed([10, 30])
    q = torch.randn(1, 1, total, 8)
    keep = sequence_mask(p, spans, 1, total, 1)
    assert keep[0, 0, 10, 10 + 14] and not keep[0, 0, 10, 10 + 15]  # document 2: prefix of 15
    out = mod.attention(q, q, q, cu_seqlens=cu)
    want, _ = dense_reference(q.double(), q.double(), q.double(), keep, 8 ** -0.5)
    assert rel_err(out, want) < 1e-5


# ---- bad input: one clear error, every backend ---------------------------------------------------

BAD = [
    (dict(cu_seqlens=[0, 4, 8]), TypeError, r"^cu_seqlens must be a torch.Tensor \(document offsets"),
    (dict(cu_seqlens=torch.tensor([0, 4, 8])), TypeError, r"^cu_seqlens must be int32 .*got torch.int64"),
    (dict(cu_seqlens=torch.tensor([[0, 8]], dtype=torch.int32)), ValueError, r"^cu_seqlens must have shape one dim"),
    (dict(cu_seqlens=torch.tensor([0], dtype=torch.int32)), ValueError, r"^cu_seqlens must have at least 2 entries"),
    (dict(cu_seqlens=torch.tensor([1, 4, 8], dtype=torch.int32)), ValueError, r"^cu_seqlens must start at 0, got"),
    (dict(cu_seqlens=torch.tensor([0, 5, 4, 8], dtype=torch.int32)), ValueError,
     r"^cu_seqlens must not decrease, got cu_seqlens\[2\] = 4 < cu_seqlens\[1\] = 5"),
    (dict(cu_seqlens=torch.tensor([0, 4, 7], dtype=torch.int32)), ValueError,
     r"^cu_seqlens must end at q's total length 8, got cu_seqlens\[-1\] = 7"),
    (dict(cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32), max_seqlen=3), ValueError,
     r"^max_seqlen \(3\) is less than the longest sequence \(4\)"),
    (dict(cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32), max_seqlen=torch.tensor(4)), TypeError,
     r"^max_seqlen must be a Python int"),
    (dict(cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32), max_seqlen=9), ValueError,
     r"^max_seqlen must be between 0 and q's length 8, got 9"),
    (dict(cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), seq_lens=torch.tensor([8], dtype=torch.int32)),
     ValueError, r"^give cu_seqlens \(packed documents\) or seq_lens / seq_starts \(padded rows\), not both"),
    (dict(max_seqlen=4), ValueError, r"^max_seqlen needs cu_seqlens"),
    (dict(seq_lens=torch.tensor([3, -1], dtype=torch.int32)), ValueError,
     r"^seq_lens must be >= 0, got seq_lens\[1\] = -1"),
    (dict(seq_lens=torch.tensor([3, 4], dtype=torch.int32), seq_starts=torch.tensor([0, -2], dtype=torch.int32)),
     ValueError, r"^seq_starts must be between 0 and n = 8, got seq_starts\[1\] = -2"),
    (dict(seq_lens=torch.tensor([3, 4], dtype=torch.int32), seq_starts=torch.tensor([0, 5], dtype=torch.int32)),
     ValueError, r"^seq_starts \+ seq_lens must be <= n = 8, got 5 \+ 4 = 9 in row 1"),
    (dict(seq_lens=torch.tensor([3, 4, 5], dtype=torch.int32)), ValueError, r"^seq_lens must have shape \(2,\)"),
    (dict(seq_lens=torch.tensor([3.0, 4.0])), TypeError, r"^seq_lens must be int32"),
    (dict(seq_starts=torch.tensor([0, 9], dtype=torch.int32)), ValueError,
     r"^seq_starts must be between 0 and n = 8, got seq_starts\[1\] = 9"),
]


@pytest.mark.parametrize("backend", ["triton", "reference", "flex"])
@pytest.mark.parametrize("kw,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_sequences_give_one_clear_error(backend, kw, exc, match):
    mod = patternc.load(patternc.parse("pattern x = causal & local(3)"), backend=backend)
    B = 1 if "cu_seqlens" in kw or "max_seqlen" in kw and len(kw) == 1 else 2
    q = torch.randn(B, 2, 8, 16)
    with pytest.raises(exc, match=match):
        mod.attention(q, q[:, :1], q[:, :1], **kw)


def test_packed_needs_one_batch_row_and_a_matching_device():
    mod = patternc.load(patternc.parse("pattern x = causal"), backend="reference")
    q = torch.randn(2, 1, 8, 16)
    with pytest.raises(ValueError, match=r"^packed documents \(cu_seqlens\) need q, k and v of shape "
                                         r"\(1, H, total, D\)"):
        mod.attention(q, q, q, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))
    q = torch.randn(1, 1, 8, 16, device="meta")
    with pytest.raises(ValueError, match=r"^cu_seqlens must be on q's device \(meta\), got cpu"):
        mod.attention(q, q, q, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))


def test_a_document_where_the_pattern_is_invalid_is_named():
    mod = patternc.load(patternc.parse("pattern x = causal & fixed(isqrt(n), 2)"), backend="triton")
    cu, _, total = packed([9, 1, 5])
    q = torch.randn(1, 1, total, 16)
    with pytest.raises(ValueError, match=r"^document 1 \(length 1\): fixed\(\): .*\(n=1\)"):
        mod.attention(q, q, q, cu_seqlens=cu, max_seqlen=9)


@pytest.mark.parametrize("src", ["causal & fixed(isqrt(n), 2)", "local(max(n // 8, 3) - 2) | stride(isqrt(n) - 1)",
                                 "local(cdiv(n, 7) - 3)", "causal"])
def test_device_length_checks_agree_with_the_host(src):
    """_lengths_ok (the device assertion's check, on a tensor of lengths) is _check_length at every n."""
    mod = patternc.load(patternc.parse(f"pattern x = {src}"), backend="reference")
    ns = torch.arange(1, 400, dtype=torch.int32)
    if mod.SPEC.lengths_ok is None:
        assert src == "causal"
        return
    got = mod.SPEC.lengths_ok(ns).tolist()
    for n, ok in zip(ns.tolist(), got):
        try:
            mod.SPEC.check_length(n)
            want = True
        except ValueError:
            want = False
        assert ok == want, n


# ---- no per-call cost: no recompilation, no host reads ---------------------------------------------

def compile_keys(kernel, kw: dict, free: tuple) -> str:
    """What Triton's JIT keys a kernel's compilations by, for a launch with keywords `kw` on an sm_90
    GPU: its own binder's specialisation of every argument (types, 16-byte alignment, ints equal to
    1 or multiples of 16, constexpr values) and the launch options."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jit = JITFunction(kernel.fn, do_not_specialize=list(free))
    binder = create_function_from_signature(jit.signature, jit.params, make_backend(GPUTarget("cuda", 90, 32)))
    _, specialization, options = binder(**kw)
    return repr((specialization, sorted(options.items())))


@needs_triton
def test_length_changes_compile_nothing_new(monkeypatch):
    """Packed batches with other document lengths, counts, longest documents and totals, and padded
    batches with other lengths, launch every kernel with the same compile-time key: Triton compiles
    nothing new (its own binder decides, as on a GPU; D = 16, so every stride is a multiple of 16)."""
    from kernel_patterns import LaunchSpy
    from patternc.runtime import abi

    p, mod = module(PATTERNS["strided_sqrt"])
    keys: dict = {}

    def hook(kernel, grid, site, kw):
        name = kernel.fn.__name__
        if name.startswith(("_fwd", "_dq", "_dkdv")):
            free = abi.unspecialized(name.split("_")[1], "SPLIT0" in kernel.arg_names)
            keys.setdefault((name, kw["DOCS"]), set()).add(compile_keys(kernel, kw, free))
    monkeypatch.setattr(mod._bound.triton, "launch", LaunchSpy(mod._bound.triton.launch, hook))
    for lens in ([30, 2, 40], [1, 71], [24, 24, 24], [72], [16, 16, 16, 16, 16], [3, 0, 14]):
        cu, spans, total = packed(lens)
        q, k, v = (torch.randn(1, 2, total, 16, requires_grad=True) for _ in range(3))
        mod.attention(q, k, v, cu_seqlens=cu, max_seqlen=max(lens)).sum().backward()
    for lens in ([3, 30], [33, 1], [0, 17]):
        q, k, v = (torch.randn(2, 2, 33, 16, requires_grad=True) for _ in range(3))
        mod.attention(q, k, v, seq_lens=torch.tensor(lens, dtype=torch.int32)).sum().backward()
    assert {docs for _, docs in keys} == {1, 2} and len(keys) >= 6
    for key, found in keys.items():
        assert len(found) == 1, key


def test_torch_compile_takes_sequences_without_a_graph_break():
    """The Triton backend's custom ops keep packed calls in one graph (the reference and flex backends
    read the sequences on the host, a graph break)."""
    p = patternc.parse(f"pattern x = {PATTERNS['longformer']}")
    mod = patternc.load(p, backend="triton")
    cu, spans, total = packed([20, 1, 12])
    q, k, v = (torch.randn(1, 2, total, 16, requires_grad=True) for _ in range(3))

    def f(q, k, v, cu):
        return mod.attention(q * 1.0, k, v, cu_seqlens=cu, max_seqlen=20).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v, cu)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert abs(loss.item() - f(q, k, v, cu).item()) <= 1e-5 * max(1.0, abs(loss.item()))
