"""Deterministic measures of how much work a call does, for tests that guard complexity.

Unit tests never compare wall-clock time to a budget: on a loaded CI machine that is flaky.
They count the work instead:

* `calls`: calls of Python functions and of C functions (builtins, numpy, the regex engine)
  made while the code runs.  A complexity regression -- a Python loop per row or per tile at
  n = 2^20, symbolic blow-up in a formula, backtracking in the parser -- multiplies it by
  orders of magnitude.
* `pairs`: (query, key) pairs evaluated one by one by `semantics.allowed`, the dense
  evaluator: the pair-by-pair fallback that the closed forms and range counting exist to avoid.
* `peak_bytes` (only with `counted(memory=True)`, which is slower): the most memory allocated at
  once, numpy arrays included.  Vectorised work makes few calls whatever its size; this shows an
  array with one entry per row or per tile at n = 2^30.

Neither depends on the machine or its load.  Caches (lru_cache, the closed forms') can only
lower them, so a test run after others stays below its bound.  Each bound in the tests is a
few times the count measured when it was written and far below what the regression it
guards against would cost.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patternc import semantics


@dataclass
class Work:
    """What ran inside `counted()` (module doc)."""

    calls: int = 0
    pairs: int = 0
    peak_bytes: int = 0


@contextmanager
def counted(memory: bool = False):
    """with counted() as w: ...  -- then w.calls and w.pairs (and with memory=True, w.peak_bytes)
    are the work the block did."""
    work = Work()
    original = semantics.allowed
    depth = [0]

    def allowed(expr, i, j, *args, **kwargs):  # counts the outermost call's pairs only
        if depth[0] == 0:
            work.pairs += math.prod(np.broadcast_shapes(np.shape(i), np.shape(j)))
        depth[0] += 1
        try:
            return original(expr, i, j, *args, **kwargs)
        finally:
            depth[0] -= 1

    def profile(frame, event, arg) -> None:
        if event == "call" or event == "c_call":
            work.calls += 1

    # modules that imported the evaluator by name (`from .semantics import allowed`) hold it too
    holders = [m for name, m in list(sys.modules.items())
               if name.split(".")[0] == "patternc" and getattr(m, "allowed", None) is original]
    for m in holders:
        m.allowed = allowed
    if memory:
        assert not tracemalloc.is_tracing(), "counted(memory=True) inside another tracemalloc session"
        tracemalloc.start()
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield work
    finally:
        sys.setprofile(previous)
        if memory:
            work.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        for m in holders:
            m.allowed = original


_CLI = """
import json, sys
sys.path.insert(0, {tests!r})
from work import counted
from patternc.cli import main
with counted(memory={memory!r}) as work:
    rc = main({args!r})
with open({out!r}, "w") as f:
    json.dump([work.calls, work.pairs, work.peak_bytes], f)
sys.exit(rc)
"""


def cli_counted(*args, cwd, memory: bool = False, timeout: float = 120) -> tuple:
    """Run the `patternc` command's main() in a fresh interpreter under `counted()`:
    (CompletedProcess, Work).  The timeout only guards against a hang."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "work.json")
        code = _CLI.format(tests=str(Path(__file__).resolve().parent), memory=memory,
                           args=[str(a) for a in args], out=out)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PATTERNC_DEBUG", None)
        r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout)
        calls, pairs, peak = json.loads(Path(out).read_text())
    return r, Work(calls, pairs, peak)
