"""Fuzzing the front end: whatever the bytes, the answer is a parsed program or one located
PatternError -- never another exception, never a hang, never a huge allocation.

Bounded for CI: PATTERNC_HYPOTHESIS_EXAMPLES (default 20) scales the number of generated cases
(most tests here run 10x or 5x that many, each case takes milliseconds), and the hand-written
hostile corpus runs once per input.  Every front-end run counts its work (tests/work.py): its
calls stay within front_end_budget(len(source)), linear in the input, which catches backtracking
and quadratic or exponential expansion without timing anything.  Run more with
e.g. `PATTERNC_HYPOTHESIS_EXAMPLES=500 pytest tests/test_fuzz.py`.
"""
from __future__ import annotations

import ast
import os
import random
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import patternc
from patternc.api import read_source
from patternc.errors import PatternError
from patternc.frontend import check_program, parse_program, resolve

from work import cli_counted, counted

BASE = int(os.environ.get("PATTERNC_HYPOTHESIS_EXAMPLES", "20"))
# Calls of one front-end run (parse, check, resolve): linear in the source (lark and the checks: at
# most 111 per character measured, the 5,000-position global) plus resolution, which MAX_WORK bounds
# (40,000 nodes: 0.96 million calls measured).  The quadratic normal form of 9,900 positions (107 s)
# made hundreds of millions.
CALLS_PER_CHAR = 300
RESOLVE_CALLS = 2_000_000
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
EXAMPLE_SOURCES = [p.read_text() for p in EXAMPLES] or ["pattern p(w = 4) = causal & local(w)\n"]

HEAD_LOCATED = re.compile(r"(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>\S.*)")
HEAD_PLAIN = re.compile(r"(?P<file>.+?): (?P<msg>\S.*)")


def bounded(factor: int = 1):
    return settings(max_examples=max(1, BASE * factor), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- the oracle of "clean"

def assert_clean_error(e: PatternError, source: str, filename: str) -> None:
    """One line `FILE:LINE:COL: message` (or `FILE: message`), a position inside the source."""
    text = e.format()
    first = text.split("\n", 1)[0]
    assert first and "\r" not in first, repr(first)
    assert first.isprintable(), repr(first)
    assert e.message.strip(), repr(text)
    assert "Traceback" not in text
    if e.span is None:
        m = HEAD_PLAIN.fullmatch(first)
        assert m and m.group("file").startswith(filename), repr(first)
        return
    m = HEAD_LOCATED.fullmatch(first)
    assert m and m.group("file") == filename, repr(first)
    line, col = int(m.group("line")), int(m.group("col"))
    assert (line, col) == (e.span.line, e.span.column)
    if isinstance(source, bytes):  # read_source: the position of a byte that is not UTF-8
        lines = source.split(b"\n")
    else:
        lines = source.split("\n")
    assert 1 <= line <= max(1, len(lines)), (line, len(lines), first)
    assert 1 <= col <= len(lines[line - 1]) + 2, (col, lines[line - 1][:80], first)


def front_end_budget(size: int) -> int:
    """The most calls a front-end run on `size` characters may make (the constants above)."""
    return RESOLVE_CALLS + CALLS_PER_CHAR * size


def front_end(source: str, filename: str = "fuzz.attn"):
    """Parse, check every definition and resolve the default; returns the patterns or the error.
    Counted: more calls than front_end_budget is a complexity regression."""
    with counted() as work:
        try:
            prog = parse_program(source, filename)
            out = check_program(prog)
            out.append(resolve(prog))
            result = out
        except PatternError as e:
            result = e
    if isinstance(result, PatternError):
        assert_clean_error(result, source, filename)
    assert work.calls < front_end_budget(len(source)), f"front end made {work.calls:,} calls on {source[:120]!r}"
    return result


def compiles(patterns) -> None:
    """A pattern the front end accepts generates a module that is valid Python."""
    if isinstance(patterns, PatternError):
        return
    p = patterns[-1]
    try:
        text = patternc.compile(p, "reference")
    except PatternError as e:  # a located refusal is fine (e.g. a length the backend cannot use)
        assert_clean_error(e, p.source, p.filename)
        return
    ast.parse(text)


# ---------------------------------------------------------------- generated inputs

LOOKALIKES = "\u0430\u0435\u043e\u0441\u0440\u0445\u0455\u0456\u0458\u04bb\uff08\uff09\u2212\u2013\u00a0\u200b" \
             "\u202e\u2028\ufeff\u037e\u01c0\uff5c\u2044"
ALPHABET = "()[]{}|&-+*/%.,:=#_ \t\r\n\f\v0123456789abcdnlsw" + LOOKALIKES + "\x00\x1b\\'\""
TOKENS = ["pattern", "heads", "=", "(", ")", "[", "]", "{", "}", ",", ":", "..", "|", "&", "-", "+", "*",
          "//", "%", "n", "x", "w", "all", "none", "causal", "local", "band", "global", "sink", "queries",
          "keys", "stride", "block", "summary", "fixed", "rows_mod", "random", "isqrt", "cdiv", "min", "max", "lo", "hi",
          "at", "dilation", "seed", "0", "1", "7", "64", "-1", "99999999999999999999", "#c\n", "\n", " ",
          "pattern x =", "pattern f(a, b = 2) =", "\u0430", "\u00a0"]


@bounded(10)
@given(st.binary(max_size=400))
def test_random_bytes_from_a_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "f.attn"
    path.write_bytes(data)
    try:
        with counted() as work:
            source = read_source(str(path))
    except PatternError as e:
        assert_clean_error(e, data, str(path))
        assert "UTF-8" in e.message, e.message
        return
    assert work.calls < 1000 + CALLS_PER_CHAR * len(data), work  # reading: a few calls, whatever the bytes
    front_end(source, str(path))


@bounded(10)
@given(st.text(alphabet=ALPHABET, max_size=300))
def test_random_text(source):
    front_end(source)


@bounded(10)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_soup(source):
    compiles(front_end(source))


@st.composite
def mutated_example(draw):
    """An example file, cut, spliced, duplicated or sprinkled with hostile characters."""
    src = draw(st.sampled_from(EXAMPLE_SOURCES))
    rnd = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    for _ in range(draw(st.integers(1, 4))):
        op = rnd.randrange(7)
        i = rnd.randrange(len(src) + 1)
        j = min(len(src), i + rnd.randrange(1, 40))
        if op == 0:
            src = src[:i]  # truncation
        elif op == 1:
            src = src[:i] + src[j:]  # deletion
        elif op == 2:
            src = src[:i] + src[i:j] * rnd.randrange(2, 5) + src[i:]  # duplication
        elif op == 3:
            src = src[:i] + rnd.choice(TOKENS) + src[i:]  # token insertion
        elif op == 4:
            src = src[:i] + rnd.choice(ALPHABET) + src[i + 1:]  # character replacement
        elif op == 5:
            src = src.replace("\n", rnd.choice(["\r\n", "\r", "\n\t", "\n\x0c"]))
        else:
            src = re.sub(r"\d+", lambda m: rnd.choice([m.group(), "0", "-1", str(2 ** 62), "9" * 30]), src)
    return src


@bounded(5)
@given(mutated_example())
def test_mutated_examples(source):
    compiles(front_end(source))


def test_examples_parse_cleanly():
    """The unmutated seeds of the mutation fuzzer are valid (else the fuzzer tests nothing)."""
    for src in EXAMPLE_SOURCES:
        assert not isinstance(front_end(src), PatternError)


# ---------------------------------------------------------------- the hostile corpus

def _expo(levels: int) -> str:
    """Each pattern uses the previous one twice: 2**levels copies if expanded naively."""
    return "\n".join(["pattern p0 = causal"] + [f"pattern p{i} = p{i - 1} & p{i - 1} | local({i})"
                                                for i in range(1, levels)])


def _expo_args(levels: int) -> str:
    """The same with different arguments each time, so no memoisation can help."""
    return "\n".join(["pattern p0(a) = local(a)"]
                     + [f"pattern p{i}(a) = p{i - 1}(2 * a) | p{i - 1}(2 * a + 1)" for i in range(1, levels)]
                     + [f"pattern top = p{levels - 1}(1)"])


def _balanced(items: list, op: str) -> str:
    """a op b op c ... as a balanced tree, so long expressions stay shallow."""
    while len(items) > 1:
        items = [f"({items[i]} {op} {items[i + 1]})" if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


HOSTILE = {
    # name: (source, substring of the expected error, or None when it must parse)
    "deep_open_parens": ("pattern x = " + "(" * 10000, "nested more than"),
    "deep_balanced_parens": ("pattern x = " + "(" * 10000 + "all" + ")" * 10000, "nested more than"),
    "deep_brackets": ("pattern x = global(at=" + "[" * 5000 + ")", "nested more than"),
    "deep_heads": ("pattern x = " + "heads { 0..0: " * 300, "nested more than"),
    "deep_but_allowed": ("pattern x = " + "(" * 190 + "causal" + ")" * 190, None),
    "unary_minus_chain": ("pattern x = local(" + "-" * 5000 + "1)", "nested too deeply"),
    "long_operator_chain": ("pattern x = " + " | ".join(["local(1)"] * 5000), "tokens"),
    "long_flat_chain_under_token_limit": ("pattern x = " + " | ".join(f"local({i})" for i in range(3500)), None),
    "long_flat_difference_chain": ("pattern x = all - " + " - ".join(f"stride({i + 2})" for i in range(3000)), None),
    "long_alternating_chain": ("pattern x = " + " | ".join(f"local({i}) - stride({i + 2})" for i in range(1000)),
                               "nested too deeply"),
    "integer_chain_too_deep": ("pattern x = local(" + " + ".join(["n"] * 100) + ")", "operators deep"),
    "huge_integer": ("pattern x = local(" + "9" * 100000 + ")", "too large"),
    "integer_just_too_large": (f"pattern x = local({2 ** 62 + 1})", "too large"),
    "integer_at_the_limit": (f"pattern x = local({2 ** 62}) & band(-{2 ** 62}, 0)", None),
    "band_width_overflows": (f"pattern x = band(-{2 ** 62}, {2 ** 62})", "too large"),
    "constant_product_overflow": ("pattern x = local(4000000000 * 4000000000 * 4000000000)", "too large"),
    "runtime_overflow": ("pattern x = local(n * n * n)", "integer overflow"),
    "runtime_overflow_inside": ("pattern x = local(n * n * n * 8 // (n * n))", "integer overflow"),
    "exponential_references": (_expo(80), None),
    "exponential_references_with_arguments": (_expo_args(40), "expands to more than"),
    # long but balanced expressions: each was quadratic in the normal form before (9,900 positions: 107 s)
    "global_with_5000_positions": ("pattern x = global(at=[" + ", ".join(map(str, range(0, 10000, 2))) + "])", None),
    "intersection_of_800_complements": ("pattern x = " + _balanced([f"(all - stride({i + 2}))"
                                                                    for i in range(800)], "&"), None),
    "union_of_800_n_dependent_ranges": ("pattern x = " + _balanced([f"queries(n // {i + 2}, n)"
                                                                    for i in range(800)], "|"), None),
    "self_recursion": ("pattern a = a | causal", "refers to itself"),
    "mutual_recursion": ("pattern a = b\npattern b = c\npattern c = a", "refers to itself"),
    "many_heads": ("pattern x = heads { 0..99999999: causal }", "heads"),
    "ten_megabytes": ("pattern x = all\n#" + "x" * (10 << 20), "larger than"),
    "one_megabyte_comment": ("pattern x = all\n#" + "x" * ((1 << 20) - 20), None),
    "too_many_tokens": ("pattern x = all\n" + "pattern y = none\n" * 6000, "tokens"),
    "very_long_line": ("pattern x = all" + " " * 500000 + "|", "end of file"),
    "very_long_name": ("pattern " + "a" * 100000 + " = all", "characters long"),
    "very_long_unknown_name": ("pattern x = " + "b" * 100000, "unknown pattern"),
    "nul_byte": ("pattern x = all\x00", "NUL"),
    "nul_in_comment": ("# \x00\npattern x = all", "NUL"),
    "crlf": ("pattern x =\r\n    causal &\r\n    local(3)\r\n", None),
    "lone_cr": ("pattern x =\r causal\r", None),
    # str.splitlines() also splits at these: error positions must count "\n" only, like the parser
    "form_feed_lines_then_eof": ("#\x0c\x0c\x0c\npattern x =\x0c\n\x0c causal &", "end of file"),
    "line_separator_in_comment_then_error": ("# \u2028\u2029\x85\x1c\npattern x = )", "unexpected ')'"),
    "tabs": ("pattern\tx\t=\tlocal(\t3\t)\t", None),
    "vertical_tab": ("pattern x = \x0b causal", "unexpected character"),
    "escape_sequence": ("pattern x = \x1b[31mall", "unexpected character"),
    "cyrillic_a_in_primitive": ("pattern x = loc\u0430l(3)", "CYRILLIC"),
    "cyrillic_name": ("pattern \u0445 = all", "CYRILLIC"),
    "fullwidth_paren": ("pattern x = local\uff083)", "FULLWIDTH"),
    "unicode_minus": ("pattern x = local(\u22123)", "MINUS"),
    "zero_width_space": ("pattern x = local\u200b(3)", "ZERO WIDTH"),
    "bidi_override_in_code": ("pattern x = \u202eall", "RIGHT-TO-LEFT"),
    "bidi_override_in_comment": ("# \u202e evil\npattern x = all", None),
    "bom_in_the_middle": ("pattern x = all\n\ufeffpattern y = none", "unexpected character"),
    "lone_surrogate": ("pattern x = all \ud800", "unexpected character"),
    "python_payload": ("pattern x = __import__('os').system('echo pwned')", "unexpected"),
    "keyword_names": ("pattern import(class = 1, def = 2) = local(class + def)\npattern None = import(3)", None),
    "only_comments": ("# nothing here\n# still nothing\n", "no pattern definitions"),
    "empty": ("", "no pattern definitions"),
    "whitespace": (" \t\r\n\f", "no pattern definitions"),
    "truncated_heads": ("pattern x = heads { 0..3: causal, ", "end of file"),
    "heads_depend_on_n": ("pattern x = heads { 0..n: causal }", "constants"),
    "isqrt_of_negative": ("pattern x = local(isqrt(0 - 5))", "negative"),
    "division_by_zero_in_default": ("pattern x(a = 1 // 0) = local(a)", "division by zero"),
    "random_seed_huge": ("pattern x = random(1, seed=" + "9" * 40 + ")", "too large"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs(name):
    source, expected = HOSTILE[name]
    result = front_end(source, "hostile.attn")  # counted
    tracemalloc.start()  # again, for the peak allocation (tracemalloc slows the parser down)
    try:
        parse_program(source, "hostile.attn")
    except PatternError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * len(source) + (64 << 20), f"peak allocation {peak >> 20} MiB for {len(source)} characters"
    if expected is None:
        assert not isinstance(result, PatternError), result.format()
        compiles(result)
    else:
        assert isinstance(result, PatternError), f"accepted: {source[:100]!r}"
        assert expected in result.message, result.message


@pytest.mark.parametrize("name,data,expected", [
    ("invalid_utf8.attn", b"pattern x = all # \xff\xfe\n", "invalid UTF-8"),
    ("latin1.attn", "pattern x = all # caf\u00e9\n".encode("latin-1"), "invalid UTF-8"),
    ("truncated_utf8.attn", "pattern x = all # \u20ac".encode()[:-1], "invalid UTF-8"),
    ("utf16.attn", "pattern x = all\n".encode("utf-16"), "invalid UTF-8"),
    ("nul.attn", b"pattern x = all\n\x00", "NUL"),
    ("big.attn", b"pattern x = all\n" + b"#" * (10 << 20), "larger than"),
    ("bom.attn", b"\xef\xbb\xbfpattern x = local(3)\r\n", None),
])
def test_files_through_the_api(tmp_path, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    with counted() as work:  # the 10 MiB file is refused by its size, before any per-character work
        try:
            p = patternc.parse(str(path))
        except PatternError as e:
            p = e
    if isinstance(p, PatternError):
        assert expected is not None and expected in p.message, p.format()
        assert_clean_error(p, p.source or data, str(path))
        if "UTF-8" in p.message:
            assert p.span is not None  # the line and column of the bad byte
    else:
        assert expected is None, f"accepted {name}"
        assert p.name == "x"
    assert work.calls < front_end_budget(100), work


def test_error_first_line_stays_one_line_whatever_the_file_name(tmp_path):
    for name in ("a\nb.attn", "tab\tand\rcr.attn", "esc\x1b[2J.attn", 'q"uote\'s.attn'):
        e = PatternError("unexpected ')'", None, "", name)
        assert "\n" not in e.format() and e.format().isprintable(), repr(e.format())
        try:
            parse_program("pattern x = )", name)
        except PatternError as err:
            first = err.format().split("\n", 1)[0]
            assert first.isprintable() and ":1:13: unexpected ')'" in first, first


def test_overrides_are_validated_cleanly():
    prog = parse_program("pattern x(w = 3) = local(w)", "o.attn")
    for overrides, message in [({"w": "1\n2"}, "integer"), ({"w": "9" * 5000}, "integer"),
                               ({"w": 1 << 70}, "too large"), ({"w\nx": 1}, "no parameter")]:
        with pytest.raises(PatternError) as info:
            resolve(prog, None, overrides)
        assert message in info.value.message
        assert "\n" not in info.value.format().split("\n", 1)[0]
        assert info.value.format().split("\n", 1)[0].isprintable()


# ---------------------------------------------------------------- the command line

CLI_CASES = {
    "deep.attn": b"pattern x = " + b"(" * 10000,
    "big.attn": b"pattern x = all\n" + b"#" * (10 << 20),
    "nul.attn": b"pattern x = all\x00\n",
    "utf8.attn": b"pattern x = all\n# \xc3\x28\n",
    "expo.attn": _expo_args(40).encode(),
    "cyrillic.attn": "pattern x = loc\u0430l(3)\n".encode(),
    "overflow.attn": b"pattern x = causal\r\npattern y = local(n * n * n)\r\n",
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_check_on_hostile_files(tmp_path, name):
    (tmp_path / name).write_bytes(CLI_CASES[name])
    r, work = cli_counted("check", name, cwd=tmp_path, timeout=60)
    assert work.calls < front_end_budget(100), work  # each is refused by a limit, before the expensive work
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    first = r.stderr.split("\n", 1)[0]
    assert HEAD_LOCATED.fullmatch(first) and first.startswith(name + ":"), first
