"""A path inside a root directory, resolved as a process chrooted there would see it.

Symlinks are followed with ROOT as '/': '..' stops at the root, an absolute link target restarts
there, so the result never leaves ROOT. Used for COPY destinations, ADD archive entries, cache
mount seeds and unpacking layers.
"""

from __future__ import annotations

import errno
import os

MAX_SYMLINKS = 40  # as Linux's own limit on links followed in one lookup


class SymlinkLoop(OSError):
    """More than MAX_SYMLINKS links on the way (a loop, most likely)."""

    def __init__(self, path: str):
        super().__init__(errno.ELOOP, "too many levels of symbolic links", path)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: str, path: str, *, follow_last: bool = True, make_dirs: bool = False) -> str:
    """The host path for PATH inside ROOT. FOLLOW_LAST: a symlink as the last component is
    followed too. MAKE_DIRS: every component must be a directory; missing ones are made (0755),
    and a non-directory on the way raises NotADirectoryError."""
    parts = _components(path)
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if (parts or follow_last) and os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise SymlinkLoop(path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = _components(target) + parts
            continue
        if make_dirs:
            if not os.path.lexists(candidate):
                os.mkdir(candidate, 0o755)
                os.chmod(candidate, 0o755)  # whatever the umask
            elif not os.path.isdir(candidate):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", "/".join(resolved + [part]))
        resolved.append(part)
    return os.path.join(root, *resolved)
