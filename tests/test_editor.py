"""Editor support: the Pygments lexer (patternc/lexer.py) and the TextMate grammar
(grammar/attn.tmLanguage.json) tokenise every example, give the expected classes to the
language's words, and list exactly the keywords of grammar/attn.lark and the primitives of
the front end."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation

from patternc import frontend, intexpr, lexer
from patternc.lexer import AttnLexer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
LARK = (ROOT / "grammar" / "attn.lark").read_text()
TM_GRAMMAR = json.loads((ROOT / "grammar" / "attn.tmLanguage.json").read_text())

# A file that uses every construct of the language, including what no example uses.
EVERYTHING = """\
# a comment
pattern base(w = 256, g = min(16, cdiv(n, 4)), s) =  # parameters, one without default
    causal & (local(w, dilation=2) | global(at=[0, n - 1]) - sink(g))
pattern
  spread  # the name on the next line
  (k = isqrt(n) * 2 // 3 % 5 + max(1, -k)) = band(-k, k) | stride(k) | block(k) | select(4, block=32, qblock=16)
pattern mix = heads {
    0..3: base(s = 4), 4..7: random(2, block=64, seed=1) & summary(128, 8),
    8..8: fixed(16, 2) | queries(0, 10) & keys(5, n) | all - none,
}
pattern every_other = block(64) & stride(2) & rows_mod(2, 1)
stack
  tower  # a stack of layers
  (depth = 4) = [local(64), mix] * depth, every_other * (depth // 2), [spread,]
stack deeper = tower(2), causal
"""


def test_examples_exist():
    assert len(EXAMPLES) >= 5


# ---------------------------------------------------------------- Pygments


def pygments_tokens(text: str) -> list:
    return list(AttnLexer(stripnl=False, ensurenl=False).get_tokens(text))


@pytest.mark.parametrize("path", EXAMPLES + ["EVERYTHING"], ids=lambda p: getattr(p, "name", p))
def test_pygments_lexes_without_errors(path):
    text = EVERYTHING if path == "EVERYTHING" else path.read_text()
    tokens = pygments_tokens(text)
    errors = [value for ttype, value in tokens if ttype in Error]
    assert errors == []
    assert "".join(value for _, value in tokens) == text


def pygments_type(text: str, word: str, occurrence: int = 0):
    """The token type of the `occurrence`-th token whose text is `word`."""
    found = [ttype for ttype, value in pygments_tokens(text) if value == word]
    return found[occurrence]


def test_pygments_token_types():
    text = "pattern p(w = 256, s) = local(w) | window(s) & random(2, block=64) # x\n"
    assert pygments_type(text, "pattern") in Keyword
    assert pygments_type(text, "p") in Name.Function
    assert pygments_type(text, "w", 0) in Name.Variable  # the parameter
    assert pygments_type(text, "s", 0) in Name.Variable  # a parameter without a default
    assert pygments_type(text, "256") in Number.Integer
    assert pygments_type(text, "local") in Name.Builtin
    assert pygments_type(text, "w", 1) is Name  # a use of the parameter
    assert pygments_type(text, "window") is Name  # a user pattern, not a primitive
    assert pygments_type(text, "block") in Name.Variable  # a named argument, not the primitive
    assert pygments_type(text, "|") in Operator
    assert pygments_type(text, "(") in Punctuation
    assert pygments_type(text, "# x") in Comment.Single
    assert pygments_type("pattern q = heads { 0..1: all }", "heads") in Keyword
    stack = "stack t(d = 2) = [local(8), causal] * d, rows_mod(2, 1)"
    assert pygments_type(stack, "stack") in Keyword
    assert pygments_type(stack, "t") in Name.Function
    assert pygments_type(stack, "d", 0) in Name.Variable
    assert pygments_type(stack, "*") in Operator
    assert pygments_type(stack, "[") in Punctuation
    assert pygments_type(stack, "rows_mod") in Name.Builtin
    assert pygments_type("pattern q = local(isqrt(n))", "isqrt") in Name.Builtin
    assert pygments_type("pattern q = local(isqrt(n))", "n") in Name.Builtin.Pseudo


def test_pygments_marks_foreign_characters():
    tokens = pygments_tokens("pattern p = local(1.5) ; causal\n")
    assert [value for ttype, value in tokens if ttype in Error] == [".", ";"]


def test_pygments_default_with_parentheses_ends_at_its_comma():
    text = "pattern p(a = min(1, 2), b = (3), c) = all"
    assert [v for t, v in pygments_tokens(text) if t in Name.Variable] == ["a", "b", "c"]
    assert pygments_type(text, "all") in Name.Builtin  # back in the body after ')' '='


def test_pygmentize_finds_the_lexer_through_the_entry_point(tmp_path):
    """`pygmentize -l attn` works once the package is installed (the entry point, not an import)."""
    src = tmp_path / "p.attn"
    src.write_text("pattern p = local(4) # c\n")
    script = Path(sys.executable).parent / "pygmentize"
    pygmentize = [str(script)] if script.exists() else [sys.executable, "-m", "pygments"]
    out = subprocess.run(pygmentize + ["-l", "attn", "-f", "raw", str(src)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Token.Name.Builtin\t'local'" in out.stdout
    assert "Token.Comment.Single\t'# c'" in out.stdout
    # and by file name, with no -l
    out = subprocess.run(pygmentize + ["-N", str(src)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "attn"


# ---------------------------------------------------------------- TextMate

class _Context:
    """An open begin/end rule (or the file itself: no end)."""

    def __init__(self, rule: dict | None, end: re.Pattern | None, scopes: tuple):
        self.rule, self.end, self.scopes = rule, end, scopes

    @property
    def patterns(self) -> list:
        return (self.rule or TM_GRAMMAR).get("patterns", [])


def _expand(patterns: list) -> list:
    """Resolve includes ('#name', '$self') into the match and begin rules they stand for."""
    out = []
    for p in patterns:
        if "include" in p:
            ref = p["include"]
            target = TM_GRAMMAR if ref == "$self" else TM_GRAMMAR["repository"][ref.lstrip("#")]
            out.extend(_expand([target]) if ("match" in target or "begin" in target)
                       else _expand(target["patterns"]))
        else:
            out.append(p)
    return out


def _captured(scopes: list, m: re.Match, base: tuple, captures: dict) -> None:
    """Give each character of match m the scopes base (+ its capture's name)."""
    for i in range(m.start(), m.end()):
        scopes[i] = base
    for group, cap in sorted(captures.items(), key=lambda kv: int(kv[0])):
        g = int(group)
        if m.start(g) >= 0:
            for i in range(m.start(g), m.end(g)):
                scopes[i] = base + (cap["name"],)


def tm_tokenize(text: str) -> list:
    """Per line, per character: None where no rule matched, else the scope names, outermost first.

    A small TextMate engine, enough for this grammar: lines are matched one at a time (with
    their newline, as editors do); at each position every rule of the innermost open context
    is searched and the earliest match wins, the context's end rule winning ties and the
    first listed rule winning among the others.  Python's re stands in for Oniguruma, which
    is why the grammar keeps to syntax both share.
    """
    stack = [_Context(None, None, (TM_GRAMMAR["scopeName"],))]
    result = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            line += "\n"
        scopes: list = [None] * len(line)
        pos, steps = 0, 0
        while pos < len(line):
            steps += 1
            assert steps < 10 * len(line) + 10, f"no progress at {line!r}:{pos}"
            ctx = stack[-1]
            best = None  # (start, order, kind, rule, match)
            if ctx.end is not None:
                m = ctx.end.search(line, pos)
                if m:
                    best = (m.start(), -1, "end", ctx.rule, m)
            for order, rule in enumerate(_expand(ctx.patterns)):
                m = re.compile(rule.get("match") or rule["begin"]).search(line, pos)
                if m and (best is None or (m.start(), order) < best[:2]):
                    best = (m.start(), order, "match" if "match" in rule else "begin", rule, m)
            if best is None:
                break
            _, _, kind, rule, m = best
            if kind == "match":
                base = ctx.scopes + ((rule["name"],) if "name" in rule else ())
                _captured(scopes, m, base, rule.get("captures", {}))
                if m.end() == m.start():
                    pos += 1
            elif kind == "begin":
                inner = ctx.scopes + ((rule["name"],) if "name" in rule else ())
                _captured(scopes, m, inner, rule.get("beginCaptures", {}))
                stack.append(_Context(rule, re.compile(rule["end"]), inner))
            else:
                _captured(scopes, m, ctx.scopes, rule.get("endCaptures", {}))
                stack.pop()
            pos = max(pos, m.end())
        result.append((line, scopes))
    return result


def tm_problems(text: str) -> list:
    """Every non-space character that no rule covers or that a rule calls invalid."""
    problems = []
    for lineno, (line, scopes) in enumerate(tm_tokenize(text), 1):
        for col, (ch, sc) in enumerate(zip(line, scopes), 1):
            if ch.isspace():
                continue
            if sc is None or any(s.startswith("invalid") for s in sc):
                problems.append(f"{lineno}:{col} {ch!r} {sc}")
    return problems


def tm_scopes(text: str, word: str, occurrence: int = 0) -> tuple:
    """The scopes of the first character of the `occurrence`-th whole-word `word` on line 1."""
    line, scopes = tm_tokenize(text)[0]
    before = r"(?<!\w)" if re.match(r"\w", word) else ""
    after = r"(?!\w)" if re.search(r"\w$", word) else ""
    starts = [m.start() for m in re.finditer(before + re.escape(word) + after, line)]
    return scopes[starts[occurrence]]


@pytest.mark.parametrize("path", EXAMPLES + ["EVERYTHING"], ids=lambda p: getattr(p, "name", p))
def test_textmate_covers_every_example(path):
    text = EVERYTHING if path == "EVERYTHING" else path.read_text()
    assert tm_problems(text) == []


def test_textmate_regexes_are_plain():
    """Only syntax that Oniguruma and Python's re read alike: no named groups, \\h, \\G, \\A..."""
    regexes = [r[k] for r in all_tm_rules() for k in ("match", "begin", "end") if k in r]
    assert len(regexes) > 20
    for rx in regexes:
        re.compile(rx)
        assert not re.search(r"\(\?<?[A-Za-z]|\\[hHGAzZpPkKgQE]|\(\?[imx]", rx), rx


def test_textmate_scopes():
    text = "pattern p(w = 256, s) = local(w) | window(s) & random(2, block=64) # x\n"
    assert "keyword.control.pattern.attn" in tm_scopes(text, "pattern")
    assert "entity.name.function.attn" in tm_scopes(text, "p")
    assert "variable.parameter.attn" in tm_scopes(text, "w", 0)
    assert "variable.parameter.attn" in tm_scopes(text, "s", 0)
    assert "constant.numeric.integer.attn" in tm_scopes(text, "256")
    assert "support.function.primitive.attn" in tm_scopes(text, "local")
    assert "variable.other.attn" in tm_scopes(text, "w", 1)
    assert "variable.other.attn" in tm_scopes(text, "window")
    assert "variable.parameter.attn" in tm_scopes(text, "block")
    assert "keyword.operator.attn" in tm_scopes(text, "|")
    assert "comment.line.number-sign.attn" in tm_scopes(text, "# x")
    assert "comment.line.number-sign.attn" in tm_scopes(text, "x")
    stack = "stack t(d = 2) = [local(8), causal] * d, t2 # x"
    assert "keyword.control.stack.attn" in tm_scopes(stack, "stack")
    assert "entity.name.function.attn" in tm_scopes(stack, "t")
    assert "variable.parameter.attn" in tm_scopes(stack, "d", 0)
    assert "keyword.operator.attn" in tm_scopes(stack, "*")
    assert "punctuation.section.brackets.begin.attn" in tm_scopes(stack, "[")
    assert "variable.other.attn" in tm_scopes(stack, "d", 1)
    assert "support.function.primitive.attn" in tm_scopes("pattern q = rows_mod(2, 1)", "rows_mod")
    heads = "pattern q = heads { 0..1: local(isqrt(n)) }"
    assert "keyword.control.heads.attn" in tm_scopes(heads, "heads")
    assert "keyword.operator.range.attn" in tm_scopes(heads, "..")
    assert "support.function.math.attn" in tm_scopes(heads, "isqrt")
    assert "variable.language.length.attn" in tm_scopes(heads, "n")


def test_textmate_marks_foreign_characters():
    problems = tm_problems("pattern p = local(1.5) ; causal\n")
    assert [p.split()[1] for p in problems] == ["'.'", "';'"]


def test_textmate_default_with_parentheses_ends_at_its_comma():
    text = "pattern p(a = min(1, 2), b = (3), c) = all"
    line, scopes = tm_tokenize(text)[0]
    params = [ch for ch, sc in zip(line, scopes) if sc and sc[-1] == "variable.parameter.attn"]
    assert params == ["a", "b", "c"]
    assert "support.function.primitive.attn" in tm_scopes(text, "all")
    assert not any("meta.definition.attn" in sc for sc in scopes[text.index("all"):] if sc)


# ---------------------------------------------------------------- the word lists cannot drift


def lark_keywords() -> set:
    return set(re.findall(r'"([A-Za-z_]+)"', LARK))


def lark_symbols() -> set:
    return {s for s in re.findall(r'"([^"A-Za-z0-9_\s]+)"', LARK)}


def all_tm_rules() -> list:
    rules, todo = [], [TM_GRAMMAR] + list(TM_GRAMMAR["repository"].values())
    while todo:
        rule = todo.pop()
        rules.append(rule)
        todo.extend(rule.get("patterns", []))
    return rules


def tm_words(scope: str) -> set:
    """The words of the `\\b(a|b|c)\\b` rule with this scope."""
    rules = [p for p in TM_GRAMMAR["repository"]["expression"]["patterns"] if p.get("name") == scope]
    assert len(rules) == 1, scope
    return set(re.fullmatch(r"\\b\((.*)\)\\b", rules[0]["match"]).group(1).split("|"))


def test_lists_match_the_language():
    assert lark_keywords() == {"pattern", "stack", "heads"}  # the grammar as this test knows it
    assert set(lexer.KEYWORDS) == lark_keywords()
    assert set(lexer.PRIMITIVES) == set(frontend.PRIMITIVES)
    assert len(lexer.PRIMITIVES) == len(frontend.PRIMITIVES)
    assert set(lexer.FUNCTIONS) == set(intexpr.FUNCS) == set(frontend.FUNCTIONS)
    assert tm_words("support.function.primitive.attn") == set(frontend.PRIMITIVES)
    assert tm_words("support.function.math.attn") == set(intexpr.FUNCS)
    assert tm_words("variable.language.length.attn") == {lexer.LENGTH}
    tm_keywords = set()
    for rule in all_tm_rules():
        scope = rule.get("beginCaptures", {}).get("1", {}).get("name") or rule.get("name", "")
        m = re.fullmatch(r"\\b\((\w+)\)\\b", rule.get("match") or rule.get("begin") or "")
        if m and scope.startswith("keyword."):
            tm_keywords.add(m.group(1))
    assert tm_keywords == lark_keywords()


def test_every_keyword_and_symbol_of_the_grammar_is_highlighted():
    """Each quoted word of attn.lark lexes as a keyword, each symbol as an operator or punctuation."""
    for word in lark_keywords():
        assert pygments_tokens(word)[0][0] in Keyword, word
        assert any(s.startswith("keyword.") for s in tm_scopes(f"pattern p = {word}", word)), word
    symbols = lark_symbols()
    assert {"|", "&", "-", "+", "*", "//", "%", "=", "..", "(", ")", ",", "[", "]", "{", "}", ":"} == symbols
    for sym in symbols:
        text = f"pattern p = a {sym} b"
        types = [t for t, v in pygments_tokens(text) if v == sym]
        assert types and (types[-1] in Operator or types[-1] in Punctuation), sym
        line, scopes = tm_tokenize(text)[0]
        sc = scopes[line.rindex(sym)]
        assert sc and any(s.startswith(("keyword.operator", "punctuation")) for s in sc), (sym, sc)
