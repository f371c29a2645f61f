"""The syntax of instruction flags: strings of a Dockerfile into frozen values, as BuildKit's
instructions package parses them. What a build does with the values lives in the solver.

    --chmod=MODE        ModeSpec: octal, or chmod(1) symbolic clauses (u+x,g-w,o=r)
    --chown=USER:GROUP  parse_user_id, chown_names (names are looked up at copy time, in the image)
    --checksum=DIGEST   parse_checksum: sha256:<64 hex>
    --network=MODE      NETWORK_MODES (and RUN --security: SECURITY_MODES)
    ADD <url>           url_filename: the name a downloaded file gets

--mount has its own module, runmount.py.
"""

from __future__ import annotations

import posixpath
import stat
from urllib.parse import unquote, urlsplit

from builder.plumbing.records import dataclass

CHMOD_ERROR = "invalid chmod parameter: '{}'. it should be octal string and between 0 and 07777"
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("insecure", "sandbox")


class FlagSyntaxError(ValueError):
    """A malformed flag value; the converter adds the Dockerfile line."""


# ---- --chown --------------------------------------------------------------------------------

def parse_user_id(text: str) -> int | None:
    """BuildKit's parseUID: "root" is 0, a number is an id, anything else a name."""
    if text == "root":
        return 0
    try:
        return int(text)
    except ValueError:
        return None


def chown_names(spec: str) -> list[str]:
    """The user and group names (not ids) in a --chown value."""
    user, _, group = spec.partition(":")
    return [part for part in (user, group) if part and parse_user_id(part) is None]


# ---- --chmod --------------------------------------------------------------------------------

_WHO_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o1007}


@dataclass(frozen=True)
class ModeSpec:
    """--chmod: an octal mode, or chmod(1) symbolic clauses applied to each entry's own mode."""

    text: str
    octal: int | None

    @classmethod
    def parse(cls, text: str) -> "ModeSpec":
        if text and all(c in "01234567" for c in text):
            value = int(text, 8)
            if value > 0o7777:
                raise FlagSyntaxError(CHMOD_ERROR.format(text))
            return cls(text, value)
        if not text or text.isdigit() or not _valid_symbolic(text):
            raise FlagSyntaxError(CHMOD_ERROR.format(text))
        return cls(text, None)

    def apply(self, mode: int, is_dir: bool) -> int:
        """The permission bits (with setuid/setgid/sticky) for an entry whose mode is `mode`."""
        if self.octal is not None:
            return self.octal
        perm = stat.S_IMODE(mode)
        for clause in self.text.split(","):
            i = 0
            who = 0
            while i < len(clause) and clause[i] in "ugoa":
                who |= 0o7777 if clause[i] == "a" else _WHO_BITS[clause[i]]
                i += 1
            if not who:
                who = 0o7777  # no "who": all (with a zero umask, as BuildKit parses it)
            while i < len(clause):
                op = clause[i]
                i += 1
                bits = 0
                if i < len(clause) and clause[i] in "ugo":
                    source = clause[i]
                    i += 1
                    shift = {"u": 6, "g": 3, "o": 0}[source]
                    rwx = (perm >> shift) & 0o7
                    bits = rwx << 6 | rwx << 3 | rwx
                else:
                    while i < len(clause) and clause[i] in "rwxXst":
                        bits |= _perm_bits(clause[i], perm, is_dir)
                        i += 1
                bits &= who
                if op == "+":
                    perm |= bits
                elif op == "-":
                    perm &= ~bits
                else:
                    perm = (perm & ~who) | bits
        return perm


def _perm_bits(letter: str, current: int, is_dir: bool) -> int:
    if letter == "r":
        return 0o444
    if letter == "w":
        return 0o222
    if letter == "x":
        return 0o111
    if letter == "X":
        return 0o111 if is_dir or current & 0o111 else 0
    if letter == "s":
        return 0o6000
    return 0o1000  # t


def _valid_symbolic(text: str) -> bool:
    for clause in text.split(","):
        i = 0
        while i < len(clause) and clause[i] in "ugoa":
            i += 1
        if i == len(clause):
            return False
        while i < len(clause):
            if clause[i] not in "+-=":
                return False
            i += 1
            if i < len(clause) and clause[i] in "ugo":
                i += 1
            else:
                while i < len(clause) and clause[i] in "rwxXst":
                    i += 1
    return True


# ---- --checksum -----------------------------------------------------------------------------

def parse_checksum(text: str) -> str:
    """ADD --checksum: `sha256:<64 lowercase hex>`, as BuildKit's digest.Parse accepts it."""
    algorithm, sep, hex_ = text.partition(":")
    if not sep or algorithm != "sha256":
        raise FlagSyntaxError(f"unsupported digest algorithm: {text}")
    if len(hex_) != 64 or any(c not in "0123456789abcdef" for c in hex_):
        raise FlagSyntaxError(f"invalid checksum digest format: {text}")
    return text


# ---- ADD <url> ------------------------------------------------------------------------------

def url_filename(url: str) -> str:
    """The name ADD gives a downloaded file, as dockerfile2llb: the URL path's base name, or
    `__unnamed__` when the path has none (Content-Disposition is not consulted)."""
    base = posixpath.basename(unquote(urlsplit(url).path).rstrip("/"))
    return base if base not in ("", ".") else "__unnamed__"
