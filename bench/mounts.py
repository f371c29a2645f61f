"""Mount points left under a directory, and taking them down (deepest first, lazily)."""

from __future__ import annotations

import ctypes
import os

_MNT_DETACH = 2


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in a path as \\ooo octal escapes."""
    out, i = [], 0
    while i < len(field):
        escape = field[i + 1:i + 4]
        if field[i] == "\\" and len(escape) == 3 and escape.isdigit():
            out.append(chr(int(escape, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: str) -> list[str]:
    """Mount points at or below ROOT, deepest first (the order to unmount them in)."""
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(root: str) -> list[str]:
    """Lazily unmount everything mounted at or below ROOT; returns what was unmounted."""
    if not os.path.exists(root):
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for point in mounts_under(root):
        if libc.umount2(point.encode(), _MNT_DETACH) == 0:
            done.append(point)
    return done
