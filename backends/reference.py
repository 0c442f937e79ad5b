"""The reference backend: dense masked attention in plain PyTorch.

It is the executable specification of a pattern: simple enough to trust, exact (float32 or
float64 accumulation), differentiable, and runnable anywhere torch runs.  Other backends are
tested against it.  Its mask is printed from the IR by patternc.printer, the same printer the
fast backends use; the dense computation itself is the runtime's (patternc.runtime.dense).
"""
from __future__ import annotations

from patternc.frontend import Pattern

from .common import HostEmitter, bind_lines, imports, module_header, random_imports

DESCRIPTION = """\
Dense masked attention in PyTorch: the executable specification of the pattern.

    attention(q, k, v, scale=None, return_lse=False)
    mask(n, device=None)     -> bool tensor (n, n), or (H, n, n) for a per-head pattern
    mask_rows(i, j, n, H=1)  -> the mask at query rows i, key columns j

Memory and time are O(B * H * n^2): use it to test and to explain, not for long sequences.
"""


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    host = HostEmitter(pattern)
    host_text = host.functions([])
    head = imports(pattern, host_text, ["Spec", "bind"], kernels=False)
    rnd = random_imports(host_text)
    parts = [module_header(pattern, "reference", DESCRIPTION), head + ("\n" + rnd if rnd else ""),
             host.constants(), host_text, host.spec("reference"), bind_lines("reference", selected=host.selected)]
    return "\n\n\n".join(parts).rstrip() + "\n"
