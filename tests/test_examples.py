"""The files under examples/ and the language reference stay correct.

Every example parses, every pattern in it resolves with its defaults, the
reference backend's mask equals the semantics oracle at ragged lengths, and
examples/model.py trains a few steps with a finite loss.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import patternc
from patternc import ir, semantics
from patternc.frontend import PRIMITIVES, Stack, check_program, parse_program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FILES = sorted(EXAMPLES.glob("*.attn"))
EXPECTED = {"longformer", "bigbird", "strided", "fixed", "sliding_window", "streaming", "dilated",
            "prefix_lm", "per_head", "longnet", "nsa"}
LENGTHS = (77, 300)


def _all_patterns():
    out = []
    for f in FILES:
        prog = parse_program(f.read_text(), str(f))
        out += [(f, name) for name in prog.definitions]
    return out


PATTERNS = _all_patterns()


def test_every_family_has_an_example():
    assert {f.stem for f in FILES} >= EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_parses_and_every_pattern_resolves(path):
    p = patternc.parse(path)  # the default pattern: the last one defined
    prog = parse_program(path.read_text(), str(path))
    assert p.name == prog.names[-1]
    resolved = check_program(prog)
    assert [r.name for r in resolved] == prog.names, "every example pattern should have defaults for all parameters"
    text = path.read_text()
    assert text.lstrip().startswith("#"), "an example should open with a comment saying what it is"


@pytest.mark.parametrize("path,name", PATTERNS, ids=[f"{f.stem}:{n}" for f, n in PATTERNS])
def test_reference_mask_matches_semantics(path, name):
    item = patternc.parse(path, name)
    if isinstance(item, Stack):  # a stack: each distinct layer, through the stack's module
        mod = patternc.load(item, backend="reference")
        for k, p in enumerate(item.distinct):
            _check_mask(path, f"{name} layer {item.layer_index.index(k)}", p, mod.layer(item.layer_index.index(k)))
        return
    mod = patternc.load(item, backend="reference")
    _check_mask(path, name, item, mod)


def _check_mask(path, name, p, mod):
    for n in LENGTHS:
        expr = p.at(n)
        if ir.has_select(expr):  # checked with a random selection (and rows: of the outer pattern)
            k, b, qb = (mod.SPEC if hasattr(mod, "SPEC") else mod.spec).select  # a module, or a stack's layer
            blocks = torch.randint(-1, -(-n // b), (1, 1, -(-n // qb), k), dtype=torch.int32,
                                   generator=torch.Generator().manual_seed(n))
            got = mod.mask(n, blocks=blocks)[0, 0].numpy()
            assert np.array_equal(got, semantics.dense_mask_numpy(expr, n, selection=blocks[0, 0].numpy()))
            assert semantics.dense_mask_numpy(ir.outer_part(expr), n).any(axis=-1).all()
            continue
        got = mod.mask(n).numpy()
        if p.num_heads is None:
            want = semantics.dense_mask_numpy(expr, n)
        else:
            want = np.stack([semantics.dense_mask_numpy(expr, n, head=h) for h in range(p.num_heads)])
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"{path.name}:{name} differs from the oracle at n={n}"
        assert want.any(axis=-1).all(), f"{path.name}:{name} has a query row with no key at n={n}"


def test_equivalent_spellings_hash_equal():
    f = EXAMPLES / "fixed.attn"
    assert patternc.parse(f, "fixed_explicit").hash == patternc.parse(f, "fixed_sparse").hash
    s = EXAMPLES / "sliding_window.attn"
    assert patternc.parse(s, "sliding_window").hash == patternc.parse(s, "sliding_window_band").hash


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_example_attention_is_the_masked_softmax(backend, monkeypatch):
    """An example module computes softmax(q k^T / sqrt(D) masked by the semantics) v, in float64."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the triton module's exact PyTorch path
    p = patternc.parse(EXAMPLES / "bigbird.attn", b=16, r=2)
    mod = patternc.load(p, backend=backend)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 77, 8, generator=g, dtype=torch.float64) for _ in range(3))
    keep = semantics.dense_mask(p.at(77), 77)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    want = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
    assert (mod.attention(q, k, v) - want).abs().max() < 1e-12


def _run_model(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    return subprocess.run([sys.executable, str(EXAMPLES / "model.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _losses(stdout: str) -> list:
    return [float(x) for x in re.findall(r"^step\s+\d+/\d+\s+loss\s+(\S+)", stdout, re.M)]


def test_model_trains_with_load():
    """The model learns the shifted copy through a streaming window: its loss falls well below the
    first step's (log(vocab) at the start)."""
    r = _run_model("--attn", EXAMPLES / "streaming.attn", "-D", "w=16", "--backend", "triton",
                   "--steps", 40, "--n", 64, "--batch", 8)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = _losses(r.stdout)
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses), r.stdout
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses


def test_model_picks_each_layers_attention_from_a_stack(tmp_path):
    """A stack module in the model: block i takes layer(i)'s attention, and the stack sets the depth."""
    src = tmp_path / "s.attn"
    src.write_text("stack s = [causal & local(7), causal] * 2\n")
    out = tmp_path / "s_ref.py"
    out.write_text(patternc.compile(patternc.parse(src), "reference"))
    r = _run_model("--module", out, "--steps", 3, "--n", 64, "--batch", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stack 's' of 4 layers" in r.stdout and "layers=4" in r.stdout
    losses = _losses(r.stdout)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), r.stdout


def test_model_trains_with_compiled_file(tmp_path):
    out = tmp_path / "per_head_ref.py"
    out.write_text(patternc.compile(patternc.parse(EXAMPLES / "per_head.attn"), "reference"))
    r = _run_model("--module", out, "--steps", 3, "--n", 64, "--batch", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "using its 8 heads" in r.stdout
    losses = _losses(r.stdout)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), r.stdout


def test_select_model_indexer_learns_where_attention_looks():
    """examples/select_model.py, short: the indexer trained on the block mass finds more of the true
    top-mass blocks than it did at the start (as a subprocess: the example runs as users run it)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, str(EXAMPLES / "select_model.py"), "--steps", "40"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    got = [float(x) for x in re.findall(r"overlap with the true top-2 mass blocks (\S+)", r.stdout)]
    assert len(got) == 11 and got[-1] >= got[0] + 0.15 and max(got[-3:]) >= 0.55, r.stdout


def test_language_reference_documents_every_primitive():
    text = (ROOT / "docs" / "language.md").read_text()
    for name in PRIMITIVES:
        assert re.search(rf"^#+ .*`{name}\b", text, re.M), f"docs/language.md has no section for {name}"


def test_docs_pictures_exist_and_are_small():
    docs = ROOT / "docs"
    for md in ("language.md", "tutorial.md", "internals.md", "examples.md"):
        for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (docs / md).read_text()):
            path = docs / ref
            assert path.is_file(), f"docs/{md} shows {ref}, which does not exist (run docs/make_pictures.py)"
            assert path.stat().st_size < 60 * 1024, f"{ref} is larger than 60 KB"


def test_random_hash_test_vectors_in_internals():
    text = (ROOT / "docs" / "internals.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    assert len(rows) >= 5
    for s, qb, t, h in rows:
        assert semantics.random_pick(int(s), int(qb), int(t)) == int(h)
