"""Loading the Lark grammar (once per process and escape character) and parsing one line with it."""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lark costs ~0.25 s to import: only pay for it when a Dockerfile is parsed
    from lark import Lark, Tree

_ESCAPE_SECTION_START = "// ---------------------------------------------------- escape-dependent"
_ESCAPE_SECTION_END = "// ---------------------------------------------------------------- end of escape-dependent"


class LineSyntaxError(ValueError):
    """The grammar rejected a line; the message says where."""


def grammar_text(escape: str = "\\") -> str:
    """The grammar source, with the escape-dependent section rewritten for ``escape``."""
    text = resources.files("builder.grammar").joinpath("dockerfile.lark").read_text(encoding="utf-8")
    if escape == "\\":
        return text
    head, sep, rest = text.partition(_ESCAPE_SECTION_START)
    section, sep_end, tail = rest.partition(_ESCAPE_SECTION_END)
    if not sep or not sep_end:
        raise RuntimeError("dockerfile.lark lost its escape-dependent section markers")
    # In that section "\\" (a regex-escaped backslash) only ever means the escape character.
    return head + sep + section.replace("\\\\", escape) + sep_end + tail


@functools.cache
def _parser(escape: str) -> Lark:
    from lark import Lark

    return Lark(grammar_text(escape), parser="lalr", lexer="contextual", start="start")


def parse_line(text: str, escape: str = "\\") -> Tree:
    """Parse one trimmed logical line into a Lark tree rooted at ``start``."""
    from lark.exceptions import LarkError, UnexpectedInput

    try:
        return _parser(escape).parse(text)
    except UnexpectedInput as err:
        column = getattr(err, "column", None)
        where = f" at column {column}" if isinstance(column, int) and column > 0 else ""
        raise LineSyntaxError(f"syntax error{where}: {text!r}") from None
    except LarkError as err:  # anything else from Lark is still a line it could not read
        raise LineSyntaxError(f"syntax error: {err}") from None
