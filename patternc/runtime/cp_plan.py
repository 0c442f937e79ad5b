"""The context parallel exchange plan: exactly which rows travel between which ranks.

Every rank holds the pieces of the sequence its layout gives it (runtime.cp_layout).  Its rows
are of two kinds:

- light rows attend a bounded set of keys.  The plan asks the module's walk functions (the
  closed-form key ranges the kernels walk, printed from the lowering) which keys each run of a
  rank's light rows may meet; the ones that another rank holds are `pull[r][s]`: the key rows of
  rank s that rank r receives.  Nothing else is sent.  After the backward, the dK/dV partials of
  those rows go back along the same plan.
- heavy rows are global rows (`Pass.heavy_q`): each attends every key, so pulling their keys
  would move the whole sequence.  They are computed where the keys live instead: `push[r][s]`
  are rank r's heavy rows that rank s computes against its own keys, returning a partial output
  and log-sum-exp that rank r merges; in the backward, their dO, lse and delta go out and dQ
  partials come back.

The plan depends only on (pattern, n, P, layout): every rank computes the same plan, so each
knows what to send and what it will receive, and the exchange is one all_to_all_single per
message with exact splits.  `plan_bytes` counts what each rank sends; the runtime's exchange
sends exactly that (tests count the bytes handed to torch.distributed), and `patternc analyze
--cp P` prints it.

The ring mode (`ring=True`) is the comparison: every shard travels to every rank around a ring
(P - 1 hops forward; in the backward P - 1 hops of K/V and P hops of dK/dV), as ring attention
and PyTorch's context_parallel do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .cp_layout import check_layout, check_world, heavy_rows, pieces_positions, rank_pieces
from .spec import Spec
from .walk import index_runs, query_tiles, tile_keys


@dataclass(frozen=True)
class ExchangePlan:
    """Who holds what and who sends what; every range is a half-open (lo, hi) of token positions."""

    n: int
    world: int
    layout: str
    ring: bool
    shards: tuple  # shards[r]: the pieces rank r holds
    light: tuple  # light[r]: rank r's rows computed at home, against its own and pulled keys
    heavy: tuple  # heavy[r]: rank r's global rows, computed where the keys live
    pull: tuple  # pull[r][s]: key rows of rank s that rank r receives (() for r == s)
    push: tuple  # push[r][s]: heavy rows of rank r that rank s computes against its keys (() for r == s)


def span_rows(ranges) -> int:
    return sum(hi - lo for lo, hi in ranges)


def _cut(pieces, spans) -> tuple:
    """(pieces within spans, pieces outside them)."""
    inside, outside = [], []
    for lo, hi in pieces:
        at = lo
        for a, b in spans:
            a, b = max(a, lo), min(b, hi)
            if a >= b:
                continue
            if a > at:
                outside.append((at, a))
            inside.append((a, b))
            at = b
        if at < hi:
            outside.append((at, hi))
    return tuple(inside), tuple(outside)


def needed_keys(spec: Spec, n: int, pieces) -> torch.Tensor:
    """Sorted positions of every key that the rows of `pieces` may meet, by the module's walk
    functions over each run of rows (the closed forms are exact on runs for bands, blocks, global
    rows and columns, strides and summaries; a superset where a term has filters)."""
    q_pos = pieces_positions(pieces)
    if q_pos.numel() == 0:
        return q_pos
    A = spec.length_args(n)
    parts = [tile_keys(p, a0, a1, r, n, lq, lk, A, "cpu")
             for case in spec.cases for p in case.passes
             for a0, a1, r, lq, lk in query_tiles(p, n, A, n + 1, q_pos)]
    return torch.unique(torch.cat(parts)) if parts else q_pos[:0]


def _within(keys: torch.Tensor, pieces) -> torch.Tensor:
    on = torch.zeros(keys.shape, dtype=torch.bool)
    for lo, hi in pieces:
        on |= (keys >= lo) & (keys < hi)
    return keys[on]


def _key_runs(keys: torch.Tensor) -> tuple:
    return tuple((lo, hi + 1) for lo, hi in index_runs(keys))


_PLANS: dict = {}


def exchange_plan(spec: Spec, n: int, world: int, layout: str = "contiguous", ring: bool = False,
                  device=None, pieces: Optional[tuple] = None) -> ExchangePlan:
    """The plan of (pattern, n, P, layout), cached.  `pieces` overrides the layout's pieces (the
    analysis passes the balanced pieces of its own exact counts); `device`: where the balanced
    layout's weights are counted."""
    check_world(world)
    check_layout(layout)
    key = (spec.namespace, n, world, layout, ring, pieces)
    if key in _PLANS:
        return _PLANS[key]
    shards = rank_pieces(spec, n, world, layout, device) if pieces is None else pieces
    if ring:
        none = tuple(() for _ in range(world))
        pull = tuple(tuple(shards[s] if s != r else () for s in range(world)) for r in range(world))
        plan = ExchangePlan(n, world, layout, True, shards, shards, none, pull,
                            tuple(none for _ in range(world)))
    else:
        heavy_all = heavy_rows(spec, n)
        split = [_cut(sh, heavy_all) for sh in shards]
        heavy = tuple(h for h, _ in split)
        light = tuple(lt for _, lt in split)
        pull, push = [], []
        for r in range(world):
            keys = needed_keys(spec, n, light[r])
            pull.append(tuple(_key_runs(_within(keys, shards[s])) if s != r else () for s in range(world)))
            out: list = [[] for _ in range(world)]
            for run in heavy[r]:
                hk = needed_keys(spec, n, (run,))
                for s in range(world):
                    if s != r and _within(hk, shards[s]).numel():
                        out[s].append(run)
            push.append(tuple(tuple(x) for x in out))
        plan = ExchangePlan(n, world, layout, False, shards, light, heavy, tuple(pull), tuple(push))
    _PLANS[key] = plan
    while len(_PLANS) > 32:
        _PLANS.pop(next(iter(_PLANS)))
    return plan


def plan_bytes(plan: ExchangePlan, batch: int, heads: int, kv_heads: int, head_dim: int, elem: int,
               acc: int) -> tuple:
    """Per rank, the bytes it sends: {"forward", "backward", "total"} and the parts by message.

    elem: bytes per element of q, k, v and dO; acc: of the partial results (float32, or float64
    for float64 inputs): outputs and lse, dK/dV, dQ, lse and delta."""
    kv_row = 2 * batch * kv_heads * head_dim
    q_row = batch * heads * head_dim
    P = plan.world
    out = []
    for s in range(P):
        if plan.ring:
            hop = [span_rows(plan.shards[(s - t) % P]) for t in range(P)]
            parts = {"kv": sum(hop[:P - 1]) * kv_row * elem}
            parts["kv_again"] = parts["kv"]
            parts["dkv"] = sum(hop) * kv_row * acc
            fwd, bwd = parts["kv"], parts["kv_again"] + parts["dkv"]
        else:
            served = sum(span_rows(plan.pull[r][s]) for r in range(P))
            pulled = sum(span_rows(plan.pull[s][t]) for t in range(P))
            pushed = sum(span_rows(plan.push[s][t]) for t in range(P))
            hosted = sum(span_rows(plan.push[r][s]) for r in range(P))
            parts = {"kv": served * kv_row * elem, "q": pushed * q_row * elem,
                     "partials": hosted * batch * heads * (head_dim + 1) * acc,
                     "dkv": pulled * kv_row * acc, "do_lse_delta": pushed * batch * heads * (head_dim * elem + 2 * acc),
                     "dq": hosted * q_row * acc}
            fwd = parts["kv"] + parts["q"] + parts["partials"]
            bwd = parts["dkv"] + parts["do_lse_delta"] + parts["dq"]
        out.append({"forward": fwd, "backward": bwd, "total": fwd + bwd, "parts": parts})
    return tuple(out)
