"""Launch settings of the Triton kernels: tiles, warps, stages and switches, per call.

Layers, later ones winning: the defaults below (from the pattern's compile-time schedule),
what autotuning chose (PATTERNC_AUTOTUNE=1), PATTERNC_CONFIG="KEY=VALUE,...", and reductions
that made a kernel fit this GPU's shared memory.  Each default cites its entry in
docs/decisions.md.
"""
from __future__ import annotations

import os

import torch

from .spec import Schedule
from .tma import tma_on

TILE_KEYS = ("BM", "BN", "num_warps", "num_stages",            # forward
             "DQ_BM", "DQ_BN", "dq_warps", "dq_stages",        # dq: query tile x key tile
             "DKV_BM", "DKV_BN", "dkv_warps", "dkv_stages",    # dk/dv: query tile x key tile
             "split_chunk",                                    # tiles per chunk of a global row's walk
             "fused_dq",                                       # 1: dq added atomically by the dk/dv kernel
                                                               # (2: element atomics, no TMA reductions)
             "row_tma",                                        # 1: forward/dq load their own Q, dO rows
                                                               # through TMA (measured no faster: off)
             "pro_dq",                                         # 0: delta and lse2 by a prologue kernel,
                                                               # not the first dq launch
             "class_tma",                                      # residue classes through TMA where m | n:
                                                               # 0 never, 1 always, 2 not with atomic dq
             "rev")                                            # 1: query tiles whose walks grow run
                                                               # last-first (0: in tile order)

INTERPRETER_TILES = dict(BM=16, BN=16, num_warps=4, num_stages=1, DQ_BM=16, DQ_BN=16, dq_warps=4, dq_stages=1,
                         DKV_BM=16, DKV_BN=16, dkv_warps=4, dkv_stages=1)
# fp32 or D > 128: the register and shared-memory budget of big rows
WIDE_TILES = dict(BM=64, BN=32, num_warps=4, num_stages=2, DQ_BM=32, DQ_BN=32, dq_warps=4, dq_stages=2,
                  DKV_BM=32, DKV_BN=32, dkv_warps=4, dkv_stages=2)


def deterministic() -> bool:
    """Whether results must be bitwise reproducible (no atomic dq)."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("PATTERNC_DETERMINISTIC") == "1"


def overrides() -> dict:
    """PATTERNC_CONFIG="KEY=INT,...": settings forced for every call (sweeps, experiments)."""
    out = {}
    text = os.environ.get("PATTERNC_CONFIG", "").strip()
    for item in text.split(",") if text else ():
        key, _, value = item.partition("=")
        if key.strip() not in TILE_KEYS or not value.strip().isdigit():
            raise ValueError(f"PATTERNC_CONFIG: bad item {item!r}; expected KEY=INT with KEY in {TILE_KEYS}")
        out[key.strip()] = int(value)
    return out


def tiles(schedule: Schedule, D: int, dtype: torch.dtype, device: torch.device, tuned: dict = None,
          shrunk: dict = None) -> dict:
    """The settings of one call: `tuned` (autotuning's choice) and `shrunk` (what fits this GPU)
    are the caller's, already looked up for this call's shapes."""
    if device.type != "cuda":
        cfg = dict(INTERPRETER_TILES)
    elif D > 128 or dtype == torch.float32:
        cfg = dict(WIDE_TILES)
    else:
        # decisions.md: fwd-warps (128x64 tiles want 8 warps, 64x64 4), dq-stages (the dq
        # kernel's 3 TMA stages fit and beat 2), dkdv-stages (128-key dk/dv tiles leave room for
        # 2 TMA stages; pointer loads take 3 for 128-row forwards)
        bm, bn = schedule.fwd_tiles
        stages = 3 if bm == 128 and not tma_on(device) else 2
        cfg = dict(BM=bm, BN=bn, num_warps=8 if bm == 128 else 4, num_stages=3, dq_stages=3, dkv_stages=stages)
        cfg.update(schedule.bwd_tiles[64 if D <= 64 else 128])
    cfg["split_chunk"] = 16  # about the walk of a windowed tile
    cfg["fused_dq"] = int(schedule.fused_dq)
    cfg["row_tma"] = 0  # decisions.md: row-tma-off (within +-2% either way)
    cfg["pro_dq"] = 1
    cfg["class_tma"] = 2  # decisions.md: class-tma (not beside atomic dq)
    cfg["rev"] = 1  # decisions.md: longest-walks-first
    cfg.update(tuned or {})
    cfg.update(overrides())
    cfg.update(shrunk or {})
    if schedule.random_block is not None:
        for key in ("BM", "BN", "DQ_BM", "DQ_BN", "DKV_BM", "DKV_BN"):
            while schedule.random_block % cfg[key]:
                cfg[key] //= 2
    if schedule.select_blocks is not None:  # decisions.md: select-tiles
        block, qblock = schedule.select_blocks
        for keys, size in ((("BM", "DQ_BM", "DKV_BM"), qblock), (("BN", "DQ_BN", "DKV_BN"), block)):
            for key in keys:
                while size % cfg[key]:
                    cfg[key] //= 2
    return cfg
