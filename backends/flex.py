"""The FlexAttention backend: the pattern as a `mask_mod` for torch's flex_attention.

FlexAttention does the block-sparse scheduling itself; this backend only states the mask,
with the same printer as the reference and Triton backends.  The runtime's flex path
(patternc.runtime.flex_path) repairs what FlexAttention leaves undefined: rows with no
allowed key give output 0 and lse = -inf, as in every patternc backend.
"""
from __future__ import annotations

from patternc.frontend import Pattern
from patternc.printer import mask_expr

from .common import (SELECT_HOST, HostEmitter, bind_args, bind_lines, head_cases, imports, module_header,
                     random_imports)

DESCRIPTION = """\
FlexAttention (torch.nn.attention.flex_attention) with this pattern as its mask_mod.

    make_mask_mod(n)                         -> mask_mod(b, h, q_idx, kv_idx) for length n
    block_mask(n, device, BLOCK_SIZE=128)    -> cached BlockMask
    attention(q, k, v, scale=None, return_lse=False)
    mask(n, device=None), mask_rows(i, j, n, H=1)

On CUDA flex_attention runs through torch.compile (static shapes: one compile per length
and dtype); elsewhere it runs eagerly.  Importing this module works without FlexAttention;
attention() then raises RuntimeError.
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


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    host = HostEmitter(pattern)
    mod = _mask_mod(host)
    host_text = host.functions([mod])
    head = imports(pattern, host_text, ["Spec", "bind"], kernels=False) + "\n\nimport torch"
    rnd = random_imports(host_text)
    parts = [module_header(pattern, "flex", DESCRIPTION), head + ("\n" + rnd if rnd else ""),
             host.constants(), host_text, host.spec("flex"),
             bind_lines("flex", ("attention", "mask", "mask_rows", "block_mask"), selected=host.selected)]
    return "\n\n\n".join(parts).rstrip() + "\n"
