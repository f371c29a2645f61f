"""Shell-word processing as BuildKit's ``frontend/dockerfile/shell`` lexer does it.

One small state machine covers every use the Dockerfile language has for it:

* variable expansion of one word (``$V``, ``${V}``, ``${V:-w}``, ``${V#p}``, ``${V/p/r}``...) with
  quote removal, for ENV, COPY, WORKDIR and friends;
* splitting a string into words after expansion (EXPOSE, heredoc detection);
* the "raw" modes the parser needs to find heredoc markers on a line without changing it.

It is deliberately free of Dockerfile knowledge: ``builder.expand`` applies it to instructions.
Errors are :class:`WordSyntaxError` (a ``ValueError``); callers attach file and line.
"""

from __future__ import annotations

import re
from typing import Mapping

from builder.plumbing.records import dataclass

_EOF = ""
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class WordSyntaxError(ValueError):
    """A word that cannot be processed: unbalanced quotes or braces, bad substitution."""


@dataclass(frozen=True)
class LexOptions:
    """How to treat quotes, escapes and unset variables (BuildKit's ``Lex`` switches)."""

    escape: str = "\\"
    raw_quotes: bool = False  # keep quote characters in the result
    raw_escapes: bool = False  # keep escape characters in the result
    skip_process_quotes: bool = False  # quotes are ordinary characters
    skip_unset_env: bool = False  # leave references to unset variables as written


def process_word(word: str, env: Mapping[str, str], options: LexOptions = LexOptions()) -> str:
    """Expand ``word`` and remove its quotes; whitespace is kept (no splitting)."""
    return _Scanner(word, env, options).run()[0]


def process_words(word: str, env: Mapping[str, str], options: LexOptions = LexOptions()) -> list[str]:
    """Expand ``word`` and split the result on unquoted whitespace (BuildKit's ProcessWords)."""
    return _Scanner(word, env, options).run()[1]


class _Words:
    """Accumulates words: unquoted whitespace separates, quoted or escaped text never does."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self._buf: list[str] = []
        self._in_word = False

    def _pending(self) -> bool:
        return any(self._buf)

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self._in_word and self._pending():
                self.words.append("".join(self._buf))
                self._buf.clear()
                self._in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self._buf.append(ch)
        self._in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self._buf.append(text)
        self._in_word = True

    def finish(self) -> list[str]:
        if self._pending():
            self.words.append("".join(self._buf))
            self._buf.clear()
            self._in_word = False
        return self.words


class _Scanner:
    def __init__(self, text: str, env: Mapping[str, str], options: LexOptions):
        self.text = text
        self.pos = 0
        self.env = env
        self.opts = options
        self.escape = options.escape
        self.raw_escapes = options.raw_escapes

    # -- character access -------------------------------------------------------------------
    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    # -- driver -----------------------------------------------------------------------------
    def run(self) -> tuple[str, list[str]]:
        try:
            return self.process_until(_EOF, self.raw_escapes)
        except WordSyntaxError as err:
            raise WordSyntaxError(f"failed to process {_go_quote(self.text)}: {err}") from None

    def process_until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process characters until ``stop`` (consumed) or the end of the text."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._process_until(stop)
        finally:
            self.raw_escapes = saved

    def _process_until(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        quotes = not self.opts.skip_process_quotes
        while (ch := self.peek()) != _EOF:
            if stop and ch == stop:
                self.next()
                return "".join(result), words.finish()
            if ch == "$":
                value = self.process_dollar()
                result.append(value)
                words.add_string(value)  # expanded values are split on whitespace
            elif ch == "<":
                value = self.process_possible_heredoc()
                result.append(value)
                words.add_raw_string(value)
            elif quotes and ch == "'":
                value = self.process_single_quote()
                result.append(value)
                words.add_raw_string(value)
            elif quotes and ch == '"':
                value = self.process_double_quote()
                result.append(value)
                words.add_raw_string(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if ch == _EOF:  # an escape at the very end is dropped
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise WordSyntaxError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    # -- quotes -----------------------------------------------------------------------------
    def process_single_quote(self) -> str:
        # Everything up to the next ' is literal; a ' cannot be escaped inside.
        out: list[str] = []
        opening = self.next()
        if self.opts.raw_quotes:
            out.append(opening)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise WordSyntaxError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.opts.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def process_double_quote(self) -> str:
        # Literal except $ (expanded) and the escape char, which only escapes " $ and itself.
        out: list[str] = []
        opening = self.next()
        if self.opts.raw_quotes:
            out.append(opening)
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise WordSyntaxError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.opts.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.process_dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if following == _EOF:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def process_possible_heredoc(self) -> str:
        # "<<" swallows the whitespace after it, so "<< EOF" stays one word.
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        spaces: list[str] = []
        while self.peek() in ("\t", "\r", " ") and self.peek() != _EOF:
            spaces.append(self.next())
        return "<<" + "".join(spaces)

    # -- parameters -------------------------------------------------------------------------
    def process_name(self) -> str:
        name: list[str] = []
        while (ch := self.peek()) != _EOF:
            if not name and ch.isdigit():
                while self.peek() != _EOF and self.peek().isdigit():
                    name.append(self.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdigit() or ch == "_"):
                break
            name.append(self.next())
        return "".join(name)

    def lookup(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        return ("", False) if value is None else (value, True)

    def process_dollar(self) -> str:
        self.next()  # $
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            value, found = self.lookup(name)
            if not found and self.opts.skip_unset_env:
                return "$" + name
            return value

        self.next()  # {
        ch = self.peek()
        if ch == _EOF:
            raise WordSyntaxError("syntax error: missing '}'")
        if ch in "{}:":
            raise WordSyntaxError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        if ch == _EOF:
            raise WordSyntaxError("syntax error: missing '}'")
        modifier = ch
        null_is_unset = False

        if ch == "}":
            value, found = self.lookup(name)
            if not found and self.opts.skip_unset_env:
                return "${" + name + "}"
            return value

        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        if ch in ("+", "-", "?", "#", "%"):
            pattern_op = ch in ("#", "%")
            if null_is_unset and pattern_op:
                raise WordSyntaxError(f"unsupported modifier ({modifier}) in substitution")
            try:
                word, _ = self.process_until("}", pattern_op)
            except WordSyntaxError:
                if self.peek() == _EOF:
                    raise WordSyntaxError("syntax error: missing '}'") from None
                raise
            value, found = self.lookup(name)
            if self.opts.skip_unset_env and not found:
                return "${" + name + modifier + word + "}"
            empty = not found or (null_is_unset and value == "")
            if ch == "-":
                return word if empty else value
            if ch == "+":
                return "" if empty else word
            if ch == "?":
                if not found:
                    raise WordSyntaxError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise WordSyntaxError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)

        if ch == "/" and not null_is_unset:
            replace_all = self.peek() == "/"
            if replace_all:
                self.next()
            try:
                pattern, _ = self.process_until("/", True)
            except WordSyntaxError:
                if self.peek() == _EOF:
                    raise WordSyntaxError("syntax error: missing '/' in ${}") from None
                raise
            try:
                replacement, _ = self.process_until("}", True)
            except WordSyntaxError:
                if self.peek() == _EOF:
                    raise WordSyntaxError("syntax error: missing '}'") from None
                raise
            value, found = self.lookup(name)
            if self.opts.skip_unset_env and not found:
                return "${" + name + "/" + pattern + "/" + replacement + "}"
            regex = _glob_to_regex(pattern, greedy=True, anchored=False)
            count = 0 if replace_all else 1
            return regex.sub(lambda _m: replacement, value, count=count)

        if null_is_unset and ch not in ("+", "-", "?"):
            # ${V:x}: BuildKit reads the word before rejecting the modifier.
            try:
                self.process_until("}", False)
            except WordSyntaxError:
                if self.peek() == _EOF:
                    raise WordSyntaxError("syntax error: missing '}'") from None
                raise
        raise WordSyntaxError(f"unsupported modifier ({modifier}) in substitution")


# -- shell patterns (``*``, ``?`` and escapes; no bracket expressions, like BuildKit) --------


def _glob_to_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):
                continue  # the escape only protected ${} syntax
            if following not in ("*", "?", "\\"):
                raise WordSyntaxError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'")
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _glob_to_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    # Reverse while keeping each escape in front of the character it escapes.
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so search the reversed strings.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_quote(text: str) -> str:
    """Quote like Go's %q for the printable text that reaches error messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
