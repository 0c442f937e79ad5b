"""The FlexAttention backend: its mask_mod against the oracle, its attention against the reference."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import patternc
from patternc.runtime import flex_path
from patternc import semantics

from conftest import resolve_source

PATTERNS = {
    "strided": "causal & (local(isqrt(n)) | stride(isqrt(n)))",
    "bigbird": "local(3) | global(2) | random(2, block=8, seed=5)",
    "holes": "causal - local(0) - queries(20, 26)",  # rows 0 and 20..25 have no key
    "heads": "heads { 0..0: causal & local(4), 1..2: sink(3) | band(0, 2) - block(16), 3..3: none }",
    "late": "sink(n // 8) | band(lo=n - 4)",
}


def load(src: str, backend: str = "flex"):
    return patternc.load(resolve_source(src), backend=backend)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_mask_mod_matches_semantics(name):
    mod = load(PATTERNS[name])
    p = resolve_source(PATTERNS[name])
    for n in (1, 7, 40):
        H = mod.NUM_HEADS or 1
        want = np.stack([semantics.dense_mask_numpy(p.at(n), n, head=h) for h in range(H)])
        got = mod.mask(n).numpy()
        np.testing.assert_array_equal(got if mod.NUM_HEADS else got[None], want)
        # mask_mod on scalar int32 indices, as FlexAttention calls it
        mm = mod.make_mask_mod(n)
        for h in range(H):
            for i, j in [(0, 0), (n - 1, 0), (n // 2, n - 1), (n - 1, n - 1)]:
                args = [torch.tensor(x, dtype=torch.int32) for x in (0, h, i, j)]
                assert bool(mm(*args)) == bool(want[h, i, j]), (name, n, h, i, j)


def test_random_hash_does_not_overflow_int32():
    """FlexAttention passes int32 indices; the hash multiplies 32-bit values."""
    mod = load("random(1, block=1, seed=2147483647)")
    n = 3000
    mm = mod.make_mask_mod(n)
    i = torch.arange(n, dtype=torch.int32)[:, None]
    j = torch.arange(0, n, 97, dtype=torch.int32)[None, :]
    got = mm(torch.tensor(0), torch.tensor(0), i, j).numpy()
    want = semantics.dense_mask_numpy(resolve_source("random(1, block=1, seed=2147483647)").at(n), n)[:, ::97]
    np.testing.assert_array_equal(got, want)


def test_text_is_deterministic_and_binds_the_runtime():
    a = patternc.compile(resolve_source(PATTERNS["heads"]), "flex")
    assert a == patternc.compile(resolve_source(PATTERNS["heads"]), "flex")
    imports = sorted(x.strip() for x in a.splitlines() if x.lstrip().startswith(("import ", "from ")))
    assert imports == ["from __future__ import annotations", "from patternc.runtime import Case, Pass, Spec, bind",
                       "import torch"]
    assert "torch.where(h <= 0, m0, torch.where(h <= 2, m1, m2))" in a


def _flex_works() -> str:
    """'' when flex_attention runs (eagerly) on this CPU, else why not."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return f"no FlexAttention in torch {torch.__version__}: {e}"
    try:
        bm = create_block_mask(lambda b, h, i, j: i >= j, None, None, 8, 8, device="cpu", BLOCK_SIZE=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(*(torch.randn(1, 1, 8, 4) for _ in range(3)), block_mask=bm)
    except Exception as e:  # noqa: BLE001 - any failure means: not on this machine
        return f"flex_attention does not run on CPU here: {type(e).__name__}: {e}"
    return ""


FLEX_SKIP = _flex_works()
needs_flex = pytest.mark.skipif(bool(FLEX_SKIP), reason=FLEX_SKIP or "ok")


@needs_flex
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,H,HK", [("strided", 2, 1), ("bigbird", 4, 2), ("holes", 2, 2), ("heads", 4, 2),
                                      ("late", 1, 1)])
def test_attention_matches_reference(name, H, HK):
    mod, ref = load(PATTERNS[name]), load(PATTERNS[name], "reference")
    n, D = 45, 16
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, H, n, D, generator=g)
    k, v = torch.randn(2, HK, n, D, generator=g), torch.randn(2, HK, n, D, generator=g)
    out, lse = mod.attention(q, k, v, return_lse=True)
    want, want_lse = ref.attention(q, k, v, return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    fin = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[fin], want_lse[fin].float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(mod.attention(q, k, v, scale=0.5), mod.attention(q, k, v, scale=0.5))
    torch.testing.assert_close(mod.attention(q, k, v, scale=0.5), ref.attention(q, k, v, scale=0.5),
                               atol=1e-5, rtol=1e-5)


@needs_flex
def test_block_mask_is_cached():
    mod = load(PATTERNS["heads"])
    a = mod.block_mask(64, "cpu", BLOCK_SIZE=16)
    assert mod.block_mask(64, torch.device("cpu"), BLOCK_SIZE=16) is a
    assert mod.block_mask(65, "cpu", BLOCK_SIZE=16) is not a
    assert tuple(a.shape[:2]) == (1, 4)  # per-head pattern: one mask per head


def test_fully_masked_rows_are_repaired(monkeypatch):
    """Whatever FlexAttention returns for a row with no key (NaN here), the module gives 0 and -inf."""
    mod = load(PATTERNS["holes"])

    def garbage_flex(q, k, v, block_mask=None, scale=None, enable_gqa=False, return_lse=False):
        out = torch.full_like(q, float("nan"))
        out[:, :, 1:20] = 1.0
        lse = torch.full(q.shape[:3], 7.0)
        lse[:, :, 0] = float("nan")
        return out, lse

    monkeypatch.setattr(flex_path, "flex_call", lambda q, k, v, bm, scale, gqa: garbage_flex(q, k, v))
    monkeypatch.setattr(mod._bound.flex, "block_mask", lambda n, device, block_size=128: None)
    monkeypatch.setattr(mod._bound.flex, "compile", False)
    q = torch.randn(1, 2, 30, 4)
    out, lse = mod.attention(q, q, q, return_lse=True)
    empty = [0] + list(range(20, 26))
    assert torch.all(out[:, :, empty] == 0) and torch.all(torch.isneginf(lse[:, :, empty]))
    assert torch.all(out[:, :, 1:20] == 1.0) and torch.all(lse[:, :, 1:20] == 7.0)


def test_import_without_flex_attention(monkeypatch):
    monkeypatch.setattr(flex_path, "_flex", None)  # as on a torch without FlexAttention
    text = patternc.compile(resolve_source(PATTERNS["strided"]), "flex")
    ns: dict = {"__name__": "flexless"}
    exec(compile(text, "<flex>", "exec"), ns)
    assert ns["mask"](10).shape == (10, 10)  # the mask does not need FlexAttention
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(RuntimeError, match="has no FlexAttention"):
        ns["attention"](q, q, q)
    with pytest.raises(RuntimeError, match="has no FlexAttention"):
        ns["block_mask"](10, "cpu")


def test_input_validation():
    mod = load(PATTERNS["heads"])
    q = torch.randn(1, 4, 8, 4)
    with pytest.raises(ValueError, match="defines 4 heads, but q has 2"):
        mod.attention(q[:, :2], q[:, :2], q[:, :2])
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        mod.attention(q, q[:, :3], q[:, :3])
    with pytest.raises(TypeError, match="share one dtype"):
        mod.attention(q, q.double(), q.double())
    with pytest.raises(ValueError, match="4 dimensions"):
        mod.attention(q[0], q, q)
    with pytest.raises(ValueError, match="scale must be finite"):
        mod.attention(q, q, q, scale=float("nan"))
