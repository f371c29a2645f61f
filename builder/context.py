"""Source trees a COPY reads (the build context, a stage, a download) and the checksums COPY keys on.

Two pattern languages meet here, as in BuildKit:

- COPY sources use Go's `filepath.Match` per path (`*` and `?` never cross '/', `[...]` classes,
  `\\` escapes); `**` is no different from `*`. A wildcard that matches nothing copies nothing.
- `.dockerignore`, `--exclude` and `--parents` use moby/patternmatcher: the same syntax plus `**`
  for any number of directories, a pattern that matches a directory matches everything below it,
  and a later `!pattern` re-includes.

A context path that `.dockerignore` excludes does not exist for COPY; a directory that is excluded
but holds a re-included file still exists as that file's parent.

Checksums of regular files are kept between builds (ChecksumCache, one file per context directory
in the store), keyed by what lstat says of the file, as BuildKit's contenthash does: a rebuild reads
and hashes only the files whose (device, inode, size, mtime, ctime, mode) changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import time
from functools import lru_cache
from typing import Iterable, Sequence

from builder.errors import ParseError, SolveError, SourceNotFound
from builder.plumbing import paths
from builder.plumbing.files import locked, write_atomically
from builder.plumbing.records import dataclass


# ---- Go filepath.Match (COPY sources) -------------------------------------------------------

def has_wildcards(path: str) -> bool:
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def _class_regex(body: str) -> str:
    """A Go character class body (between the brackets) as a Python one: ranges and `\\` escapes."""
    out = ["^"] if body.startswith("^") else []
    i = len(out)
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            i += 1
            out.append(re.escape(body[i]))
        else:
            out.append("-" if c == "-" else re.escape(c))
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def go_match_regex(pattern: str) -> re.Pattern:
    """`filepath.Match(pattern, name)` as a compiled regex: '*' and '?' stay inside one segment."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            if j >= n or j == i + 1:
                raise SolveError(f"syntax error in pattern: {pattern}")
            out.append("(?!/)[" + _class_regex(pattern[i + 1:j]) + "]")
            i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


# ---- moby/patternmatcher (.dockerignore, --exclude, --parents) -------------------------------

def clean_path(path: str) -> str:
    """Go's path.Clean: '' is '.', and a leading '//' is one '/'."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


class Pattern:
    """One patternmatcher pattern, compiled the way moby compiles it (exact, prefix, suffix, regex)."""

    def __init__(self, text: str):
        self.exclusion = text.startswith("!")
        if self.exclusion:
            text = text[1:]
        self.text = clean_path(text)
        self._kind, self._value = self._compile(self.text)

    @staticmethod
    def _compile(pattern: str):
        regex, kind, i, n = "^", "exact", 0, len(pattern)
        in_class = False
        while i < n:
            c = pattern[i]
            if in_class and c not in "]\\":
                regex += c
            elif c == "*":
                if i + 1 < n and pattern[i + 1] == "*":
                    start = i
                    i += 2
                    if i < n and pattern[i] == "/":
                        i += 1
                    if i >= n:  # a trailing '**' takes everything, as .gitignore does
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            regex += ".*"
                            kind = "regex"
                    else:
                        regex += "(.*/)?"
                        kind = "regex"
                    if start == 0:
                        kind = "suffix"
                    continue
                regex += "[^/]*"
                kind = "regex"
            elif c == "?":
                regex += "[^/]"
                kind = "regex"
            elif c in ".+()|{}$^":  # regex syntax that means nothing to filepath.Match
                regex += "\\" + c
            elif c == "\\":
                if i + 1 < n:
                    i += 1
                    regex += re.escape(pattern[i])
                    kind = "regex"
                else:
                    regex += "\\\\"
            elif c in "[]":
                in_class = c == "["
                regex += c
                kind = "regex"
            else:
                regex += re.escape(c)
            i += 1
        if kind == "regex":
            try:
                return kind, re.compile(regex + r"\Z", re.DOTALL)
            except re.error:
                raise SolveError(f"syntax error in pattern: {pattern}") from None
        return kind, pattern

    def matches(self, path: str) -> bool:
        kind, value = self._kind, self._value
        if kind == "exact":
            return path == value
        if kind == "prefix":
            return path.startswith(value[:-2])
        if kind == "suffix":
            suffix = value[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        return value.match(path) is not None

    @property
    def literal_prefix(self) -> str:
        """The pattern without a trailing '**' glob, for the "could anything below match" test."""
        text = self.text
        for glob in ("/**", "/*"):
            if text.endswith(glob):
                return text[: -len(glob)]
        return text


class PatternMatcher:
    """Ordered patterns, `!` for exceptions: a path matches when the last pattern that matches it
    (or one of its parent directories) is not an exception. Results are memoised per path so that
    a walk costs one pattern test per path, as patternmatcher's MatchInfo does."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(Pattern(p) for p in patterns if p.strip() and p.strip() != "!")
        self.exclusions = any(p.exclusion for p in self.patterns)
        self._states: dict[str, tuple[bool, ...]] = {}
        # fsutil only walks into an excluded directory when an exception could match below it;
        # with a wildcard in an exception it cannot tell, so it always walks.
        self._prefix_only = all(not has_wildcards(p.literal_prefix) for p in self.patterns if p.exclusion)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def _state(self, path: str) -> tuple[bool, ...]:
        state = self._states.get(path)
        if state is None:
            parent = path.rpartition("/")[0]
            inherited = self._state(parent) if parent else (False,) * len(self.patterns)
            state = tuple(done or p.matches(path) for done, p in zip(inherited, self.patterns))
            self._states[path] = state
        return state

    def matches(self, path: str) -> bool:
        path = path.strip("/")
        if not path or path == ".":
            return False
        matched = False
        for hit, pattern in zip(self._state(path), self.patterns):
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_match_below(self, directory: str) -> bool:
        """Whether an exception could re-include something inside excluded `directory`."""
        if not self.exclusions:
            return False
        if not self._prefix_only:
            return True
        prefix = directory.strip("/") + "/"
        return any(p.exclusion and (p.literal_prefix + "/").startswith(prefix) for p in self.patterns)


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    negated: bool

    def __str__(self) -> str:
        return ("!" if self.negated else "") + self.pattern


def parse_dockerignore(text: str) -> tuple[IgnoreRule, ...]:
    """moby's ignorefile.ReadAll: BOM and '#' comment lines dropped, each pattern trimmed and
    cleaned, a leading '/' removed (patterns are relative to the context root)."""
    rules = []
    for raw in text.removeprefix("\ufeff").splitlines():
        if raw.startswith("#"):
            continue
        line = raw.strip()
        if not line:
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        if not line:
            continue
        line = clean_path(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        rules.append(IgnoreRule(line, negated))
    return tuple(rules)


def read_dockerignore(context_dir: str, dockerfile: str | None = None) -> tuple[IgnoreRule, ...]:
    """`<Dockerfile>.dockerignore` beside the Dockerfile (CONTEXT/Dockerfile when not given) wins
    over the context's `.dockerignore`."""
    return load_dockerignore(context_dir, dockerfile)[0]


def load_dockerignore(context_dir: str, dockerfile: str | None = None) -> tuple[tuple[IgnoreRule, ...], int]:
    """The rules `read_dockerignore` gives, and the size in bytes of the file they came from (0: none)."""
    dockerfile = dockerfile or os.path.join(context_dir, "Dockerfile")
    candidates = [dockerfile + ".dockerignore", os.path.join(context_dir, ".dockerignore")]
    for path in candidates:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        return parse_dockerignore(utf8_text(data, os.path.basename(path))), len(data)
    return (), 0


def utf8_text(data: bytes, filename: str) -> str:
    """DATA decoded as UTF-8; else a ParseError naming the line and the byte offset in it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        raise ParseError(f"invalid UTF-8 at byte {err.start - line_start + 1} of the line "
                         f"(byte 0x{data[err.start]:02x})", filename=filename, line=line) from None


# ---- paths inside a root ---------------------------------------------------------------------

def resolve_in_root(root: str, path: str, follow_last: bool = True) -> str:
    """The host path for `path` inside `root`, following symlinks as if `root` were '/' (never out
    of it: '..' stops at the root and absolute link targets restart there)."""
    try:
        return paths.resolve_in_root(root, path, follow_last=follow_last)
    except paths.SymlinkLoop:
        raise SolveError(f"too many levels of symbolic links in {path}") from None


def _relative(root: str, host_path: str) -> str:
    rel = os.path.relpath(host_path, root)
    return "" if rel == "." else rel


# ---- a source tree -----------------------------------------------------------------------------

# ---- checksums kept between builds -----------------------------------------------------------

_CACHE_FORMAT = 1
_HEX = re.compile(r"[0-9a-f]{64}\Z")


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What must be unchanged for a file's recorded digest to stand: any write changes mtime and
    ctime, a replacement changes the inode, a chmod the mode and ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _well_formed(entry) -> bool:
    """[dev, ino, size, mtime_ns, ctime_ns, mode, hex digest], as ChecksumCache writes them."""
    return (isinstance(entry, (list, tuple)) and len(entry) == 7 and isinstance(entry[6], str)
            and _HEX.match(entry[6]) is not None and all(type(v) is int for v in entry[:6]))


class ChecksumCache:
    """Entry digests of one context directory's regular files, kept in a file between builds.

    ROOT/cache/context/<sha256 of the directory's path>.json maps each path (relative to the
    directory) to the lstat key it was hashed under and its digest. The file is only ever a hint:
    unreadable or malformed content is ignored, an entry is used only while the file's lstat key
    is exactly the recorded one, and a file changed less than SETTLE_SECONDS ago is not recorded
    (another write in the same timestamp tick would leave its key as it was). Builds that share a
    store write it under a lock file, merging, with an atomic replace; readers never lock.
    """

    SETTLE_SECONDS = 2.0

    def __init__(self, cache_dir: str, context_root: str, *, settle_seconds: float = SETTLE_SECONDS):
        self.context_root = os.path.abspath(context_root)
        name = hashlib.sha256(self.context_root.encode()).hexdigest()
        self.path = os.path.join(cache_dir, name + ".json")
        self.settle_ns = int(settle_seconds * 1e9)
        self._entries: dict[str, list] | None = None
        self._new: dict[str, tuple] = {}
        self._seen: set[str] = set()

    @classmethod
    def in_store(cls, store_root: str, context_root: str) -> "ChecksumCache":
        return cls(os.path.join(store_root, "cache", "context"), context_root)

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, list]:
        """The file's entries, unchecked (each is checked when used or written back)."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("root") != self.context_root:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, rel: str, st: os.stat_result) -> str | None:
        """The recorded digest of REL if it was hashed with exactly this lstat key."""
        self._seen.add(rel)
        entry = self._new.get(rel) or self._load().get(rel)
        if _well_formed(entry) and tuple(entry[:6]) == _stat_key(st):
            return entry[6]
        return None

    def put(self, rel: str, st: os.stat_result, digest: str) -> None:
        """Record DIGEST for REL, unless the file changed too recently for its key to be trusted."""
        self._seen.add(rel)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < self.settle_ns:
            return
        self._new[rel] = (*_stat_key(st), digest)

    def save(self) -> None:
        """Merge what this build hashed into the file. Entries of paths that are gone are dropped.
        Failing to write only costs the next build some hashing, so errors are swallowed."""
        if not self._new:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with locked(self.path[:-len(".json")] + ".lock"):
                merged = {rel: entry for rel, entry in self._read().items()   # what other builds wrote
                          if _well_formed(entry) and (rel in self._seen
                                                      or os.path.lexists(os.path.join(self.context_root, rel)))}
                merged.update(self._new)
                body = {"format": _CACHE_FORMAT, "root": self.context_root,
                        "entries": {rel: list(value) for rel, value in sorted(merged.items())}}
                # Only a hint (checked on every use): no fsync of its own, the build's syncfs covers it.
                write_atomically(self.path, json.dumps(body, separators=(",", ":")).encode(), durable=False)
        except OSError:
            return
        self._entries = merged
        self._new = {}


class BuildContext:
    """A directory COPY reads from, with the .dockerignore rules that hide parts of it (none for a
    stage's filesystem). Paths given to and returned by it are relative to the root."""

    def __init__(self, root: str, rules: Sequence[IgnoreRule] = (), *,
                 checksum_cache: ChecksumCache | None = None):
        self.root = os.path.abspath(root)
        self.rules = tuple(rules)
        self.ignore = PatternMatcher(str(r) for r in self.rules)
        self.checksum_cache = checksum_cache
        self._digests: dict[tuple, str] = {}
        self.files_hashed = 0        # regular files read for a checksum (the checksum cache's misses)
        self.bytes_hashed = 0

    # -- what exists
    def excluded(self, rel: str) -> bool:
        return bool(self.ignore) and self.ignore.matches(rel)

    def hidden(self, rel: str, is_dir: bool) -> bool:
        """Excluded and not the parent of a re-included path: COPY does not see it."""
        if not self.excluded(rel):
            return False
        return not (is_dir and self.ignore.may_match_below(rel))

    def walk(self, rel: str = "") -> list[str]:
        """`rel` and every visible path below it, in sorted pre-order (symlinks are not followed)."""
        out: list[str] = []
        self._walk(rel, out)
        return out

    def _walk(self, rel: str, out: list[str]) -> None:
        full = os.path.join(self.root, rel)
        try:
            is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_dir = False
        if rel and self.hidden(rel, is_dir):
            return
        out.append(rel)
        if is_dir:
            self._walk_below(full, rel, out)

    def _walk_below(self, full: str, rel: str, out: list[str]) -> None:
        # scandir's entry types come with the directory listing: no stat per entry
        with os.scandir(full) as listing:
            entries = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing)
        for name, is_dir in entries:
            child = f"{rel}/{name}" if rel else name
            if self.hidden(child, is_dir):
                continue
            out.append(child)
            if is_dir:
                self._walk_below(os.path.join(full, name), child, out)

    def match(self, source: str) -> list[str]:
        """The paths a COPY source names (symlinks in it followed, wildcards expanded), relative to
        the root. A missing plain path is an error; a wildcard may match nothing, as in BuildKit."""
        clean = clean_path("/" + source).lstrip("/")
        if not has_wildcards(clean):
            return [self._existing(clean)]
        parts = clean.split("/")
        first = next(i for i, p in enumerate(parts) if has_wildcards(p))
        base = "/".join(parts[:first])
        base_host = resolve_in_root(self.root, base) if base else self.root
        matches: list[str] = []
        if os.path.isdir(base_host):
            pattern = go_match_regex("/".join(parts[first:]))
            self._glob(base_host, "", _relative(self.root, base_host), pattern, len(parts) - first, matches)
        return matches

    def _glob(self, host_dir: str, rel: str, base_rel: str, pattern: re.Pattern, depth: int, out: list[str]) -> None:
        for name in sorted(os.listdir(host_dir)):
            child = f"{rel}/{name}" if rel else name
            full_rel = f"{base_rel}/{child}" if base_rel else child
            host = os.path.join(host_dir, name)
            is_dir = os.path.isdir(host) and not os.path.islink(host)
            if self.hidden(full_rel, is_dir):
                continue
            if pattern.match(child):
                out.append(full_rel)  # a matching directory is copied whole, not searched further
            elif is_dir and child.count("/") + 1 < depth:
                self._glob(host, child, base_rel, pattern, depth, out)

    def _existing(self, clean: str) -> str:
        if not clean:
            return ""
        host = resolve_in_root(self.root, clean)
        rel = _relative(self.root, host)
        if (not os.path.lexists(host) or self.excluded(clean)
                or (rel and self.hidden(rel, os.path.isdir(host)))):
            raise SourceNotFound(f'failed to compute cache key: "/{clean}": not found')
        return clean

    def resolve(self, rel: str) -> str:
        """`rel` with every symlink in it followed (inside the root)."""
        return _relative(self.root, resolve_in_root(self.root, rel))

    # -- checksums
    def checksum(self, sources: Sequence[str]) -> str:
        """Digest of what a COPY reads: paths, types, modes, sizes, file contents and link targets.
        Never mtimes or owners, so touching a file does not invalidate the cache."""
        h = hashlib.sha256()
        for source in sources:
            for name in self.match(source):
                h.update(b"source\0" + name.encode() + b"\0")
                resolved = self.resolve(name)
                if not os.path.lexists(os.path.join(self.root, resolved)):
                    # a wildcard matched a dangling symlink: what it points to is not there
                    raise SourceNotFound(f'failed to compute cache key: "/{name}": not found')
                for rel in self.walk(resolved):
                    h.update(self.entry_digest(rel).encode())
        if self.checksum_cache is not None:
            self.checksum_cache.save()
        return "sha256:" + h.hexdigest()

    def entry_digests(self, sources: Sequence[str]) -> dict[str, str]:
        """What `checksum` digests, per entry: path (a directory's with a trailing "/") -> hex
        digest of its type, mode, size and content. After `checksum` it costs a stat per entry."""
        entries: dict[str, str] = {}
        for source in sources:
            for name in self.match(source):
                resolved = self.resolve(name)
                if not os.path.lexists(os.path.join(self.root, resolved)):
                    continue   # checksum has reported it
                for rel in self.walk(resolved):
                    full = os.path.join(self.root, rel)
                    is_dir = os.path.isdir(full) and not os.path.islink(full)
                    entries[(rel or ".") + ("/" if is_dir else "")] = self.entry_digest(rel)
        return entries

    def entry_digest(self, rel: str) -> str:
        """The hex digest of the entry at REL (relative to the root): its path, type, mode, size
        and content. Cached by the entry's inode, size, times and mode."""
        full = os.path.join(self.root, rel)
        st = os.lstat(full)
        key = (rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
        cached = self._digests.get(key)
        if cached is not None:
            return cached
        regular = stat.S_ISREG(st.st_mode)
        if regular and self.checksum_cache is not None:
            cached = self.checksum_cache.get(rel, st)
            if cached is not None:
                self._digests[key] = cached
                return cached
        h = hashlib.sha256(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
        if regular:
            h.update(str(st.st_size).encode() + b"\0")
            self.bytes_hashed += _hash_file(full, h)
            self.files_hashed += 1
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(full).encode())
        digest = h.hexdigest()
        self._digests[key] = digest
        if regular and self.checksum_cache is not None:
            self.checksum_cache.put(rel, st, digest)
        return digest


def _hash_file(path: str, h) -> int:
    """Feed PATH's bytes to H; returns how many were read."""
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            total += len(chunk)
    return total


def split_parents(source: str) -> tuple[str, "PatternMatcher"]:
    """COPY --parents SOURCE -> (the directory to copy from, what below it to include): the part
    before "/./" is the pivot; without one the pivot is the root and the whole path the pattern."""
    pivot, sep, pattern = source.partition("/./")
    if not sep:
        pivot, pattern = "/", source
    return pivot, PatternMatcher([clean_path("/" + pattern).lstrip("/")])
