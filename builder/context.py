"""The build context: which files a build may read (.dockerignore) and checksums of what it reads.

Patterns follow Docker's rules (moby/patternmatcher): Go `filepath.Match` syntax per path
segment, `**` for any number of directories, a pattern that matches a directory excludes
everything below it, and later `!pattern` lines re-include.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache

from builder.errors import SourceNotFound


def _segment_regex(pattern: str) -> str:
    """Go filepath.Match syntax, with '/' never matched by * or ?, plus '**'."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern:
    return re.compile(_segment_regex(pattern) + r"\Z", re.DOTALL)


def has_wildcards(path: str) -> bool:
    return any(c in path for c in "*?[")


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    negated: bool


def parse_dockerignore(text: str) -> tuple[IgnoreRule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        rules.append(IgnoreRule(line, negated))
    return tuple(rules)


def read_dockerignore(context_dir: str, dockerfile: str | None = None) -> tuple[IgnoreRule, ...]:
    """`<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`."""
    candidates = []
    if dockerfile:
        candidates.append(dockerfile + ".dockerignore")
    candidates.append(os.path.join(context_dir, ".dockerignore"))
    for path in candidates:
        try:
            with open(path, encoding="utf-8") as f:
                return parse_dockerignore(f.read())
        except FileNotFoundError:
            continue
    return ()


class BuildContext:
    """A directory plus its ignore rules. Paths given to it are relative to the context root."""

    def __init__(self, root: str, rules: tuple[IgnoreRule, ...] = ()):
        self.root = os.path.abspath(root)
        self.rules = rules
        self._checksums: dict[str, str] = {}

    def excluded(self, rel: str) -> bool:
        if not self.rules:
            return False
        rel = rel.strip("/")
        parents = []
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            parents.append("/".join(parts[:i]))
        excluded = False
        for rule in self.rules:
            regex = compile_pattern(rule.pattern)
            if any(regex.match(p) for p in parents):
                excluded = not rule.negated
        return excluded

    def walk(self, rel: str = "") -> list[str]:
        """Every non-excluded path under `rel` (itself included), sorted, relative to the root."""
        out = []
        base = os.path.join(self.root, rel)
        if rel and self.excluded(rel):
            return out
        out.append(rel)
        if os.path.isdir(base) and not os.path.islink(base):
            for name in sorted(os.listdir(base)):
                child = f"{rel}/{name}" if rel else name
                if self.excluded(child) and not self._has_reincluded_children(child):
                    continue
                out.extend(self.walk(child) if not self.excluded(child) else self._reincluded(child))
        return out

    def _has_reincluded_children(self, rel: str) -> bool:
        return any(r.negated and r.pattern.startswith(rel + "/") for r in self.rules)

    def _reincluded(self, rel: str) -> list[str]:
        out = []
        base = os.path.join(self.root, rel)
        if os.path.isdir(base) and not os.path.islink(base):
            for name in sorted(os.listdir(base)):
                child = f"{rel}/{name}"
                out.extend(self.walk(child) if not self.excluded(child) else self._reincluded(child))
        return out

    def match(self, source: str) -> list[str]:
        """The context paths a COPY source names (wildcards expanded), relative to the root."""
        clean = os.path.normpath("/" + source).lstrip("/")
        if not has_wildcards(clean):
            full = os.path.join(self.root, clean)
            if not os.path.lexists(full) or (clean and self.excluded(clean)):
                raise SourceNotFound(f'failed to compute cache key: "/{clean}": not found')
            return [clean]
        regex = compile_pattern(clean)
        depth = clean.count("/")
        matches = [p for p in self.walk("") if p and p.count("/") == depth and regex.match(p)]
        if not matches:
            raise SourceNotFound(f'failed to compute cache key: no source files were specified matching "{source}"')
        return matches

    def checksum(self, sources: tuple[str, ...]) -> str:
        """Digest of the content a COPY reads: paths, types, modes, sizes, file contents and link
        targets — never mtimes or owners, so touching a file does not invalidate the cache."""
        h = hashlib.sha256()
        for source in sources:
            for top in self.match(source):
                h.update(b"source\0" + top.encode() + b"\0")
                for rel in self.walk(top):
                    h.update(self._entry_digest(rel).encode())
        return "sha256:" + h.hexdigest()

    def _entry_digest(self, rel: str) -> str:
        full = os.path.join(self.root, rel)
        st = os.lstat(full)
        key = f"{rel}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}"
        cached = self._checksums.get(key)
        if cached:
            return cached
        h = hashlib.sha256()
        h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(str(st.st_size).encode() + b"\0")
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(full).encode())
        digest = h.hexdigest()
        self._checksums[key] = digest
        return digest
