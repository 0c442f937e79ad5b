"""Code-generation safety: nothing from a .attn file reaches generated code except validated
identifiers, integers and the escaped source text (`PATTERN = '...'`).

Hostile comments, file names and names are compiled with every backend; the generated module must
parse, must be the *same program* as for a harmless file (only the PATTERN literal and the header
docstring may differ), must give back the source exactly, and must be byte-identical on every
compile, in every process.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import patternc
from patternc.api import BACKENDS
from patternc.errors import PatternError
from patternc.frontend import MAX_NAME, parse_program, resolve

BODY = "causal & (local(w) | stride(isqrt(n)) | random(1, block=16, seed=3))"
PARAMS = "(w = 4)"

# Comment payloads: each tries to end a string literal, a docstring or a line, to smuggle in
# code, template placeholders, format fields or look-alike characters.
PAYLOADS = [
    '"""; import os; os.system("echo pwned"); """',
    "'''; __import__('os').system('echo pwned'); '''",
    "\\n import os; os.system('echo pwned')  # a literal backslash-n",
    "\\", "\\\\'", "\\x00 \\u0000 \\N{BELL}",
    "$header $kernels ${pattern_source} $$ {pattern_name} {0} %s %(x)s",
    "'kept': lambda n, A: _a0 + __import__('os').getpid() }",  # a regex in the Triton backend matched this
    "@triton.jit\ndef",  # (the newline ends the comment: this one is split over two comment lines below)
    "\u202e\u2066 trojan source: bidi overrides \u2069",
    "\u0430\u0435\u043e Cyrillic look-alikes, \uff08fullwidth\uff09, emoji \U0001F600",
    "\u2028 line separator, \u0085 next line, \x0c form feed, \x0b vertical tab",
    "\r lone carriage return",
    "</script><!-- -->",
]
MARKERS = ["pwned", "os.system", "__import__", "getpid", "trojan", "Cyrillic", "</script>", "\u202e", "\u0430",
           "$header", "echo ", "look-alikes", "backslash-n"]


def _comment_block() -> str:
    lines = []
    for p in PAYLOADS:
        for part in p.split("\n"):
            lines.append("# " + part)
    return "\n".join(lines) + "\n"


HOSTILE_SOURCE = (_comment_block() + f"pattern hostile{PARAMS} =  # {PAYLOADS[0]}\n"
                  f"    {BODY}  # {PAYLOADS[1]}\r\n\t# {PAYLOADS[9]}\n")
PLAIN_SOURCE = f"pattern hostile{PARAMS} = {BODY}\n"


def _pattern(source: str, filename: str = "p.attn"):
    return resolve(parse_program(source, filename))


def _normalised(text: str) -> str:
    """The module's AST with the PATTERN literal and the module docstring blanked out."""
    tree = ast.parse(text)
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body[0].value.value = "<docstring>"
    hits = 0
    for node in body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PATTERN"]:
            node.value = ast.Constant("<source>")
            hits += 1
    assert hits == 1, "PATTERN must be assigned exactly once, at module level"
    return ast.dump(tree)


def _string_constants(text: str) -> list:
    """Every string constant except the PATTERN literal and the module docstring."""
    tree = ast.parse(text)
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PATTERN"]:
            skip.add(id(node.value))
    if tree.body and isinstance(tree.body[0], ast.Expr):
        skip.add(id(tree.body[0].value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in skip]


@pytest.fixture(scope="module")
def hostile():
    p = _pattern(HOSTILE_SOURCE)
    plain = _pattern(PLAIN_SOURCE)
    assert p.expr == plain.expr and p.hash == plain.hash
    return p, plain


@pytest.mark.parametrize("backend", BACKENDS)
def test_comments_never_reach_code(hostile, backend):
    p, plain = hostile
    text = patternc.compile(p, backend)
    assert text.isascii(), "generated modules are ASCII: look-alikes and bidi controls are escaped"
    # the same program as for a file without comments: only the PATTERN literal differs
    assert _normalised(text) == _normalised(patternc.compile(plain, backend))
    for s in _string_constants(text):
        for marker in MARKERS:
            assert marker not in s, (marker, s[:200])
    for line in text.splitlines():  # outside the one PATTERN line no payload appears at all, not even in comments
        if not line.startswith("PATTERN = "):
            assert not any(m in line for m in MARKERS), line[:200]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_module_returns_the_source_exactly(hostile, backend, tmp_path):
    p, _ = hostile
    path = tmp_path / "hostile.attn"
    path.write_bytes(HOSTILE_SOURCE.encode("utf-8"))
    from_file = patternc.parse(str(path))
    assert from_file.source == HOSTILE_SOURCE
    mod = patternc.load(from_file, backend=backend)
    assert mod.PATTERN == HOSTILE_SOURCE
    assert mod.PATTERN.encode("utf-8") == path.read_bytes()  # byte for byte
    assert mod.PATTERN_NAME == "hostile"
    assert mod.mask(40).shape == (40, 40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_is_deterministic(hostile, backend):
    p, _ = hostile
    a = patternc.compile(p, backend)
    b = patternc.compile(_pattern(HOSTILE_SOURCE), backend)
    assert a.encode() == b.encode()


def test_generation_is_identical_across_processes_and_hash_seeds(tmp_path):
    """No set or dict iteration order, address or time leaks into the generated text."""
    src = tmp_path / "p.attn"
    src.write_text(HOSTILE_SOURCE + "pattern g = heads { 0..1: hostile(3) - block(8), 2..3: global(at=[5, 1]) }\n")
    code = ("import sys, patternc\n"
            "p = patternc.parse(sys.argv[1])\n"
            "sys.stdout.write(''.join(patternc.compile(p, b) for b in patternc.api.BACKENDS))\n")
    outs = []
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    assert outs[0] == "".join(patternc.compile(patternc.parse(str(src)), b) for b in BACKENDS).encode()


# ---------------------------------------------------------------- file names

HOSTILE_FILENAMES = [
    'a"""b.attn', "a'''b.attn", "new\nline.attn", "back\\slash\\.attn", "tab\t.attn", "\u0430.attn",
    "\u202eevil.attn", "x\x00y.attn", "$header {x}.attn", "'kept': lambda n, A: _a0 }.attn",
]


@pytest.mark.parametrize("backend,name", [
    (b, n) for b in BACKENDS for n in HOSTILE_FILENAMES])
def test_file_names_only_reach_the_header_docstring(backend, name):
    plain = patternc.compile(_pattern(PLAIN_SOURCE, "plain.attn"), backend)
    text = patternc.compile(_pattern(PLAIN_SOURCE, name), backend)
    assert _normalised(text) == _normalised(plain), name
    doc = ast.get_docstring(ast.parse(text), clean=False)
    # escaped in the text, the file name is given back exactly by the docstring's value
    assert f"source:   {name}\n" in doc, (name, doc[:300])
    header = text[:text.index('"""', 3) + 3]
    assert header.count("\n") == doc.count("\n") - name.count("\n")  # no raw newline from the name


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["a'b", 'a"b', "a\nb", "__import__('os')", "x; import os", "\u0430",
                                  "caf\u00e9", "a-b", "1a", "a.b", "a b"])
def test_names_must_be_ascii_identifiers(name):
    with pytest.raises(PatternError):
        _pattern(f"pattern {name} = all\n")
    with pytest.raises(PatternError):
        _pattern(f"pattern x({name} = 1) = local(1)\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_names_that_are_python_keywords_or_module_globals(backend):
    """Pattern and parameter names are data (PATTERN_NAME), never code: a pattern called
    `attention` or `torch` or `None` shadows nothing in the generated module."""
    src = ("pattern None(import = 1, _a0 = 2, __builtins__ = 3) = local(import + _a0) & stride(__builtins__)\n"
           "pattern __import__ = None(1, 2, 1) | sink(1)\n"
           "pattern torch = __import__\npattern _validate = torch\npattern PATTERN = _validate\n"
           "pattern attention = PATTERN & causal\n")
    p = _pattern(src)
    assert p.name == "attention"
    mod = patternc.load(p, backend=backend)
    assert mod.PATTERN_NAME == "attention" and mod.PATTERN == src
    assert callable(mod.attention) and mod.SPEC.name == "attention"
    import torch

    want = patternc.semantics.dense_mask(p.at(20), 20)
    assert torch.equal(mod.mask(20), want)


def test_very_long_names(tmp_path):
    ok = "n" + "a" * (MAX_NAME - 1)
    p = _pattern(f"pattern {ok}({ok}x = 1) = local({ok}x)\n".replace(f"{ok}x", "w"))
    assert p.name == ok
    mod = patternc.load(p, backend="triton")  # the module file name includes the pattern name
    assert mod.PATTERN_NAME == ok
    with pytest.raises(PatternError, match="characters long"):
        _pattern(f"pattern {ok}b = all\n")
    with pytest.raises(PatternError, match="characters long"):
        _pattern(f"pattern x({ok}b = 1) = all\n")


def test_printed_ir_contains_only_identifiers_and_integers():
    """The IR is printed into headers and comments: only names of the language and integers."""
    import re

    p = _pattern(HOSTILE_SOURCE + "pattern z = hostile(7) - heads { 0..2: block(4), 3..3: none }\n")
    text = str(p.expr)
    assert re.fullmatch(r"[A-Za-z0-9_ ()\[\]{},.:=|&+\-*/%]*", text), text


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_that_looks_like_generated_code_is_kept_verbatim(backend):
    """Regression: with repr() quoting, a comment holding only single quotes went into a double-quoted
    literal unescaped, and the Triton backend's post-pass rewrote `_a0` inside it to `A['_a0']`."""
    src = "# 'kept': lambda n, A: _a0 + 1 }\npattern x = causal & stride(isqrt(n))\n"
    p = _pattern(src)
    text = patternc.compile(p, backend)
    assert "A['_a0'] + 1" not in text
    assert patternc.load(p, backend=backend).PATTERN == src
