"""Finding heredoc markers (``<<EOF``, ``<<-EOF``, ``3<<"EOF"``) the way BuildKit's parser does.

The markers are shell words of the instruction line, found with the quote- and escape-preserving
word splitter; a quoted delimiter (any part of it) turns expansion of the body off.
"""

from __future__ import annotations

import re

from builder.grammar.shellwords import LexOptions, WordSyntaxError, process_words
from builder.plumbing.records import dataclass

_MARKER = re.compile(r"^(\d*)<<(-?)\s*([^<]*)\Z")
_RAW_WORDS = LexOptions(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
_RAW_QUOTES = LexOptions(raw_quotes=True, skip_unset_env=True)
_PLAIN = LexOptions(skip_unset_env=True)


@dataclass(frozen=True)
class HeredocMarker:
    name: str  # the terminator line
    expand: bool  # false when any part of the delimiter was quoted
    chomp: bool  # "<<-": strip leading tabs
    fd: int


def parse_marker(word: str) -> HeredocMarker | None:
    """The heredoc ``word`` starts (``<<EOF``, ``<<-'EOF'``...), or None if it is not one."""
    match = _MARKER.match(word)
    if not match or not match.group(3):
        return None
    fd, dash, rest = match.groups()
    try:
        words = process_words(rest, {}, _PLAIN)
        raw_words = process_words(rest, {}, _RAW_QUOTES)
    except WordSyntaxError:
        return None
    if len(words) != 1 or len(raw_words) != 1:
        return None
    # Quotes survive only in the raw reading: if the counts differ, part of the word was quoted.
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw_words[0].count("'") + raw_words[0].count('"')
    return HeredocMarker(name=words[0], expand=quotes == raw_quotes, chomp=dash == "-", fd=int(fd or 0))


def markers_in_line(line: str) -> list[HeredocMarker]:
    """Every heredoc marker among the shell words of ``line``, in order."""
    if "<<" not in line:
        return []
    try:
        words = process_words(line, {}, _RAW_WORDS)
    except WordSyntaxError:
        return []  # BuildKit ignores lines its word splitter cannot read here
    return [marker for word in words if (marker := parse_marker(word)) is not None]
