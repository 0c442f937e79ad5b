"""A Pygments lexer for `.attn` pattern files.

Registered as the Pygments plugin `attn` (see pyproject's `pygments.lexers` entry point), so
`pygmentize -l attn`, Sphinx and MkDocs highlight ```attn code fences.

The word lists are written out here rather than read from the language: Pygments imports
every plugin lexer whenever it looks a lexer up by file name (and by any name it does not
ship), so this module should cost little to import (about 1 ms).  Reading the keywords from
grammar/attn.lark would add lark and a parser build (about 130 ms), and the primitives from
the front end would tie the lexer to it.  tests/test_editor.py checks the lists against
grammar/attn.lark and `patternc.frontend.PRIMITIVES`, so they cannot drift apart.
"""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, default, include, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Whitespace

__all__ = ["AttnLexer", "KEYWORDS", "PRIMITIVES", "FUNCTIONS", "LENGTH"]

KEYWORDS = ("pattern", "stack", "heads")
PRIMITIVES = ("all", "none", "causal", "local", "band", "global", "sink", "queries", "keys",
              "stride", "block", "summary", "fixed", "rows_mod", "random", "select")
FUNCTIONS = ("min", "max", "isqrt", "cdiv")  # integer functions (patternc.intexpr.FUNCS)
LENGTH = "n"  # the sequence length, the one predefined integer name

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class AttnLexer(RegexLexer):
    """Lexer for patternc's attention-pattern language.

    A definition `pattern NAME(PARAM = DEFAULT, ...) = EXPRESSION` (or `stack NAME(...) =
    LAYERS`) gets its name as a function name and its parameters as variables; named arguments
    in calls (`block=b`) are marked the same way.  Everything else is words, integers, operators and punctuation, and
    a character the language does not use is an error token.
    """

    name = "Attn"
    aliases = ["attn"]
    filenames = ["*.attn"]
    mimetypes = ["text/x-attn"]

    tokens = {
        "root": [
            include("space"),
            (r"(pattern|stack)\b", Keyword.Declaration, "defname"),
            include("expression"),
        ],
        "space": [
            (r"\s+", Whitespace),
            (r"#[^\n]*", Comment.Single),
        ],
        # After `pattern` or `stack`: the definition's name, then an optional parameter list.
        "defname": [
            include("space"),
            (_NAME, Name.Function, ("#pop", "defparams")),
            default("#pop"),
        ],
        "defparams": [
            include("space"),
            (r"\(", Punctuation, ("#pop", "params")),
            default("#pop"),
        ],
        "params": [
            include("space"),
            (_NAME, Name.Variable),
            (r",", Punctuation),
            (r"\)", Punctuation, "#pop"),
            (r"=", Operator, "paramdefault"),
        ],
        # A default value runs to the next ',' or ')' outside parentheses.
        "paramdefault": [
            include("space"),
            (r",", Punctuation, "#pop"),
            (r"\)", Punctuation, "#pop:2"),
            (r"\(", Punctuation, "parens"),
            include("expression"),
        ],
        "parens": [
            include("space"),
            (r"\(", Punctuation, "#push"),
            (r"\)", Punctuation, "#pop"),
            include("expression"),
        ],
        "expression": [
            include("space"),
            (words(KEYWORDS, suffix=r"\b"), Keyword),
            (r"(" + _NAME + r")(\s*)(=)", bygroups(Name.Variable, Whitespace, Operator)),
            (words(PRIMITIVES, suffix=r"\b"), Name.Builtin),
            (words(FUNCTIONS, suffix=r"\b"), Name.Builtin),
            (LENGTH + r"\b", Name.Builtin.Pseudo),
            (_NAME, Name),
            (r"[0-9]+", Number.Integer),
            (r"//|\.\.|[-|&+*%=]", Operator),
            (r"[()\[\]{},:]", Punctuation),
        ],
    }
