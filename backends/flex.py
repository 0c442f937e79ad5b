"""The FlexAttention backend: the pattern as a `mask_mod` for torch's flex_attention.

FlexAttention does the block-sparse scheduling itself; this backend only states the mask,
with the same printer as the reference and Triton backends.  The runtime's flex path
(patternc.runtime.flex_path) repairs what FlexAttention leaves undefined: rows with no
allowed key give output 0 and lse = -inf, as in every patternc backend.
"""
from __future__ import annotations

from patternc.frontend import Pattern
from patternc.printer import mask_expr

from .common import (EXPORTS, SELECT_HOST, HostEmitter, bind_args, bind_lines, head_cases, imports, module_header,
                     random_imports, uses_name)
from .walk_text import walk_cases

DESCRIPTION = """\
FlexAttention (torch.nn.attention.flex_attention) with this pattern as its mask_mod.

    make_mask_mod(n)                         -> mask_mod(b, h, q_idx, kv_idx) for length n
    make_seq_mask_mod(first, length, A)      -> mask_mod for packed or padded sequences
    block_mask(n, device, BLOCK_SIZE=128)    -> cached BlockMask
    attention(q, k, v, scale=None, return_lse=False, *, cu_seqlens=None, max_seqlen=None,
              seq_lens=None, seq_starts=None)
    decode(q, k_cache, v_cache, cache_seqlens, *, scale=None, page_table=None, return_lse=False)
    KVCache(batch_size, kv_heads, head_dim, *, dtype, device, max_len=None, page_size=None)
    mask(n, device=None), mask_rows(i, j, n, H=1)
    cp_positions(n, world_size, rank, layout="contiguous")
    context_parallel_attention(q, k, v, *, group=None, layout="contiguous", n=None)

On CUDA flex_attention runs through torch.compile (static shapes: one compile per length
and dtype); elsewhere it runs eagerly.  Importing this module works without FlexAttention;
attention() then raises RuntimeError.  decode() takes patternc's exact sparse PyTorch walk
(the closed-form key ranges of the pattern's passes, printed below): FlexAttention reads keys
by position in a contiguous tensor, not through a cache's slots or pages.  The same walk
functions serve context parallelism: they say which key rows each rank needs, and each rank
computes its part with the walk (FlexAttention takes positions from 0 only).
"""


def _mask_mod(host: HostEmitter) -> str:
    """`make_mask_mod(n)`: the mask as a closure over this length's arguments."""
    cases = head_cases(host.pattern)
    bodies = [mask_expr(expr, "i", "j", host.table, hash_fn="random_pick", select=SELECT_HOST) for _, _, expr in cases]
    if len(cases) == 1:
        ret = [f"        return {bodies[0]}"]
    else:
        ret = [f"        m{ci} = {body}  # heads {lo}..{hi}" for ci, ((lo, hi, _), body) in enumerate(zip(cases, bodies))]
        sel = f"m{len(cases) - 1}"
        for ci in range(len(cases) - 2, -1, -1):
            sel = f"torch.where(h <= {cases[ci][1]}, m{ci}, {sel})"
        ret.append(f"        return {sel}")
    text = "\n".join(bodies)
    sel = host.selected
    lines = ["def make_mask_mod(n: int" + (", blocks=None, group: int = 1):" if sel else "):"),
             '    """A FlexAttention mask_mod for sequence length n: True where query q_idx may attend key',
             '    kv_idx.  Length-dependent pattern arguments are computed here, once; mask_mod reads only',
             "    closure variables (TorchDynamo traces it, and cannot resolve the globals of a module",
             '    missing from sys.modules).' + ('  blocks: the run-time selection (B, Hs, query blocks, k);' if sel else '"""')]
    if sel:
        lines.append('    query head h reads blocks[b, h // group]."""')
    lines.append("    _check_length(n)")
    if any(bind_args(text, host.table, "A")):
        lines.append("    A = _length_args(n)")
        lines += bind_args(text, host.table, "A")
    lines += (["", "    def mask_mod(b, h, q_idx, kv_idx):",
              "        i = q_idx.to(torch.int64)  # the index arithmetic (and the random hash) must not overflow",
              "        j = kv_idx.to(torch.int64)"]
              + (["        sel = None if blocks is None else blocks[b, h // group]"] if sel else [])
              + ret + ["", "    return mask_mod"])
    return "\n".join(lines)


def _seq_mask_mod(host: HostEmitter) -> str:
    """`make_seq_mask_mod(first, length, A)`: the mask for sequences inside the rows (packed documents,
    padded rows), each its own sequence: positions from its first row, n its length, and the
    length-dependent arguments looked up per position (runtime.flex_path computes them per length)."""
    cases = head_cases(host.pattern)
    bodies = [mask_expr(expr, "i", "j", host.table, hash_fn="random_pick") for _, _, expr in cases]
    text = "\n".join(bodies)
    used = [v for v in host.table.names.values() if uses_name(text, v)]
    if len(cases) == 1:
        ret = [f"        return inside & {bodies[0]}"]
    else:
        ret = [f"        m{ci} = {body}  # heads {lo}..{hi}"
               for ci, ((lo, hi, _), body) in enumerate(zip(cases, bodies))]
        sel = f"m{len(cases) - 1}"
        for ci in range(len(cases) - 2, -1, -1):
            sel = f"torch.where(h <= {cases[ci][1]}, m{ci}, {sel})"
        ret.append(f"        return inside & {sel}")
    lines = ["def make_seq_mask_mod(first, length, A: dict):",
             '    """A FlexAttention mask_mod for sequences inside the rows: first[b, t] is the first row of',
             "    position t's sequence (-1 in padding), length[b, t] its length and A[name][b, t] its",
             '    length-dependent arguments.  No query attends another sequence or padding."""']
    lines += [f"    {v}_at = A[{v!r}]" for v in used]
    lines += ["", "    def mask_mod(b, h, q_idx, kv_idx):",
              "        s = first[b, q_idx]",
              "        inside = (s >= 0) & (first[b, kv_idx] == s)",
              "        i = (q_idx - s).to(torch.int64)  # positions from the sequence's first row",
              "        j = (kv_idx - s).to(torch.int64)"]
    if uses_name(text, "n"):
        lines.append("        n = length[b, q_idx]")
    lines += [f"        {v} = {v}_at[b, q_idx]" for v in used]
    return "\n".join(lines + ret + ["", "    return mask_mod"])


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    host = HostEmitter(pattern)
    mod = _mask_mod(host)
    walks, cases = walk_cases(pattern, host)
    seq = [] if host.selected else [_seq_mask_mod(host)]  # no packing with a run-time selection (runtime.module)
    host_text = host.functions([mod] + seq + walks)
    head = imports(pattern, host_text, ["Case", "Pass", "Spec", "bind"], kernels=False) + "\n\nimport torch"
    rnd = random_imports(host_text)
    parts = [module_header(pattern, "flex", DESCRIPTION), head + ("\n" + rnd if rnd else ""),
             host.constants(), host_text, host.spec("flex", cases),
             bind_lines("flex", EXPORTS + ("block_mask",), selected=host.selected)]
    return "\n\n\n".join(parts).rstrip() + "\n"
