"""Launches of a pattern's decode kernels: one per (head range, pass), then a combine.

A decode launch's grid is (splits, batch x kv heads, row groups).  Its plan depends only on
shapes, dtypes, the cache's layout and the device, so it is worked out once and memoised;
nothing in a launch reads the device (n comes from cache_seqlens inside the kernels), so a
decode step can be captured in a CUDA graph and replayed.

Split-K (flash-decoding): a row's walk over its allowed key tiles is dealt out to several
programs, each writing a partial softmax state, and `decode_combine` merges them with the
other passes' by log-sum-exp.  The number of splits is chosen on the host from what it knows
without reading the device: the programs the launch has anyway, and how many key tiles a row
can walk at most (the cache's positions, or a bounded pattern's live keys).  One launch
with one split writes the output directly (no combine).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from .abi import param_names
from .decode_bodies import decode_combine
from .decode_inputs import Ring
from .launch import Launcher
from .spec import Pass, Spec
from .split import block_d, cdiv
from .triton_path import LOG2E

# Defaults not measured yet (docs/decisions.md: decode-split-k, decode-tiles).
DECODE_BN = 64  # keys per tile (32 where D > 128)
DECODE_MAX_BM = 128  # rows per tile at most: GROUP x T rows beyond it are cut into row groups by heads
SPLIT_PROGRAMS_PER_SM = 2  # split until the launch has about this many programs per SM ...
SPLIT_MIN_TILES = 4  # ... while each split keeps at least this many key tiles
COMBINE_ROWS = 16
TENSORS = ("Q", "K", "V", "O", "LSE", "SEQ", "PT")  # a decode kernel's first parameters (runtime.abi)


@dataclass(frozen=True)
class _Launch:
    """One decode kernel launch: a pass of a head range, its grid and row packing."""

    p: Pass
    h0: int
    h1: int
    kv0: int
    kc: int
    bm: int
    hpt: int  # heads per row group
    nhg: int  # row groups per class
    grid: tuple
    splits: int
    part0: int
    warps: int


def _pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 4  # the CPU interpreter: a few programs, so tests exercise splits
    return torch.cuda.get_device_properties(device).multi_processor_count


DECODE_STAGES = 3  # software pipelining of the key loads on the GPU (docs/decisions.md: decode-tiles)


class TritonDecode:
    """Decode launches of one pattern.  `splits` (tests, experiments) forces the splits per launch;
    PATTERNC_DECODE_SPLITS does too.  `gpu_sms` plans for a GPU with that many SMs whatever the
    tensors' device (benchmarks/compile_check.py compiles the GPU's kernels from CPU tensors)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.launch = Launcher()
        self.plans: dict = {}
        self.splits: Optional[int] = None
        self.gpu_sms: Optional[int] = None
        self.sms: dict = {}

    def _block_n(self, D: int) -> int:
        bn = DECODE_BN if D <= 128 else DECODE_BN // 2
        rb = self.spec.schedule.random_block if self.spec.schedule is not None else None
        while rb is not None and rb % bn:  # tiles must lie inside a random block
            bn //= 2
        return bn

    def _forced(self) -> Optional[int]:
        env = os.environ.get("PATTERNC_DECODE_SPLITS")
        return self.splits if self.splits is not None else (int(env) if env else None)

    def plan(self, q, k, paged: int, capacity: int, ring: Optional[Ring]) -> dict:
        B, H, T, D = q.shape
        HK = k.shape[1]
        forced = self._forced()
        key = (B, H, T, D, HK, q.dtype, q.device, paged, capacity, ring, forced, self.gpu_sms)
        pl = self.plans.get(key)
        if pl is not None:
            return pl
        group = H // HK
        BD, BN = block_d(D), self._block_n(D)
        gpu = q.is_cuda or self.gpu_sms is not None
        if q.device not in self.sms:
            self.sms[q.device] = _sm_count(q.device)
        target = SPLIT_PROGRAMS_PER_SM * (self.gpu_sms or self.sms[q.device])
        layout = self.spec.cache_layout
        if ring is not None:
            keys = ring.slots
        elif layout is not None:
            keys = min(capacity, sum(layout) + T)
        else:
            keys = capacity
        launches, counts = [], []
        for case in self.spec.cases:
            h0, h1 = case.first, H - 1 if case.last is None else case.last
            kv0, kv1 = h0 // group, h1 // group
            part0 = 0
            for p in case.passes:
                m = p.m if p.space == "diag" and isinstance(p.m, int) else None
                rows = cdiv(T, m) if m else T  # new rows per head in one tile (a class's, in a residue pass)
                classes = min(T, m) if m else (T if p.space == "diag" else 1)
                bm = min(DECODE_MAX_BM, max(16, _pow2(group * rows)))
                hpt = max(1, min(group, bm // rows))
                nhg = cdiv(group, hpt)
                programs = B * (kv1 - kv0 + 1) * classes * nhg
                tiles = cdiv(keys // (m or 1) + 1, BN) + 1  # key tiles one row may walk at most (about)
                splits = forced or max(1, min(cdiv(target, programs), tiles // SPLIT_MIN_TILES))
                launches.append(_Launch(p, h0, h1, kv0, kv1 - kv0 + 1, bm, hpt, nhg,
                                        (splits, B * (kv1 - kv0 + 1), classes * nhg), splits, part0,
                                        4 if bm <= 64 else 8))
                part0 += splits
            counts.append(part0)
        # head ranges with fewer partials than others (or none: an empty pattern) leave some unwritten
        init = len(set(counts)) > 1
        parts = max(counts, default=0)
        pl = dict(key=key, launches=launches, parts=parts, init=init, BD=BD, BN=BN, static={},
                  direct=len(launches) == 1 and launches[0].splits == 1 and not init,
                  prec="ieee" if q.dtype == torch.float32 else "tf32",
                  widen=q.dtype == torch.bfloat16 and not gpu,
                  stages=DECODE_STAGES if gpu else 1)
        if len(self.plans) > 256:
            self.plans.clear()
        self.plans[key] = pl
        return pl

    def run(self, q, k, v, cache_seqlens, scale: float, page_table, capacity: int, ring: Optional[Ring]):
        """(out, lse) of the new rows; lse in natural-log units, float32."""
        B, H, T, D = q.shape
        paged = k.shape[2] if page_table is not None else 0
        pl = self.plan(q, k, paged, capacity, ring)
        out = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
        rows = B * H * T
        if pl["direct"] or not pl["launches"]:
            o = out
            ol = lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
            if not pl["launches"]:
                return out.zero_(), lse.fill_(float("-inf"))
        else:  # the splits' partial outputs and lse, and the merged lse: one float32 allocation (host time)
            NP = pl["parts"]
            scratch = torch.empty(rows * (NP * (D + 1) + 1), device=q.device, dtype=torch.float32)
            o = scratch[:rows * NP * D].view(B, H, T, NP, D)
            ol = scratch[rows * NP * D:rows * NP * (D + 1)].view(B, H, T, NP)
            lse = scratch[rows * NP * (D + 1):].view(B, H, T)
            if pl["init"]:
                ol.fill_(float("-inf"))
        layout = (q.stride(), k.stride(), v.stride(), None if page_table is None else page_table.stride(), capacity,
                  ring, scale)
        static = pl["static"].get(layout)
        if static is None:
            static = pl["static"][layout] = self._static(pl, q, k, v, o, ol, page_table, capacity, ring, scale)
        site = None
        if q.is_cuda:  # a launch site: the plan, the device, the layouts and each pointer's 16-byte alignment
            site = (pl["key"], torch.cuda.current_device(), layout) + tuple(
                t.data_ptr() % 16 for t in (q, k, v, cache_seqlens) + (() if page_table is None else (page_table,)))
        tensors = (q, k, v, o, ol, cache_seqlens, page_table)
        for x, (rest, meta) in zip(pl["launches"], static):
            self.launch(x.p.decode, x.grid, site and site + (x.h0, x.part0))(*tensors, *rest, **meta)
        if not pl["direct"]:
            self.launch(decode_combine, (cdiv(rows, COMBINE_ROWS),), site and site + ("combine",))(
                o, ol, out, lse, *o.stride()[:4], *ol.stride(), *out.stride(), rows, H, T, pl["parts"],
                BR=COMBINE_ROWS, BD=pl["BD"], D=D)
        return out, lse

    @staticmethod
    def _static(pl: dict, q, k, v, o, ol, page_table, capacity: int, ring: Optional[Ring], scale: float) -> list:
        """Each launch's arguments after the tensors, in the ABI's order, and its launch settings:
        they depend only on the plan and the layouts, so a step passes them positionally as built
        here (matching ~50 keywords to parameters cost ~5 us a launch; decisions.md: decode-host)."""
        fixed, window = (ring.fixed, ring.window) if ring is not None else (0, 1)
        direct = pl["direct"]
        order = param_names("decode", False)
        assert order[:len(TENSORS)] == TENSORS, order  # the step passes its tensors first, in this order
        names = order[len(TENSORS):]
        out = []
        for x in pl["launches"]:
            values = dict(
                sq0=q.stride(0), sq1=q.stride(1), sq2=q.stride(2), sq3=q.stride(3),
                sk0=k.stride(0), sk1=k.stride(1), sk2=k.stride(2), sk3=k.stride(3),
                sv0=v.stride(0), sv1=v.stride(1), sv2=v.stride(2), sv3=v.stride(3),
                so0=o.stride(0), so1=o.stride(1), so2=o.stride(2), so3=o.stride(-1), sop=0 if direct else o.stride(3),
                sl0=ol.stride(0), sl1=ol.stride(1), sl2=ol.stride(2), slp=0 if direct else ol.stride(3),
                spt=0 if page_table is None else page_table.stride(0),
                T=q.shape[2], GROUP=q.shape[1] // k.shape[1], H0=x.h0, H1=x.h1, KV0=x.kv0, KC=x.kc, HPT=x.hpt,
                NHG=x.nhg, PART0=x.part0, SPLITS=x.splits, CAP=capacity, FIXED=fixed, RINGW=window,
                qk_scale=scale * LOG2E, BM=x.bm, BN=pl["BN"], BD=pl["BD"], D=q.shape[3],
                PAGE=k.shape[2] if page_table is not None else 0, RING=ring is not None, PREC=pl["prec"],
                WIDEN=pl["widen"])
            out.append((tuple(values[name] for name in names), dict(num_warps=x.warps, num_stages=pl["stages"])))
        return out
