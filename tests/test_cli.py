"""The `patternc` command, run for real in subprocesses: exit codes, messages, files."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from patternc import semantics

from conftest import ROOT, resolve_source, run_patternc
from work import cli_counted

MALFORMED = Path(__file__).resolve().parent / "malformed"
# Files that cannot carry an `# expect:` line of their own.
EXPECT_TABLE = {"empty.attn": (1, 1, "no pattern definitions")}

PROGRAM = """\
# three patterns: a plain one, one with parameters, one per head
pattern sliding = causal & local(5)
pattern strided(w = 4, s = isqrt(n)) = causal & (local(w) | stride(s))
pattern mixed = heads { 0..1: causal & local(3), 2..3: random(2, block=4, seed=1) | sink(n // 8) }
"""

HAS_ANALYSIS = importlib.util.find_spec("patternc.analysis") is not None


@pytest.fixture
def program(tmp_path) -> Path:
    p = tmp_path / "prog.attn"
    p.write_text(PROGRAM)
    return p


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stderr


# ---------------------------------------------------------------- check: the malformed suite

def expectation(path: Path) -> tuple:
    if path.name in EXPECT_TABLE:
        return EXPECT_TABLE[path.name]
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    m = re.fullmatch(r"# expect: (\d+):(\d+): (.+)", first)
    assert m, f"{path.name}: first line must be '# expect: LINE:COL: message'"
    return int(m.group(1)), int(m.group(2)), m.group(3)


MALFORMED_FILES = sorted(p.name for p in MALFORMED.glob("*.attn"))


@pytest.fixture(scope="module")
def malformed_results() -> dict:
    """Run `patternc check` on every malformed file, a few processes at a time."""
    def run(name):
        return name, run_patternc("check", name, cwd=MALFORMED)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, MALFORMED_FILES))


def test_malformed_suite_is_big_enough():
    assert len(MALFORMED_FILES) >= 25


@pytest.mark.parametrize("name", MALFORMED_FILES)
def test_check_reports_located_error(name, malformed_results):
    line, col, message = expectation(MALFORMED / name)
    r = malformed_results[name]
    no_traceback(r)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{name}:{line}:{col}: "), lines[0]
    assert message in lines[0]
    source_lines = (MALFORMED / name).read_bytes().decode("utf-8", "replace").splitlines()
    if len(lines) >= 3 and len(source_lines[line - 1]) <= 200:  # source line, then a caret under the column
        assert lines[1].strip() == source_lines[line - 1].replace("\x00", "?").strip()
        assert lines[2].index("^") - 4 == col - 1


def test_check_ok(cli, program):
    r = cli("check", program.name, cwd=program.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "prog.attn: ok (3 patterns: sliding, strided, mixed)"
    assert r.stderr == ""


def test_check_names_required_parameters(cli, tmp_path):
    f = tmp_path / "req.attn"
    f.write_text("pattern win(w, g = 2) = local(w) | global(g)\npattern a = win(3)\n")
    r = cli("check", f)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok (2 patterns: win(w), a)")


def test_check_missing_file_and_directory(cli, tmp_path):
    r = cli("check", tmp_path / "nope.attn")
    assert r.returncode == 1 and "no such file" in r.stderr
    r = cli("check", tmp_path)
    assert r.returncode == 1 and "is a directory" in r.stderr
    no_traceback(r)


# ---------------------------------------------------------------- imports and speed

def test_check_and_compile_do_not_import_torch(program, tmp_path):
    """Runs main() in a fresh interpreter and inspects sys.modules afterwards.  `check` stays
    quick by importing little: catches it loading sympy (the formulas' import, ~0.5 s) or torch,
    or its module count (274 with numpy) growing by half."""
    out = tmp_path / "gen.py"
    code = f"""
import sys
from patternc.cli import main
rc1 = main(["check", {str(program)!r}])
check_modules = len(sys.modules)
check_heavy = sorted(m for m in ("sympy", "torch") if m in sys.modules)
rc2 = main(["compile", {str(program)!r}, "--backend", "reference", "-o", {str(out)!r}])
heavy = sorted(m for m in ("torch", "triton", "matplotlib") if m in sys.modules)
print("RESULT", rc1, rc2, ",".join(heavy) or "-", ",".join(check_heavy) or "-", check_modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    res = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert res, r.stderr
    _, rc1, rc2, heavy, check_heavy, check_modules = res[0].split()
    assert (rc1, rc2) == ("0", "0"), r.stderr
    assert heavy == "-", f"imported {heavy}"
    assert check_heavy == "-" and int(check_modules) < 400, (check_heavy, check_modules)


# ---------------------------------------------------------------- -D, --pattern and usage errors

@pytest.mark.parametrize("args,message", [
    (["-D", "x=3"], "has no parameter 'x'"),
    (["-D", "w=abc"], "w=abc: value must be an integer"),
    (["-D", "w"], "expected NAME=VALUE"),
    (["-D", "w=1", "-D", "w=2"], "-D w is given twice"),
    (["-D", "w=-4"], "local window must be >= 0"),
    (["-p", "strided2"], "no pattern named 'strided2' (did you mean 'strided'?)"),
    (["-b", "tritn"], "unknown backend 'tritn' (did you mean 'triton'?)"),
])
def test_bad_options_are_clean_errors(cli, program, tmp_path, args, message):
    out = tmp_path / "out.py"
    extra = [] if "-p" in args else ["-p", "strided"]
    backend = [] if "-b" in args else ["-b", "reference"]
    r = cli("compile", program, *extra, *backend, *args, "-o", out)
    no_traceback(r)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr.splitlines()[0]
    assert not out.exists()


def test_usage_errors_and_version(cli, program):
    r = cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"patternc \d+\.\d+\.\d+\S*", r.stdout.strip())
    r = cli("analyze", program)  # --n is required
    assert r.returncode == 2 and "--n" in r.stderr
    no_traceback(r)
    r = cli("mask", program, "--n", "0")
    assert r.returncode == 2 and "--n must be >= 1" in r.stderr
    r = cli("frobnicate")
    assert r.returncode == 2
    no_traceback(r)


def test_internal_errors_are_one_line(monkeypatch, capsys, program):
    from patternc import cli as cli_mod

    def boom(args):
        raise ZeroDivisionError("something broke\nsecond line")

    monkeypatch.setattr(cli_mod, "cmd_check", boom)
    monkeypatch.delenv("PATTERNC_DEBUG", raising=False)
    assert cli_mod.main(["check", str(program)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("patternc: internal error: ZeroDivisionError: something broke")
    monkeypatch.setenv("PATTERNC_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli_mod.main(["check", str(program)])


# ---------------------------------------------------------------- mask

def test_mask_matches_semantics(cli, program, tmp_path):
    out = tmp_path / "m.npy"
    r = cli("mask", program, "-p", "strided", "--n", 45, "-D", "w=3", "-o", out)
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    p = resolve_source(PROGRAM, "strided", w=3)
    want = semantics.dense_mask_numpy(p.at(45), 45)
    assert got.dtype == bool and got.shape == (45, 45)
    np.testing.assert_array_equal(got, want)


def test_mask_per_head(cli, program, tmp_path):
    p = resolve_source(PROGRAM, "mixed")
    r = cli("mask", program, "--n", 20, "-o", tmp_path / "all.npy")
    assert r.returncode == 0, r.stderr
    allh = np.load(tmp_path / "all.npy")
    assert allh.shape == (4, 20, 20)
    for h in range(4):
        np.testing.assert_array_equal(allh[h], semantics.dense_mask_numpy(p.at(20), 20, head=h))
    r = cli("mask", program, "--n", 20, "--head", 3, "-o", tmp_path / "h3.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "h3.npy"), allh[3])
    r = cli("mask", program, "--n", 20, "--head", 4, "-o", tmp_path / "h4.npy")
    assert r.returncode == 1 and "heads 0..3" in r.stderr and not (tmp_path / "h4.npy").exists()


def test_mask_refuses_huge_n(cli, program, tmp_path):
    r = cli("mask", program, "--n", 40000, "-o", tmp_path / "big.npy")
    assert r.returncode == 1 and "too large for a dense mask" in r.stderr
    assert not (tmp_path / "big.npy").exists()


def test_mask_reports_n_dependent_check(cli, tmp_path):
    f = tmp_path / "late.attn"
    f.write_text("pattern a = causal\npattern b = local(n - 10)\n")
    r = cli("mask", f, "--n", 5, "-o", tmp_path / "x.npy")
    assert r.returncode == 1
    assert r.stderr.startswith(f"{f}:2:19: ") and "n=5" in r.stderr.splitlines()[0]


# ---------------------------------------------------------------- show

def test_show_ascii(cli, program):
    r = cli("show", program, "-p", "sliding", "--n", 256, "--tile", 32)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "n=256, tile=32:" in r.stdout
    # causal & local(5) at tile 32: the 8 diagonal tiles and 7 below them are partial, nothing full
    assert "tiles: 0 full, 15 partial, 49 empty of 64" in r.stdout
    picture = [x for x in out if x[:1] in "|+"]
    assert len(picture) >= 64 // 4 and max(len(x) for x in picture) <= 80  # fits a terminal
    tile_rows = out[-8:]
    assert tile_rows[0].strip() == "+......." and tile_rows[-1].strip() == "......++"
    r = cli("show", program, "-p", "mixed", "--n", 64, "--tile", 16, "--head", 2)
    assert r.returncode == 0 and "head 2 of 4" in r.stdout


def test_show_png(cli, program, tmp_path):
    out = tmp_path / "pic.png"
    r = cli("show", program, "-p", "strided", "--n", 300, "--tile", 64, "-o", out)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pic.png", "prog.attn"]  # no temporary file left


# ---------------------------------------------------------------- compile

def _dense_reference(q, k, v, allowed, scale):
    import torch

    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compile_reference_runs(cli, program, tmp_path):
    import torch

    out = tmp_path / "strided_ref.py"
    r = cli("compile", program, "-p", "strided", "-D", "w=3", "--backend", "reference", "-o", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "from patternc.runtime import" in text  # the runtime library (--standalone copies it in)
    mod = _import(out, "strided_ref_test")
    assert mod.PATTERN == PROGRAM and mod.PATTERN_NAME == "strided"
    n = 37
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for _ in range(3))
    got = mod.attention(q, k, v)
    allowed = torch.tensor([[j <= i and (i - j <= 3 or (i - j) % math.isqrt(n) == 0) for j in range(n)]
                            for i in range(n)])
    want = _dense_reference(q, k, v, allowed, 1 / math.sqrt(8))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_compile_is_byte_identical(cli, program, tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    for out in (a, b):
        r = cli("compile", program, "-p", "mixed", "-b", "flex", "-o", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    r = cli("compile", program, "-p", "mixed", "-b", "flex", "-o", "-")
    assert r.returncode == 0 and r.stdout.encode() == a.read_bytes()
    r = cli("compile", program, "-p", "mixed", "-b", "reference", "-o", a)
    assert a.read_bytes() != b.read_bytes()  # the test can see a difference


def test_compile_failures_leave_no_file(cli, program, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern a = causal & lokal(3)\n")
    out = tmp_path / "out.py"
    r = cli("compile", bad, "-b", "reference", "-o", out)
    assert r.returncode == 1 and "did you mean 'local'" in r.stderr and not out.exists()
    out.write_text("previous contents\n")  # a failed compile does not touch an existing output
    r = cli("compile", bad, "-b", "reference", "-o", out)
    assert r.returncode == 1 and out.read_text() == "previous contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.attn", "out.py", "prog.attn"]


@pytest.mark.parametrize("target,message", [
    ("missing_dir/out.py", "does not exist"),
    ("prog.attn/out.py", "does not exist"),  # parent is a file
    (".", "is a directory"),
])
def test_compile_to_unwritable_path(cli, program, target, message):
    before = sorted(p.name for p in program.parent.iterdir())
    r = cli("compile", program, "-b", "reference", "-o", target, cwd=program.parent)
    no_traceback(r)
    assert r.returncode == 1 and message in r.stderr
    assert sorted(p.name for p in program.parent.iterdir()) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_compile_to_read_only_directory(cli, program, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = cli("compile", program, "-b", "reference", "-o", ro / "out.py")
        assert r.returncode == 1 and "cannot write" in r.stderr and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_atomic_write_cleans_up_after_a_failing_writer(tmp_path):
    from patternc.cli import atomic_write
    from patternc.errors import PatternError

    target = tmp_path / "pic.png"

    def failing(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(PatternError) as e:
        atomic_write(str(target), b"", write=failing)
    assert "No space left on device" in e.value.message
    assert list(tmp_path.iterdir()) == []
    atomic_write(str(target), b"complete")
    assert target.read_bytes() == b"complete" and oct(target.stat().st_mode & 0o777) != "0o600"


# ---------------------------------------------------------------- analyze

class _StubAnalysis:
    def __init__(self, empty_rows):
        self.empty = empty_rows

    def to_dict(self):
        return {"nnz": 1, "density": 0.5, "empty_rows": self.empty}

    def format_table(self):
        return "stub table"


def test_analyze_empty_rows_policy(monkeypatch, capsys, tmp_path):
    """In-process with a stub analysis: the empty-row policy belongs to the CLI.  Like check and
    compile, analyze warns by default, refuses with --empty-rows=error, is quiet with =ignore."""
    import patternc.api
    from patternc import cli as cli_mod

    f = tmp_path / "holes.attn"
    f.write_text("pattern a = causal - local(0) - queries(5, 8)\n")  # rows 0 and 5..7 are empty
    monkeypatch.setattr(patternc.api, "analyze", lambda *a, **k: _StubAnalysis(4))
    assert cli_mod.main(["analyze", str(f), "--n", "20"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "stub table"
    assert "warning: 4 query rows of 20 have no allowed key (first: 0, 5, 6, 7)" in err and "--empty-rows" in err
    assert cli_mod.main(["analyze", str(f), "--n", "20", "--empty-rows=error"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "4 query rows of 20 have no allowed key (first: 0, 5, 6, 7)" in err
    assert "warning" not in err
    for quiet in ("--empty-rows=ignore", "--allow-empty-rows"):
        assert cli_mod.main(["analyze", str(f), "--n", "20", quiet]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == "stub table" and err == ""
    assert cli_mod.main(["analyze", str(f), "--n", "20", "--empty-rows=ignore", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["empty_rows"] == 4
    # at a length whose mask is far too big to scan, the rows are still named, quickly
    assert cli_mod.main(["analyze", str(f), "--n", str(10 ** 6), "--empty-rows=error"]) == 1
    assert f"4 query rows of {10 ** 6} have no allowed key (first: 0, 5, 6, 7)" in capsys.readouterr().err
    monkeypatch.setattr(patternc.api, "analyze", lambda *a, **k: _StubAnalysis(0))
    assert cli_mod.main(["analyze", str(f), "--n", "20", "--json", "--empty-rows=error"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not HAS_ANALYSIS, reason="patternc.analysis is not written yet")
def test_analyze_table_and_json(cli, program):
    r = cli("analyze", program, "-p", "strided", "--n", 1024, "--tile", 64)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r = cli("analyze", program, "-p", "strided", "--n", 1024, "--json", "-D", "w=8")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("nnz", "density", "nnz_formula", "flops_fwd", "flops_bwd", "tile_efficiency", "empty_rows",
                "layers_to_full_reach", "metadata_bytes"):
        assert key in data, key
    p = resolve_source(PROGRAM, "strided", w=8)
    assert data["nnz"] == int(semantics.dense_mask_numpy(p.at(1024), 1024).sum())


@pytest.mark.skipif(not HAS_ANALYSIS, reason="patternc.analysis is not written yet")
def test_analyze_empty_rows_for_real(cli, tmp_path):
    f = tmp_path / "holes.attn"
    f.write_text("pattern a = causal - local(0)\n")  # row 0 sees nothing
    r = cli("analyze", f, "--n", 64, "--empty-rows", "error")
    assert r.returncode == 1 and "1 query row of 64 has no allowed key (first: 0)" in r.stderr
    r = cli("analyze", f, "--n", 64)
    assert r.returncode == 0 and "warning: 1 query row of 64 has no allowed key (first: 0)" in r.stderr
    r = cli("analyze", f, "--n", 64, "--json", "--allow-empty-rows")
    assert r.returncode == 0 and r.stderr == ""
    json.loads(r.stdout)


def test_compile_message_escapes_control_characters_in_the_path(cli, program, tmp_path):
    out = tmp_path / "odd\nname.py"
    r = cli("compile", program, "-p", "strided", "-D", "w=3", "--backend", "reference", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    line, = r.stdout.strip().splitlines()  # one line: the newline is shown escaped
    assert "odd\\nname.py" in line


@pytest.mark.parametrize("n", ["2147483648", "99999999999999999999", "4611686018427387905"])
def test_analyze_refuses_lengths_past_its_limit(cli, n):
    """These ran for minutes (19 GB), or ended in `internal error: OverflowError / MemoryError`."""
    r = cli("analyze", ROOT / "examples" / "longformer.attn", "--n", n, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr
    assert f"--n {n} is too large: analyze accepts --n <= 1,073,741,824" in r.stderr


def test_analyze_options_have_limits(cli):
    f = ROOT / "examples" / "longformer.attn"
    for option, value, limit in (("--heads", 65537, "65,536"), ("--tile", 2 ** 31, "1,073,741,824"),
                                 ("--head-dim", 10 ** 30, "65,536")):
        r = cli("analyze", f, "--n", 64, option, value, timeout=60)
        assert r.returncode == 1 and "internal error" not in r.stderr, (option, r.stderr)
        assert f"{option} {value} is too large: analyze accepts {option} <= {limit}" in r.stderr


def test_analyze_at_the_limit_answers_from_the_closed_form():
    """n = 2^30: the closed form gives the counts; what needs per-tile work is skipped, and said.
    Counted (tests/work.py): catches the command walking the 8,388,608 query tiles or the rows
    (millions of calls, or an array per tile: GiBs), or evaluating pairs."""
    r, work = cli_counted("analyze", ROOT / "examples" / "longformer.attn", "--n", 2 ** 30, "--json", cwd=ROOT,
                          memory=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["nnz"] == 545 * 2 ** 30 - 74256 and data["layers_to_full_reach"] == 2
    assert data["tiles"] is None and any(s.startswith("tiles: ") for s in data["skipped"])
    # imports (numpy, sympy, lark) included: 531 thousand calls and 7.4 MiB when measured
    assert work.pairs == 0 and work.calls < 2_000_000 and work.peak_bytes < 64 << 20, work


def test_show_tile_has_a_limit(cli):
    """A huge --tile used to end in `internal error: TypeError`."""
    r = cli("show", ROOT / "examples" / "longformer.attn", "--n", 100, "--tile", 10 ** 20, timeout=60)
    assert r.returncode == 1 and "internal error" not in r.stderr
    assert "--tile 100000000000000000000 is too large: show accepts --tile <= 16384" in r.stderr
