"""Stacks of layers: the language's `stack`, reach through a stack against boolean matrix
products, the per-layer analysis, the command line, and stack modules on every backend."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import patternc
from patternc import semantics
from patternc.errors import PatternError
from patternc.frontend import Pattern, Stack, parse_program, resolve
from patternc.stack_reach import stack_reach

from conftest import ROOT
from kernel_check import TOL, check_module
from test_walk import run_isolated

PROGRAM = """\
pattern lf(w = 4, g = 2) = local(w) | global(g)
stack inner(k = 2) = lf(8) * k
stack s(w = 3, pairs = 2) = [local(w), causal] * pairs, inner(3), lf, rows_mod(2, 1) | local(0)
"""


def stack_of(src: str = PROGRAM, name=None, **params) -> Stack:
    return resolve(parse_program(src, "<test>"), name, params)


# ---------------------------------------------------------------- the language

def test_layers_repeats_lists_and_other_stacks():
    s = stack_of()
    assert isinstance(s, Stack) and s.name == "s" and dict(s.params) == {"w": "3", "pairs": "2"}
    assert [p.name for p in s.layers] == ["local(3)", "causal", "local(3)", "causal", "lf", "lf", "lf", "lf",
                                          "local(0) | rows_mod(2, 1)"]
    assert s.layer_index == (0, 1, 0, 1, 2, 2, 2, 3, 4)
    assert [dict(p.params) for p in s.distinct[2:4]] == [{"w": "8", "g": "2"}, {"w": "4", "g": "2"}]
    assert s.layers[0] is s.layers[2]  # repeated layers share one Pattern
    assert str(s.layers[4].expr) == "(local(8) | keys(0, 2) | queries(0, 2))"


def test_parameters_set_windows_and_repeat_counts():
    s = stack_of(w=5, pairs=3)
    assert s.num_layers == 11 and str(s.layers[0].expr) == "local(5)"
    nested = stack_of("stack a(k = 1) = [local(1), [causal] * k] * 2\nstack b = a(3), a", "b")
    assert [str(p.expr) for p in nested.layers] == ["local(1)", "causal", "causal", "causal"] * 2 + \
        ["local(1)", "causal"] * 2


def test_the_last_definition_may_be_a_stack():
    s = patternc.parse(PROGRAM)
    assert isinstance(s, Stack) and s.name == "s"
    assert isinstance(patternc.parse(PROGRAM, "lf"), Pattern)
    assert patternc.parse("stack t = causal * 2").num_layers == 2  # source text starting with `stack`


def test_n_dependent_checks_stay_with_their_layer():
    s = stack_of("stack s = causal, local(n - 5)")
    assert not s.layers[0].checks and s.layers[1].checks
    with pytest.raises(PatternError, match="local window must be >= 0"):
        s.layers[1].at(4)


@pytest.mark.parametrize("src, message", [
    ("stack s = local(1) * n", "a repeat count must be a constant"),
    ("stack s = local(1) * (0 - 2)", "a repeat count must be >= 0, got -2"),
    ("stack s = [local(1)] * 0", "stack 's' has no layers"),
    ("stack s = [local(1), causal] * 2049", "stack has more than 4096 layers"),
    ("stack a = b\nstack b = a", "stack 'b' refers to itself (b -> a -> b)"),
    ("stack s = causal * 2\npattern p = s | local(1)", "'s' is a stack of layers, not a pattern"),
    ("stack s = [locl(2)]", "unknown pattern 'locl' (did you mean 'local'?)"),
    ("stack s(k) = causal * k\nstack t = s", "stack 's' needs a value for parameter 'k'"),
    ("stack s = causal, heads { 0..1: causal, 2..2: all }, heads { 0..0: all }", "different head counts (1, 3)"),
    ("stack s = [causal, local(1)", "unexpected end of file"),
])
def test_stack_errors(src, message):
    with pytest.raises(PatternError) as e:
        patternc.parse(src)
    assert message in e.value.message


# ---------------------------------------------------------------- reach against boolean products

def brute(masks: list, index: list, cap: int = 4000) -> tuple:
    """(fewest layers of the stack, fewest layers of the stack repeated) reaching full reach, by
    multiplying the masks out (None: never)."""
    n = masks[0].shape[0]
    causal = all(not np.triu(m, 1).any() for m in masks)
    target = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    R, K, seen = None, 0, set()
    while K < cap:
        for d in index:
            R = masks[d].copy() if R is None else (masks[d].astype(np.float32) @ R.astype(np.float32)) > 0.5
            K += 1
            if (R | ~target).all():
                return (K if K <= len(index) else None), K
        if R.tobytes() in seen:
            return None, None
        seen.add(R.tobytes())
    raise AssertionError("brute force did not settle")


SMALL = ["local(1)", "local(3)", "causal", "causal & local(2)", "global(1)", "block(4)", "block(8) | local(1)",
         "stride(3)", "local(2, dilation=2)", "causal & (local(3) | stride(4))", "band(0, 1)", "band(-1, 0)",
         "local(1) | global(2)", "causal & rows_mod(2, 0) | local(0)", "all", "queries(0, 4) | local(0)",
         "band(1, 2)", "sink(2) | local(0)", "local(2) - local(0)", "random(2, block=4, seed=1) | local(0)",
         "summary(4, 1) | local(0)", "causal & (block(4) | summary(4, 1))", "none", "local(0)", "band(-2, 0)"]


def _random_stack(rng: random.Random, atoms: list, n: int, **params):
    srcs = rng.sample(atoms, rng.randint(1, 3))
    index = [rng.randrange(len(srcs)) for _ in range(rng.randint(1, 5))]
    used = sorted(set(index))
    defaults = ", ".join(f"{k} = {v}" for k, v in params.items())
    exprs = [patternc.parse(f"pattern x({defaults}) = {srcs[d]}").at(n) for d in used]
    return exprs, [used.index(d) for d in index]


@pytest.mark.parametrize("seed", range(4))
def test_reach_matches_boolean_products_at_small_n(seed):
    """Every answer is decided, and equal to multiplying the layers' masks out."""
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.choice([1, 2, 5, 12, 17, 33])
        exprs, index = _random_stack(rng, SMALL, n)
        got = stack_reach(exprs, index, n)
        want = brute([semantics.dense_mask_numpy(e, n) for e in exprs], index)
        assert got.in_stack_decided and got.repeated_decided, got
        assert (got.in_stack, got.repeated) == want, ([str(e) for e in exprs], index, n, got)


WIDE = ["local(w)", "causal & local(w)", "global(2) | local(w)", "block(b)", "block(b) | local(w)",
        "causal & (local(w) | stride(b))", "band(0, w)", "band(-w, 0)", "local(w, dilation=2)", "causal",
        "causal & sink(2) | causal & local(w)", "block(b) | global(1)", "random(2, block=16, seed=3) | block(16)",
        "summary(b, 2) | block(b)", "local(w) | rows_mod(2, 1) & local(3 * w)"]


@pytest.mark.parametrize("seed", range(3))
def test_structural_rules_match_boolean_products(seed):
    """Above the dense limit (n > 1024) the structural rules answer; what they decide is exact."""
    rng = random.Random(100 + seed)
    decided = 0
    for _ in range(8):
        n = rng.choice([1030, 1300])
        exprs, index = _random_stack(rng, WIDE, n, w=rng.choice([n // 5, n // 3 + 1]), b=rng.choice([n // 4, 16]))
        got = stack_reach(exprs, index, n)
        want = brute([semantics.dense_mask_numpy(e, n) for e in exprs], index)
        if got.in_stack_decided:
            assert got.in_stack == want[0], ([str(e) for e in exprs], index, n, got)
        if got.repeated_decided:
            decided += 1
            assert got.repeated == want[1], ([str(e) for e in exprs], index, n, got)
    assert decided >= 4


@pytest.mark.parametrize("srcs, index, n, layers, method", [
    (["causal & local(255)", "causal"], [0, 1] * 13, 65536, 2, "sumsets"),  # Gemma 2: local, then global
    (["causal & local(255)"], [0] * 26, 65536, 257, "differences"),  # windows alone: n / w layers
    (["local(64)", "local(128)", "local(256)"], [0] * 4 + [1] * 4 + [2] * 4, 65536, 441, "interval"),
    (["local(256) | global(16)", "local(512)"], [0, 1] * 6, 65536, 3, "position 0"),
    (["block(4096) | block(2048) & stride(2)", "block(1024)"], [0, 1] * 4, 65536, None, "block of 4096"),
])
def test_long_stacks_are_decided_structurally(srcs, index, n, layers, method):
    exprs = [patternc.parse(f"pattern x = {s}").at(n) for s in srcs]
    got = stack_reach(exprs, index, n)
    assert got.repeated_decided and got.repeated == layers and method in got.method, got
    assert got.in_stack_decided and got.in_stack == (layers if layers is not None and layers <= len(index) else None)


# ---------------------------------------------------------------- the analysis

def test_per_layer_cost_and_totals():
    s = stack_of()
    n = 200
    a = patternc.analyze(s, n, kernel=False)
    counts = [int(semantics.dense_mask_numpy(p.at(n), n).sum()) for p in s.layers]
    d = a.to_dict()
    assert [x["nnz"] for x in d["per_layer"]] == counts and d["nnz"] == sum(counts) == a.nnz
    assert d["flops_fwd"] == sum(4 * c * 128 for c in counts) and d["flops_bwd"] == d["flops_fwd"] * 5 // 2
    assert d["layers"] == 9 and d["distinct_patterns"] == 5 and len(d["patterns"]) == 5
    want = brute([semantics.dense_mask_numpy(p.at(n), n) for p in s.distinct], list(s.layer_index))
    assert (d["full_reach_in_stack"], d["layers_to_full_reach"]) == want and d["reach_decided"]
    table = a.format_table()
    for line in ("stack ", "allowed pairs (nnz)", "full reach in stack", "layers to full reach", "per layer:",
                 "total", "patterns ("):
        assert line in table, line


def test_heads_of_a_stack():
    s = stack_of("stack s = heads { 0..1: local(2), 2..3: causal }, local(4)")
    a = patternc.analyze(s, 64, kernel=False)
    alone = int(semantics.dense_mask_numpy(patternc.parse("pattern x = local(4)").at(64), 64).sum())
    assert a.heads == 4 and a.patterns[1].nnz == 4 * alone  # the plain layer runs on every head
    assert a.nnz == sum(x.nnz for x in a.patterns)


# ---------------------------------------------------------------- the command line

def test_cli_analyze_show_mask_and_check(cli, tmp_path):
    f = ROOT / "examples" / "stacks.attn"
    r = cli("analyze", f, "--n", 8192, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["stack"] == "gemma2" and d["layers"] == 26 and d["full_reach_in_stack"] == 2
    assert d["layers_to_full_reach"] == 2 and d["per_layer"][1]["pattern"] == "causal"
    r = cli("analyze", f, "-p", "growing", "-D", "w=128", "--n", 4096)
    assert r.returncode == 0 and "full reach in stack" in r.stdout and "local(512)" in r.stdout, r.stderr
    r = cli("show", f, "--n", 64, "--tile", 16)
    assert r.returncode == 1 and "pick one with --layer I (0..25)" in r.stderr
    r = cli("show", f, "--n", 64, "--tile", 16, "--layer", 26)
    assert r.returncode == 1 and "has layers 0..25" in r.stderr
    out = tmp_path / "m.npy"
    r = cli("mask", f, "-D", "w=8", "--n", 40, "--layer", 2, "-o", out)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(out), np.tril(np.ones((40, 40), bool)) & ~np.tril(np.ones((40, 40), bool), -8))
    r = cli("check", f)
    assert r.returncode == 0 and "ok (1 pattern: sliding; 2 stacks: growing, gemma2)" in r.stdout


def test_cli_warns_about_a_layer_with_empty_rows(cli, tmp_path):
    f = tmp_path / "s.attn"
    f.write_text("stack s = local(2), local(3) & rows_mod(3, 1)\n")
    r = cli("check", f)
    assert r.returncode == 0 and "layer 1 of stack 's' (local(3) & rows_mod(3, 1)) leaves query rows" in r.stderr
    r = cli("compile", f, "-b", "reference", "-o", tmp_path / "s.py", "--empty-rows", "error")
    assert r.returncode == 1 and "layer 1 of stack 's'" in r.stderr


# ---------------------------------------------------------------- stack modules

STACK_SRC = """\
pattern sliding(w = 12) = causal & local(w - 1)
stack model(w = 12) = [sliding(w), causal] * 2, causal & (local(5) | stride(6)), block(16) & stride(2) & rows_mod(2, 1) | causal & local(0)
"""


@pytest.mark.parametrize("backend", ["reference", "flex", "triton"])
def test_stack_module_matches_each_layer(backend):
    """layer(i) of a stack module is layer i's pattern: forward and backward against the float64
    dense reference (Triton: its kernels under the interpreter)."""
    s = patternc.parse(STACK_SRC)
    if backend == "flex":  # fresh compile caches: torch 2.13's recompile-reason logging can fail on stale guards
        torch._dynamo.reset()
    mod = patternc.load(s, backend=backend)
    assert mod.NUM_LAYERS == 6 and mod.LAYERS == (0, 1, 0, 1, 2, 3)
    assert mod.layer(0) is mod.layer(2) and mod.layer(0) is not mod.layer(1)
    for k, p in enumerate(s.layers):
        if k in (2, 3):
            continue  # the same compiled patterns as layers 0 and 1
        assert torch.equal(mod.mask(37, layer=k), torch.from_numpy(semantics.dense_mask_numpy(p.at(37), 37)))
        if backend != "flex":
            res = check_module(mod.layer(k), p, 37, D=16, H=2, HK=1)
            assert res.lse_ok and res.worst() <= TOL[torch.float32], (k, res)
        else:  # FlexAttention has no backward on the CPU: the forward against the reference module
            q = k_ = v = torch.randn(1, 2, 37, 16)
            ref = patternc.load(p, backend="reference").attention(q.double(), k_.double(), v.double())
            assert (mod.layer(k).attention(q, k_, v) - ref).abs().max() < 1e-4, k
    q = k_ = v = torch.randn(1, 2, 20, 8)
    assert torch.equal(mod.attention(q, k_, v, layer=4), mod.layer(4).attention(q, k_, v))
    with pytest.raises(IndexError, match="layer 6 is outside stack 'model': its layers are 0..5"):
        mod.layer(6)
    with pytest.raises(TypeError, match="layer must be an integer"):
        mod.layer("1")


def test_stack_module_text():
    text = patternc.compile(patternc.parse(STACK_SRC), "triton")
    assert text.count("PATTERN = ") == 1  # the source once, shared by the patterns
    for k in range(4):
        assert f"_l{k}_bound = bind(L{k}_SPEC, \"triton\")" in text and f"def _l{k}_fwd_p0(" in text
    assert "LAYERS = (0, 1, 0, 1, 2, 3)" in text and "layer = _stack.layer" in text
    assert "\nattention = _bound" not in text and "_bound.attention" not in text
    assert patternc.compile(patternc.parse(STACK_SRC), "triton") == text  # deterministic


def test_standalone_stack_module_runs_without_patternc(cli, tmp_path):
    src = tmp_path / "s.attn"
    src.write_text(STACK_SRC)
    r = cli("compile", src, "--standalone", "-o", tmp_path / "sm.py")
    assert r.returncode == 0 and "stack 'model' (6 layers)" in r.stdout, r.stderr
    code = '''
        import torch, sm
        assert not [m for m in sys.modules if m.startswith("patternc")]
        q, k, v = (torch.randn(1, 2, 37, 8, dtype=torch.float64) for _ in range(3))
        for i in range(sm.NUM_LAYERS):
            out = sm.attention(q, k, v, layer=i)
            s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
            ref = torch.softmax(s.masked_fill(~sm.mask(37, layer=i), float("-inf")), -1) @ v
            assert torch.nan_to_num((out - ref).abs()).max() < 1e-10, i
        print("standalone stack ok")
    '''
    r = run_isolated(code, ("patternc",), tmp_path)
    assert r.returncode == 0 and "standalone stack ok" in r.stdout, r.stderr[-3000:]
