"""Opt-in autotuning (PATTERNC_AUTOTUNE=1).

The first call for a (kernel kind, length bucket, D, dtype, GPU) times a few settings on the
real inputs and keeps the fastest, in memory and in a JSON file per pattern
(PATTERNC_CACHE_DIR, default ~/.cache/patternc), so later processes skip the search.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import torch

from .config import TILE_KEYS

CANDIDATES = {
    "fwd": [dict(BM=64, BN=64, num_warps=4, num_stages=3), dict(BM=128, BN=64, num_warps=8, num_stages=3),
            dict(BM=128, BN=128, num_warps=8, num_stages=2), dict(BM=64, BN=64, num_warps=4, num_stages=2)],
    # decisions.md: dq-stages, dkdv-tiles (64-key tiles on 4 warps for the local family)
    "bwd": [dict(DQ_BM=128, DQ_BN=64, dq_warps=8, dq_stages=3, DKV_BM=64, DKV_BN=64, dkv_warps=4, dkv_stages=2),
            dict(DQ_BM=128, DQ_BN=64, dq_warps=8, dq_stages=3, DKV_BM=64, DKV_BN=128, dkv_warps=8, dkv_stages=2),
            dict(DQ_BM=128, DQ_BN=64, dq_warps=8, dq_stages=2, DKV_BM=64, DKV_BN=128, dkv_warps=8, dkv_stages=2),
            dict(DQ_BM=64, DQ_BN=64, dq_warps=4, dq_stages=3, DKV_BM=64, DKV_BN=64, dkv_warps=4, dkv_stages=3)],
}
INTERPRETER_CANDIDATES = {  # small tiles: the mechanism is tested on the CPU
    "fwd": [dict(BM=16, BN=16), dict(BM=32, BN=16)],
    "bwd": [dict(DQ_BM=16, DQ_BN=16, DKV_BM=16, DKV_BN=16), dict(DQ_BM=32, DQ_BN=16, DKV_BM=16, DKV_BN=32)],
}


def pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def tune_key(kind: str, D: int, dtype, device, n: int) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "interpreter"
    return f"{kind}|n<={pow2(max(n, 1))}|D={D}|{str(dtype)[6:]}|{gpu}"


def time_call(fn: Callable) -> float:
    """Median seconds of a few runs after a warm-up run (which compiles)."""
    fn()
    times = []
    for _ in range(5):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class Tuner:
    """One pattern's tuned settings; `changed` is called whenever they change (plans memoised
    with the old settings must be rebuilt)."""

    def __init__(self, namespace: str, changed: Callable[[], None]):
        self.namespace = namespace
        self.changed = changed
        self.tuned: dict = {}
        self.loaded = False

    def path(self) -> str:
        folder = os.environ.get("PATTERNC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "patternc")
        return os.path.join(folder, f"tuned-{self.namespace}.json")

    def settings(self, D: int, dtype, device, n: int) -> dict:
        """What tuning chose for a call of these shapes (both kernel kinds)."""
        if not self.tuned:  # no key to build when nothing was tuned
            return {}
        out: dict = {}
        for kind in ("fwd", "bwd"):
            out.update(self.tuned.get(tune_key(kind, D, dtype, device, n), {}))
        return out

    def set(self, key: str, cfg) -> None:
        if cfg is None:
            self.tuned.pop(key, None)
        else:
            self.tuned[key] = cfg
        self.changed()

    def load(self) -> None:
        self.loaded = True
        try:
            with open(self.path()) as f:
                saved = json.load(f)
        except (OSError, ValueError):  # no cache yet, or an unreadable one: tune again
            return
        if isinstance(saved, dict):
            for key, cfg in saved.items():
                if isinstance(cfg, dict) and all(k in TILE_KEYS and isinstance(v, int) for k, v in cfg.items()) \
                        and key not in self.tuned:
                    self.set(key, cfg)

    def save(self) -> None:
        path = self.path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{time.time_ns()}.tmp"  # unique per writer, then an atomic rename
            with open(tmp, "w") as f:
                json.dump(self.tuned, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:  # a read-only home: the choice still holds for this process
            pass

    def wanted(self, q) -> bool:
        tunable = not q.is_cuda or (q.dtype != torch.float32 and q.shape[-1] <= 128)  # the candidates' family
        return os.environ.get("PATTERNC_AUTOTUNE") == "1" and not os.environ.get("PATTERNC_CONFIG") and tunable

    def tune(self, kind: str, q, run: Callable, out_of_resources: type) -> None:
        """Time the candidates of `kind` on this call's inputs (run() launches them) and keep the
        fastest, unless this family of shapes is tuned already."""
        key = tune_key(kind, q.shape[-1], q.dtype, q.device, q.shape[2])
        if not self.loaded:
            self.load()
        if key in self.tuned:
            return
        best, best_time = None, float("inf")
        for cand in (CANDIDATES if q.is_cuda else INTERPRETER_CANDIDATES)[kind]:
            self.set(key, cand)
            try:
                t = time_call(run)
            except out_of_resources:  # does not fit this GPU: not a candidate
                continue
            if t < best_time:
                best, best_time = cand, t
        self.set(key, best)  # None: nothing fitted, no tuned setting
        if best is not None:
            self.save()
