"""The reference backend: dense masked attention in plain PyTorch.

It is the executable specification of a pattern: simple enough to trust, exact (float32 or
float64 accumulation), differentiable, and runnable anywhere torch runs.  Other backends are
tested against it.  Its mask is printed from the IR by patternc.printer, the same printer the
fast backends use; the dense computation itself is the runtime's (patternc.runtime.dense).
"""
from __future__ import annotations

from patternc.frontend import Pattern

from .common import HostEmitter, bind_lines, imports, module_header, random_imports
from .walk_text import walk_cases

DESCRIPTION = """\
Dense masked attention in PyTorch: the executable specification of the pattern.

    attention(q, k, v, scale=None, return_lse=False, *, cu_seqlens=None, max_seqlen=None,
              seq_lens=None, seq_starts=None)   (packed or padded: each sequence's mask on the diagonal)
    decode(q, k_cache, v_cache, cache_seqlens, *, scale=None, page_table=None, return_lse=False)
                             -> the t newest rows against a KV cache, by the definition: every
                                cached key, masked by the pattern at n = cache_seqlens[b]
    KVCache(batch_size, kv_heads, head_dim, *, dtype, device, max_len=None, page_size=None)
    mask(n, device=None)     -> bool tensor (n, n), or (H, n, n) for a per-head pattern
    mask_rows(i, j, n, H=1)  -> the mask at query rows i, key columns j
    cp_positions(n, world_size, rank, layout="contiguous")
    context_parallel_attention(q, k, v, *, group=None, layout="contiguous", n=None)

Memory and time are O(B * H * n^2): use it to test and to explain, not for long sequences.
The walk functions below serve context parallelism: they say which key rows each rank needs,
and each rank computes its part with the runtime's exact sparse walk.
"""


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    host = HostEmitter(pattern)
    walks, cases = walk_cases(pattern, host)
    host_text = host.functions(walks)
    head = imports(pattern, host_text, ["Case", "Pass", "Spec", "bind"], kernels=False)
    rnd = random_imports(host_text)
    parts = [module_header(pattern, "reference", DESCRIPTION), head + ("\n" + rnd if rnd else ""),
             host.constants(), host_text, host.spec("reference", cases),
             bind_lines("reference", selected=host.selected)]
    return "\n\n\n".join(parts).rstrip() + "\n"
