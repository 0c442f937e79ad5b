"""The exact sparse PyTorch path (patternc.runtime.walk): what a triton-backend module runs where
the kernels do not (a CPU without the interpreter, float64, no Triton at all), and what
`--standalone` modules carry.  Checked against the float64 dense reference and the semantics."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import patternc
from patternc import semantics
from patternc.runtime import walk

from kernel_check import TOL, check_module, make_inputs
from kernel_patterns import PATTERNS, assert_close

WALKED = dict(PATTERNS, per_head_random="heads { 0..0: random(2, block=16, seed=4) | local(3), 1..1: global(5) }",
              n_dependent="causal & (local(isqrt(n)) | stride(isqrt(n)) | summary(isqrt(n), 2))",
              triple="local(3) | stride(5) | summary(7, 2)")


@pytest.fixture
def pytorch_path(monkeypatch):
    """Modules take the PyTorch path (as on a CPU without TRITON_INTERPRET)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def load(src: str):
    p = patternc.parse(f"pattern x = {src}")
    return p, patternc.load(p, backend="triton")


@pytest.mark.parametrize("name", sorted(WALKED))
def test_walk_matches_the_float64_reference(name, pytorch_path):
    p, mod = load(WALKED[name])
    H = p.num_heads or 2
    for n in (4 if name == "n_dependent" else 1, 47, 131):  # summary(isqrt(n), 2) needs n >= 4
        assert_close(check_module(mod, p, n, D=8, H=H, HK=1, seed=n))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_walk_dtypes_and_gqa(dtype, pytorch_path):
    p, mod = load(PATTERNS["bigbird"])
    res = check_module(mod, p, 90, D=24, B=2, H=4, HK=2, dtype=dtype)
    if dtype == torch.float64:  # computed in float64 (the harness hands gradients back through float32)
        assert res.lse_ok and res.out < 1e-12 and res.worst() < 1e-6, res
    else:
        assert_close(res, dtype)


def test_walk_runs_where_kernels_would_not(monkeypatch):
    """Even under the interpreter, float64 inputs and D > 256 take the PyTorch path (the kernels
    take fp16, bf16 and fp32 up to D = 256): every backend accepts the same inputs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    p, mod = load("local(5) | global(2)")
    assert_close(check_module(mod, p, 40, D=300, H=1, HK=1))
    res = check_module(mod, p, 40, D=8, H=1, HK=1, dtype=torch.float64)
    assert res.lse_ok and res.out < 1e-12 and res.worst() < 1e-6


@pytest.mark.parametrize("name", ["longformer", "strided", "fixed", "bigbird", "heads", "dilated", "sink", "rows_mod",
                                  "rows_mod_class", "longnet_heads"])
def test_each_tile_gathers_every_allowed_key(name):
    """Brute force: for every query tile of every pass, the gathered keys hold every key that the
    pass's rows may attend (the walk is exact only if nothing allowed is left out)."""
    p, mod = load(WALKED[name])
    n = 173
    e = p.at(n)
    H = p.num_heads or 1
    for h in range(H):
        full = np.broadcast_to(semantics.allowed(e.for_head(h) if p.num_heads else e, np.arange(n)[:, None],
                                                 np.arange(n)[None, :], n), (n, n))
        covered = np.zeros((n, n), dtype=bool)
        A = mod.SPEC.length_args(n)
        for case in mod.SPEC.cases:
            if not case.first <= h <= (case.last if case.last is not None else H - 1):
                continue
            for ps in case.passes:
                for a0, a1, r, lq, lk in walk.query_tiles(ps, n, A, 16):
                    keys = walk.tile_keys(ps, a0, a1, r, n, lq, lk, A, "cpu").numpy()
                    rows = walk.positions(ps, torch.arange(a0, a1 + 1), r, A, query=True).numpy()
                    covered[np.ix_(rows, keys)] = True
        assert not (full & ~covered).any(), (name, h)


def test_walk_multiplies_only_rows_that_take_part():
    """rows_mod(4, 1): a quarter of each query tile's rows take part, and only they are multiplied;
    the strided class form walks one residue class of four."""
    n = 100
    for src in ("local(8) & rows_mod(4, 1)", "block(32) & stride(4) & rows_mod(4, 1)"):
        p, mod = load(src)
        rows = torch.cat([step[2] for step in walk._walk_steps(mod.SPEC, n, 1, "cpu", walk.TILE)])
        assert sorted(rows.tolist()) == list(range(1, n, 4)), src


def test_walk_cost_is_linear_for_windows():
    """The keys a local(w) walk gathers grow like n (tile + 2w per tile), not n^2."""
    p, mod = load("local(64) | global(4)")
    gathered = {}
    for n in (2048, 8192):
        A = mod.SPEC.length_args(n)
        ps = mod.SPEC.cases[0].passes[0]
        total = sum(walk.tile_keys(ps, a0, a1, r, n, lq, lk, A, "cpu").numel()
                    for a0, a1, r, lq, lk in walk.query_tiles(ps, n, A, walk.TILE) if a0 >= 64)
        gathered[n] = total
    assert gathered[8192] < 4.3 * gathered[2048]
    assert gathered[8192] <= (8192 // walk.TILE) * (walk.TILE + 2 * 64 + 4)


def test_readme_example_runs_without_a_gpu(pytorch_path):
    """The README's CPU snippet, at the size it shows."""
    p, mod = load("local(256) | global(16)")
    q, k, v = (torch.randn(1, 4, 4096, 64, requires_grad=True) for _ in range(3))
    out = mod.attention(q, k, v)
    out.sum().backward()
    assert out.shape == (1, 4, 4096, 64) and torch.isfinite(q.grad).all()


BLOCK_TRITON = textwrap.dedent('''
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
''')


def run_isolated(code: str, blocked: tuple, tmp_path, env=None) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(f"BLOCKED = {blocked!r}\n" + BLOCK_TRITON + textwrap.dedent(code))
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=full_env, timeout=300)


def test_triton_module_imports_and_runs_without_triton(tmp_path):
    """A triton-backend module imports, and runs its exact PyTorch path, where Triton is not installed."""
    (tmp_path / "lf.py").write_text(patternc.compile(patternc.parse("pattern x = local(8) | global(2)"), "triton"))
    r = run_isolated('''
        import torch, lf
        assert "triton" not in sys.modules
        q, k, v = (torch.randn(1, 2, 40, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
        out = lf.attention(q, k, v)
        s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
        keep = lf.mask(40)
        ref = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
        assert (out - ref).abs().max() < 1e-10
        out.sum().backward()
        print("ran without triton")
    ''', ("triton",), tmp_path)
    assert r.returncode == 0 and "ran without triton" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("backend", ["triton", "reference", "flex"])
def test_standalone_module_runs_without_patternc(backend, tmp_path, cli):
    """`patternc compile --standalone` writes a module that imports only torch, triton and the standard
    library, and runs with patternc uninstalled."""
    src = tmp_path / "p.attn"
    src.write_text("pattern p = causal & (local(6) | stride(5) | random(1, block=16, seed=2))\n")
    out = tmp_path / "sa.py"
    r = cli("compile", src, "--standalone", "-b", backend, "-o", out)
    assert r.returncode == 0 and "standalone" in r.stdout, r.stderr
    text = out.read_text()
    roots = {line.split()[1].split(".")[0] for line in text.splitlines()
             if line.lstrip().startswith(("import ", "from ")) and "__future__" not in line}
    allowed = {"torch", "triton", "math", "os", "json", "time", "typing", "dataclasses", "functools", "concurrent",
               "weakref"}
    lazy = {"transformers"}  # imported inside register_hf / hf_cache only, never at import time
    assert "patternc" not in roots and roots <= allowed | lazy, roots
    assert not any(line.startswith(("import transformers", "from transformers")) for line in text.splitlines())
    code = '''
        import torch, sa
        assert not [m for m in sys.modules if m.startswith("patternc")]
        q, k, v = (torch.randn(1, 2, 37, 8, dtype=torch.float64) for _ in range(3))
        out, lse = sa.attention(q, k, v, return_lse=True)
        keep = sa.mask(37)
        s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
        ref = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
        assert (out - ref).abs().max() < 1e-10, (out - ref).abs().max()
        last = sa.decode(q[:, :, -3:], k, v, torch.tensor([37], dtype=torch.int32))
        assert (last - ref[:, :, -3:]).abs().max() < 1e-10, (last - ref[:, :, -3:]).abs().max()
        cache = sa.KVCache(1, 2, 8, dtype=q.dtype, device="cpu")
        steps = [cache.attend(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1]) for i in range(37)]
        assert (torch.cat(steps, 2) - ref).abs().max() < 1e-10
        print("standalone ok")
    '''
    r = run_isolated(code, ("patternc",), tmp_path)
    assert r.returncode == 0 and "standalone ok" in r.stdout, r.stderr[-3000:]
    if backend == "triton":  # and its kernels, under the interpreter
        r = run_isolated(code.replace("torch.float64", "torch.float32").replace("< 1e-10", "< 1e-4"),
                         ("patternc",), tmp_path, env={"TRITON_INTERPRET": "1"})
        assert r.returncode == 0 and "standalone ok" in r.stdout, r.stderr[-3000:]


def test_standalone_refuses_colliding_names(monkeypatch):
    from patternc.backends import standalone as sa
    from patternc.errors import PatternError

    text = patternc.compile(patternc.parse("pattern x = local(3)"), "reference")
    with pytest.raises(PatternError, match="both define"):
        sa.standalone(text + "\n\ndef check_qkv():\n    pass\n")
