"""transformers drop-in (register_hf, hf_cache), the custom ops under torch.library.opcheck, and the
public API every backend's module shares.

Models are tiny and built from configs (no downloads); the Triton backend runs its exact PyTorch walk
here (the interpreter is switched off for these tests), the reference backend its dense definition.
Each is compared with transformers' eager attention given the pattern's mask explicitly.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import patternc
from conftest import ROOT

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, MistralConfig  # noqa: E402

STREAMING = "pattern streaming(sinks = 2, w = 6) = causal & (sink(sinks) | local(w))"
LONGFORMER = "pattern longformer(w = 3, g = 2) = local(w) | global(g)"
EXPORTED = ("attention", "mask", "mask_rows", "decode", "KVCache", "IS_CAUSAL", "register_hf", "hf_cache", "PATTERN")


@pytest.fixture(autouse=True)
def walk_path(monkeypatch):
    """The Triton backend's PyTorch walk (cheap on the CPU), one thread (the CI machine is shared)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_MODULES: dict = {}


def load(source: str, backend: str = "triton"):
    if (source, backend) not in _MODULES:
        _MODULES[source, backend] = patternc.load(source, backend=backend)
    return _MODULES[source, backend]


def llama_config(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **kw)


def pair(config, name: str, cls=AutoModelForCausalLM, eager: str = "eager"):
    """(patternc model, eager model) with the same weights."""
    torch.manual_seed(0)
    ours = (cls.from_config if cls is AutoModelForCausalLM else cls._from_config)(
        copy.deepcopy(config), attn_implementation=name)
    ref = (cls.from_config if cls is AutoModelForCausalLM else cls._from_config)(
        copy.deepcopy(config), attn_implementation=eager)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def additive(keep: torch.Tensor) -> torch.Tensor:
    """A (B, 1, S, S) additive float mask from a boolean (B, S, S) one, for eager attention."""
    return torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)[:, None]


def padded_keep(mod, lens: list, starts: list, n: int) -> torch.Tensor:
    """(B, n, n): each row's pattern at its own positions, on its diagonal block; padding rows see
    their own key only (so eager gives them finite values, which the tests ignore)."""
    keep = torch.eye(n, dtype=torch.bool).repeat(len(lens), 1, 1)
    for b, (m, s) in enumerate(zip(lens, starts)):
        keep[b, s:s + m, s:s + m] = mod.mask(m)
        keep[b, s:s + m, s:s + m] |= False
        inside = torch.zeros(n, dtype=torch.bool)
        inside[s:s + m] = True
        keep[b][inside[:, None] & ~inside[None, :]] = False
        keep[b][~inside[:, None] & inside[None, :]] = False
    return keep


def grads(model) -> dict:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a, b, tol=1e-4):
    ga, gb = grads(a), grads(b)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], atol=tol, rtol=tol, msg=k)


# ---- the public API of every backend ------------------------------------------------------------

def test_every_backend_exports_the_same_api():
    for backend in ("triton", "reference", "flex"):
        mod = load(STREAMING, backend)
        missing = [x for x in EXPORTED if not hasattr(mod, x)]
        assert not missing, f"{backend} module lacks {missing}"
        assert mod.IS_CAUSAL is True
        assert mod.mask_rows(torch.arange(4)[:, None], torch.arange(4)[None, :], 4).shape == (1, 4, 4)
    stack = patternc.load("stack s = [causal & local(3), causal] * 1", backend="reference")
    assert callable(stack.register_hf) and callable(stack.hf_cache)


# ---- the custom ops -----------------------------------------------------------------------------

def _layout(kind: str, B, H, n, D, dtype):
    if kind == "contiguous":
        return torch.randn(B, H, n, D, dtype=dtype)
    if kind == "transposed":
        return torch.randn(B, n, H, D, dtype=dtype).transpose(1, 2)
    return torch.randn(B, H, n, 2 * D, dtype=dtype)[..., :D]  # sliced


@pytest.mark.parametrize("kind", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_registered_op(kind, dtype):
    mod = load("pattern p(w = 4) = causal & local(w)")
    ops = getattr(torch.ops, mod._bound.spec.namespace)
    B, n, D = 2, 11, 16
    q, k, v = _layout(kind, B, 4, n, D, dtype), _layout(kind, B, 2, n, D, dtype), _layout(kind, B, 2, n, D, dtype)
    torch.library.opcheck(ops.attention_fwd.default, (q, k, v, 0.25))
    o, lse = ops.attention_fwd.default(q, k, v, 0.25)
    assert o.is_contiguous() and o.dtype == dtype and lse.dtype == torch.float32
    do = _layout(kind, B, 4, n, D, dtype)
    torch.library.opcheck(ops.attention_bwd.default, (do, q, k, v, o, lse, 0.25))
    lens = torch.tensor([11, 7], dtype=torch.int32)
    starts = torch.tensor([0, 3], dtype=torch.int32)
    torch.library.opcheck(ops.attention_seq_fwd.default, (q, k, v, 0.25, starts, lens, 2, n))
    o, lse = ops.attention_seq_fwd.default(q, k, v, 0.25, starts, lens, 2, n)
    torch.library.opcheck(ops.attention_seq_bwd.default, (do, q, k, v, o, lse, 0.25, starts, lens, 2, n))


# ---- Llama (GQA), logits and gradients against eager with the pattern's mask ------------------------

@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_llama_gqa_logits_and_gradients_match_eager(backend):
    mod = load(STREAMING, backend)
    name = mod.register_hf(f"patternc_test_{backend}")
    ours, ref = pair(llama_config(), name)
    ids = torch.randint(0, 97, (2, 21))
    out = ours(ids).logits
    want = ref(ids, attention_mask=additive(mod.mask(21).expand(2, 21, 21))).logits
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.square().mean().backward()
    want.square().mean().backward()
    assert_grads_close(ours, ref)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_reach_the_pattern(side):
    mod = load(STREAMING)
    name = mod.register_hf()
    ours, ref = pair(llama_config(), name)
    n, lens = 19, [19, 12]
    starts = [0, n - 12] if side == "left" else [0, 0]
    ids = torch.randint(0, 97, (2, n))
    mask = torch.zeros(2, n, dtype=torch.long)
    for b, (m, s) in enumerate(zip(lens, starts)):
        mask[b, s:s + m] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = ours(ids, attention_mask=mask, position_ids=pos).logits
    want = ref(ids, attention_mask=additive(padded_keep(mod, lens, starts, n)), position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(out[real], want[real], atol=1e-5, rtol=1e-5)
    out[real].square().mean().backward()
    want[real].square().mean().backward()
    assert_grads_close(ours, ref)
    # the short row alone, unpadded, gives the same logits
    s = starts[1]
    alone = ours(ids[1:, s:s + 12]).logits
    torch.testing.assert_close(alone[0], out[1, s:s + 12], atol=1e-5, rtol=1e-5)


# ---- generation ---------------------------------------------------------------------------------

def test_cached_generation_matches_uncached_and_stays_bounded():
    mod = load(STREAMING)
    name = mod.register_hf()
    model = AutoModelForCausalLM.from_config(llama_config(), attn_implementation=name).eval()
    prompt = torch.randint(0, 97, (2, 9))
    uncached = model.generate(prompt, max_new_tokens=64, do_sample=False, use_cache=False)
    cache = mod.hf_cache(model)
    cached = model.generate(prompt, max_new_tokens=64, do_sample=False, cache=cache)
    dynamic = model.generate(prompt, max_new_tokens=64, do_sample=False)  # transformers' DynamicCache
    assert uncached.shape[1] == 9 + 64
    assert torch.equal(cached, uncached) and torch.equal(dynamic, uncached)
    kv = cache.layers[0].kv
    fixed, window = mod._bound.spec.cache_layout  # the sinks and the window, whatever the length
    assert kv.length == 9 + 63 and kv.slots == fixed + window < 9 + 63
    # a prompt longer than the ring: only the live keys are kept, and the next tokens still match
    long_prompt = torch.randint(0, 97, (1, 40))
    cached = model.generate(long_prompt, max_new_tokens=8, do_sample=False, cache=mod.hf_cache(model))
    assert torch.equal(cached, model.generate(long_prompt, max_new_tokens=8, do_sample=False, use_cache=False))


def test_cached_generation_of_padded_rows_is_refused():
    mod = load(STREAMING)
    model = AutoModelForCausalLM.from_config(llama_config(), attn_implementation=mod.register_hf()).eval()
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="decodes unpadded rows only"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, cache=mod.hf_cache(model))


# ---- Mistral's sliding window ---------------------------------------------------------------------

def test_mistral_sliding_window_matches_eager_and_a_different_window_is_refused():
    config = MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=5,
                           max_position_embeddings=256)
    mod = load("pattern hf_window(w = 4) = causal & local(w)")  # HF's sliding_window = w + 1
    ours, ref = pair(config, mod.register_hf())
    ids = torch.randint(0, 97, (1, 17))
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
    wrong = load("pattern wrong(w = 5) = causal & local(w)")
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=wrong.register_hf())
    with pytest.raises(ValueError, match=r"sliding_window = 5 .*write `causal & local\(4\)`.*sliding_window = None"):
        model(ids)


# ---- an encoder: BERT with a Longformer pattern -----------------------------------------------------

def test_bert_longformer_matches_eager_with_padding():
    mod = load(LONGFORMER)
    config = BertConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, attention_probs_dropout_prob=0.0,
                        hidden_dropout_prob=0.0)
    ours, ref = pair(config, mod.register_hf(), cls=BertModel)
    n, lens = 16, [16, 11]
    ids = torch.randint(0, 97, (2, n))
    mask = torch.zeros(2, n, dtype=torch.long)
    mask[0], mask[1, :11] = 1, 1
    out = ours(ids, attention_mask=mask).last_hidden_state
    want = ref(ids, attention_mask=additive(padded_keep(mod, lens, [0, 0], n))).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(out[real], want[real], atol=1e-5, rtol=1e-5)
    out[real].sum().backward()
    want[real].sum().backward()
    assert_grads_close(ours, ref)


# ---- torch.compile and autocast -------------------------------------------------------------------

def test_compiled_model_fullgraph_trains_like_eager():
    torch._dynamo.reset()
    mod = load(STREAMING)
    ours, _ = pair(llama_config(), mod.register_hf())
    twin = copy.deepcopy(ours)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, 97, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the padded-rows op inside the graph
    out = ours(ids, attention_mask=mask, labels=ids).loss
    got = compiled(ids, attention_mask=mask, labels=ids).loss
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)
    out.backward()
    got.backward()
    assert_grads_close(twin, ours)


def test_bf16_autocast_unifies_dtypes():
    mod = load(STREAMING)
    ours, ref = pair(llama_config(), mod.register_hf())
    ids = torch.randint(0, 97, (1, 15))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(ids).logits
        want = ref(ids, attention_mask=additive(mod.mask(15)[None])).logits
    assert out.dtype == want.dtype
    torch.testing.assert_close(out.float(), want.float(), atol=0.1, rtol=0.05)
    out.float().sum().backward()


# ---- errors ---------------------------------------------------------------------------------------

def test_dropout_in_training_names_the_knob():
    mod = load(STREAMING)
    model = AutoModelForCausalLM.from_config(llama_config(attention_dropout=0.1), attn_implementation=mod.register_hf())
    model.train()
    with pytest.raises(ValueError, match=r"set config\.attention_dropout = 0\.0"):
        model(torch.randint(0, 97, (1, 5)))
    model.eval()(torch.randint(0, 97, (1, 5)))  # no dropout in eval: fine


def test_bidirectional_pattern_in_a_causal_model_is_refused():
    mod = load(LONGFORMER)
    model = AutoModelForCausalLM.from_config(llama_config(), attn_implementation=mod.register_hf())
    with pytest.raises(ValueError, match=r"lets queries attend later keys.*causal & \(\.\.\.\)"):
        model(torch.randint(0, 97, (1, 5)))


def test_bad_names_and_masks_are_refused():
    mod = load(STREAMING)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        mod.register_hf("")
    model = AutoModelForCausalLM.from_config(llama_config(), attn_implementation=mod.register_hf())
    ids = torch.randint(0, 97, (2, 6))
    holes = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="padding between its tokens"):
        model(ids, attention_mask=holes)


def test_a_stack_picks_each_layer_by_layer_idx():
    stack = patternc.load("stack s = [causal & local(2), causal & local(5)] * 1", backend="triton")
    ours, ref = pair(llama_config(), stack.register_hf())
    ids = torch.randint(0, 97, (1, 12))
    masks = [additive(stack.mask(12, layer=i)[None]) for i in range(2)]
    hooks = [layer.self_attn.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: (args, {**kwargs, "attention_mask": masks[i]}), with_kwargs=True)
        for i, layer in enumerate(ref.model.layers)]
    want = ref(ids).logits
    for h in hooks:
        h.remove()
    torch.testing.assert_close(ours(ids).logits, want, atol=1e-5, rtol=1e-5)
    cache = stack.hf_cache(ours)
    assert [layer.compiled for layer in cache.layers] == [stack.layer(0), stack.layer(1)]


def test_example_runs():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_llama.py")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cached == uncached" in r.stdout
