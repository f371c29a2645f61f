"""Loading the Lark grammar (once per process and escape character) and parsing one line with it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import TYPE_CHECKING

from builder.plumbing import tagged
from builder.plumbing.files import write_atomically

if TYPE_CHECKING:  # lark costs ~0.25 s to import: only pay for it when a Dockerfile is parsed
    from lark import Lark, Tree

_ESCAPE_SECTION_START = "// ---------------------------------------------------- escape-dependent"
_ESCAPE_SECTION_END = "// ---------------------------------------------------------------- end of escape-dependent"


class LineSyntaxError(ValueError):
    """The grammar rejected a line; the message says where."""


def grammar_text(escape: str = "\\") -> str:
    """The grammar source, with the escape-dependent section rewritten for ``escape``."""
    from importlib import resources  # 10 ms of imports: only when the grammar is read

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
    """The LALR parser for ESCAPE. Building its tables takes ~60 ms on every run, so they are kept
    in the user's cache directory as tagged JSON (data only: never pickle) and loaded in ~10 ms."""
    import lark
    from lark import Lark

    text = grammar_text(escape)
    key = hashlib.sha256(f"{lark.__version__}\0{text}".encode()).hexdigest()
    path = os.path.join(tables_dir(), f"{key}.json")
    parser = _load_tables(path)
    if parser is None:
        parser = Lark(text, parser="lalr", lexer="contextual", start="start")
        _save_tables(parser, path)
    return parser


def tables_dir() -> str:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "build-image", "grammar")


def _load_tables(path: str) -> Lark | None:
    from lark import Lark

    try:
        with open(path, encoding="utf-8") as f:
            tables = tagged.decode(json.load(f))
        return Lark._load_from_dict(tables["data"], tables["memo"])
    except FileNotFoundError:
        return None
    except Exception:  # a damaged or foreign file: rebuild and overwrite it
        return None


def _save_tables(parser: Lark, path: str) -> None:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = parser.memo_serialize([TerminalDef, Rule])
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, json.dumps(tagged.encode({"data": data, "memo": memo}), separators=(",", ":")).encode())
    except OSError:
        pass  # no writable cache directory: the next run builds the tables again


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
