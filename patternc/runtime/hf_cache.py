"""A transformers `Cache` backed by the pattern-shaped `KVCache`, for cached generation.

`module.hf_cache(model)` builds one (pass it to `generate` as `past_key_values`): each layer keeps
a `KVCache` of its pattern, so a sink + window model keeps its sinks and its memory stays bounded
however long it generates.  The prompt's keys go in with `KVCache.append` while `attention`
computes the prompt; each later step's keys go in the same way, and the attention function
(runtime.hf) decodes the new rows against the layer's cache.  A layer's `update` returns the new
keys tagged with their layer (`PATTERNC_LAYER`), which is how the attention function finds it:
the cache is read by patternc's attention only, never by another implementation.

transformers is imported when the first cache is built, never when a module is imported.
"""
from __future__ import annotations

from typing import Callable, Optional

from .decode_inputs import MAX_DECODE_T

PATTERNC_LAYER = "_patternc_layer"  # the attribute that tags a decode step's new keys with their cache layer
_CACHE_CLASSES: list = []  # (layer class, cache class), built once transformers is imported


def _make_cache_classes() -> tuple:
    from transformers.cache_utils import Cache, CacheLayerMixin

    class PatternCacheLayer(CacheLayerMixin):
        """One model layer's cache: its pattern's KVCache, made when the first keys arrive."""

        is_compileable = False
        is_croppable = False
        is_sliding = False

        def __init__(self, compiled, max_len: Optional[int] = None, page_size: Optional[int] = None):
            super().__init__()
            self.compiled, self.max_len, self.page_size = compiled, max_len, page_size
            self.kv = None

        def lazy_initialization(self, key_states, value_states) -> None:
            B, HK, _, D = key_states.shape
            self.kv = self.compiled.KVCache(B, HK, D, dtype=value_states.dtype, device=value_states.device,
                                            max_len=self.max_len, page_size=self.page_size)
            self.device, self.batch_size = value_states.device, B
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            """Store the new keys and values.  The prompt (an empty cache) comes back as it is, for
            `attention`; a later step's keys come back tagged with this layer, for decode."""
            key_states = key_states.to(value_states.dtype)  # autocast: RoPE promotes the keys
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            prompt = self.kv.length == 0
            t = key_states.shape[2]
            if not prompt and t > MAX_DECODE_T:
                raise ValueError(f"a patternc cache takes at most {MAX_DECODE_T} new tokens per step after the "
                                 f"prompt, got {t}")
            self.kv.append(key_states.contiguous(), value_states.contiguous(), prompt=prompt)
            if not prompt:
                setattr(key_states, PATTERNC_LAYER, self)
            return key_states, value_states

        def get_mask_sizes(self, query_length: int) -> tuple:
            return self.get_seq_length() + query_length, 0

        def get_seq_length(self) -> int:
            return 0 if self.kv is None else self.kv.length

        def get_max_length(self) -> int:
            return -1 if self.max_len is None else self.max_len

        def reset(self) -> None:
            if self.kv is not None:
                self.kv.reset()

        def reorder_cache(self, beam_idx) -> None:
            raise NotImplementedError("a patternc cache does not reorder rows (beam search); use num_beams=1")

        def offload(self):
            pass

        def prefetch(self):
            pass

    class PatternCache(Cache):
        """A transformers Cache whose layers are patternc KVCaches (built by module.hf_cache)."""

        def __init__(self, layers: list):
            super().__init__(layers=layers)

    return PatternCacheLayer, PatternCache


def pattern_cache(pick: Callable, num_layers: int, max_len: Optional[int] = None,
                  page_size: Optional[int] = None):
    """A PatternCache of `num_layers` layers, layer i with the compiled pattern pick(i)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if not _CACHE_CLASSES:
        _CACHE_CLASSES.append(_make_cache_classes())
    layer_class, cache_class = _CACHE_CLASSES[0]
    return cache_class([layer_class(pick(i), max_len, page_size) for i in range(num_layers)])


def model_layers(model) -> int:
    """The number of decoder layers of a transformers model or config."""
    config = getattr(model, "config", model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError(f"hf_cache needs a transformers model or config with num_hidden_layers, got "
                         f"{type(model).__name__}")
    return n
