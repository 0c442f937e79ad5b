"""The FlexAttention path: the pattern as a `mask_mod` for torch's flex_attention.

FlexAttention does the block-sparse scheduling itself; the module only states its mask.  Two
repairs make it behave like every patternc backend:

- rows with no allowed key: FlexAttention's output there is not defined across torch versions
  (NaN or garbage has been seen), so they are set to output 0 and lse = -inf;
- the log-sum-exp is asked for with `return_aux=AuxRequest(lse=True)` where torch has it
  (`return_lse=True` warns on every call from torch 2.13 and fails under torch.compile on CPU),
  and with `return_lse=True` on older torch.

On CUDA flex_attention runs through torch.compile (static shapes: one compile per length and
dtype); elsewhere eagerly.

Packed documents and padded rows (runtime.varlen) take the module's `make_seq_mask_mod`: one
mask_mod over the whole rows that looks up each position's sequence (its first row, length and
length-dependent arguments, tensors built on the host from the sequences: one synchronisation),
and a BlockMask built per batch of sequences, as FlexAttention users do (the last few are kept).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

try:
    from torch.nn.attention import flex_attention as _flex
except ImportError:  # torch before 2.5 has no FlexAttention
    _flex = None

AuxRequest = getattr(_flex, "AuxRequest", None)


def require_flex() -> None:
    if _flex is None:
        raise RuntimeError(f"this torch ({torch.__version__}) has no FlexAttention "
                           "(torch.nn.attention.flex_attention needs torch >= 2.5); "
                           "use the reference or triton backend instead")


def device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def flex_call(q, k, v, block_mask, scale: float, enable_gqa: bool):
    """flex_attention returning (out, lse) with whichever argument this torch has."""
    if AuxRequest is not None:
        out, aux = _flex.flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                                        return_aux=AuxRequest(lse=True))
        return out, aux.lse
    return _flex.flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa, return_lse=True)


class FlexPath:
    """One pattern's FlexAttention state: its BlockMasks, its empty rows, its compiled call."""

    def __init__(self, make_mask_mod: Callable, num_heads: Optional[int], make_seq_mask_mod: Optional[Callable] = None):
        self.make_mask_mod = make_mask_mod
        self.make_seq_mask_mod = make_seq_mask_mod
        self.num_heads = num_heads
        self.seq_masks: dict = {}  # (spans, B, n, device) -> (BlockMask, empty rows), the last few
        self.compile: Optional[bool] = None  # None: torch.compile on CUDA only; True / False to force
        self._compiled = None
        self.block_mask = functools.lru_cache(maxsize=32)(self._block_mask)
        self.empty_rows = functools.lru_cache(maxsize=32)(self._empty_rows)

    def _block_mask(self, n: int, device: str, block_size: int):
        require_flex()
        return _flex.create_block_mask(self.make_mask_mod(n), B=None, H=self.num_heads, Q_LEN=n, KV_LEN=n,
                                       device=device, BLOCK_SIZE=block_size)

    def _empty_rows(self, n: int, device: str) -> torch.Tensor:
        """(H or 1, n): True for query rows with no allowed key, found in row chunks."""
        H = self.num_heads or 1
        mod = self.make_mask_mod(n)
        h = torch.arange(H, device=device)[:, None, None]
        j = torch.arange(n, device=device)[None, :]
        chunk = max(1, (1 << 22) // (n * H))
        rows = []
        for start in range(0, n, chunk):
            i = torch.arange(start, min(n, start + chunk), device=device)[:, None]
            rows.append(~torch.broadcast_to(mod(0, h, i, j), (H, i.shape[0], n)).any(-1))
        return torch.cat(rows, 1)

    def _call(self, q, k, v, block_mask, scale: float, enable_gqa: bool):
        # a function of this object's own: torch.compile keeps its recompile budget per code object
        return flex_call(q, k, v, block_mask, scale, enable_gqa)

    def _run(self, q, k, v, bm, scale: float, empty: torch.Tensor):
        """flex_attention, compiled on CUDA, with rows that allow nothing (`empty`, broadcast to
        (B, H, n)) set to output 0 and lse = -inf."""
        use_compile = q.is_cuda if self.compile is None else self.compile
        if use_compile and self._compiled is None:
            self._compiled = torch.compile(self._call, dynamic=False)  # dynamic shapes break BlockMask guards
        fn = self._compiled if use_compile else self._call
        out, lse = fn(q, k, v, bm, float(scale), q.shape[1] != k.shape[1])
        out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
        lse = torch.where(empty, torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
        return out, lse

    def attention(self, q, k, v, scale: float):
        require_flex()
        n = q.shape[2]
        bm = self.block_mask(n, device_key(q.device), 128)
        return self._run(q, k, v, bm, scale, self.empty_rows(n, device_key(q.device))[None])  # (1, H or 1, n)

    def seq_attention(self, q, k, v, scale: float, spans: tuple, spec):
        """(out, lse) of packed or padded sequences ((batch row, start, length), ...): each its own
        sequence, nothing across them; padding rows give 0 and lse = -inf."""
        require_flex()
        B, H, n = q.shape[0], q.shape[1], q.shape[2]
        device = device_key(q.device)
        key = (spans, B, n, device)
        some = [m for _, _, m in spans if m > 0]
        if not some:  # padding everywhere
            return q.new_zeros(q.shape), torch.full((B, H, n), float("-inf"), dtype=torch.float32, device=q.device)
        if key not in self.seq_masks:
            # padding positions look up a real sequence's values too (the mask is False there anyway),
            # so that no division in the pattern's formula sees a zero
            first = torch.full((B, n), -1, dtype=torch.int64)
            length = torch.full((B, n), some[0], dtype=torch.int64)
            A = {name: torch.full((B, n), value, dtype=torch.int64)
                 for name, value in spec.length_args(some[0]).items()}
            empty = torch.ones((B, self.num_heads or 1, n), dtype=torch.bool, device=device)  # padding: nothing
            for b, s, m in spans:
                if m == 0:
                    continue
                first[b, s:s + m], length[b, s:s + m] = s, m
                for name, value in spec.length_args(m).items():
                    A[name][b, s:s + m] = value
                empty[b, :, s:s + m] = self.empty_rows(m, device)
            mod = self.make_seq_mask_mod(first.to(device), length.to(device), {x: t.to(device) for x, t in A.items()})
            bm = _flex.create_block_mask(mod, B=B, H=self.num_heads, Q_LEN=n, KV_LEN=n, device=device,
                                         BLOCK_SIZE=128)
            if len(self.seq_masks) >= 4:
                self.seq_masks.pop(next(iter(self.seq_masks)))
            padding = (first < 0)[:, None, :, None].to(device) if bool((first < 0).any()) else None
            self.seq_masks[key] = bm, empty, padding
        bm, empty, padding = self.seq_masks[key]
        if padding is not None:  # zeroed: FlexAttention multiplies masked scores' zeros with their values
            q, k, v = (t.masked_fill(padding, 0) for t in (q, k, v))
        return self._run(q, k, v, bm, scale, empty)
