"""`attention(q, k, v, blocks=..., return_block_mass=...)` for a pattern with `select(...)`.

The run-time selection is checked (patternc.runtime.selection), then the backend computes: the
reference backend's dense masks and the flex backend's per-call BlockMask (selected_paths),
or, for the Triton backend, its kernels where they run and the exact sparse PyTorch walk
elsewhere.  The Triton backend's autograd saves the Selection with the activations, so the
backward reads its key-major inverse, built once however many layers share the Selection.

The selection gets no gradient (it is integers): an indexer learns from the block mass,
`return_block_mass=True`, which the forward computes in the same pass as the output.
"""
from __future__ import annotations

from typing import Optional

import torch

from .selected_paths import dense_selected, flex_selected
from .selection import Selection, check_blocks
from .walk import walk_backward, walk_forward


def check_selection_args(spec, blocks, return_block_mass: bool) -> None:
    """A pattern without select(...) takes no blocks=; one with it needs them."""
    if spec.select is None:
        if blocks is not None:
            raise ValueError(f"pattern {spec.name!r} has no select(...): blocks= is not taken")
        if return_block_mass:
            raise ValueError(f"return_block_mass=True needs a pattern with select(...); {spec.name!r} has none")
        return
    if blocks is None:
        k, b, qb = spec.select
        what = f"select({k}, block={b}" + (f", qblock={qb})" if qb != b else ")")
        raise ValueError(f"pattern {spec.name!r} has {what}: pass blocks= (an int32 tensor "
                         f"(B, Hs, ceil(n / {qb}), {k}), or a Selection from select_blocks)")


def selected_forward(compiled, q, k, v, scale: float, sel: Selection, mass: bool) -> tuple:
    """(out, lse, block mass or None) of the Triton backend: kernels where they run, else the walk."""
    if compiled.uses_kernels(q):
        return compiled.triton.forward_selected(q, k, v, scale, sel, mass)
    got = walk_forward(compiled.spec, q, k, v, scale, blocks=sel.blocks, mass=mass)
    return got if mass else got + (None,)


def selected_gradients(compiled, do, q, k, v, o, lse, scale: float, sel: Selection) -> tuple:
    if compiled.uses_kernels(q):
        return compiled.triton.backward_selected(do, q, k, v, o, lse, scale, sel)
    return walk_backward(compiled.spec, do, q, k, v, o, lse, scale, blocks=sel.blocks)


class SelectedAttention(torch.autograd.Function):
    """Forward and backward of the Triton backend with a selection (saved with the activations:
    its inverse is built in the first backward that needs it, then shared)."""

    @staticmethod
    def forward(ctx, compiled, q, k, v, scale, sel, mass):
        o, lse, got = selected_forward(compiled, q, k, v, scale, sel, mass)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.compiled, ctx.scale, ctx.sel = compiled, scale, sel
        ctx.mark_non_differentiable(lse)
        if got is None:
            return o, lse
        ctx.mark_non_differentiable(got)
        return o, lse, got

    @staticmethod
    def backward(ctx, do, *_):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = selected_gradients(ctx.compiled, do, q, k, v, o, lse, ctx.scale, ctx.sel)
        return None, dq, dk, dv, None, None, None


def selected_attention(compiled, q, k, v, scale: float, blocks, return_lse: bool, return_block_mass: bool):
    """The public call for a pattern with select(...) (q, k, v and scale already checked)."""
    spec = compiled.spec
    check_selection_args(spec, blocks, return_block_mass)
    sel = check_blocks(blocks, q, k, spec.select, spec.name)
    got: Optional[torch.Tensor] = None
    if compiled.backend == "reference":
        out, lse, got = dense_selected(spec, q, k, v, scale, sel.blocks, return_block_mass)
    elif compiled.backend == "flex":
        if return_block_mass:
            raise ValueError("return_block_mass=True is computed by the triton and reference backends, not flex "
                             "(FlexAttention returns no per-block probabilities)")
        spec.check_length(q.shape[2])
        out, lse = flex_selected(compiled.flex.make_mask_mod, q, k, v, scale, sel.blocks)
    elif torch.compiler.is_compiling():
        out, lse, got = compiled.selected_op(q, k, v, scale, sel.blocks, return_block_mass)
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        res = SelectedAttention.apply(compiled, q, k, v, scale, sel, return_block_mass)
        out, lse = res[0], res[1]
        got = res[2] if return_block_mass else None
    else:  # inference: no autograd bookkeeping at all
        out, lse, got = selected_forward(compiled, q, k, v, scale, sel, return_block_mass)
    result = (out, lse) if return_lse else (out,)
    if return_block_mass:
        result += (got,)
    return result if len(result) > 1 else out


def register_selected_ops(compiled):
    """The Triton backend's forward and backward with a selection as torch custom ops, for
    torch.compile (which cannot trace a Selection object's cache: the backward rebuilds the
    inverse from the blocks tensor it is given)."""
    ns = compiled.spec.namespace

    def fwd(q, k, v, scale, blocks, mass):
        o, lse, got = selected_forward(compiled, q, k, v, scale, Selection(blocks), mass)
        return o, lse, got if got is not None else q.new_zeros((0,), dtype=torch.float32)

    def bwd(do, q, k, v, o, lse, scale, blocks):
        return selected_gradients(compiled, do, q, k, v, o, lse, scale, Selection(blocks))

    fwd_op = torch.library.custom_op(f"{ns}::selected_fwd", fwd, mutates_args=(),
                                     schema="(Tensor q, Tensor k, Tensor v, float scale, Tensor blocks, bool mass) "
                                            "-> (Tensor, Tensor, Tensor)")
    bwd_op = torch.library.custom_op(f"{ns}::selected_bwd", bwd, mutates_args=(),
                                     schema="(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
                                            "float scale, Tensor blocks) -> (Tensor, Tensor, Tensor)")

    @fwd_op.register_fake
    def _(q, k, v, scale, blocks, mass):
        B, H, n, D = q.shape
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        got = q.new_empty((B, H, blocks.shape[2], blocks.shape[3]), dtype=lse_dtype) if mass else \
            q.new_empty((0,), dtype=torch.float32)
        return q.new_empty((B, H, n, D)), q.new_empty((B, H, n), dtype=lse_dtype), got

    @bwd_op.register_fake
    def _(do, q, k, v, o, lse, scale, blocks):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, scale, blocks, mass = inputs
        o, lse, _ = output
        ctx.save_for_backward(q, k, v, o, lse, blocks)
        ctx.scale = scale

    def backward(ctx, do, dlse, dmass):
        q, k, v, o, lse, blocks = ctx.saved_tensors
        dq, dk, dv = bwd_op(do, q, k, v, o, lse, ctx.scale, blocks)
        return dq, dk, dv, None, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)

    def call(q, k, v, scale, blocks, mass):
        o, lse, got = fwd_op(q, k, v, scale, blocks, mass)
        return o, lse, got if mass else None
    return call
