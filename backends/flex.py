"""The FlexAttention backend: the pattern as a `mask_mod` for torch's flex_attention.

FlexAttention does the block-sparse scheduling itself; this backend only has
to state the mask, and it states it with the same printer as the reference
and Triton backends.  The one thing it adds is a repair: FlexAttention leaves
rows with no allowed key undefined in some versions (NaN or garbage), while
every patternc module promises output 0 and lse = -inf there.
"""
from __future__ import annotations

import string

from patternc import printer
from patternc.frontend import Pattern

from .common import arg_names_in, head_cases, standard_fields

DESCRIPTION = """\
FlexAttention (torch.nn.attention.flex_attention) with this pattern as its mask_mod.

    make_mask_mod(n)                         -> mask_mod(b, h, q_idx, kv_idx) for length n
    mask(n, device=None)                     -> bool tensor (n, n), or (H, n, n) per head
    block_mask(n, device, BLOCK_SIZE=128)    -> cached BlockMask
    attention(q, k, v, scale=None, return_lse=False)

Fully masked rows: FlexAttention's output for a query row with no allowed key is not
defined across torch versions (NaN or garbage has been seen).  attention() computes
which rows of the pattern are empty (once per length and device, cached) and returns
output 0 and lse = -inf there, like every patternc backend.  On CUDA flex_attention
runs through torch.compile (static shapes: one compile per length and dtype, with this
module's own recompile budget); elsewhere it runs eagerly (slow, forward only on CPU).
Importing this module works without FlexAttention; attention() then raises RuntimeError.
"""

_TEMPLATE = string.Template('''\
$header
from __future__ import annotations

import functools
import math

import torch

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch before 2.5 has no FlexAttention
    create_block_mask = flex_attention = None

PATTERN = $pattern_source
PATTERN_NAME = $pattern_name
NUM_HEADS = $num_heads  # None: the same pattern for every head
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPILE = None  # None: torch.compile flex_attention on CUDA only; True / False to force


$host_support


def _as_length(n) -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = n.__index__()
    _check_length(n)
    return n


def make_mask_mod(n: int):
    """A FlexAttention mask_mod for sequence length n: True where query q_idx may attend
    key kv_idx.  Length-dependent pattern arguments are computed here, once."""
    n = _as_length(n)
$bind_args
    # mask_mod reads no module globals, only these closure variables: FlexAttention traces it
    # with TorchDynamo, which cannot resolve the globals of a module missing from sys.modules
    # (as when the module is built in memory by patternc.load).
$closure

    def mask_mod(b, h, q_idx, kv_idx):
        # int64: the index arithmetic (and the random hash) must not overflow int32
        i = q_idx.to(int64)
        j = kv_idx.to(int64)
$mask_body

    return mask_mod


def mask(n: int, device=None) -> torch.Tensor:
    """The dense boolean mask from mask_mod: (n, n), or (NUM_HEADS, n, n) for a per-head pattern."""
    n = _as_length(n)
    idx = torch.arange(n, device=device)
    H = NUM_HEADS or 1
    h = torch.arange(H, device=device)[:, None, None]
    m = torch.broadcast_to(make_mask_mod(n)(0, h, idx[:, None], idx[None, :]), (H, n, n))
    return m[0].clone() if NUM_HEADS is None else m.clone()


def _require_flex() -> None:
    if flex_attention is None:
        raise RuntimeError(f"this torch ({torch.__version__}) has no FlexAttention "
                           "(torch.nn.attention.flex_attention needs torch >= 2.5); "
                           "use the reference or triton backend instead")


def _device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


@functools.lru_cache(maxsize=32)
def _block_mask(n: int, device: str, H, block_size: int):
    return create_block_mask(make_mask_mod(n), B=None, H=H, Q_LEN=n, KV_LEN=n, device=device,
                             BLOCK_SIZE=block_size)


def block_mask(n: int, device, BLOCK_SIZE: int = 128):
    """The BlockMask for length n on `device`, built once per (n, device, heads, block size)."""
    _require_flex()
    return _block_mask(_as_length(n), _device_key(device), NUM_HEADS, int(BLOCK_SIZE))


@functools.lru_cache(maxsize=32)
def _empty_rows(n: int, device: str) -> torch.Tensor:
    """(H or 1, n): True for query rows with no allowed key, found in row chunks."""
    H = NUM_HEADS or 1
    mod = make_mask_mod(n)
    h = torch.arange(H, device=device)[:, None, None]
    j = torch.arange(n, device=device)[None, :]
    chunk = max(1, (1 << 22) // (n * H))
    rows = []
    for start in range(0, n, chunk):
        i = torch.arange(start, min(n, start + chunk), device=device)[:, None]
        rows.append(~torch.broadcast_to(mod(0, h, i, j), (H, i.shape[0], n)).any(-1))
    return torch.cat(rows, 1)


def _flex_call(q, k, v, block_mask, scale: float, enable_gqa: bool):
    # A function of this module's own: torch.compile keeps its recompile budget per code
    # object, so every generated module gets its own instead of sharing flex_attention's.
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa, return_lse=True)


_compiled = None


def _flex():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_flex_call, dynamic=False)  # dynamic shapes break the BlockMask guards
    return _compiled


$validate


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              return_lse: bool = False):
    """flex_attention with this module's pattern.

    q: (B, Hq, n, D); k, v: (B, Hkv, n, D) with Hq a multiple of Hkv (grouped-query attention).
    scale defaults to 1 / sqrt(D).  Rows with no allowed key give output 0 and lse = -inf
    (repaired after FlexAttention, see the module docstring).  Returns out, or (out, lse)
    with lse of shape (B, Hq, n) (natural log, float32).
    """
    _require_flex()
    _validate(q, k, v)
    B, H, n, D = q.shape
    n = _as_length(n)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    bm = block_mask(n, q.device)
    use_compile = q.is_cuda if COMPILE is None else COMPILE
    fn = _flex() if use_compile else _flex_call
    out, lse = fn(q, k, v, bm, float(scale), H != k.shape[1])
    empty = _empty_rows(n, _device_key(q.device))[None]  # (1, H or 1, n)
    out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
    lse = torch.where(empty, torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
    return (out, lse) if return_lse else out
''')


def _mask_body(cases: list, table: printer.ArgTable) -> str:
    """The mask_mod body: one expression, or one per head range chosen with torch.where."""
    lines = []
    if len(cases) == 1:
        lines.append(f"        return {printer.mask_expr(cases[0][2], 'i', 'j', table, hash_fn='pick')}")
        return "\n".join(lines)
    for ci, (lo, hi, expr) in enumerate(cases):
        lines.append(f"        m{ci} = {printer.mask_expr(expr, 'i', 'j', table, hash_fn='pick')}  # heads {lo}..{hi}")
    sel = f"m{len(cases) - 1}"
    for ci in range(len(cases) - 2, -1, -1):
        sel = f"where(h <= {cases[ci][1]}, m{ci}, {sel})"
    lines.append(f"        return {sel}")
    return "\n".join(lines)


def _closure(pattern: Pattern, per_head: bool) -> str:
    names, values = ["int64"], ["torch.int64"]
    if per_head:
        names.append("where"), values.append("torch.where")
    if printer.uses_random(pattern.expr):
        names.append("pick"), values.append("_random_pick")
    return f"    {', '.join(names)} = {', '.join(values)}"


def emit(pattern: Pattern) -> str:
    """The module's source text; identical patterns give byte-identical text."""
    table = printer.ArgTable()
    body = _mask_body(head_cases(pattern), table)
    names = arg_names_in(body, table)
    bind = ["    args = _length_args(n)"] + [f"    {v} = args[{v!r}]" for v in names] if names else []
    return _TEMPLATE.substitute(
        **standard_fields(pattern, "flex", DESCRIPTION, table),
        bind_args="\n".join(bind) + "\n" if bind else "",
        closure=_closure(pattern, len(head_cases(pattern)) > 1),
        mask_body=body,
    )
