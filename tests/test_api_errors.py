"""The Python API's inputs and errors: paths versus source text, parameter values, file names
in every error, and the documentation that help(patternc) shows."""
from __future__ import annotations

import doctest
import os
import pathlib
import pydoc

import numpy as np
import pytest

import patternc
from patternc import api
from patternc.errors import PatternError

SRC = "pattern win(w = 4, g = 2) = local(w) | global(g)\n"


@pytest.fixture
def attn_file(tmp_path):
    f = tmp_path / "win.attn"
    f.write_text(SRC)
    return f


# ---------------------------------------------------------------- paths and source text

def test_a_path_object_a_path_keyword_and_a_path_string_read_the_file(attn_file, monkeypatch):
    for p in (patternc.parse(attn_file), patternc.parse(path=attn_file), patternc.parse(path=str(attn_file)),
              patternc.parse(str(attn_file))):
        assert p.name == "win" and p.filename == str(attn_file) and p.source == SRC
    monkeypatch.chdir(attn_file.parent)
    assert patternc.parse("win.attn", w=8).params == (("w", "8"), ("g", "2"))


@pytest.mark.parametrize("name", ["natten.atn", "sub/dir/window", "patterns.attn", "./win", "C:\\x\\y.attn"])
def test_a_mistyped_file_name_is_no_such_file_not_a_syntax_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PatternError) as e:
        patternc.parse(name)
    assert e.value.filename == name and e.value.span is None
    assert str(e.value).startswith(f"{name}: no such file")
    assert "unexpected" not in str(e.value)


def test_missing_path_objects_and_path_keyword(tmp_path):
    missing = tmp_path / "nope"  # no extension: still a path, because it is a Path
    for call in (lambda: patternc.parse(missing), lambda: patternc.parse(path=str(missing)),
                 lambda: patternc.load(path=missing, backend="reference")):
        with pytest.raises(PatternError) as e:
            call()
        assert str(e.value) == f"{missing}: no such file"


@pytest.mark.parametrize("source", [
    "pattern p = local(n // 2)",  # contains '/', and is source
    "  pattern p = causal",
    "pattern p = local(n // 2",  # broken source with a '/': a syntax error, not "no such file"
    "pattern p = stride(2)\npattern q = p.attn",  # a newline: always source
])
def test_source_text_stays_source(source):
    try:
        p = patternc.parse(source)
        assert p.filename == "<string>"
    except PatternError as e:
        assert e.filename == "<string>" and e.span is not None and "no such file" not in str(e)


def test_path_and_source_together_or_neither_are_type_errors(attn_file):
    with pytest.raises(TypeError, match="not both"):
        patternc.parse(SRC, path=attn_file)
    with pytest.raises(TypeError, match="source text"):
        patternc.parse(42)
    with pytest.raises(TypeError, match="source text"):
        patternc.parse()


# ---------------------------------------------------------------- parameter values

@pytest.mark.parametrize("value,shown", [(64.7, "64.7 (float)"), ("64", "'64' (str)"), (True, "True (bool)"),
                                         (None, "None (NoneType)"), (np.float64(3.0), "(float64)")])
def test_parameters_must_be_integers_in_api_words(value, shown):
    with pytest.raises(PatternError) as e:
        patternc.parse(SRC, w=value)
    msg = e.value.message
    assert msg.startswith("parameter w must be an integer, got ") and msg.endswith(shown), msg
    assert "-D" not in str(e.value)


def test_integer_types_are_accepted_and_other_api_errors_have_no_flag():
    assert patternc.parse(SRC, w=np.int64(8)).params == (("w", "8"), ("g", "2"))
    with pytest.raises(PatternError) as e:
        patternc.parse(SRC, x=1)
    assert e.value.message == "pattern 'win' has no parameter 'x'; its parameters are: w, g"
    with pytest.raises(PatternError) as e:
        patternc.parse(SRC, w=1 << 70)
    assert e.value.message.startswith("parameter w = 1180591620717411303424 is too large")


@pytest.mark.parametrize("define,message", [
    ("w=64.7", "-D w=64.7: value must be an integer"),
    ("x=3", "-D x: pattern 'win' has no parameter 'x'"),
    ("w=" + "9" * 30, "-D w=" + "9" * 30 + ": value is too large"),
])
def test_the_command_line_keeps_its_d_wording(cli, attn_file, define, message):
    r = cli("compile", attn_file, "-D", define, "-b", "reference", "-o", "-")
    assert r.returncode == 1 and r.stderr.startswith(f"{attn_file}: {message}"), r.stderr


# ---------------------------------------------------------------- file names in errors

def test_every_error_names_the_file_the_pattern_came_from(attn_file, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern p = local(3) | stride(0)\n")
    with pytest.raises(PatternError) as e:
        patternc.parse(bad)
    assert str(e.value).startswith(f"{bad}:1:31: stride must be >= 1")
    needs_n = tmp_path / "needs_n.attn"
    needs_n.write_text("pattern p = local(n - 10)\n")
    calls = [
        (lambda: patternc.analyze(attn_file, 0), "sequence length must be a positive integer"),
        (lambda: patternc.analyze(patternc.parse(attn_file), 64, tile=0), "tile size must be >= 1"),
        (lambda: patternc.compile(attn_file, "tritn"), "unknown backend 'tritn' (did you mean 'triton'?)"),
        (lambda: patternc.load(attn_file, backend="cuda"), "unknown backend 'cuda'"),
        (lambda: patternc.analyze(needs_n, 4), "local window must be >= 0"),
        (lambda: patternc.parse(attn_file, "nope"), "no pattern named 'nope'"),
        (lambda: patternc.parse(attn_file, w="x"), "parameter w must be an integer"),
    ]
    for call, message in calls:
        with pytest.raises(PatternError) as e:
            call()
        assert e.value.filename in (str(attn_file), str(needs_n)) and "<string>" not in str(e.value), str(e.value)
        assert message in str(e.value)


# ---------------------------------------------------------------- documentation

def test_help_lists_the_public_api():
    text = pydoc.render_doc(patternc, renderer=pydoc.plaintext)
    functions = "\n" + text.split("\nFUNCTIONS\n", 1)[1]
    for name in ("parse", "analyze", "compile", "load"):
        assert f"\n    {name}(" in functions, name
    assert set(patternc.__all__) == {"parse", "analyze", "compile", "load", "PatternError"}
    for name in patternc.__all__:
        assert name in patternc.__doc__


@pytest.mark.parametrize("fn", [api.parse, api.compile, api.load])
def test_docstrings_give_arguments_errors_and_a_working_example(fn):
    doc = fn.__doc__
    for part in ("Arguments:", "Returns", "Raises PatternError", "Example:", ">>> "):
        assert part in doc, (fn.__name__, part)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    cwd = os.getcwd()
    os.chdir(pathlib.Path(__file__).resolve().parent.parent)  # examples/ paths in the examples
    try:
        for test in finder.find(fn, globs={"pathlib": pathlib}):
            runner.run(test)
    finally:
        os.chdir(cwd)
    assert runner.failures == 0 and runner.tries > 0


def test_module_docstring_example_runs():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder(recurse=False).find(patternc):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
