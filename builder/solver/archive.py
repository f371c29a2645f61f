"""ADD's archive extraction: detect a tar (plain, gzip, bzip2, xz or zstd) and unpack it safely.

As moby's `chrootarchive.Untar`, which BuildKit uses, the destination directory acts as the root:
entry names, symlinks met on the way and hard link targets all resolve inside it, and an entry
or link that would leave it is an error. Entries keep the archive's mode, owner (numeric ids),
mtime and xattrs, unless ADD --chown gives an owner for everything. Directory mtimes are set last,
so that files created inside them do not change them again.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from contextlib import contextmanager
from typing import Iterator

from builder.context import clean_path, resolve_in_root
from builder.errors import SolveError
from builder.plumbing import compression

@contextmanager
def _tar_stream(path: str) -> Iterator[tarfile.TarFile]:
    """The archive as a streaming TarFile, decompressed by its magic number."""
    with open(path, "rb") as f, compression.decompressed(f, verify=False) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            yield tf


def is_archive(path: str) -> bool:
    """A regular file whose (decompressed) content starts with a valid tar header, as BuildKit's
    isArchivePath: an empty or unreadable archive is copied as a plain file."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with _tar_stream(path) as tf:
            return tf.next() is not None
    except Exception:  # noqa: BLE001 - whatever fails to decode is not an archive (gzip raises TypeError too)
        return False


def extract(path: str, dest: str, owner: tuple[int, int] | None = None) -> None:
    """Unpacks the archive at `path` into the existing directory `dest`. Sparse members stay
    sparse, and the bytes written count against the unpack bounds (snapshot.layers.UnpackBudget)."""
    from builder.snapshot.layers import LayerError, UnpackBudget

    dirs: list[tuple[str, tarfile.TarInfo]] = []
    try:
        budget = UnpackBudget()
        with _tar_stream(path) as tf:
            for member in tf:
                target = _extract_member(tf, member, dest, owner, budget)
                if target is not None and member.isdir():
                    dirs.append((target, member))
    except (tarfile.TarError, EOFError, OSError, LayerError) as error:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            error = "no space left on the store's disk"
        raise SolveError(f"failed to extract {os.path.basename(path)}: {error}") from None
    for target, member in reversed(dirs):
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def _inside(*parts: str) -> str | None:
    """moby's breakout test: the parts joined below the destination and cleaned, or None when the
    result leaves it. Relative to the destination; '' is the destination itself."""
    joined = clean_path("/".join(("/dest",) + parts))
    if joined == "/dest":
        return ""
    return joined[len("/dest/"):] if joined.startswith("/dest/") else None


def _extract_member(tf: tarfile.TarFile, member: tarfile.TarInfo, dest: str, owner, budget) -> str | None:
    name = _inside(clean_path(member.name))
    if name is None:
        raise SolveError(f"{member.name!r} is outside of the ADD destination")
    if member.type in (tarfile.XGLTYPE, tarfile.XHDTYPE) or name in ("", "."):
        return None
    parent, _, base = name.rpartition("/")
    parent_host = resolve_in_root(dest, parent)
    if not os.path.isdir(parent_host):
        _make_parents(dest, parent)
        parent_host = resolve_in_root(dest, parent)
    target = os.path.join(parent_host, base)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not (stat.S_ISDIR(existing.st_mode) and member.isdir()):
        if stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(target)
        else:
            os.unlink(target)

    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(target, 0o700)
    elif member.isreg():
        from builder.snapshot.layers import write_member

        with open(target, "xb") as out:
            write_member(tf, member, out.fileno(), budget)
    elif member.issym():
        if _inside(parent, member.linkname) is None:
            raise SolveError(f"invalid symlink {member.name!r} -> {member.linkname!r}")
        os.symlink(member.linkname, target)
    elif member.islnk():
        link = _inside(member.linkname)
        if link is None:
            raise SolveError(f"invalid hardlink {member.name!r} -> {member.linkname!r}")
        os.link(resolve_in_root(dest, link, follow_last=False), target, follow_symlinks=False)
        return target
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(target, kind | 0o600, os.makedev(member.devmajor, member.devminor))
    elif member.isfifo():
        os.mkfifo(target)
    else:
        raise SolveError(f"unhandled tar header type {member.type!r} for {member.name!r}")

    uid, gid = owner if owner is not None else (member.uid, member.gid)
    os.lchown(target, uid, gid)
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(target, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError:
                pass  # best effort, as BuildKit's BestEffortXattrs
    if not member.issym():
        os.chmod(target, member.mode & 0o7777)
    if not member.isdir():
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
    return target


def _make_parents(dest: str, parent: str) -> None:
    """Directories an archive implies but does not list: 0755, as moby's MkdirAll."""
    current = ""
    for part in parent.split("/"):
        current = f"{current}/{part}" if current else part
        host = resolve_in_root(dest, current)
        if os.path.isdir(host):
            continue
        if os.path.lexists(host):
            os.unlink(host)
        os.mkdir(host, 0o755)
        os.chmod(host, 0o755)
