"""The Triton backend's generated text: what a module holds, that it holds nothing the pattern does
not use, and that its kernels compile for Hopper (sm_90) with the GPU's settings."""
from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

import patternc
from patternc.backends import schedule
from patternc.backends import triton as tb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.attn")))


def compiled(src: str) -> str:
    return patternc.compile(patternc.parse(f"pattern p = {src}"), "triton")


def kernels_of(text: str) -> dict:
    return {chunk.split("(", 1)[0]: chunk for chunk in text.split("\ndef ")[1:]}


def one_line_calls(text: str) -> str:
    """Long calls are continued after commas: one line per call, to read their last arguments."""
    return re.sub(r",\n\s+", ", ", text)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_generated_kernels_hold_only_what_the_pattern_uses(path):
    """No constant conditions (`(True) &`, `if True:`, `& True`), no helper the module does not call,
    no import it does not use, and the module parses."""
    text = patternc.compile(patternc.parse(path), "triton")
    tree = ast.parse(text)
    for dead in ("(True) &", "if True:", "& True", "True &", "if False:", "(False)"):
        assert dead not in text, (path, dead)
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    exported = [n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__"]
    used |= {x.value for e in exported for x in e.elts}  # re-exports (a select pattern's Selection)
    assert not defined - used, (path, defined - used)  # every helper is called or bound
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module != "__future__"
                for a in n.names}
    assert not imported - used, (path, imported - used)


def test_no_random_or_residue_code_without_them():
    text = compiled("local(64) | global(4)")
    for absent in ("random_block", "random_picked", "random_mask", "residue class", "_isqrt", "SEEDED", "REV"):
        assert absent not in text, absent
    assert "_fwd_p0" in text and "_fwd_p1" not in text


def test_longformer_module_size():
    """The runtime is a library: a compiled Longformer is its kernels (forward, dq, dk/dv, decode;
    each whole-sequence kernel carries its packed-sequence prologue, about 15 lines) and a short
    host part."""
    text = patternc.compile(patternc.parse(os.path.join(ROOT, "examples", "longformer.attn")), "triton")
    lines = text.splitlines()
    assert len(lines) < 760, len(lines)
    start = next(i for i, x in enumerate(lines) if x.startswith("PATTERN = "))
    kernels = next(i for i, x in enumerate(lines) if x.startswith("@triton.jit"))
    bound = next(i for i, x in enumerate(lines) if x.startswith("SPEC = "))
    host = (kernels - start) + (len(lines) - bound)
    assert host < 80, host


def test_generated_module_imports_only_torch_triton_and_the_runtime():
    text = patternc.compile(patternc.parse("pattern x = local(16) | global(16) | random(2, block=16, seed=1)"), "triton")
    roots = {line.split()[1].split(".")[0] for line in text.splitlines()
             if line.lstrip().startswith(("import ", "from ")) and "__future__" not in line}
    assert roots <= {"triton", "patternc", "math"}, roots
    mods = {line.split()[1] for line in text.splitlines() if line.startswith("from patternc")}
    assert all(m.startswith("patternc.runtime") for m in mods), mods


def test_passes_never_certified_full_compile_one_masked_loop():
    """A later pass's tiles are never certified full (its mask subtracts earlier passes), so its
    kernels get one masked loop instead of three loops of which two are empty."""
    k = kernels_of(compiled("causal & fixed(16, 3)"))
    for name in ("_dq_p1", "_dkdv_p1"):
        assert k[name].count("# every tile masked") == 1 and "# full tiles\n" not in k[name], name
    fwd = k["_fwd_p0"]  # the fused forward: pass 0 keeps its full-tile loop, pass 1 has one loop
    assert fwd.count("# every tile masked") == 1 and fwd.count("# full tiles\n") == 1


def test_one_interval_kernels_have_one_masked_loop_and_one_full_loop():
    """The partial tiles on both sides of the full run share one loop (less code to compile)."""
    k = kernels_of(compiled("local(40)"))
    for name in ("_fwd_p0", "_dq_p0", "_dkdv_p0"):
        assert k[name].count("# partial tiles, both sides") == 1 and k[name].count("# full tiles\n") == 1, name
        assert k[name].count("_tile(") == 2, name  # one masked and one unmasked call of the tile body


@pytest.mark.parametrize("src", list({"causal | (queries(0, 2048) & keys(0, 2048))": 0,
                                      "causal & (sink(4) | local(1024))": 0, "local(256) | global(16)": 0}))
def test_union_walks_in_the_kernels(src):
    """The kernels walk a union twice exactly where the schedule says so."""
    want = schedule.choose_union_walks(patternc.parse(f"pattern p = {src}"))
    text = compiled(src)
    for kind, two in want.items():
        body = text[text.index(f"def _{kind}_p0("):]
        body = body[:re.search(r"\n(@triton\.jit|# |SPEC)", body).start()]
        assert ("# then the partial tiles" in body) == two, (src, kind)
        assert ("in range(cur, seg):  # full tiles" in body) == (two or kind == "fwd"), (src, kind)


def test_union_walk_switch_forces_one_way(monkeypatch):
    """PATTERNC_UNION_WALK (read when the backend is imported) overrides the per-kernel rule."""
    p = patternc.parse("pattern p = local(256) | global(16)")
    monkeypatch.setattr(tb, "UNION_WALK", "two")
    assert tb.emit(p).count("# then the partial tiles") == 3  # forward, dq, dk/dv
    monkeypatch.setattr(tb, "UNION_WALK", "one")
    assert "# then the partial tiles" not in tb.emit(p)


def test_tma_loads_only_where_positions_are_contiguous():
    """Tokens in order and residue classes may load through TMA (the host passes TMA=2 or False for
    classes); kept key columns (fixed's summary) pin TMA to False."""
    text = one_line_calls(compiled("causal & (local(7) | stride(8))"))
    fwd = [x for x in text.splitlines() if "= fwd_tile(acc" in x]
    assert fwd and all(x.rstrip().endswith("WIDEN, TMA)") for x in fwd)
    # a query-major kernel's own rows (Q, dO): through TMA in the in-order pass only
    rows = [x for x in text.splitlines() if x.strip().startswith(("q = tile_rows", "do = tile_rows"))]
    assert len(rows) == 6 and sum(x.rstrip().endswith("WIDEN, QTMA)") for x in rows) == 3, rows
    # the residue pass's dk/dv kernel never reduces dq through the 4-D descriptor
    dkdv = [x for x in text.splitlines() if "= dkdv_tile(dk" in x]
    assert any(x.rstrip().endswith("FUSED, RED_TMA)") for x in dkdv)
    assert any(x.rstrip().endswith("FUSED, False)") for x in dkdv)
    text = one_line_calls(compiled("causal & fixed(8, 2)"))
    fwd = [x.rstrip() for x in text.splitlines() if "= fwd_tile(acc" in x]
    assert any(x.endswith("WIDEN, TMA)") for x in fwd) and any(x.endswith("WIDEN, False)") for x in fwd)


def test_last_first_tiles_only_where_walks_grow():
    heads = patternc.parse("pattern p = heads { 0..3: local(64), 4..7: causal }")
    text = patternc.compile(heads, "triton")
    assert text.count("if REV:") == 2  # the causal heads' forward and dq kernels
    assert text.count("rev_fwd=True") == 1 and text.count("rev_dq=True") == 1
    assert "if REV:" not in compiled("causal | global(4)")  # split global rows: never last-first


def test_narrow_steps_only_for_few_fixed_columns():
    assert "a step of its own" in compiled("causal & (sink(4) | local(40))")
    assert "a step of its own" not in compiled("local(40) | keys(0, 100)")  # 100 columns: a tile walk


def test_generated_lines_are_short():
    """Code is emitted formatted (no wrapping pass over the text): every line a reader scrolls to."""
    for path in EXAMPLES:
        text = patternc.compile(patternc.parse(path), "triton")
        long = [x for x in text.splitlines() if len(x) > 130 and not x.startswith(("PATTERN = ", "    return ("))
                and "# pairs:" not in x and '"""' not in x]
        assert len(long) <= 6, (path, long[:3])


@pytest.mark.parametrize("name,D", [(x, 64) for x in ("longformer", "strided", "bigbird", "causal", "wide_local",
                                                      "wide_block_fixed")]
                         + [("queries_keys", 128), ("wide_causal_band", 128), ("longformer", 128),
                            ("rows_mod_class", 64), ("wide_rows_mod", 128)])
def test_kernels_compile_for_hopper_without_a_gpu(name, D, tmp_path, monkeypatch):
    """The interpreter accepts code the GPU compiler may reject (TMA descriptors, layouts): compile
    every kernel of a pattern for sm_90 with the ptxas that ships in the Triton wheel, with the
    settings an H100/H200 gets, and check that each fits an SM's shared memory (227 KiB).  At
    D = 128 the backward of a union of terms fits only because each of its walks holds one tile
    loop (two loops in one walk gave dq 256 KiB)."""
    pytest.importorskip("triton")
    from kernel_patterns import PATTERNS

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    src = tmp_path / "p.attn"
    src.write_text(f"pattern p = {PATTERNS[name]}\n")
    script = os.path.join(ROOT, "benchmarks", "compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, script, str(src), "--arch", "90", "--d", str(D), "--n", "4096", "--regs",
                        "--launchers"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {line.split()[1] for line in r.stdout.splitlines() if line.strip()}
    assert {"fwd", "dq", "dkdv", "decode"} <= kinds, r.stdout
    assert "decode combine" in r.stdout and "t=4 paged" in r.stdout, r.stdout
    # the prologue kernel (delta, lse2) runs where no dq kernel does: atomic dq
    assert ("bwd" in kinds) == (name in ("strided", "bigbird")), r.stdout
    if name == "longformer":  # global rows split at this n: the merge and the gradient sums too
        assert {"merge", "add"} <= kinds, r.stdout
    shared = [float(line.split()[-3]) for line in r.stdout.splitlines() if line.endswith("KiB shared")]
    assert shared and max(shared) <= 227, r.stdout
    if name == "longformer" and D == 128:  # 64-row forward tiles over a union: one loop, two programs per SM
        fwd = [float(line.split()[-3]) for line in r.stdout.splitlines() if " fwd " in line]
        assert fwd and max(fwd) <= 113.5, r.stdout
        dq = [float(line.split()[-3]) for line in r.stdout.splitlines() if " dq " in line]
        assert dq and max(dq) <= 161.5, r.stdout
    regs = [int(m) for m in re.findall(r"(\d+) regs, +\d+ B spilled", r.stdout)]
    assert len(regs) == len(shared) and all(0 < x <= 255 for x in regs), r.stdout
    # the launcher source guessed before compiling (the first call's pool) is the compiled one's
    assert r.stdout.count("launcher guessed") == len(shared), r.stdout


def test_residue_class_tma_compiles_for_hopper(tmp_path):
    """class_tma=1: the 5-D class descriptors compile for sm_90 in every kernel of a two-pass
    pattern with atomic dq (strided) at D = 128, within an SM's shared memory."""
    pytest.importorskip("triton")
    src = tmp_path / "p.attn"
    src.write_text("pattern p = causal & (local(isqrt(n) - 1) | stride(isqrt(n)))\n")
    script = os.path.join(ROOT, "benchmarks", "compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PATTERNC_CONFIG="class_tma=1")
    r = subprocess.run([sys.executable, script, str(src), "--arch", "90", "--d", "128", "--n", "4096", "--launchers"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Error" not in r.stdout, r.stdout
    shared = [float(line.split()[-3]) for line in r.stdout.splitlines() if line.endswith("KiB shared")]
    assert len(shared) >= 5 and max(shared) <= 227, r.stdout
    assert r.stdout.count("launcher guessed") == len(shared), r.stdout


@pytest.mark.parametrize("src", ["causal & (local(isqrt(n) - 1) | stride(isqrt(n)))",
                                 "causal & fixed(isqrt(n) + 2, 2) | global(cdiv(n, 100))"])
def test_every_kernel_takes_every_length_argument(src):
    """The launches pass each of SPEC.arg_names by keyword; a kernel whose signature lacks one is a
    KeyError in Triton's binder on a GPU (the interpreter ignores it), so every signature has all."""
    mod = patternc.load(patternc.parse(f"pattern p = {src}"), backend="triton")
    assert mod.SPEC.arg_names
    for case in mod.SPEC.cases:
        for p in case.passes:
            for kernel in (p.fwd, p.dq, p.dkdv):
                if kernel is not None:
                    names = getattr(kernel, "arg_names", None) or kernel.fn.arg_names
                    assert set(mod.SPEC.arg_names) <= set(names), (kernel, names)
