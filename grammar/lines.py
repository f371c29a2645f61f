"""The line-oriented layer of the Dockerfile language, as BuildKit's parser reads it.

Parser directives at the top, comments, line continuations and heredoc bodies are all decided line
by line, before (directives, continuations) or after (heredoc bodies) an instruction is parsed, so
they live here rather than in the Lark grammar. :class:`LineReader` hands out logical lines: the
physical lines of one instruction joined with the escape character and comment lines removed.
"""

from __future__ import annotations

import re

from builder.errors import ParseError
from builder.plumbing.records import dataclass

_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*\Z")
_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})
ESCAPE_CHARS = ("\\", "`")


@dataclass(frozen=True)
class LogicalLine:
    text: str  # joined instruction text, leading whitespace of the first line removed
    start_line: int  # 1-based
    end_line: int


def _split_lines(text: str) -> list[str]:
    """Physical lines with their line endings, split on "\\n" only (as BuildKit's scanner)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


class LineReader:
    """Reads a Dockerfile's physical lines into logical lines and heredoc bodies."""

    def __init__(self, text: str, filename: str = "Dockerfile"):
        self.filename = filename
        self._lines = _split_lines(text.removeprefix("\ufeff"))
        self._next = 0  # index of the next physical line to read
        self.directives: list[tuple[str, str]] = []
        self._directives_done = False
        self.escape = "\\"
        self._continuation = self._continuation_regex("\\")

    @property
    def line_number(self) -> int:
        """1-based number of the last physical line read."""
        return self._next

    def _take(self) -> str | None:
        if self._next >= len(self._lines):
            return None
        line = self._lines[self._next]
        self._next += 1
        return line

    def error(self, message: str, line: int | None) -> ParseError:
        return ParseError(message, filename=self.filename, line=line)

    # -- directives -------------------------------------------------------------------------
    @staticmethod
    def _continuation_regex(escape: str) -> re.Pattern[str]:
        # The escape char continues a line when it is the last non-blank character, unless it is
        # itself escaped (BuildKit's regex; a run of three escapes is not special-cased either).
        e = re.escape(escape)
        return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def _directive(self, line: str) -> None:
        """Record ``line`` as a parser directive if directives are still allowed and it is one."""
        if self._directives_done:
            return
        if not line.startswith("#"):
            self._directives_done = True
            return
        match = _DIRECTIVE.match(line[1:].lstrip())
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            self._directives_done = True
            return
        name, value = match.group(1).lower(), match.group(2)
        if any(seen == name for seen, _ in self.directives):
            raise self.error(f"only one {name} parser directive can be used", self._next)
        if name == "escape":
            if value not in ESCAPE_CHARS:
                raise self.error(f"invalid escape token '{value}' does not match ` or \\", self._next)
            self.escape = value
            self._continuation = self._continuation_regex(value)
        self.directives.append((name, value))

    def _trim_continuation(self, text: str) -> tuple[str, bool]:
        """Remove a trailing continuation; the flag says whether the instruction ends here."""
        match = self._continuation.search(text)
        if not match:
            return text, True
        return text[: match.start()] + (match.group(1) or ""), False

    # -- logical lines ----------------------------------------------------------------------
    def next_line(self) -> LogicalLine | None:
        """The next instruction's joined text, or None at the end of the file."""
        while (raw := self._take()) is not None:
            text = _trim_newline(raw).lstrip()
            self._directive(text)
            if _is_comment(text):
                continue
            start = self._next
            text, ended = self._trim_continuation(text)
            if ended and not text:
                continue
            parts = [text]
            while not ended and (raw := self._take()) is not None:
                if _is_comment(raw):
                    continue  # comments inside a continuation are dropped
                text = _trim_newline(raw)
                if not text.strip():
                    continue  # empty continuation lines are skipped (BuildKit only warns)
                text, ended = self._trim_continuation(text)
                parts.append(text)
            return LogicalLine("".join(parts), start, self._next)
        return None

    def read_heredoc(self, name: str, chomp: bool, start_line: int) -> str:
        """Consume physical lines up to the terminator ``name`` and return the body."""
        body: list[str] = []
        while (raw := self._take()) is not None:
            candidate = _trim_newline(raw)
            if chomp:
                candidate = candidate.lstrip("\t")
            if candidate == name:
                return "".join(body)
            body.append(raw)
        raise self.error("unterminated heredoc", start_line)
