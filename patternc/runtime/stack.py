"""A stack of layers: each layer's compiled pattern, picked by its index in the model.

A stack module binds each distinct layer pattern once (`bind`) and hands the layers to
`bind_stack`: layers with the same pattern share one compiled pattern, so its kernels,
launch plans and tuned settings are built once for the whole model.
"""
from __future__ import annotations

import operator
from typing import Optional

from .hf import hf_name, hf_register, layer_index
from .hf_cache import model_layers, pattern_cache
from .module import Compiled


class LayerStack:
    """What a stack module exports: `layer(i)` is layer i's compiled pattern (its `attention`,
    `mask`, `mask_rows`), and `attention`, `mask`, `mask_rows` take the layer by keyword."""

    def __init__(self, name: str, layers: tuple, patterns: tuple):
        self.name = name
        self.layers = tuple(layers)  # the index in `patterns` of each layer's pattern
        self.patterns = tuple(patterns)  # one Compiled per distinct pattern

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, i) -> Compiled:
        """Layer i's attention (0 <= i < num_layers): an object with attention(q, k, v, scale=None,
        return_lse=False), mask(n) and mask_rows(i, j, n), shared by every layer of its pattern."""
        if isinstance(i, bool):
            raise TypeError(f"layer must be an integer, got {i!r}")
        try:
            k = operator.index(i)
        except TypeError:
            raise TypeError(f"layer must be an integer, got {i!r} ({type(i).__name__})") from None
        if not 0 <= k < len(self.layers):
            raise IndexError(f"layer {k} is outside stack {self.name!r}: its layers are 0..{len(self.layers) - 1}")
        return self.patterns[self.layers[k]]

    def attention(self, q, k, v, *, layer, scale: Optional[float] = None, return_lse: bool = False):
        """Layer `layer`'s attention of q (B, Hq, n, D) over k, v (B, Hkv, n, D)."""
        return self.layer(layer).attention(q, k, v, scale=scale, return_lse=return_lse)

    def mask(self, n: int, *, layer, device=None):
        """Layer `layer`'s dense boolean mask at length n."""
        return self.layer(layer).mask(n, device=device)

    def mask_rows(self, i, j, n: int, *, layer, H: int = 1):
        """Layer `layer`'s mask at query rows i (a column) and key columns j (a row)."""
        return self.layer(layer).mask_rows(i, j, n, H=H)

    def register_hf(self, name: Optional[str] = None) -> str:
        """Register the stack as a transformers attention implementation (default name
        "patternc_<stack name>"): each attention module uses the layer of its `layer_idx`, so the
        model must have as many layers as the stack (checked at the first call of a layer past it)."""
        return hf_register(hf_name(name, f"patternc_{self.name}"), lambda module: self.layer(layer_index(module)))

    def hf_cache(self, model, max_len: Optional[int] = None, page_size: Optional[int] = None):
        """A transformers Cache whose layer i is layer i's pattern-shaped KVCache (see Compiled.hf_cache)."""
        n = model_layers(model)
        if n != self.num_layers:
            raise ValueError(f"the model has {n} layers, but stack {self.name!r} has {self.num_layers}")
        return pattern_cache(self.layer, n, max_len, page_size)


def bind_stack(name: str, layers: tuple, patterns: tuple) -> LayerStack:
    """The public functions of a stack module (see LayerStack)."""
    if not layers or any(not 0 <= d < len(patterns) for d in layers):
        raise ValueError(f"stack {name!r}: every layer must name one of its {len(patterns)} patterns")
    return LayerStack(name, layers, patterns)
