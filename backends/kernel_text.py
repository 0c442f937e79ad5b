"""Printing Triton source: the helpers every kernel emitter shares.

Kernels are printed one statement per line, so that a generated module reads like hand-written
Triton and a long condition never needs re-wrapping; parameters come from the runtime's table
(patternc.runtime.abi), one group per line with its note, so signature and launch agree.
"""
from __future__ import annotations

from patternc import scalar as S
from patternc.runtime import abi

from .common import WIDTH


def T(e) -> str:
    """An expression tree as Triton text."""
    return S.triton(e)


def indent(lines: list, n: int) -> list:
    return [(" " * n + x) if x else x for x in lines]


def fold(var: str, fn: str, exprs: list) -> list:
    """`var = fn(... fn(e0, e1) ..., ek)` as one statement per operand (short lines)."""
    return [f"{var} = {exprs[0]}"] + [f"{var} = {fn}({var}, {e})" for e in exprs[1:]]


def either(var: str, conds: list) -> list:
    """`var = c0 | c1 | ...`, one statement per condition."""
    return [f"{var} = {conds[0]}"] + [f"{var} = {var} | ({c})" for c in conds[1:]]


def open_mask(keep: str, query_major: bool) -> list:
    """`keep` for a loop that walks full and partial tiles alike: all-true on a full tile (a
    uniform branch: the mask's arithmetic runs on partial tiles only)."""
    shape = "[BM, BN]" if query_major else "[BN, BM]"
    return ["if full:  # every pair allowed", f"    keep = tl.full({shape}, 1, tl.int1)", "else:", f"    {keep}"]


def param_lines(groups: tuple) -> list:
    """One parameter group per line (long groups wrapped), each with its note."""
    lines = []
    for g in groups:
        parts = [f"{p.name}: tl.constexpr" if p.constexpr else p.name for p in g.params]
        rows, row = [], "   "
        for part in parts:
            if len(row) + len(part) + 2 > WIDTH - 30 and row.strip():
                rows.append(row + ",")
                row = "   "
            row += (" " if row.strip() == "" else ", ") + part
        rows.append(row + ",")
        lines += [r.replace("   , ", "    ") for r in rows[:-1]] + [rows[-1] + f"  # {g.note}"]
    return lines


def signature(name: str, kind: str, split: bool, args: tuple, seeded: bool = False, rev: bool = False,
              select: bool = False) -> list:
    """The kernel's decorator and def, one parameter group per line (runtime.abi), each with its note."""
    free = abi.unspecialized(kind, split)
    deco = f"@triton.jit(do_not_specialize={list(free)!r})" if free else "@triton.jit"
    return [deco, f"def {name}("] + param_lines(abi.param_groups(kind, split, args, seeded, rev, select)) + ["):"]
