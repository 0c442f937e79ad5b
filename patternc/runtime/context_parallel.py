"""Context parallel attention on torch.distributed: each rank holds a shard of the sequence.

`context_parallel_attention(q, k, v, group=..., layout=...)` takes each rank's shard of q, k
and v (the rows `cp_positions` gives it) and returns its shard of the pattern's attention over
the whole sequence; gradients flow back to every rank's q, k and v.  The exchange follows the
plan (runtime.cp_plan), one all_to_all_single per message with exact splits:

forward, on each rank
  1. start: send the key rows others pull from me (K and V); send my global rows' q to the
     ranks whose keys they meet;
  2. meanwhile, my light rows against my own keys, and my global rows against my own keys;
  3. others' global rows against my keys; start sending those partial (out, lse) back;
  4. my light rows against the pulled keys; merge by log-sum-exp;
  5. merge my global rows' partials from the other ranks.
backward, on each rank
  1. start: send my global rows' dO, lse and delta to the ranks that computed them;
  2. my light rows against the pulled keys; start sending those dK/dV partials back to the
     keys' owners;
  3. meanwhile, my rows against my own keys;
  4. others' global rows against my keys (dK/dV stay here); start sending their dQ back;
  5. add the dK/dV partials and the dQ partials that arrive.

Each rank's computation is the exact sparse PyTorch walk (runtime.walk) at explicit query and
key positions, with the pattern at the global length: on CUDA as on the CPU (the Triton kernels
take positions 0..n-1 of one contiguous sequence; a kernel for position subsets would replace
the walk here).  Partial results travel in float32 (float64 for float64 inputs).

`exchange="ring"` runs the same computation with the ring exchange of ring attention (every
shard visits every rank), for comparison; `cp_traffic()` counts the bytes a process hands to
torch.distributed, which equal the plan's prediction (runtime.cp_plan.plan_bytes).

Head parallelism (Ulysses) composes: `ulysses_to_heads` turns sequence shards into head shards
over a head group, context parallelism runs over the sequence group with the pattern
unchanged (heads are independent), and `ulysses_to_sequence` turns the result back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .cp_layout import check_layout, layout_positions, pieces_positions
from .cp_plan import ExchangePlan, exchange_plan
from .spec import Spec
from .validate import check_length, check_qkv, check_scale
from .walk import TILE, walk_backward, walk_forward

EXCHANGES = ("plan", "ring")
CP_CUDA_TILE = 512  # query rows per walk step on CUDA (docs/decisions.md: cp-walk-tile)


def _walk_tile(q: torch.Tensor) -> int:
    """The walk's query tile: the CPU's own, or fewer, larger steps on CUDA, where each step's
    dozen kernel launches, not its arithmetic, set the time."""
    return CP_CUDA_TILE if q.is_cuda else TILE


@dataclass
class CPTraffic:
    """Bytes this process handed to torch.distributed for context parallel exchanges, while it is
    entered as a context (`with cp_traffic() as t:`)."""

    forward: int = 0
    backward: int = 0
    messages: int = 0

    def __enter__(self) -> "CPTraffic":
        _COUNTERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _COUNTERS.remove(self)


_COUNTERS: list = []


def cp_traffic() -> CPTraffic:
    """Count the bytes sent by context parallel attention inside the block: `with cp_traffic() as t:`."""
    return CPTraffic()


def _count(phase: str, nbytes: int) -> None:
    for t in _COUNTERS:
        setattr(t, phase, getattr(t, phase) + nbytes)
        t.messages += 1


# ---- one rank's share of the plan, as index tensors -------------------------------------------

@dataclass(frozen=True)
class CPRank:
    """What one rank sends and receives under a plan (positions ascending; *_idx index its shard,
    or its global rows for q_home)."""

    plan: ExchangePlan
    rank: int
    pos: torch.Tensor  # the shard's positions
    light: torch.Tensor  # indices of light rows in the shard
    heavy: torch.Tensor  # indices of global rows
    kv_send_idx: torch.Tensor  # shard rows others pull, grouped by destination
    kv_send: list
    kv_recv: list
    kv_pos: torch.Tensor  # pulled rows' positions, ascending
    kv_order: torch.Tensor  # received order -> ascending
    kv_back: torch.Tensor  # ascending -> received order
    q_send_idx: torch.Tensor  # global rows sent, grouped by destination (shard indices)
    q_home: torch.Tensor  # the same rows as indices among this rank's global rows
    q_send: list
    q_recv: list
    q_pos: torch.Tensor  # others' global rows computed here, ascending
    q_order: torch.Tensor
    q_back: torch.Tensor
    any_kv: bool  # some rank pulls keys (the collective runs)
    any_q: bool  # some rank has global rows to send


def _positions(ranges) -> torch.Tensor:
    return pieces_positions(tuple(ranges))


def _sorting(pos: torch.Tensor) -> tuple:
    order = torch.argsort(pos)
    return pos[order], order, torch.argsort(order)


def rank_view(plan: ExchangePlan, rank: int, device) -> CPRank:
    """What `rank` sends and receives under `plan`, as index tensors on `device`."""
    P = plan.world
    pos = _positions(plan.shards[rank])
    heavy_pos = _positions(plan.heavy[rank])
    kv_out = [_positions(plan.pull[r][rank]) for r in range(P)]
    kv_in = [_positions(plan.pull[rank][s]) for s in range(P)]
    q_out = [_positions(plan.push[rank][s]) for s in range(P)]
    q_in = [_positions(plan.push[r][rank]) for r in range(P)]
    kv_pos, kv_order, kv_back = _sorting(torch.cat(kv_in))
    q_pos, q_order, q_back = _sorting(torch.cat(q_in))
    sent_q = torch.cat(q_out)

    def dev(t):
        return t.to(device)
    return CPRank(plan=plan, rank=rank, pos=dev(pos),
                  light=dev(torch.searchsorted(pos, _positions(plan.light[rank]))),
                  heavy=dev(torch.searchsorted(pos, heavy_pos)),
                  kv_send_idx=dev(torch.searchsorted(pos, torch.cat(kv_out))),
                  kv_send=[x.numel() for x in kv_out], kv_recv=[x.numel() for x in kv_in],
                  kv_pos=dev(kv_pos), kv_order=dev(kv_order), kv_back=dev(kv_back),
                  q_send_idx=dev(torch.searchsorted(pos, sent_q)), q_home=dev(torch.searchsorted(heavy_pos, sent_q)),
                  q_send=[x.numel() for x in q_out], q_recv=[x.numel() for x in q_in],
                  q_pos=dev(q_pos), q_order=dev(q_order), q_back=dev(q_back),
                  any_kv=any(plan.pull[r][s] for r in range(P) for s in range(P)),
                  any_q=any(plan.push[r][s] for r in range(P) for s in range(P)))


# ---- transport ---------------------------------------------------------------------------------

class _Pending:
    """A started exchange: wait() gives the received rows."""

    def __init__(self, out, works: list, sent):
        self.out, self.works, self.sent = out, works, sent  # `sent` stays alive until the exchange ends

    def wait(self):
        for w in self.works:
            w.wait()
        return self.out


def _exchange(x: torch.Tensor, send: list, recv: list, group, phase: str, active: bool) -> _Pending:
    """Start an all_to_all_single of rows: x holds send[d] rows for each rank d, in rank order (none
    for this rank); recv[s] rows arrive from rank s."""
    out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
    if not active:  # no rank sends this message: every rank skips the collective alike
        return _Pending(out, [], None)
    x = x.contiguous()
    _count(phase, x.numel() * x.element_size())
    return _Pending(out, [dist.all_to_all_single(out, x, recv, send, group=group, async_op=True)], x)


def _send_recv(x: torch.Tensor, to: int, into: torch.Tensor, frm: int, group, phase: str) -> _Pending:
    """Start sending x to rank `to` and receiving `into` from rank `frm` (ranks of the group); an
    empty message is skipped by both sides (they know its size from the plan)."""
    ops = []
    if x.numel():
        x = x.contiguous()
        _count(phase, x.numel() * x.element_size())
        ops.append(dist.P2POp(dist.isend, x, dist.get_global_rank(group, to), group))
    if into.numel():
        ops.append(dist.P2POp(dist.irecv, into, dist.get_global_rank(group, frm), group))
    return _Pending(into, dist.batch_isend_irecv(ops) if ops else [], x)


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, H, m, D)[:, :, idx] as rows first: (len(idx), B, H, D)."""
    return t.index_select(2, idx).permute(2, 0, 1, 3)


def _cols(x: torch.Tensor) -> torch.Tensor:
    """Rows first (R, B, H, D) back to (B, H, R, D)."""
    return x.permute(1, 2, 0, 3)


def _merge_partials(out, lse, o2, l2) -> tuple:
    """Two partial results of the same rows, merged by log-sum-exp."""
    new = torch.logaddexp(lse, l2)
    safe = torch.where(torch.isinf(new), 0.0, new)
    return out * torch.exp(lse - safe)[..., None] + o2 * torch.exp(l2 - safe)[..., None], new


def _merge_partials_at(out, lse, idx, o2, l2) -> tuple:
    """Partial results o2, l2 of rows idx (repeats allowed) merged into out, lse by log-sum-exp."""
    m = out.shape[2]
    at = torch.cat([torch.arange(m, device=idx.device), idx])
    L = torch.cat([lse, l2], 2)
    top = torch.full_like(lse, float("-inf")).scatter_reduce_(2, at.expand(L.shape), L, "amax")
    safe = torch.where(torch.isinf(top), 0.0, top)
    w = torch.exp(L - safe.index_select(2, at))
    den = torch.zeros_like(lse).index_add_(2, at, w)
    num = torch.zeros_like(out).index_add_(2, at, torch.cat([out, o2], 2) * w[..., None])
    return num / torch.where(den > 0, den, 1.0)[..., None], torch.where(den > 0, safe + torch.log(den), float("-inf"))


def _acc(dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- the planned exchange ------------------------------------------------------------------

def _plan_forward(spec: Spec, v_: CPRank, q, k, v, scale: float, group) -> tuple:
    n = v_.plan.n
    kv = _exchange(torch.stack((_rows(k, v_.kv_send_idx), _rows(v, v_.kv_send_idx)), 1), v_.kv_send, v_.kv_recv,
                   group, "forward", v_.any_kv)
    qx = _exchange(_rows(q, v_.q_send_idx), v_.q_send, v_.q_recv, group, "forward", v_.any_q)
    heavy_pos = v_.pos.index_select(0, v_.heavy)
    light_pos = v_.pos.index_select(0, v_.light)
    q_l, q_h = q.index_select(2, v_.light), q.index_select(2, v_.heavy)
    o_l, l_l = walk_forward(spec, q_l, k, v, scale, _walk_tile(q), q_pos=light_pos, k_pos=v_.pos, n=n, acc=True)
    o_h, l_h = walk_forward(spec, q_h, k, v, scale, _walk_tile(q), q_pos=heavy_pos, k_pos=v_.pos, n=n, acc=True)
    q_in = _cols(qx.wait()).index_select(2, v_.q_order)  # others' global rows, ascending
    o_in, l_in = walk_forward(spec, q_in, k, v, scale, _walk_tile(q), q_pos=v_.q_pos, k_pos=v_.pos, n=n, acc=True)
    parts = torch.cat([o_in, l_in[..., None]], -1).index_select(2, v_.q_back)
    back = _exchange(parts.permute(2, 0, 1, 3), v_.q_recv, v_.q_send, group, "forward", v_.any_q)
    got = kv.wait().index_select(0, v_.kv_order)  # (rows, 2, B, HK, D), ascending
    k_in, v_in = _cols(got[:, 0]), _cols(got[:, 1])
    o2, l2 = walk_forward(spec, q_l, k_in, v_in, scale, _walk_tile(q), q_pos=light_pos, k_pos=v_.kv_pos, n=n, acc=True)
    o_l, l_l = _merge_partials(o_l, l_l, o2, l2)
    ret = _cols(back.wait())
    o_h, l_h = _merge_partials_at(o_h, l_h, v_.q_home, ret[..., :-1], ret[..., -1])
    B, H, m, D = q.shape
    out = torch.zeros((B, H, m, D), dtype=o_l.dtype, device=q.device)
    lse = torch.full((B, H, m), float("-inf"), dtype=o_l.dtype, device=q.device)
    out[:, :, v_.light], lse[:, :, v_.light] = o_l, l_l
    out[:, :, v_.heavy], lse[:, :, v_.heavy] = o_h, l_h
    return out.to(q.dtype), lse, (k_in, v_in, q_in)


def _plan_backward(spec: Spec, v_: CPRank, do, q, k, v, o, lse, saved, scale: float, group) -> tuple:
    n = v_.plan.n
    k_in, v_in, q_in = saved
    ct = _acc(q.dtype)
    delta = (do.to(ct) * o.to(ct)).sum(-1)
    dox = _exchange(_rows(do, v_.q_send_idx), v_.q_send, v_.q_recv, group, "backward", v_.any_q)
    ld = torch.stack((lse, delta), -1)
    ldx = _exchange(_rows(ld, v_.q_send_idx), v_.q_send, v_.q_recv, group, "backward", v_.any_q)
    light_pos = v_.pos.index_select(0, v_.light)
    heavy_pos = v_.pos.index_select(0, v_.heavy)
    sel = {name: t.index_select(2, v_.light) for name, t in (("do", do), ("q", q), ("lse", lse), ("delta", delta))}
    dq_l, dk_in, dv_in = walk_backward(spec, sel["do"], sel["q"], k_in, v_in, None, sel["lse"], scale, _walk_tile(q), q_pos=light_pos,
                                       k_pos=v_.kv_pos, n=n, delta=sel["delta"], acc=True)
    dkv = torch.stack((_rows(dk_in, v_.kv_back), _rows(dv_in, v_.kv_back)), 1)
    dkvx = _exchange(dkv, v_.kv_recv, v_.kv_send, group, "backward", v_.any_kv)
    dq2, dk, dv = walk_backward(spec, sel["do"], sel["q"], k, v, None, sel["lse"], scale, _walk_tile(q), q_pos=light_pos,
                                k_pos=v_.pos, n=n, delta=sel["delta"], acc=True)
    dq_l += dq2
    h = {name: t.index_select(2, v_.heavy) for name, t in (("do", do), ("q", q), ("lse", lse), ("delta", delta))}
    dq_h, dk2, dv2 = walk_backward(spec, h["do"], h["q"], k, v, None, h["lse"], scale, _walk_tile(q), q_pos=heavy_pos, k_pos=v_.pos,
                                   n=n, delta=h["delta"], acc=True)
    dk += dk2
    dv += dv2
    do_in = _cols(dox.wait()).index_select(2, v_.q_order)
    ld_in = _cols(ldx.wait()).index_select(2, v_.q_order)
    dq_in, dk3, dv3 = walk_backward(spec, do_in, q_in, k, v, None, ld_in[..., 0], scale, _walk_tile(q), q_pos=v_.q_pos, k_pos=v_.pos,
                                    n=n, delta=ld_in[..., 1], acc=True)
    dk += dk3
    dv += dv3
    dqx = _exchange(_rows(dq_in, v_.q_back), v_.q_recv, v_.q_send, group, "backward", v_.any_q)
    got = dkvx.wait()  # (rows I served, 2, B, HK, D)
    dk.index_add_(2, v_.kv_send_idx, _cols(got[:, 0]))
    dv.index_add_(2, v_.kv_send_idx, _cols(got[:, 1]))
    dq_h.index_add_(2, v_.q_home, _cols(dqx.wait()))
    dq = torch.zeros(q.shape, dtype=ct, device=q.device)
    dq[:, :, v_.light] = dq_l
    dq[:, :, v_.heavy] = dq_h
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ---- the ring exchange (the comparison) ------------------------------------------------------

def _shard(v_: CPRank, s: int) -> torch.Tensor:
    return _positions(v_.plan.shards[s]).to(v_.pos.device)


def _ring_forward(spec: Spec, v_: CPRank, q, k, v, scale: float, group) -> tuple:
    P, r, n = v_.plan.world, v_.rank, v_.plan.n
    B, H, m, D = q.shape
    ct = _acc(q.dtype)
    out = torch.zeros((B, H, m, D), dtype=ct, device=q.device)
    lse = torch.full((B, H, m), float("-inf"), dtype=ct, device=q.device)
    cur, src = torch.stack((k, v)), r
    for t in range(P):
        nxt = None
        if t < P - 1:  # the next block travels while this one is computed
            buf = cur.new_empty(cur.shape[:3] + (_shard(v_, (src - 1) % P).numel(), D))
            nxt = _send_recv(cur, (r + 1) % P, buf, (r - 1) % P, group, "forward")
        o_t, l_t = walk_forward(spec, q, cur[0], cur[1], scale, _walk_tile(q), q_pos=v_.pos, k_pos=_shard(v_, src), n=n, acc=True)
        out, lse = _merge_partials(out, lse, o_t, l_t)
        if nxt is not None:
            cur, src = nxt.wait(), (src - 1) % P
    return out.to(q.dtype), lse, ()


def _ring_backward(spec: Spec, v_: CPRank, do, q, k, v, o, lse, scale: float, group) -> tuple:
    """Each block of K/V visits every rank again, carrying its dK/dV; after P steps each rank
    holds its own block's complete gradient."""
    P, r, n = v_.plan.world, v_.rank, v_.plan.n
    ct = _acc(q.dtype)
    delta = (do.to(ct) * o.to(ct)).sum(-1)
    dq = torch.zeros(q.shape, dtype=ct, device=q.device)
    cur, src = torch.stack((k, v)), r
    grad = torch.zeros(cur.shape, dtype=ct, device=q.device)
    for t in range(P):
        nxt = None
        rows = _shard(v_, (src - 1) % P).numel()
        if t < P - 1:
            buf = cur.new_empty(cur.shape[:3] + (rows, cur.shape[-1]))
            nxt = _send_recv(cur, (r + 1) % P, buf, (r - 1) % P, group, "backward")
        dq_t, dk_t, dv_t = walk_backward(spec, do, q, cur[0], cur[1], None, lse, scale, _walk_tile(q), q_pos=v_.pos,
                                         k_pos=_shard(v_, src), n=n, delta=delta, acc=True)
        dq += dq_t
        grad[0] += dk_t
        grad[1] += dv_t
        if P > 1:  # pass the block's gradient on; the previous rank's arrives (at the last step: my own)
            into = grad.new_empty(grad.shape[:3] + (rows, grad.shape[-1]))
            grad = _send_recv(grad, (r + 1) % P, into, (r - 1) % P, group, "backward").wait()
        if nxt is not None:
            cur = nxt.wait()
        src = (src - 1) % P
    return dq.to(q.dtype), grad[0].to(k.dtype), grad[1].to(v.dtype)


# ---- autograd and the public entry -------------------------------------------------------------

class _ContextParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, view, group, ring, scale, q, k, v):
        run = _ring_forward if ring else _plan_forward
        out, lse, saved = run(spec, view, q, k, v, scale, group)
        ctx.save_for_backward(q, k, v, out, lse, *saved)
        ctx.spec, ctx.view, ctx.group, ctx.ring, ctx.scale = spec, view, group, ring, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, *saved = ctx.saved_tensors
        do = do.contiguous()
        if ctx.ring:
            dq, dk, dv = _ring_backward(ctx.spec, ctx.view, do, q, k, v, o, lse, ctx.scale, ctx.group)
        else:
            dq, dk, dv = _plan_backward(ctx.spec, ctx.view, do, q, k, v, o, lse, saved, ctx.scale, ctx.group)
        return None, None, None, None, None, dq, dk, dv


_VIEWS: dict = {}


def _view(spec: Spec, n: int, world: int, rank: int, layout: str, ring: bool, device) -> CPRank:
    key = (spec.namespace, n, world, rank, layout, ring, str(device))
    if key not in _VIEWS:
        _VIEWS[key] = rank_view(exchange_plan(spec, n, world, layout, ring, device), rank, device)
        while len(_VIEWS) > 32:
            _VIEWS.pop(next(iter(_VIEWS)))
    return _VIEWS[key]


def _check_shard(q, k, v, spec: Spec) -> None:
    """check_qkv's checks, for a shard that may hold no rows (a short sequence on many ranks)."""
    if all(isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] == 0 for t in (q, k, v)):
        q, k, v = (t.new_zeros(t.shape[:2] + (1,) + t.shape[3:]) for t in (q, k, v))
    check_qkv(q, k, v, spec.num_heads, spec.name)


def cp_attention(spec: Spec, q, k, v, *, group=None, layout: str = "contiguous",
                               n: Optional[int] = None, scale=None, exchange: str = "plan"):
    """This rank's shard of the attention output (see the module's doc)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("context_parallel_attention needs torch.distributed: call "
                           "torch.distributed.init_process_group first")
    check_layout(layout)
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    _check_shard(q, k, v, spec)
    scale = check_scale(scale, q.shape[-1])
    group = dist.group.WORLD if group is None else group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    m = q.shape[2]
    if n is None:
        lengths = [torch.zeros(1, dtype=torch.int64, device=q.device) for _ in range(world)]
        dist.all_gather(lengths, torch.tensor([m], dtype=torch.int64, device=q.device), group=group)
        n = int(sum(x.item() for x in lengths))
    n = check_length(n, spec.check_length)
    want = layout_positions(spec, n, world, rank, layout, device=q.device).numel()
    if m != want:
        raise ValueError(f"rank {rank} of {world} holds {m} rows, but the {layout!r} layout gives it {want} at "
                         f"n={n} (q, k and v must be the rows of cp_positions(n, world_size, rank, layout))")
    view = _view(spec, n, world, rank, layout, exchange == "ring", q.device)
    return _ContextParallel.apply(spec, view, group, exchange == "ring", scale, q, k, v)


# ---- head parallelism (Ulysses) ----------------------------------------------------------------

class _AllToAllRows(torch.autograd.Function):
    """all_to_all_single of rows, differentiable: the gradient takes the way back."""

    @staticmethod
    def forward(ctx, x, send, recv, group):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        out = g.new_empty((sum(ctx.send),) + tuple(g.shape[1:]))
        dist.all_to_all_single(out, g.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return out, None, None, None


def _heads_split(H: int, U: int) -> int:
    if H % U:
        raise ValueError(f"head parallelism over {U} ranks needs a head count divisible by {U}, got {H}")
    return H // U


def ulysses_to_heads(x: torch.Tensor, lengths: list, group=None) -> torch.Tensor:
    """Sequence shards to head shards over a head group of U ranks: x (B, H, m, D), this rank's m
    rows (lengths: every rank's m, in group order) -> (B, H/U, sum(lengths), D), heads
    [u*H/U, (u+1)*H/U) of rank u over the group's rows, concatenated in rank order."""
    group = dist.group.WORLD if group is None else group
    U, u = dist.get_world_size(group), dist.get_rank(group)
    B, H, m, D = x.shape
    if len(lengths) != U or lengths[u] != m:
        raise ValueError(f"lengths must list the {U} ranks' row counts with this rank's ({m}) at {u}, got {lengths}")
    hu = _heads_split(H, U)
    rows = x.reshape(B, U, hu, m, D).permute(1, 3, 0, 2, 4).reshape(U * m, B, hu, D)
    return _cols(_AllToAllRows.apply(rows, [m] * U, list(lengths), group))


def ulysses_to_sequence(y: torch.Tensor, lengths: list, group=None) -> torch.Tensor:
    """The inverse of ulysses_to_heads: (B, H/U, sum(lengths), D) -> (B, H, lengths[u], D)."""
    group = dist.group.WORLD if group is None else group
    U, u = dist.get_world_size(group), dist.get_rank(group)
    B, hu, M, D = y.shape
    if len(lengths) != U or sum(lengths) != M:
        raise ValueError(f"lengths must list the {U} ranks' row counts summing to {M}, got {lengths}")
    m = lengths[u]
    back = _AllToAllRows.apply(y.permute(2, 0, 1, 3), list(lengths), [m] * U, group)  # (U*m, B, hu, D)
    return back.reshape(U, m, B, hu, D).permute(2, 0, 3, 1, 4).reshape(B, U * hu, m, D)
