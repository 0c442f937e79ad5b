"""`register_hf`: a pattern as a transformers attention implementation.

    longformer_attn.register_hf()                        # name: "patternc_longformer"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="patternc_longformer")

Two entries are registered under one name: an attention function (AttentionInterface) and a mask
function (AttentionMaskInterface).  The mask function hands the attention function the 2-D padding
mask itself (None when there is no padding, where that is known without a host synchronisation),
never a dense 4-D mask; the attention function turns it into `seq_lens` / `seq_starts`, so left-
and right-padded rows are each their own sequence for the pattern, with no mask built.

The attention function takes q (B, Hq, S, D), k and v (B, Hkv, L, D) unexpanded (GQA), honours
`scaling`, unifies dtypes to v's (autocast: RoPE promotes q and k to float32), and returns
(B, S, Hq, D).  Without a cache S = L and it calls `attention`; with one (a decode step: S < L)
it calls `decode`: against the layer's pattern-shaped KVCache with `module.hf_cache(model)`
(runtime.hf_cache), or against transformers' own DynamicCache (every position kept).

What it refuses, each with what to write instead: dropout in training (patternc has none), a
pattern that lets a query see later keys in a causal model, a model's sliding window that is not
the pattern's, a 4-D mask, and padding holes or padded rows while decoding.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .hf_cache import PATTERNC_LAYER

_WINDOWS_CHECKED: set = set()  # (pattern namespace, sliding window) pairs found to agree


def hf_name(name, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return name


def hf_register(name: str, pick: Callable) -> str:
    """Register attention and mask functions under `name`; pick(attention module) gives the compiled
    pattern of that layer.  Returns the name."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        raise ImportError("register_hf needs transformers (pip install transformers)") from None
    AttentionInterface.register(name, hf_attention_function(pick))
    AttentionMaskInterface.register(name, padding_mask)
    return name


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """What the attention function needs of the mask: the 2-D padding mask of the keys (B, kv_length),
    or None where it has no padding (checked only where that costs no synchronisation)."""
    if attention_mask is None:
        return None
    mask = attention_mask[:, -kv_length:]
    if not mask.is_cuda and not torch.compiler.is_compiling() and bool(mask.all()):
        return None
    return mask


def _dropout_knob(config) -> str:
    for knob in ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"):
        if hasattr(config, knob):
            return f"config.{knob}"
    return "the model's attention dropout"


def check_model(compiled, module, dropout: float, sliding_window) -> None:
    """The model and the pattern must agree (dropout, causality, sliding window): one clear error if not."""
    name = compiled.spec.name
    if dropout and dropout > 0:
        raise ValueError(f"patternc attention has no dropout, but this model asks for attention dropout "
                         f"{dropout} in training: set {_dropout_knob(getattr(module, 'config', None))} = 0.0")
    if getattr(module, "is_causal", False) and not compiled.spec.is_causal:
        raise ValueError(f"pattern {name!r} lets queries attend later keys, but {type(module).__name__} is causal: "
                         f"write `causal & (...)` around the pattern (e.g. `pattern {name}_causal = {name} & causal`)")
    if sliding_window is not None and not torch.compiler.is_compiling():
        key = (compiled.spec.namespace, int(sliding_window))
        if key not in _WINDOWS_CHECKED:
            if not _window_agrees(compiled, int(sliding_window)):
                w = int(sliding_window)
                raise ValueError(f"the model's config has sliding_window = {w} (each query sees its {w} newest keys, "
                                 f"`causal & local({w - 1})` in patternc), but pattern {name!r} differs: write "
                                 f"`causal & local({w - 1})` in the pattern, or set config.sliding_window = None so "
                                 f"the pattern alone decides which keys each query sees")
            _WINDOWS_CHECKED.add(key)


def _window_agrees(compiled, w: int) -> bool:
    """Whether the pattern is transformers' sliding window w (0 <= i - j < w) on probe rows at length 2w + 2."""
    n = 2 * w + 2
    i = torch.tensor([0, w - 1, w, n - 1])[:, None]
    j = torch.arange(n)[None, :]
    d = i - j
    want = (d >= 0) & (d < w)
    got = compiled.mask_rows(i, j, n, H=compiled.spec.num_heads or 1)
    return bool((got == want).all())


def _padded_rows(mask: torch.Tensor, q: torch.Tensor) -> dict:
    """seq_lens and seq_starts (int32, on q's device) of a 2-D padding mask whose ones are one run per row."""
    m = mask.to(device=q.device, dtype=torch.int32)
    n = m.shape[-1]
    lens = m.sum(-1, dtype=torch.int32)
    starts = (m.cumsum(-1) == 0).sum(-1, dtype=torch.int32)
    ends = n - (m.flip(-1).cumsum(-1) == 0).sum(-1, dtype=torch.int32)
    if not q.is_cuda and not torch.compiler.is_compiling():
        bad = ((ends - starts != lens) & (lens > 0)).nonzero()
        if len(bad):
            raise ValueError(f"row {int(bad[0, 0])} of the attention mask has padding between its tokens; patternc "
                             "takes left- or right-padded rows (one run of ones per row)")
    return {"seq_lens": lens, "seq_starts": starts}


def _no_padding(mask: Optional[torch.Tensor]) -> None:
    """Decoding counts positions from each row's first slot, so rows must not be padded."""
    if mask is None:
        return
    if mask.is_cuda:
        torch._assert_async(mask.all(), "patternc: cached generation of padded rows is not supported")
    elif not bool(mask.all()):
        raise ValueError("patternc decodes unpadded rows only: generate padded prompts one at a time (or in "
                         "batches of equal length), or without a cache (use_cache=False)")


def hf_attention_function(pick: Callable) -> Callable:
    """The attention function registered with transformers (see the module docstring)."""

    def patternc_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
        compiled = pick(module)
        check_model(compiled, module, dropout, kwargs.get("sliding_window"))
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"patternc takes a 2-D padding mask (batch, keys), got a mask of shape "
                             f"{tuple(attention_mask.shape)}: register the implementation with register_hf, which "
                             "registers its mask function too, and pass padding as attention_mask")
        layer = None if torch.compiler.is_compiling() else getattr(key, PATTERNC_LAYER, None)
        query, key = query.to(value.dtype), key.to(value.dtype)
        S, L = query.shape[2], key.shape[2]
        if layer is not None:  # a decode step against the layer's pattern-shaped cache
            _no_padding(attention_mask)
            out = layer.kv.decode(query, scale=scaling)
        elif S == L:
            seqs = {} if attention_mask is None else _padded_rows(attention_mask, query)
            out = compiled.attention(query, key, value, scale=scaling, **seqs)
        elif S < L:  # a decode step against transformers' own cache: every position, slot = position
            _no_padding(attention_mask)
            lengths = torch.full((query.shape[0],), L, dtype=torch.int32, device=query.device)
            out = compiled.decode(query, key, value, lengths, scale=scaling)
        else:
            raise ValueError(f"patternc attention needs as many keys as queries, or more (a cache), got "
                             f"{S} queries and {L} keys")
        return out.transpose(1, 2), None

    return patternc_attention


def layer_index(module) -> int:
    """The layer index of a transformers attention module (`layer_idx`), for a stack's layers."""
    i = getattr(module, "layer_idx", None)
    if isinstance(i, bool) or not isinstance(i, int):
        raise ValueError(f"a stack's attention picks its layer by the attention module's layer_idx, but "
                         f"{type(module).__name__} has layer_idx = {i!r}")
    return i
