"""Packed and padded sequences through the backends: the reference's dense computation, and the
Triton backend's custom ops for torch.compile.

Outside torch.compile the sequences (runtime.varlen.Seqs, a Python object) ride along the eager
autograd function of runtime.module; under it, custom ops take their index tensors, so the graph
stays whole and a length change is new data, not a new graph.
"""
from __future__ import annotations

import torch

from .dense import dense_attention
from .varlen import PACKED, Seqs, seq_masks


def inside_rows(spans: tuple, B: int, n: int, device) -> torch.Tensor:
    """(B, n) boolean: the rows that belong to a sequence (False: padding)."""
    inside = torch.zeros((B, n), dtype=torch.bool, device=device)
    for b, s, m in spans:
        inside[b, s:s + m] = True
    return inside


def dense_seq_attention(spec, q, k, v, scale: float, spans: tuple):
    """The reference's (out, lse) for sequences: the dense definition with each sequence's own mask
    as a block on the diagonal.  Padding rows of q, k and v are zeroed first (differentiably), so
    their values are never used and their gradients are zero."""
    B, H, n, _ = q.shape
    keep = seq_masks(spec, spans, B, n, spec.num_heads or 1, q.device)
    inside = inside_rows(spans, B, n, q.device)[:, None, :, None]
    q, k, v = (t.masked_fill(~inside, 0) for t in (q, k, v))
    return dense_attention(spec, q, k, v, scale, keep)


def seqs_of(q, starts, lens, mode: int, max_len: int) -> Seqs:
    """The Seqs of a custom op's arguments (checked before the op was called)."""
    count = starts.shape[0] - 1 if mode == PACKED else starts.shape[0]
    return Seqs(mode, starts, lens, count, max_len, q.shape[2])


def register_seq_ops(compiled):
    """Forward and backward with sequences as torch custom ops (named by the pattern's namespace), like
    runtime.module's plain ones; their fake kernels give contiguous outputs."""
    ns = compiled.spec.namespace

    def fwd(q, k, v, scale, starts, lens, mode, max_len):
        return compiled.forward(q, k, v, scale, seqs_of(q, starts, lens, mode, max_len))

    def bwd(do, q, k, v, o, lse, scale, starts, lens, mode, max_len):
        return compiled.gradients(do, q, k, v, o, lse, scale, seqs_of(q, starts, lens, mode, max_len))

    seq_args = "Tensor starts, Tensor? lens, int mode, int max_len"
    fwd_op = torch.library.custom_op(f"{ns}::attention_seq_fwd", fwd, mutates_args=(),
                                     schema=f"(Tensor q, Tensor k, Tensor v, float scale, {seq_args}) "
                                            "-> (Tensor, Tensor)")
    bwd_op = torch.library.custom_op(f"{ns}::attention_seq_bwd", bwd, mutates_args=(),
                                     schema=f"(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
                                            f"float scale, {seq_args}) -> (Tensor, Tensor, Tensor)")

    @fwd_op.register_fake
    def _(q, k, v, scale, starts, lens, mode, max_len):
        B, H, n, D = q.shape
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty((B, H, n, D)), q.new_empty((B, H, n), dtype=lse_dtype)

    @bwd_op.register_fake
    def _(do, q, k, v, o, lse, scale, starts, lens, mode, max_len):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, scale, starts, lens, mode, max_len = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse, starts, lens)
        ctx.scale, ctx.mode, ctx.max_len = scale, mode, max_len

    def backward(ctx, do, dlse):
        q, k, v, o, lse, starts, lens = ctx.saved_tensors
        dq, dk, dv = bwd_op(do, q, k, v, o, lse, ctx.scale, starts, lens, ctx.mode, ctx.max_len)
        return dq, dk, dv, None, None, None, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)

    def call(q, k, v, scale: float, seqs: Seqs):
        return fwd_op(q, k, v, scale, seqs.starts, seqs.lens, seqs.mode, seqs.max_len)
    return call
