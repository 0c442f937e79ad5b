"""Shared fixtures: how to run the `patternc` command, and how to resolve a one-line pattern."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, generated Triton kernels run on the CPU through Triton's interpreter.  The switch
# must be on before anything imports triton (torch's FlexAttention does): triton.language's own
# jit helpers (tl.max, tl.sum) are decorated at import time and would not be interpretable.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The runtime's Triton functions are decorated once per process, when first imported: import
    # them now, under the interpreter, so that a test that turns it off for a while (to take the
    # PyTorch path) cannot leave them compiled-mode for the tests after it.
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        from patternc.runtime import (decode_bodies, random_kernels, select_tiles, seq_bodies,  # noqa: F401
                                      split, tile_bodies)

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "patternc"


def patternc_command() -> list:
    """The installed console script when there is one, else `python -m patternc.cli`."""
    return [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "patternc.cli"]


def run_patternc(*args, cwd=None, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    full_env.pop("PATTERNC_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run(patternc_command() + [str(a) for a in args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """cli("check", path) -> CompletedProcess of the real command in a subprocess."""
    return run_patternc


def resolve_source(body: str, name: str = None, **params):
    """Resolve `pattern p = BODY`, or a pattern of BODY when BODY is a whole program."""
    from patternc.frontend import parse_program, resolve

    src = body if re.search(r"^\s*pattern\s", body, re.M) else f"pattern p = {body}\n"
    return resolve(parse_program(src, "<test>"), name, params)


@pytest.fixture
def pattern_of():
    return resolve_source
