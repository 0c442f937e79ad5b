"""The Triton path of one compiled pattern: launch plans, forward and backward launches.

A call's plan (tiles, grids, splits, which kernels run) depends only on shapes, dtype,
device and settings, so it is worked out once and memoised: a short kernel runs in about
the time Python takes to work it out (decisions.md: memoised-launch-plans).  Kernels are launched
by keyword with the parameter names of `abi`, the same table their signatures were printed
from.
"""
from __future__ import annotations

import os

import torch

from .abi import param_names
from .autotune import Tuner
from .config import deterministic, tiles
from .jit import triton
from .launch import Launcher
from .spec import Pass, Spec
from .split import add_rows, block_d, cdiv, merge_rows, split
from .tile_bodies import bwd_prologue
from .tma import tma_desc, tma_on, tma_pair
from .varlen import PADDED, seq_launch_values, seq_programs
from .walk import walk_forward

LOG2E = 1.4426950408889634
_KIND_KEYS = {"fwd": ("BM", "BN", "num_stages"), "dq": ("DQ_BM", "DQ_BN", "dq_stages"),
              "dkdv": ("DKV_BM", "DKV_BN", "dkv_stages")}


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # (a no-op .to still costs ~3 us of host time)


class TritonPath:
    """Launches one pattern's kernels.  `alloc` allocates outputs: tests replace it to poison them
    and catch elements no kernel wrote."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.schedule = spec.schedule
        self.launch = Launcher()
        self.version = 0  # bumped whenever tuned or shrunk settings change: plans are rebuilt
        self.tuner = Tuner(spec.namespace, self._changed)
        self.shrunk: dict = {}  # (D, dtype, device type) -> settings that fit this GPU
        self.plans: dict = {}
        self.launching = "fwd"  # the kernel kind being launched, for fitted()
        self.alloc = torch.empty

    def _changed(self) -> None:
        self.version += 1

    # ---- settings and plans ------------------------------------------------------------------

    def tiles(self, D: int, dtype, device, n: int = 0) -> dict:
        return tiles(self.schedule, D, dtype, device, self.tuner.settings(D, dtype, device, n),
                     self.shrunk.get((D, dtype, device.type)))

    def shrink(self, key: tuple, change: dict) -> None:
        """Remember smaller settings that fit this GPU."""
        self.shrunk.setdefault(key, {}).update(change)
        self._changed()

    def settings(self) -> tuple:
        """What besides shapes decides a call's plan (environment read once per call)."""
        env = os.environ
        return (env.get("PATTERNC_CONFIG"), env.get("PATTERNC_TMA"), env.get("PATTERNC_DIRECT_LAUNCH"),
                deterministic(), self.version)

    def plan(self, kind: str, q, k, seqs=None) -> dict:
        """The launch plan of a call; under packing (`seqs`) it holds no length: each call sizes its
        grids from its sequences (decisions.md: packed-grid), no pass splits global rows
        (packed-no-split), and loads go through pointers, since a TMA box would cross a sequence's
        end (packed-pointer-loads)."""
        B, H, n, D = q.shape
        docs = 0 if seqs is None else seqs.mode
        key = (kind, B, H, k.shape[1], n, D, q.dtype, q.device, docs, self.settings())
        pl = self.plans.get(key)
        if pl is not None:
            return pl
        if not docs:
            self.spec.check_length(n)
        args = self.spec.length_args(n) if not docs else dict.fromkeys(self.spec.arg_names, 0)
        cfg = self.tiles(D, q.dtype, q.device, n)
        group = H // k.shape[1]
        cases = self.spec.cases
        pl = dict(key=key, cfg=cfg, args=args, group=group, BD=block_d(D), tma=tma_on(q.device) and not docs,
                  direct=key[-1][2] != "0",  # PATTERNC_DIRECT_LAUNCH=0: every launch through the JIT
                  prec="ieee" if q.dtype == torch.float32 else "tf32",
                  widen=q.dtype == torch.bfloat16 and not q.is_cuda,
                  # forward launches carry a float32 softmax state when a head range has several
                  # (a pass without its own forward kernel is walked by the first pass's kernel)
                  multi=any(sum(p.fwd is not None for p in c.passes) > 1 for c in cases),
                  empty=any(not c.passes for c in cases),  # heads whose pattern allows nothing
                  nothing=not any(c.passes for c in cases))
        passes = []
        for case in cases:
            h0, h1 = case.first, H - 1 if case.last is None else case.last
            hc = h1 - h0 + 1
            last_fwd = max((pi for pi, p in enumerate(case.passes) if p.fwd is not None), default=-1)
            for pi, p in enumerate(case.passes):
                heavy_q, heavy_k = (None, None) if docs else (p.heavy_q, p.heavy_k)
                if kind == "fwd":
                    if p.fwd is not None:
                        passes.append((h0, h1, hc, pi, p, None if docs else self._programs(p, n, cfg["BM"], args),
                                       split(heavy_q, n, cfg["BM"], cfg["BN"], cfg["split_chunk"]),
                                       pi == last_fwd))
                else:
                    kv0, kv1 = h0 // group, h1 // group
                    passes.append((h0, h1, hc, kv0, kv1, kv1 - kv0 + 1, pi, p,
                                   None if docs else self._programs(p, n, cfg["DQ_BM"], args),
                                   split(heavy_q, n, cfg["DQ_BM"], cfg["DQ_BN"], cfg["split_chunk"]),
                                   None if docs else self._key_programs(p, n, cfg["DKV_BN"], args),
                                   split(heavy_k, n, cfg["DKV_BN"], cfg["DKV_BM"], cfg["split_chunk"])))
        pl["passes"] = passes
        if kind == "bwd":
            pl["single"] = len(cases) == 1 and len(cases[0].passes) == 1
            straddle = any(c.first % group for c in cases[1:])  # a kv head shared by two head ranges
            pl["accum_dkdv"] = not pl["single"] or straddle
            # a pass over kept key columns only ("keys" space) leaves the other keys' gradients at zero
            pl["partial_keys"] = any(p.space == "keys" for c in cases for p in c.passes)
            pl["fused"] = bool(cfg["fused_dq"]) and not deterministic()
            # TMA reductions where the dk/dv kernel loads through TMA (the CPU interpreter has none;
            # fused_dq=2: element atomics even there, for measurements)
            pl["red_tma"] = pl["fused"] and cfg["fused_dq"] == 1 and pl["tma"] and \
                os.environ.get("TRITON_INTERPRET") != "1"
        if len(self.plans) > 256:  # many lengths (variable-length batches): start over
            self.plans.clear()
        self.plans[key] = pl
        return pl

    @staticmethod
    def _programs(p: Pass, n: int, bm: int, args: dict) -> tuple:
        """(number of query programs, tiles per residue class) for a pass."""
        if p.space == "diag":
            m = p.value(p.m, args)
            per = cdiv(cdiv(n, m), bm)
            return max(1, min(m, n) * per), per
        return cdiv(n, bm), cdiv(n, bm)

    @staticmethod
    def _key_programs(p: Pass, n: int, bn: int, args: dict) -> tuple:
        if p.space == "diag":
            m = p.value(p.m, args)
            per = cdiv(cdiv(n, m), bn)
            return max(1, min(m, n) * per), per
        if p.space == "keys":
            l, c = p.value(p.l, args), p.value(p.c, args)
            kept = (n // l) * c + max(n % l - (l - c), 0)
            return max(1, cdiv(kept, bn)), cdiv(kept, bn)
        return cdiv(n, bn), cdiv(n, bn)

    @staticmethod
    def _class_m(p: Pass, args: dict, cfg: dict, atomic: bool = False):
        """The modulus m of a residue-class pass whose tiles may load through TMA; False for a
        residue-class pass that loads through pointers; None for other passes.  class_tma=1: every
        kernel; 2 (the default): not the backward that adds dq atomically (decisions.md: class-tma)."""
        if p.space != "diag":
            return None
        on = cfg["class_tma"] == 1 or (cfg["class_tma"] == 2 and not atomic)
        return p.value(p.m, args) if on else False

    def site(self, pl: dict, q, *tensors):
        """A launch site's key: the plan, the current device and the tensors' layouts (strides,
        16-byte alignment, dtype): what decides a compiled kernel's specialisation.  None when
        launches go through the JIT (always off CUDA)."""
        if not pl["direct"] or not q.is_cuda:
            return None
        return (pl["key"], torch.cuda.current_device()) + tuple((t.stride(), t.data_ptr() % 16, t.dtype)
                                                                for t in tensors)

    def fitted(self, run, q, *args):
        """Run `run(*args)`; when a kernel needs more shared memory than this GPU has, retry with
        one stage fewer, then smaller tiles, and remember what fits (GPUs differ: 100-228 KB)."""
        D, dtype, device = q.shape[-1], q.dtype, q.device
        while True:
            try:
                return run(*args)
            except triton.runtime.errors.OutOfResources:
                cfg = self.tiles(D, dtype, device, q.shape[2])
                bm, bn, st = _KIND_KEYS[self.launching]
                if cfg[st] > 1:
                    change = {st: cfg[st] - 1}
                elif max(cfg[bm], cfg[bn]) > 16:
                    big = bm if cfg[bm] >= cfg[bn] else bn
                    change = {big: cfg[big] // 2}
                else:
                    raise
                self.shrink((D, dtype, device.type), change)

    def _run(self, kind: str, q, k, seqs, launches, *args):
        self.launch.precompile(launches, q, self.plan(kind, q, k, seqs), *args)
        if self.tuner.wanted(q):
            self.tuner.tune(kind, q, lambda: self.fitted(launches, q, *args), triton.runtime.errors.OutOfResources)
        return self.fitted(launches, q, *args)

    def forward(self, q, k, v, scale: float, seqs=None):
        return self._run("fwd", q, k, seqs, self.forward_launches, q, k, v, scale, seqs)

    def backward(self, do, q, k, v, o, lse, scale: float, seqs=None):
        return self._run("bwd", q, k, seqs, self.backward_launches, do, q, k, v, o, lse, scale, seqs)

    def _grid(self, p: Pass, seqs, programs, tile: int, key_major: bool) -> tuple:
        """(programs per row and head, tiles per residue class, program rows, launch values): the
        plan's for plain rows; under packing sized from this call's sequences (runtime.varlen)."""
        if seqs is None:
            return programs[0], programs[1], None, {}
        progs, per = seq_programs(self.spec, p, seqs, tile, key_major)
        return progs, per, seqs.count, dict(seq_launch_values(seqs, self.spec.arg_names), SPER=per)

    # ---- a pattern with select(...) ----------------------------------------------------------

    def forward_selected(self, q, k, v, scale: float, sel, mass: bool):
        """(out, lse, block mass or None) with the run-time selection `sel` (runtime.selection).
        The kernels add the block mass where one launch walks a query tile's every pass (else the
        exact walk computes it: several launches would have to merge their mass)."""
        if mass and not self.mass_in_kernels(q, k):
            return walk_forward(self.spec, q, k, v, scale, blocks=sel.blocks, mass=True)
        return self._run("fwd", q, k, None, self.forward_launches, q, k, v, scale, None, sel, mass)

    def backward_selected(self, do, q, k, v, o, lse, scale: float, sel):
        return self._run("bwd", q, k, None, self.backward_launches, do, q, k, v, o, lse, scale, None, sel)

    def mass_in_kernels(self, q, k) -> bool:
        """Whether one forward launch per head range computes the block mass: no split global rows,
        no residue-class pass, one forward kernel per head range."""
        pl = self.plan("fwd", q, k)
        return not pl["multi"] and all(p.space != "diag" and not parts
                                       for *_, p, _, (_, _, parts, _, _), _ in pl["passes"])

    # ---- the forward -------------------------------------------------------------------------

    def forward_launches(self, q, k, v, scale: float, seqs=None, sel=None, mass: bool = False):
        B, H, n, D = q.shape
        pl = self.plan("fwd", q, k, seqs)
        chosen, mass_rows = self._selection_values(q, pl["cfg"]["BM"], sel, mass)
        cfg, BD, args = pl["cfg"], pl["BD"], pl["args"]
        site = self.site(pl, q, q, k, v, *_seq_tensors(seqs))
        padded = seqs is not None and seqs.mode == PADDED  # padding rows: 0 and lse = -inf, never written
        alloc = torch.zeros if pl["empty"] or padded else self.alloc
        # Several passes carry the softmax state between them in a float32 o; a head range's last
        # pass reads that state and writes the result in the input dtype directly (no conversion
        # pass over o afterwards), unless split global rows still have to be merged into it.
        multi = pl["multi"]
        o = alloc((B, H, n, D), device=q.device, dtype=torch.float32 if multi else q.dtype)
        res = alloc((B, H, n, D), device=q.device, dtype=q.dtype) if multi else o
        lse = torch.full((B, H, n), float("-inf"), device=q.device) if pl["empty"] or padded else \
            torch.empty((B, H, n), device=q.device, dtype=torch.float32)
        for h0, h1, hc, pi, p, programs, (bounds, ch, parts, rows, segments), last in pl["passes"]:
            progs, per, seq_rows, seq_values = self._grid(p, seqs, programs, cfg["BM"], False)
            m = self._class_m(p, args, cfg)
            kd, vd, tma = tma_pair(p.tma_fwd and pl["tma"] and m is not False, k, v, cfg["BN"], BD, m)
            qd = tma_desc(q, cfg["BM"], BD, True) if p.tma_rows and pl["tma"] and cfg["row_tma"] else None
            split_on = bool(p.heavy_q)
            names = param_names("fwd", split_on, self.spec.arg_names, pi > 0, p.rev_fwd, sel is not None)

            def launch(grid, out, out_lse, nout, partial, seed):
                self.launching = "fwd"
                values = dict(
                    Q=q, K=k, V=v, O=out, OI=seed, LSE=out_lse, KD=kd, VD=vd, QD=qd,
                    **_stride_values("q", q), **_stride_values("k", k), **_stride_values("v", v), **_stride_values("o", out),
                    n=n, HTOT=H, HC=hc, GROUP=pl["group"], HEAD0=h0, PER=per, NOUT=nout,
                    SPLIT0=bounds[0], SPLIT1=bounds[1], SPLIT2=bounds[2], SPLIT3=bounds[3], CH=ch, RS=rows,
                    PARTIAL=int(partial), qk_scale=scale * LOG2E, **args,
                    SEEDED=pi > 0 and not partial, BM=cfg["BM"], BN=cfg["BN"], BD=BD, D=D, PREC=pl["prec"],
                    WIDEN=pl["widen"], TMA=tma, QTMA=qd is not None, REV=bool(cfg["rev"] and p.rev_fwd),
                    SEQ=None, SEQ_LEN=None, NROW=0, SPER=0, DOCS=0, **chosen)
                values.update(seq_values)
                self.launch(p.fwd, grid, site and site + (h0, pi, partial))(
                    **{x: values[x] for x in names}, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            final = multi and last and not parts
            launch(_grid_of(progs, B, hc, seq_rows), res if final else o, lse, n, False, o)
            if parts:  # the global rows' other chunks, then one merge of their softmax states
                po = self.alloc((B, H, parts * rows, D), device=q.device, dtype=torch.float32)
                plse = self.alloc((B, H, parts * rows), device=q.device, dtype=torch.float32)
                launch((rows // cfg["BM"], B * hc, parts), po, plse, parts * rows, True, po)
                for r0, count, off in segments:
                    merge_rows(self.launch, o, lse, po, plse, r0, count, parts, h0, h1, off, rows)
            if multi and last and parts:
                res[:, h0:h1 + 1] = o[:, h0:h1 + 1]
        if sel is None:
            return res, lse
        if not mass:
            return res, lse, None
        K, _, qblock = self.spec.select
        return res, lse, mass_rows.view(B, H, -1, qblock // pl["cfg"]["BM"], K).sum(3)

    def _selection_values(self, q, bm: int, sel, mass: bool) -> tuple:
        """(the kernels' selection parameters (abi.SELECTED), the block mass's rows or None)."""
        if sel is None:
            return {}, None
        B, H, n, _ = q.shape
        K, block, qblock = self.spec.select
        blocks = sel.blocks.contiguous()
        Hs, nqb = blocks.shape[1], blocks.shape[2]
        rows = torch.zeros((B, H, nqb * (qblock // bm), K), device=q.device, dtype=torch.float32) if mass else None
        return dict(SEL=blocks, HS=Hs, SELG=H // Hs, NQB=nqb, MASSO=rows if mass else blocks, MASS=mass), rows

    # ---- the backward ------------------------------------------------------------------------

    def backward_launches(self, do, q, k, v, o, lse, scale: float, seqs=None, sel=None):
        B, H, n, D = q.shape
        HK = k.shape[1]
        pl = self.plan("bwd", q, k, seqs)
        chosen = {}
        if sel is not None:  # the selection, and its key-major inverse (built once per Selection)
            _, block, _ = self.spec.select
            offsets, qblocks = sel.inverse(cdiv(n, block))
            blocks = sel.blocks.contiguous()
            chosen = dict(SEL=blocks, HS=blocks.shape[1], SELG=H // blocks.shape[1], NQB=blocks.shape[2],
                          INV_OFF=offsets, INV_QB=qblocks)
        cfg, BD, args, group = pl["cfg"], pl["BD"], pl["args"], pl["group"]
        prec, widen, fused = pl["prec"], pl["widen"], pl["fused"]
        do = do.contiguous() if do.stride(-1) != 1 else do
        lse = lse.contiguous()
        site = self.site(pl, q, do, q, k, v, o, *_seq_tensors(seqs))
        padded = seqs is not None and seqs.mode == PADDED  # padding rows' gradients: 0, never written
        delta = torch.empty((B, H, n), device=q.device, dtype=torch.float32)
        lse2 = torch.empty_like(delta)
        # delta = rowsum(O * dO) and the log2-unit lse: computed by each head range's first dq launch
        # (PRO), or, when no dq kernel runs (atomic dq) or with pro_dq=0, by a prologue kernel
        pro = not fused and cfg["pro_dq"]
        if not pro:
            rows = 16 if not q.is_cuda else 64
            self.launch(bwd_prologue, (cdiv(n, rows), B * H), site and site + ("prologue",))(
                o, do, lse, delta, lse2, *o.stride(), *do.stride(), n, H, BM=rows, BD=BD, D=D)
        # One launch per (head range, pass).  When a single launch covers every row of dq and every
        # key of dk/dv, it writes the final gradients directly; otherwise launches add up in float32.
        single, accum_dkdv, partial_keys = pl["single"], pl["accum_dkdv"], pl["partial_keys"]
        dq = self.alloc((B, H, n, D), device=q.device, dtype=q.dtype) if single and not fused and not padded else \
            torch.zeros((B, H, n, D), device=q.device, dtype=torch.float32)
        dqd = tma_desc(dq, cfg["DKV_BM"], BD, True) if pl["red_tma"] else None
        if accum_dkdv:
            dk = torch.zeros((B, HK, n, D), device=q.device, dtype=torch.float32)
        else:
            dk = (torch.zeros if partial_keys or padded else self.alloc)((B, HK, n, D), device=q.device, dtype=k.dtype)
        dv = torch.zeros_like(dk) if accum_dkdv or partial_keys or padded else \
            self.alloc((B, HK, n, D), device=q.device, dtype=v.dtype)
        if pl["nothing"]:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        shared = dict(**_stride_values("q", q), **_stride_values("k", k), **_stride_values("v", v), **_stride_values("do", do), n=n, HTOT=H,
                      GROUP=group, qk_scale=scale * LOG2E, sm_scale=scale, BD=BD, D=D, PREC=prec, WIDEN=widen, **args,
                      **chosen)
        for (h0, h1, hc, kv0, kv1, kc, pi, p, programs, (bounds, ch, parts, rows, segments),
             key_programs, (kbounds, kch, kparts, krows, ksegments)) in pl["passes"]:
            progs, per, seq_rows, dq_seq = self._grid(p, seqs, programs, cfg["DQ_BM"], False)
            kprogs, kper, _, dkdv_seq = self._grid(p, seqs, key_programs, cfg["DKV_BN"], True)
            m = self._class_m(p, args, cfg, fused)
            if not fused:
                kd, vd, tma_dq = tma_pair(p.tma_dq and pl["tma"] and m is not False, k, v, cfg["DQ_BN"], BD, m)
                qd, dod, _ = tma_pair(p.tma_rows and pl["tma"] and cfg["row_tma"], q, do, cfg["DQ_BM"], BD)
                names = param_names("dq", bool(p.heavy_q), self.spec.arg_names, False, p.rev_dq, sel is not None)

                def launch_dq(grid, out, nout, partial):
                    self.launching = "dq"
                    values = dict(
                        shared, Q=q, K=k, V=v, DO=do, DQ=out, LSE2=lse2, DELTA=delta, O=o, LSE=lse, KD=kd, VD=vd,
                        QD=qd, DOD=dod, **_stride_values("dq", out), **_stride_values("o", o), HC=hc, HEAD0=h0, PER=per,
                        NOUT=nout, SPLIT0=bounds[0], SPLIT1=bounds[1], SPLIT2=bounds[2], SPLIT3=bounds[3], CH=ch,
                        RS=rows, PARTIAL=int(partial), PRO=int(pro and pi == 0 and not partial),
                        ACCUM=not single and not partial, BM=cfg["DQ_BM"], BN=cfg["DQ_BN"], TMA=tma_dq,
                        QTMA=qd is not None, REV=bool(cfg["rev"] and p.rev_dq),
                        SEQ=None, SEQ_LEN=None, NROW=0, SPER=0, DOCS=0)
                    values.update(dq_seq)
                    self.launch(p.dq, grid, site and site + ("dq", h0, pi, partial))(
                        **{x: values[x] for x in names}, num_warps=cfg["dq_warps"], num_stages=cfg["dq_stages"])
                launch_dq(_grid_of(progs, B, hc, seq_rows), dq, n, False)
                if parts:  # the global rows' other chunks: partial dq sums, added in a fixed order
                    pdq = self.alloc((B, H, parts * rows, D), device=q.device, dtype=torch.float32)
                    launch_dq((rows // cfg["DQ_BM"], B * hc, parts), pdq, parts * rows, True)
                    for r0, count, off in segments:
                        add_rows(self.launch, dq[:, h0:h1 + 1], pdq[:, h0:h1 + 1], r0, count, parts, off, rows)
            qd, dod, tma_dkdv = tma_pair(p.tma_dkdv and pl["tma"] and m is not False, q, do, cfg["DKV_BM"], BD, m)
            names = param_names("dkdv", bool(p.heavy_k), self.spec.arg_names, select=sel is not None)

            def launch_dkdv(grid, out_k, out_v, nout, partial):
                self.launching = "dkdv"
                values = dict(
                    shared, Q=q, K=k, V=v, DO=do, DK=out_k, DV=out_v, LSE2=lse2, DELTA=delta, QD=qd, DOD=dod, DQ=dq,
                    DQD=dqd if tma_dkdv is True else None, **_stride_values("dk", out_k), **_stride_values("dq", dq), KC=kc,
                    H0=h0, H1=h1, KV0=kv0, PER=kper, NOUT=nout, SPLIT0=kbounds[0], SPLIT1=kbounds[1],
                    SPLIT2=kbounds[2], SPLIT3=kbounds[3], CH=kch, RS=krows, PARTIAL=int(partial),
                    ACCUM=accum_dkdv and not partial, BM=cfg["DKV_BM"], BN=cfg["DKV_BN"], TMA=tma_dkdv, FUSED=fused,
                    RED_TMA=tma_dkdv is True and dqd is not None, SEQ=None, SEQ_LEN=None, NROW=0, SPER=0, DOCS=0)
                values.update(dkdv_seq)
                self.launch(p.dkdv, grid, site and site + ("dkdv", h0, pi, partial))(
                    **{x: values[x] for x in names}, num_warps=cfg["dkv_warps"], num_stages=cfg["dkv_stages"])
            launch_dkdv(_grid_of(kprogs, B, kc, seq_rows), dk, dv, n, False)
            if kparts:  # the global columns' other chunks of query tiles
                pdk = self.alloc((B, HK, kparts * krows, D), device=q.device, dtype=torch.float32)
                pdv = self.alloc(pdk.shape, device=q.device, dtype=torch.float32)
                launch_dkdv((krows // cfg["DKV_BN"], B * kc, kparts), pdk, pdv, kparts * krows, True)
                for r0, count, off in ksegments:
                    for g, part in ((dk, pdk), (dv, pdv)):
                        add_rows(self.launch, g[:, kv0:kv1 + 1], part[:, kv0:kv1 + 1], r0, count, kparts, off, krows)
        return _as(dq, q.dtype), _as(dk, k.dtype), _as(dv, v.dtype)


def _grid_of(programs: int, B: int, heads: int, seq_rows) -> tuple:
    """A launch's grid: (tiles, rows x heads); under packing (`seq_rows` sequences) the other way
    round, so that a batch of many documents is not held to axis 1's 65,535 and every sequence's
    first tiles are dispatched before any sequence's later ones (the kernels swap the ids back)."""
    return (programs, B * heads, 1) if seq_rows is None else (seq_rows * heads, programs, 1)


def _seq_tensors(seqs) -> tuple:
    """The index tensors of packed or padded sequences (part of a launch site's key)."""
    return () if seqs is None else tuple(t for t in (seqs.starts, seqs.lens) if t is not None)


def _stride_values(name: str, t: torch.Tensor) -> dict:
    s = t.stride()
    return {f"s{name}0": s[0], f"s{name}1": s[1], f"s{name}2": s[2], f"s{name}3": s[3]}
