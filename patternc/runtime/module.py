"""`bind`: a generated module's pattern, made into its public functions.

Every backend's module ends with one call, `bind(SPEC, backend)`, and exports what it returns:
`attention`, `mask`, `mask_rows` and the constants.  The backends differ only in how
`attention` computes:

- "triton": the pattern's Triton kernels on CUDA (and on the CPU under TRITON_INTERPRET=1);
  elsewhere, and for inputs the kernels do not take (float64, D > 256), the exact sparse
  PyTorch walk (runtime.walk), which costs what the pattern costs;
- "reference": dense masked attention (runtime.dense), the executable specification;
- "flex": torch's FlexAttention with the pattern as its mask_mod (runtime.flex_path).

`decode` (the newest rows against a KV cache) and `KVCache` (a cache shaped by the pattern)
follow the same split: the Triton decode kernels (runtime.decode_launch) where they run, else
the exact decode walk (runtime.decode), and the dense definition for the reference backend.

Every backend takes packed documents (cu_seqlens) and padded rows (seq_lens, seq_starts) as
keyword arguments (runtime.varlen): each sequence is its own sequence for the pattern.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from .decode import dense_decode, walk_decode
from .decode_inputs import DecodeChecks, Ring, check_decode_blocks, check_lengths
from .decode_launch import TritonDecode
from .context_parallel import cp_attention
from .cp_layout import layout_positions
from .dense import dense_attention, head_masks
from .flex_path import FlexPath, device_key
from .hf import hf_name, hf_register
from .hf_cache import model_layers, pattern_cache
from .triton_path import TritonPath
from .jit import HAVE_TRITON
from .kv_cache import kv_cache_class
from .select_index import index_blocks, index_scores
from .selected_attention import check_selection_args, register_selected_ops, selected_attention
from .selected_paths import selected_masks
from .selection import Selection
from .spec import Spec
from .validate import check_length, check_qkv, check_scale
from .varlen import assert_on_device, host_spans, sequences
from .varlen_ops import dense_seq_attention, register_seq_ops
from .walk import walk_backward, walk_forward

BACKENDS = ("triton", "reference", "flex")
MAX_KERNEL_D = 256  # head dims the kernels take (padded to a power of two >= 16 inside them)


def _kernels_run_on(q: torch.Tensor) -> bool:
    """Whether the Triton kernels take these inputs: CUDA (or the CPU interpreter), Triton installed,
    a dtype and head dim they support."""
    if not HAVE_TRITON or q.dtype == torch.float64 or q.shape[-1] > MAX_KERNEL_D:
        return False
    return q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


class Compiled:
    """One compiled pattern, bound to one backend: what a generated module exports."""

    def __init__(self, spec: Spec, backend: str, make_mask_mod: Optional[Callable] = None,
                 make_seq_mask_mod: Optional[Callable] = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.spec = spec
        self.backend = backend
        self.triton = None
        if backend == "triton" and spec.schedule is not None and HAVE_TRITON:
            self.triton = TritonPath(spec)
        self.flex = FlexPath(make_mask_mod, spec.num_heads, make_seq_mask_mod) if backend == "flex" else None
        self._op = _register_ops(self) if backend == "triton" else None
        self.decoder = TritonDecode(spec) if self.triton is not None and spec.select is None else None
        self.decode_checks = DecodeChecks(spec.num_heads, spec.name)
        self.KVCache = kv_cache_class(self)
        self._seq_op = register_seq_ops(self) if backend == "triton" else None
        # a pattern with select(...): calls take blocks= (runtime.selected_attention)
        self.selected_op = register_selected_ops(self) if backend == "triton" and spec.select else None

    # ---- masks -------------------------------------------------------------------------------

    def mask_rows(self, i, j, n: int, H: int = 1) -> torch.Tensor:
        """Boolean (H, len(i), len(j)) mask for query positions i (a column) and key positions j (a row)."""
        n = check_length(n, self.spec.check_length)
        i, j = torch.as_tensor(i), torch.as_tensor(j)
        return torch.stack([torch.broadcast_to(self.spec.mask_head(h, i, j, n), (i.shape[0], j.shape[-1]))
                            for h in range(H)])

    def mask(self, n: int, device=None, blocks=None) -> torch.Tensor:
        """The dense boolean mask, True where query i may attend key j: (n, n), or (NUM_HEADS, n, n)
        for a per-head pattern.  A pattern with select(...) needs its selection: blocks (B, Hs,
        ceil(n / qblock), k) gives (B, Hs, n, n), or (B, NUM_HEADS, n, n) for a per-head pattern."""
        n = check_length(n, self.spec.check_length)
        if self.spec.select is not None or blocks is not None:
            check_selection_args(self.spec, blocks, False)
            t = blocks.blocks if isinstance(blocks, Selection) else blocks
            return selected_masks(self.spec, n, self.spec.num_heads or t.shape[1], t.to(device))
        m = head_masks(self.spec, n, self.spec.num_heads or 1, device)
        return m[0] if self.spec.num_heads is None else m

    def block_mask(self, n: int, device, BLOCK_SIZE: int = 128):
        """(flex backend) The BlockMask for length n on `device`, built once per (n, device, block size)."""
        if self.flex is None:
            raise AttributeError(f"block_mask belongs to the flex backend, not {self.backend!r}")
        n = check_length(n, self.spec.check_length)
        return self.flex.block_mask(n, device_key(device), int(BLOCK_SIZE))

    # ---- run-time selection (patterns with select(...)) ---------------------------------------

    def select_blocks(self, q_index: torch.Tensor, k_index: torch.Tensor, *, weights=None) -> Selection:
        """The pattern's fused indexer: for every query block, the k key blocks of highest score
        among those the outer terms allow and the static terms do not cover (runtime.select_index)."""
        return index_blocks(self.spec, q_index, k_index, weights=weights)

    def block_scores(self, q_index: torch.Tensor, k_index: torch.Tensor, blocks, *, weights=None) -> torch.Tensor:
        """The indexer's score of each listed block, differentiable (runtime.select_index.index_scores):
        train it towards the block mass of attention(..., return_block_mass=True)."""
        return index_scores(self.spec, q_index, k_index, blocks, weights=weights)

    # ---- attention ---------------------------------------------------------------------------

    def uses_kernels(self, q) -> bool:
        """Whether this call runs the Triton kernels (else the exact PyTorch walk)."""
        return self.triton is not None and _kernels_run_on(q)

    def forward(self, q, k, v, scale: float, seqs=None):
        """(out, lse) without autograd: the backend's computation; `seqs`: packed or padded sequences
        (runtime.varlen.Seqs)."""
        if self.backend == "reference":
            if seqs is not None:
                return dense_seq_attention(self.spec, q, k, v, scale, host_spans(self.spec, seqs))
            return dense_attention(self.spec, q, k, v, scale)
        if self.backend == "flex":
            if seqs is not None:
                return self.flex.seq_attention(q, k, v, scale, host_spans(self.spec, seqs), self.spec)
            self.spec.check_length(q.shape[2])
            return self.flex.attention(q, k, v, scale)
        if self.triton is not None and _kernels_run_on(q):
            if seqs is not None:
                assert_on_device(self.spec, seqs)
            return self.triton.forward(q, k, v, scale, seqs)
        return walk_forward(self.spec, q, k, v, scale, spans=None if seqs is None else host_spans(self.spec, seqs))

    def gradients(self, do, q, k, v, o, lse, scale: float, seqs=None):
        if self.triton is not None and _kernels_run_on(q):
            return self.triton.backward(do, q, k, v, o, lse, scale, seqs)
        spans = None if seqs is None else host_spans(self.spec, seqs)
        return walk_backward(self.spec, do, q, k, v, o, lse, scale, spans=spans)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                  return_lse: bool = False, *, cu_seqlens: Optional[torch.Tensor] = None,
                  max_seqlen: Optional[int] = None, seq_lens: Optional[torch.Tensor] = None,
                  seq_starts: Optional[torch.Tensor] = None, blocks=None, return_block_mass: bool = False):
        """Attention with the pattern: q (B, Hq, n, D), k and v (B, Hkv, n, D); with return_lse also
        the log-sum-exp (B, Hq, n).  Packed documents: B = 1 and cu_seqlens (num_docs + 1,) int32
        offsets, max_seqlen the longest document (optional: finding it costs a host synchronisation).
        Padded rows: seq_lens (B,) int32, seq_starts (B,) int32 (default 0).  Each sequence is its own
        sequence for the pattern; padding rows give 0.  A pattern with select(...) takes `blocks` (an
        int32 tensor (B, Hs, ceil(n / qblock), k) or a Selection) and, with return_block_mass, also
        returns each selected block's probability mass (B, Hq, ceil(n / qblock), k): out, then lse if
        asked, then the mass."""
        check_qkv(q, k, v, self.spec.num_heads, self.spec.name)
        scale = check_scale(scale, q.shape[-1])
        if self.spec.select is not None or blocks is not None or return_block_mass:
            if cu_seqlens is not None or seq_lens is not None or seq_starts is not None:
                raise NotImplementedError(
                    f"pattern '{self.spec.name}': a run-time selection (blocks=) with packed or padded "
                    "sequences (cu_seqlens, seq_lens, seq_starts) is not supported yet; call attention "
                    "per sequence, or pack without select(...)")
            return selected_attention(self, q, k, v, scale, blocks, return_lse, return_block_mass)
        seqs = sequences(self.spec, q, cu_seqlens, max_seqlen, seq_lens, seq_starts)
        if self.backend != "triton":  # dense and FlexAttention: differentiable as they are
            out, lse = self.forward(q, k, v, scale, seqs)
        elif torch.compiler.is_compiling():
            out, lse = self._op(q, k, v, scale) if seqs is None else self._seq_op(q, k, v, scale, seqs)
        elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            out, lse = _EagerAttention.apply(self, q, k, v, scale, seqs)
        else:  # inference: no autograd bookkeeping at all
            out, lse = self.forward(q, k, v, scale, seqs)
        return (out, lse) if return_lse else out


    # ---- decoding ----------------------------------------------------------------------------

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor, *,
               scale: Optional[float] = None, page_table: Optional[torch.Tensor] = None, return_lse: bool = False,
               blocks=None):
        """The t newest rows of each batch row against its cache (runtime.decode has the definition).
        A pattern with select(...) takes `blocks`: the selection (B, Hs, query blocks, k), or a
        Selection, of at least the query blocks that the rows' new tokens fall in."""
        return self._decode(q, k_cache, v_cache, cache_seqlens, scale, page_table, None, return_lse, blocks)

    def cache_decode(self, q, k_cache, v_cache, cache_seqlens, scale, page_table, ring: Optional[Ring], blocks=None):
        """decode over a pattern-shaped cache (KVCache): positions map to slots through `ring`."""
        return self._decode(q, k_cache, v_cache, cache_seqlens, scale, page_table, ring, False, blocks)

    def _decode(self, q, k_cache, v_cache, cache_seqlens, scale, page_table, ring, return_lse: bool, blocks=None):
        capacity = self.decode_checks(q, k_cache, v_cache, cache_seqlens, page_table)
        blocks = check_decode_blocks(self.spec.select, blocks, q, k_cache, capacity, self.spec.name)
        scale = check_scale(scale, q.shape[-1])
        kernels = self.decoder is not None and _kernels_run_on(q)  # (no decode kernels take a selection yet)
        if not (kernels and cache_seqlens.is_cuda):  # reading lengths on the GPU would synchronise
            check_lengths(cache_seqlens.tolist(), q.shape[2], capacity, ring)
        if kernels:  # the kernels write fresh tensors: nothing for autograd to record
            out, lse = self.decoder.run(q, k_cache, v_cache, cache_seqlens, scale, page_table, capacity, ring)
        else:
            with torch.no_grad():
                if self.backend == "reference":
                    out, lse = dense_decode(self.spec, q, k_cache, v_cache, cache_seqlens, scale, page_table, ring,
                                            blocks)
                else:
                    out, lse = walk_decode(self.spec, q, k_cache, v_cache, cache_seqlens, scale, page_table, ring,
                                           blocks)
        return (out, lse) if return_lse else out


    # ---- context parallelism (runtime.context_parallel) ------------------------------------------

    def cp_positions(self, n: int, world_size: int, rank: int, layout: str = "contiguous", device=None):
        """The int64 token positions (ascending, on the CPU) that `rank` of `world_size` holds:
        "contiguous" (consecutive ranges; the last may be shorter) or "balanced" (the same allowed
        pairs per rank, within one tile's; a zigzag for causal patterns).  device: where the balanced
        layout's pair counts are computed, once per (n, world_size)."""
        return layout_positions(self.spec, n, world_size, rank, layout, device)

    def context_parallel_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None,
                                   layout: str = "contiguous", n: Optional[int] = None,
                                   scale: Optional[float] = None, exchange: str = "plan") -> torch.Tensor:
        """This rank's shard of the attention over the whole sequence: q (B, H, m, D) and k, v
        (B, Hkv, m, D) hold the rows cp_positions(n, world_size, rank, layout) of the sequence, on
        every rank of `group` (default: the world).  n defaults to the sum of the shards' lengths.
        Only the key rows the pattern needs travel (exchange="ring" sends every shard to every
        rank, for comparison); gradients flow back to every rank's q, k and v."""
        return cp_attention(self.spec, q, k, v, group=group, layout=layout, n=n, scale=scale, exchange=exchange)

    # ---- transformers (runtime.hf, runtime.hf_cache) ------------------------------------------------

    def register_hf(self, name: Optional[str] = None) -> str:
        """Register this pattern as a transformers attention implementation (and its mask function, so
        padding reaches the kernels) under `name` (default "patternc_<pattern name>"); returns the name.
        Then `AutoModelForCausalLM.from_config(cfg, attn_implementation=name)` or
        `model.set_attn_implementation(name)`.  Needs transformers (imported here, not before)."""
        return hf_register(hf_name(name, f"patternc_{self.spec.name}"), lambda module: self)

    def hf_cache(self, model, max_len: Optional[int] = None, page_size: Optional[int] = None):
        """A transformers Cache for `model` (or its config) whose layers are this pattern's KVCaches:
        pass it to `model.generate(..., past_key_values=...)` for bounded memory (a window or sinks)."""
        return pattern_cache(lambda i: self, model_layers(model), max_len, page_size)


class _EagerAttention(torch.autograd.Function):
    """Forward and backward without the custom op's dispatch layers, which cost ~50-90 us of host
    time per call: as much as a whole short kernel (docs/decisions.md: eager-autograd-path).  Used
    outside torch.compile; under it, the custom op keeps the graph whole."""

    @staticmethod
    def forward(ctx, compiled, q, k, v, scale, seqs=None):
        o, lse = compiled.forward(q, k, v, scale, seqs)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.compiled, ctx.scale, ctx.seqs = compiled, scale, seqs
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.compiled.gradients(do, q, k, v, o, lse, ctx.scale, ctx.seqs)
        return None, dq, dk, dv, None, None


def _register_ops(compiled: Compiled):
    """The pattern's forward and backward as torch custom ops (named by the pattern's namespace), so
    torch.compile sees one opaque, differentiable call.  Their fake kernels give contiguous outputs,
    like the real ones."""
    ns = compiled.spec.namespace

    def fwd(q, k, v, scale):
        return compiled.forward(q, k, v, scale)

    def bwd(do, q, k, v, o, lse, scale):
        return compiled.gradients(do, q, k, v, o, lse, scale)

    fwd_op = torch.library.custom_op(f"{ns}::attention_fwd", fwd, mutates_args=(),
                                     schema="(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)")
    bwd_op = torch.library.custom_op(f"{ns}::attention_bwd", bwd, mutates_args=(),
                                     schema="(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
                                            "float scale) -> (Tensor, Tensor, Tensor)")

    @fwd_op.register_fake
    def _(q, k, v, scale):
        B, H, n, D = q.shape
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty((B, H, n, D)), q.new_empty((B, H, n), dtype=lse_dtype)

    @bwd_op.register_fake
    def _(do, q, k, v, o, lse, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale

    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = bwd_op(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return fwd_op


def bind(spec: Spec, backend: str, make_mask_mod: Optional[Callable] = None,
         make_seq_mask_mod: Optional[Callable] = None) -> Compiled:
    """The public functions of a generated module (see Compiled)."""
    return Compiled(spec, backend, make_mask_mod, make_seq_mask_mod)
