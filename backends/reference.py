"""The reference backend: dense masked attention in plain PyTorch.

It is the executable specification of a pattern: simple enough to trust,
exact (float32 or float64 accumulation), differentiable, and runnable
anywhere torch runs.  Other backends are tested against it.  The mask is
printed from the IR by patternc.printer, the same printer the fast backends
use, so a generated module needs neither patternc nor any file but itself.
"""
from __future__ import annotations

import string

from patternc import printer
from patternc.frontend import Pattern

from .common import arg_names_in, doc_text, head_cases, standard_fields, unpack_args

DESCRIPTION = """\
Dense masked attention in PyTorch: the executable specification of the pattern.

    mask(n, device=None)  -> bool tensor (n, n), or (H, n, n) for a per-head pattern
    attention(q, k, v, scale=None, return_lse=False)

Memory and time are O(B * H * n^2): use it to test and to explain, not for long sequences.
"""

_TEMPLATE = string.Template('''\
$header
from __future__ import annotations

import math

import torch

PATTERN = $pattern_source
PATTERN_NAME = $pattern_name
NUM_HEADS = $num_heads  # None: the same pattern for every head
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


$host_support


# ---- the mask, printed from the pattern's IR ------------------------------------------------

$mask_functions


# (first head, last head or None for "every head", mask function of (i, j, n))
_CASES = $cases


def _as_length(n) -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = n.__index__()
    _check_length(n)
    return n


def _head_masks(n: int, H: int, device) -> torch.Tensor:
    """(H, n, n) boolean mask; H is 1 for a pattern that is the same for every head."""
    idx = torch.arange(n, device=device)
    i, j = idx[:, None], idx[None, :]
    out = torch.empty((H, n, n), dtype=torch.bool, device=device)
    for lo, hi, fn in _CASES:
        hi = H - 1 if hi is None else hi
        out[lo:hi + 1] = torch.broadcast_to(fn(i, j, n), (n, n))
    return out


def mask(n: int, device=None) -> torch.Tensor:
    """The dense boolean mask, True where query i may attend key j:
    (n, n), or (NUM_HEADS, n, n) for a per-head pattern."""
    n = _as_length(n)
    m = _head_masks(n, NUM_HEADS or 1, device)
    return m[0] if NUM_HEADS is None else m


$validate


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              return_lse: bool = False):
    """Masked softmax attention with this module's pattern.

    q: (B, Hq, n, D); k, v: (B, Hkv, n, D) with Hq a multiple of Hkv (grouped-query attention:
    query head h reads k/v head h // (Hq // Hkv)).  Computed in float32 (float64 for float64
    inputs) and cast back to the input dtype.  scale defaults to 1 / sqrt(D).  A row with no
    allowed key gives output 0 and lse = -inf, and passes no gradient.  Returns out, or
    (out, lse) with lse of shape (B, Hq, n) in the compute dtype (natural log).
    """
    _validate(q, k, v)
    B, H, n, D = q.shape
    HK = k.shape[1]
    group = H // HK
    _check_length(n)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    keep = _head_masks(n, NUM_HEADS or 1, q.device)
    keep = keep.reshape(1, HK, group, n, n) if NUM_HEADS is not None else keep.reshape(1, 1, 1, n, n)
    qf = q.to(ct).reshape(B, HK, group, n, D)
    kf = k.to(ct)[:, :, None]  # (B, HK, 1, n, D): each k/v head serves `group` query heads
    vf = v.to(ct)[:, :, None]
    s = torch.matmul(qf, kf.transpose(-1, -2)) * float(scale)
    s = s.masked_fill(~keep, float("-inf"))
    # A safe softmax: rows with no allowed key must give 0 (not NaN) and no gradient.
    empty = ~keep.any(-1, keepdim=True)
    row_max = torch.where(empty, 0.0, s.amax(-1, keepdim=True)).detach()
    p = torch.exp(s - row_max)
    denom = p.sum(-1, keepdim=True)
    denom = torch.where(empty, 1.0, denom)
    out = torch.matmul(p / denom, vf)
    lse = (row_max + torch.log(denom)).masked_fill(empty, float("-inf")).squeeze(-1)
    out = out.reshape(B, H, n, D).to(q.dtype)
    return (out, lse.reshape(B, H, n)) if return_lse else out
''')


def _mask_function(name: str, expr, table: printer.ArgTable) -> list:
    body = printer.mask_expr(expr, "i", "j", table)
    formula = doc_text(printer.formula(expr))
    if len(formula) > 300:
        formula = formula[:300] + " ..."
    lines = [f"def {name}(i, j, n: int) -> torch.Tensor:",
             f'    """{formula}"""']
    lines += unpack_args(arg_names_in(body, table))
    lines.append(f"    return {body}")
    return lines


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    table = printer.ArgTable()
    functions, rows = [], []
    for ci, (lo, hi, expr) in enumerate(head_cases(pattern)):
        name = f"_mask_case{ci}"
        functions.append("\n".join(_mask_function(name, expr, table)))
        rows.append(f"    ({lo}, {hi}, {name}),")
    return _TEMPLATE.substitute(
        **standard_fields(pattern, "reference", DESCRIPTION, table),
        mask_functions="\n\n\n".join(functions),
        cases="[\n" + "\n".join(rows) + "\n]",
    )
