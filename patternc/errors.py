"""User-facing errors: one located line, then the source line and a caret."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Span:
    line: int
    column: int


class PatternError(Exception):
    """A mistake in a .attn file or in how it is used.  Never shown as a traceback."""

    def __init__(self, message: str, span: Optional[Span] = None, source: str = "", filename: str = "<string>"):
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source
        self.filename = filename

    def located(self, filename: Optional[str] = None, source: Optional[str] = None) -> "PatternError":
        """The same error, told which file it came from."""
        return PatternError(self.message, self.span, self.source if source is None else source,
                            filename or self.filename)

    def format(self) -> str:
        if self.span is None:
            return _one_line(f"{self.filename}: {self.message}")
        head = _one_line(f"{self.filename}:{self.span.line}:{self.span.column}: {self.message}")
        lines = self.source.split("\n") if self.source else []  # as the parser counts lines, not splitlines()
        if 1 <= self.span.line <= len(lines):
            text = lines[self.span.line - 1].rstrip("\r")
            if len(text) > 200:  # keep the caret useful on very long lines
                start = max(0, self.span.column - 100)
                text, col = text[start:start + 200], self.span.column - start
            else:
                col = self.span.column
            text = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text)
            caret = "".join("\t" if ch == "\t" else " " for ch in text[: col - 1]) + "^"
            return f"{head}\n    {text}\n    {caret}"
        return head

    def __str__(self) -> str:
        return self.format()


def _one_line(text: str) -> str:
    """The first line of an error stays one line whatever a file name or a -D value holds:
    control characters (newlines, escapes) are spelled out as Python escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
