"""Packed documents and padded batches: where each sequence lies in the rows of q, k and v.

`attention(q, k, v, cu_seqlens=..., max_seqlen=...)` packs documents into one row (B = 1,
FlashAttention's convention: cu_seqlens holds the int32 offsets 0 = c_0 <= c_1 <= ... = total);
`attention(q, k, v, seq_lens=..., seq_starts=...)` pads a batch (row b's sequence occupies
positions [seq_starts[b], seq_starts[b] + seq_lens[b])).  Either way each sequence is its own
sequence for the pattern: positions count from its first row and n is its length.  Rows outside
every sequence (padding) give output 0, lse = -inf and zero gradients; their keys are never read.

What is checked where (no host synchronisation on the CUDA fast path):

- always, on the host: types, dtypes (int32), devices, shapes, max_seqlen;
- the values (offsets start at 0, never decrease, end at total; no negative start or length;
  every sequence inside its row and no longer than max_seqlen; the pattern valid at every length)
  on the host wherever they are already there or read anyway: CPU tensors, packed documents
  without max_seqlen (finding it reads cu_seqlens once), the PyTorch paths, the reference and
  flex backends, and PATTERNC_CHECK_SEQUENCES=1; on the CUDA fast path by asynchronous device
  assertions (torch._assert_async), enqueued once per index tensor (per object and version), so
  a bad value stops the process at the next synchronisation with a device-side assertion.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from .walk import space_sizes

PACKED, PADDED = 1, 2  # the kernels' DOCS setting: cu_seqlens, or seq_starts and seq_lens
_ASSERTED: list = []  # (weak references, versions) of index tensors whose device assertions are enqueued


@dataclass(frozen=True, eq=False)
class Seqs:
    """The sequences of one call."""

    mode: int  # PACKED or PADDED
    starts: torch.Tensor  # PACKED: cu_seqlens (count + 1,); PADDED: seq_starts (B,); int32 on q's device
    lens: Optional[torch.Tensor]  # PADDED: seq_lens (B,); None for PACKED
    count: int  # documents (PACKED) or batch rows (PADDED)
    max_len: int  # no sequence is longer (sizes the kernels' grids)
    rows: int  # rows per (batch, head) of q, k and v: the packed total or the padded n
    host: Optional[tuple] = None  # ((batch row, start, length), ...) of every sequence, where read on the host

    def lengths(self) -> torch.Tensor:
        """Every sequence's length, on the tensors' device (no synchronisation)."""
        return self.starts[1:] - self.starts[:-1] if self.mode == PACKED else self.lens


def _int_value(name: str, x) -> int:
    if isinstance(x, torch.Tensor) or isinstance(x, bool) or not hasattr(x, "__index__"):
        raise TypeError(f"{name} must be a Python int (a tensor would need a host synchronisation), "
                        f"got {type(x).__name__}")
    return x.__index__()


def _index_tensor(name: str, t, q: torch.Tensor, count: Optional[int], what: str) -> torch.Tensor:
    """An int32 vector on q's device, of `count` entries when given."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({what}), got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 ({what}), got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on q's device ({q.device}), got {t.device}")
    if t.dim() != 1 or (count is not None and t.shape[0] != count):
        want = f"({count},)" if count is not None else "one dimension"
        raise ValueError(f"{name} must have shape {want} ({what}), got {tuple(t.shape)}")
    return t


def _checked_on_host() -> bool:
    return os.environ.get("PATTERNC_CHECK_SEQUENCES") == "1"


def packed_spans(cu: list, total: int) -> tuple:
    """((0, start, length), ...) of packed documents, or one clear ValueError."""
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {cu[0]}")
    for d in range(1, len(cu)):
        if cu[d] < cu[d - 1]:
            raise ValueError(f"cu_seqlens must not decrease, got cu_seqlens[{d}] = {cu[d]} < "
                             f"cu_seqlens[{d - 1}] = {cu[d - 1]}")
    if cu[-1] != total:
        raise ValueError(f"cu_seqlens must end at q's total length {total}, got cu_seqlens[-1] = {cu[-1]}")
    return tuple((0, a, b - a) for a, b in zip(cu, cu[1:]))


def padded_spans(starts: list, lens: list, n: int) -> tuple:
    """((row, start, length), ...) of padded rows, or one clear ValueError."""
    for b, (s, m) in enumerate(zip(starts, lens)):
        if not 0 <= s <= n:
            raise ValueError(f"seq_starts must be between 0 and n = {n}, got seq_starts[{b}] = {s}")
        if m < 0:
            raise ValueError(f"seq_lens must be >= 0, got seq_lens[{b}] = {m}")
        if s + m > n:
            raise ValueError(f"seq_starts + seq_lens must be <= n = {n}, got {s} + {m} = {s + m} in row {b}")
    return tuple((b, s, m) for b, (s, m) in enumerate(zip(starts, lens)))


def check_spans(spec, spans: tuple, mode: int, max_len: Optional[int]) -> int:
    """The longest sequence, after checking max_seqlen against it and the pattern at every length."""
    longest = max((m for _, _, m in spans), default=0)
    if max_len is not None and longest > max_len:
        raise ValueError(f"max_seqlen ({max_len}) is less than the longest sequence ({longest})")
    seen = set()
    for index, (b, _, m) in enumerate(spans):
        if m > 0 and m not in seen:
            seen.add(m)
            try:
                spec.check_length(m)
            except ValueError as e:
                where = f"document {index}" if mode == PACKED else f"batch row {b}"
                raise ValueError(f"{where} (length {m}): {e}") from None
    return longest


def sequences(spec, q: torch.Tensor, cu_seqlens=None, max_seqlen=None, seq_lens=None,
              seq_starts=None) -> Optional[Seqs]:
    """The sequences a call describes (None for plain rows), checked as the module docstring says."""
    if cu_seqlens is None and seq_lens is None and seq_starts is None:
        if max_seqlen is not None:
            raise ValueError("max_seqlen needs cu_seqlens (packed documents) or seq_lens (padded rows)")
        return None
    if cu_seqlens is not None and (seq_lens is not None or seq_starts is not None):
        raise ValueError("give cu_seqlens (packed documents) or seq_lens / seq_starts (padded rows), not both")
    B, _, n, _ = q.shape
    max_len = None if max_seqlen is None else _int_value("max_seqlen", max_seqlen)
    if max_len is not None and not 0 <= max_len <= n:
        raise ValueError(f"max_seqlen must be between 0 and q's length {n}, got {max_len}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"packed documents (cu_seqlens) need q, k and v of shape (1, H, total, D), "
                             f"got q of shape {tuple(q.shape)}")
        cu = _index_tensor("cu_seqlens", cu_seqlens, q, None, "document offsets, num_docs + 1 of them")
        if cu.shape[0] < 2:
            raise ValueError(f"cu_seqlens must have at least 2 entries (0 and the total), got {cu.shape[0]}")
        if torch.compiler.is_compiling():  # no value is read while tracing: checked where the op runs
            if max_len is None:
                raise ValueError("under torch.compile, packed documents need max_seqlen (finding it would read "
                                 "cu_seqlens on the host)")
        elif not cu.is_cuda or max_len is None or _checked_on_host():  # read anyway, or asked for
            spans = packed_spans(cu.tolist(), n)
            longest = check_spans(spec, spans, PACKED, max_len)
            return Seqs(PACKED, cu, None, cu.shape[0] - 1, longest if max_len is None else max_len, n, spans)
        return Seqs(PACKED, cu, None, cu.shape[0] - 1, max_len, n)
    if seq_lens is None:  # sequences from their start to the end of the row (left padding)
        starts = _index_tensor("seq_starts", seq_starts, q, B, "each row's first position")
        lens = n - starts
    else:
        lens = _index_tensor("seq_lens", seq_lens, q, B, "each row's sequence length")
        starts = torch.zeros_like(lens) if seq_starts is None else \
            _index_tensor("seq_starts", seq_starts, q, B, "each row's first position")
    if (not q.is_cuda or _checked_on_host()) and not torch.compiler.is_compiling():
        spans = padded_spans(starts.tolist(), lens.tolist(), n)
        check_spans(spec, spans, PADDED, max_len)
        return Seqs(PADDED, starts, lens, B, n if max_len is None else max_len, n, spans)
    return Seqs(PADDED, starts, lens, B, n if max_len is None else max_len, n)


def host_spans(spec, seqs: Seqs) -> tuple:
    """((batch row, start, length), ...) of every sequence, read on the host (a synchronisation for
    device tensors) and checked, for the paths that loop over sequences on the host."""
    if seqs.host is not None:
        return seqs.host
    if seqs.mode == PACKED:
        spans = packed_spans(seqs.starts.tolist(), seqs.rows)
    else:
        spans = padded_spans(seqs.starts.tolist(), seqs.lens.tolist(), seqs.rows)
    check_spans(spec, spans, seqs.mode, seqs.max_len)
    return spans


def assert_on_device(spec, seqs: Seqs) -> None:
    """Enqueue the value checks as device assertions, once per index tensor (object and version):
    no host synchronisation (decisions.md: packed-device-checks)."""
    if seqs.host is not None:
        return
    if not seqs.starts.is_cuda:  # on the host already: check there, with the exact message
        host_spans(spec, seqs)
        return
    tensors = tuple(t for t in (seqs.starts, seqs.lens) if t is not None)
    versions = tuple(t._version for t in tensors)
    compiling = torch.compiler.is_compiling()
    if not compiling and any(v == versions and all(r() is t for r, t in zip(refs, tensors))
                             for refs, v in _ASSERTED):
        return
    lens = seqs.lengths()
    ok = (lens >= 0).all() & (lens <= seqs.max_len).all()
    if seqs.mode == PACKED:
        ok = ok & (seqs.starts[0] == 0) & (seqs.starts[-1] == seqs.rows)
    else:
        ok = ok & (seqs.starts >= 0).all() & (seqs.starts + lens <= seqs.rows).all()
    if spec.lengths_ok is not None:  # the pattern's own length checks, at every non-empty length
        ok = ok & ((lens == 0) | spec.lengths_ok(lens)).all()
    torch._assert_async(ok, "patternc: bad cu_seqlens / seq_lens / seq_starts / max_seqlen "
                            "(run with PATTERNC_CHECK_SEQUENCES=1 for the exact error)")
    if not compiling:
        _ASSERTED[:] = (_ASSERTED + [(tuple(weakref.ref(t) for t in tensors), versions)])[-8:]


def seq_programs(spec, p, seqs: Seqs, tile: int, key_major: bool) -> tuple:
    """(programs per sequence and head, tiles per residue class) of a pass's kernel under packing:
    enough for the longest sequence.  Where the pass's index space has constant arguments its tile
    counts grow with the length, so the longest length decides; where they depend on the length
    (a modulus like isqrt(n)), the sequences' lengths are read on the host (one synchronisation).
    Shorter sequences' programs past their end return at once (decisions.md: packed-grid)."""
    fixed = not any(isinstance(x, str) for x in (p.m, p.l, p.c))
    lengths = (seqs.max_len,) if fixed else tuple(sorted({m for _, _, m in host_spans(spec, seqs)}))
    classes = per = 1
    for m in lengths:
        if m > 0:
            A = {} if fixed else spec.length_args(m)
            lq, lk = space_sizes(p, m, 0, A)
            classes = max(classes, min(p.value(p.m, A), m) if p.space == "diag" else 1)
            per = max(per, -(-(lk if key_major else lq) // tile))
    return classes * per, per


def seq_launch_values(seqs: Seqs, arg_names: tuple) -> dict:
    """The kernels' arguments that differ under packing (runtime.abi SEQS): the index tensors, the
    tensors' rows, and 0 for what each program computes itself."""
    return dict(SEQ=seqs.starts, SEQ_LEN=seqs.lens, NROW=seqs.rows, DOCS=seqs.mode, n=0, NOUT=0, PER=0,
                **{a: 0 for a in arg_names})


def seq_min(a, b):
    """min of two lengths-dependent values, on ints and tensors alike (modules' length checks)."""
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b)) if isinstance(a, torch.Tensor) or \
        isinstance(b, torch.Tensor) else min(a, b)


def seq_max(a, b):
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b)) if isinstance(a, torch.Tensor) or \
        isinstance(b, torch.Tensor) else max(a, b)


def seq_isqrt(x):
    """Integer square root of a tensor (exact: float64 square root, then corrected by one)."""
    if not isinstance(x, torch.Tensor):
        return math.isqrt(x)
    r = torch.sqrt(x.clamp(min=0).double()).floor().long()
    r = torch.where(r * r > x, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= x, r + 1, r)


def seq_masks(spec, spans: tuple, B: int, n: int, H: int, device) -> torch.Tensor:
    """(B, H, n, n) boolean mask: each sequence's pattern at its own length on its diagonal block
    (positions from its start), nothing across sequences or in padding (the reference backend)."""
    keep = torch.zeros((B, H, n, n), dtype=torch.bool, device=device)
    idx_cache: dict = {}
    for b, s, m in spans:
        if m == 0:
            continue
        if m not in idx_cache:
            i = torch.arange(m, device=device)
            idx_cache[m] = torch.stack([torch.broadcast_to(spec.mask_head(h, i[:, None], i[None, :], m), (m, m))
                                        for h in range(H)])
        keep[b, :, s:s + m, s:s + m] = idx_cache[m]
    return keep
