"""`KVCache`: a KV cache shaped by the pattern, keeping only the keys it can still read.

While decoding, a key is dead once no later query may attend it (patternc.live_keys).  A
pattern whose live keys are bounded (windows, sinks, global tokens, blocks) needs a cache of
a fixed size whatever the length: positions below `fixed` (sinks, global columns) keep slots
of their own, and later positions share a ring of `window` slots (the newest keys, plus room
for the new tokens of one call).  The kernels map positions to slots arithmetically
(decode_inputs.Ring), so nothing is ever moved.  A pattern whose live keys are unbounded
(causal, strides, summaries, random blocks) keeps every position: slot = position.

Every batch row advances together (one `attend` appends t tokens to each row), so the length
is known on the host: no call reads the device to learn it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .decode_inputs import MAX_DECODE_T, Ring, check_decode_blocks

GROW_FROM = 256  # slots of an unbounded cache without max_len, doubled when full (decisions.md: kv-cache-layout)


def _positive(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    return v


def _runs(slots: list) -> list:
    """[(first slot, count, offset in `slots`)] of the runs of consecutive slots."""
    runs: list = []
    for k, s in enumerate(slots):
        if runs and s == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([s, 1, k])
    return [tuple(r) for r in runs]


class KVCacheBase:
    """A KV cache for decoding with this module's pattern: it keeps only the keys the pattern can
    still read.

        cache = KVCache(batch_size, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        out = cache.attend(q, k_new, v_new)   # q (B, Hq, t, D); k_new, v_new (B, Hkv, t, D)

    `attend` appends the t new tokens of every batch row and returns their attention output,
    (B, Hq, t, D): the last t rows of `attention` over the whole sequence so far.  `seqlens`
    (a (B,) int32 tensor on the device) is each row's length, `memory_bytes()` what the cache
    holds, `reset()` empties it (for the next sequence; memory is kept).

    A bounded pattern's cache has a fixed size: its sinks and global columns in slots of their
    own, its window in a ring (plus room for the most tokens one call appended, minus one).
    `max_len` only limits the length; it never sizes such a cache.  An unbounded pattern keeps
    every position: `max_len` slots when given, else a store that doubles as it fills.
    `page_size` (a power of two >= 16) stores the slots in pages through a page table, as a
    paged server does (pages of different rows interleave).

    Errors: a dtype or device other than the cache's, shapes that do not match it, more tokens
    than max_len, or more new tokens in one call than decode takes (MAX_DECODE_T).
    """

    compiled = None  # the pattern's runtime object (set on the class each module exports)

    def __init__(self, batch_size: int, kv_heads: int, head_dim: int, *, dtype, device,
                 max_len: Optional[int] = None, page_size: Optional[int] = None):
        if self.compiled is None:
            raise TypeError("KVCacheBase is bound to a pattern by its module: use module.KVCache(...)")
        self.batch_size = _positive("batch_size", batch_size)
        self.kv_heads = _positive("kv_heads", kv_heads)
        self.head_dim = _positive("head_dim", head_dim)
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float16, bfloat16, float32 or float64, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.empty(0, device=device).device  # "cuda" resolved to its index, as tensors report it
        self.max_len = None if max_len is None else _positive("max_len", max_len)
        if page_size is not None and (_positive("page_size", page_size) < 16 or page_size & (page_size - 1)):
            raise ValueError(f"page_size must be a power of two >= 16, got {page_size}")
        self.page_size = page_size
        layout = self.compiled.spec.cache_layout
        self.bounded = layout is not None
        self._fixed, self._window = layout if layout is not None else (0, 0)
        self._chunk = 1  # new tokens per call the ring has room for
        self._n = 0
        self.seqlens = torch.zeros(self.batch_size, dtype=torch.int32, device=self.device)
        self._allocate(self._fixed + self._window if self.bounded else (self.max_len or GROW_FROM))

    # ---- storage -------------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Tokens appended to every row since the last reset."""
        return self._n

    @property
    def ring(self) -> Optional[Ring]:
        """How positions map to slots (None: slot = position)."""
        return Ring(self._fixed, self._window + self._chunk - 1) if self.bounded else None

    def _allocate(self, slots: int) -> None:
        """Zeroed storage for `slots` positions per row (zeros: a masked-out slot is never NaN)."""
        B, HK, D = self.batch_size, self.kv_heads, self.head_dim
        self.slots = slots
        kw = dict(dtype=self.dtype, device=self.device)
        if self.page_size is None:
            self.k = torch.zeros((B, HK, slots, D), **kw)
            self.page_table = None
        else:
            per_row = -(-slots // self.page_size)
            self.k = torch.zeros((B * per_row, HK, self.page_size, D), **kw)
            # page k of row b is page k * B + b: rows' pages interleave, as a paged allocator's would
            table = torch.arange(per_row)[None, :] * B + torch.arange(B)[:, None]
            self.page_table = table.to(device=self.device, dtype=torch.int32)
            self._pages = table.to(device=self.device, dtype=torch.int64)
        self.v = torch.zeros_like(self.k)

    def _slot(self, p: int) -> int:
        ring = self.ring
        return p if ring is None else ring.slot(p)

    def _spans(self, positions: range) -> list:
        """[(slot, count, offset)] runs of consecutive slots, cut at page boundaries."""
        out = []
        for s, c, off in _runs([self._slot(p) for p in positions]):
            while c:
                take = c if self.page_size is None else min(c, self.page_size - s % self.page_size)
                out.append((s, take, off))
                s, c, off = s + take, c - take, off + take
        return out

    def _write(self, positions: range, k, v) -> None:
        for s, c, off in self._spans(positions):
            for store, x in ((self.k, k), (self.v, v)):
                if self.page_table is None:
                    store[:, :, s:s + c] = x[:, :, off:off + c]
                else:
                    ps = self.page_size
                    store[self._pages[:, s // ps], :, s % ps:s % ps + c] = x[:, :, off:off + c]

    def _read(self, positions: range) -> tuple:
        """(k, v) of `positions` for every row: (B, Hkv, len, D)."""
        ks, vs = [], []
        for s, c, _ in self._spans(positions):
            for store, acc in ((self.k, ks), (self.v, vs)):
                if self.page_table is None:
                    acc.append(store[:, :, s:s + c])
                else:
                    ps = self.page_size
                    acc.append(store[self._pages[:, s // ps], :, s % ps:s % ps + c])
        return torch.cat(ks, 2), torch.cat(vs, 2)

    def _relayout(self, slots: int, chunk: int) -> None:
        """Move what the cache holds to storage of `slots` slots whose ring has room for `chunk` tokens."""
        n = self._n
        kept = list(range(min(self._fixed, n))) + list(range(max(self._fixed, n - self.ring.window), n)) \
            if self.bounded else list(range(n))
        parts = [range(a, b + 1) for a, b in _slot_runs(kept)]
        saved = [(r, *self._read(r)) for r in parts]
        self._chunk = chunk
        self._allocate(slots)
        for r, k, v in saved:
            self._write(r, k, v)

    def _make_room(self, t: int) -> None:
        n = self._n
        if self.bounded and t > self._chunk:
            chunk = min(MAX_DECODE_T, 1 << (t - 1).bit_length())
            self._relayout(self._fixed + self._window + chunk - 1, chunk)
        elif not self.bounded and n + t > self.slots:
            self._relayout(max(2 * self.slots, n + t), 1)

    # ---- the public methods --------------------------------------------------------------------

    def _check_tensors(self, named: tuple) -> None:
        for what, x in named:
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise ValueError(f"{what} must be a 4-dimensional torch.Tensor, got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            if x.dtype != self.dtype:
                raise TypeError(f"{what} has dtype {x.dtype}, but the cache holds {self.dtype}")
            if x.device != self.device:
                raise ValueError(f"{what} is on {x.device}, but the cache is on {self.device}")

    def _check_kv(self, k_new, v_new) -> int:
        """t, the new tokens of k_new and v_new, after checking them against the cache."""
        B, HK, D = self.batch_size, self.kv_heads, self.head_dim
        self._check_tensors((("k_new", k_new), ("v_new", v_new)))
        t = k_new.shape[2]
        if tuple(k_new.shape) != (B, HK, t, D) or v_new.shape != k_new.shape:
            raise ValueError(f"k_new and v_new must have shape ({B}, {HK}, t, {D}) to match the cache, got "
                             f"{tuple(k_new.shape)} and {tuple(v_new.shape)}")
        if self.max_len is not None and self._n + t > self.max_len:
            raise ValueError(f"{self._n} + {t} tokens is more than max_len = {self.max_len}")
        return t

    def _check(self, q, k_new, v_new) -> int:
        B, D = self.batch_size, self.head_dim
        self._check_tensors((("k_new", k_new),))
        if not 1 <= k_new.shape[2] <= MAX_DECODE_T:  # first: no other limit matters past this one
            raise ValueError(f"attend takes 1 to {MAX_DECODE_T} new tokens per call (what the decode kernel "
                             f"supports), got t = {k_new.shape[2]}")
        t = self._check_kv(k_new, v_new)
        self._check_tensors((("q", q),))
        HK = self.kv_heads
        if q.shape[0] != B or q.shape[2] != t or q.shape[3] != D or q.shape[1] % HK:
            raise ValueError(f"q must have shape ({B}, Hq, {t}, {D}) with Hq a multiple of {HK}, got "
                             f"{tuple(q.shape)}")
        return t

    def attend(self, q, k_new, v_new, scale: Optional[float] = None, *, blocks=None) -> torch.Tensor:
        """Append the t new tokens' keys and values to every row and return their attention output
        (B, Hq, t, D).  A pattern with select(...) takes `blocks` as `decode` does (a pattern with a
        run-time selection can read any earlier key: its cache keeps every position)."""
        t = self._check(q, k_new, v_new)
        select = self.compiled.spec.select
        if (select is None) != (blocks is None):  # refused before the new tokens are written
            check_decode_blocks(select, blocks, q, self.k, 0, self.compiled.spec.name)
        self._make_room(t)
        self._write(range(self._n, self._n + t), k_new, v_new)
        self._n += t
        self.seqlens.fill_(self._n)
        return self.compiled.cache_decode(q, self.k, self.v, self.seqlens, scale, self.page_table, self.ring, blocks)

    def append(self, k_new, v_new, *, prompt: bool = False) -> None:
        """Append t new tokens' keys and values to every row without attending: any t >= 1.  Then
        `decode` gives the new rows' output (t <= MAX_DECODE_T).  prompt=True: rows whose attention
        `attention` computed, so the ring keeps no room to decode them.  A bounded cache writes only the
        positions still live after them."""
        t = self._check_kv(k_new, v_new)
        if t < 1:
            raise ValueError("append takes at least one new token, got t = 0")
        if (t <= MAX_DECODE_T and not prompt) or not self.bounded:
            self._make_room(t)
        n, end = self._n, self._n + t
        kept = [range(n, min(end, self._fixed))] if self.bounded else [range(n, end)]
        if self.bounded:
            kept.append(range(max(n, self._fixed, end - self.ring.window), end))
        for r in kept:
            if len(r):
                self._write(r, k_new[:, :, r.start - n:r.stop - n], v_new[:, :, r.start - n:r.stop - n])
        self._n = end
        self.seqlens.fill_(end)

    def decode(self, q, scale: Optional[float] = None, *, blocks=None) -> torch.Tensor:
        """The attention output (B, Hq, t, D) of the t = q.shape[2] newest positions (the last `append`'s
        tokens, t at most what it appended when that was at most MAX_DECODE_T) against what the cache holds."""
        self._check_tensors((("q", q),))
        B, HK, D = self.batch_size, self.kv_heads, self.head_dim
        if q.shape[0] != B or q.shape[3] != D or q.shape[1] % HK:
            raise ValueError(f"q must have shape ({B}, Hq, t, {D}) with Hq a multiple of {HK}, got {tuple(q.shape)}")
        if self.bounded and q.shape[2] > self._chunk:
            raise ValueError(f"decode takes at most {self._chunk} new rows here (the ring's room for new tokens), "
                             f"got t = {q.shape[2]}")
        return self.compiled.cache_decode(q, self.k, self.v, self.seqlens, scale, self.page_table, self.ring, blocks)

    def memory_bytes(self) -> int:
        """Bytes of device memory the cache holds (keys, values and the page table)."""
        extra = 0 if self.page_table is None else self.page_table.numel() * self.page_table.element_size()
        return 2 * self.k.numel() * self.k.element_size() + extra

    def reset(self) -> None:
        """Empty every row, keeping the memory."""
        self._n = 0
        self.seqlens.zero_()

    def __repr__(self) -> str:
        shape = (f"{self._fixed} fixed + {self.ring.window} ring slots" if self.bounded else f"{self.slots} slots")
        return (f"KVCache(length={self._n}, batch_size={self.batch_size}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, {shape}, {self.memory_bytes():,} bytes)")


def _slot_runs(xs: list) -> list:
    """[(first, last)] of the runs of consecutive integers in a sorted list."""
    out: list = []
    for x in xs:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


def kv_cache_class(compiled) -> type:
    """The KVCache class a generated module exports, bound to its pattern, with what the cache
    holds for it in its docstring."""
    spec = compiled.spec
    if spec.cache_layout is None:
        note = ("This pattern's live keys are unbounded (some query may still read any earlier key), so the "
                "cache keeps every position: 2 * batch_size * kv_heads * head_dim * itemsize bytes per token, "
                "growing with the sequence (or max_len slots when max_len is given).")
    else:
        fixed, window = spec.cache_layout
        note = (f"This pattern reads at most {fixed + window:,} cached keys per row and kv head at any step "
                f"({fixed} fixed slots + a ring of {window}): the cache holds {fixed + window:,} slots "
                f"(plus t - 1 when a call appends t tokens), whatever the length.")
    return type("KVCache", (KVCacheBase,), {"compiled": compiled, "__module__": KVCacheBase.__module__,
                                            "__doc__": KVCacheBase.__doc__ + "\n    " + note + "\n"})
