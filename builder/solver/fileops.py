"""COPY/ADD and mkdir, applied to a mounted root filesystem.

These functions run inside the step's private mount namespace with the destination overlay
mounted at `dest_root`; every path they touch is resolved inside that root (symlinks in the
image are followed as the container would see them, never out to the host).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile

from builder.context import BuildContext, has_wildcards
from builder.errors import SolveError
from builder.llb import CopyAction, MkdirAction

_MAX_SYMLINKS = 40


def resolve_in_root(root: str, path: str, follow_last: bool = True) -> str:
    """The host path for container path `path`, following symlinks as if `root` were '/'."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate) and (parts or follow_last):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise SolveError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def parse_ids(spec: str, root: str) -> tuple[int, int]:
    """--chown USER[:GROUP] -> (uid, gid), names looked up in the image at `root`."""
    from builder.executor.users import lookup_group, lookup_user

    user, _, group = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        entry = lookup_user(resolve_in_root(root, "/etc/passwd"), user)
        if entry is None:
            raise SolveError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = entry.uid, entry.gid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = lookup_group(resolve_in_root(root, "/etc/group"), group)
            if found is None:
                raise SolveError(f"unable to find group {group}: no matching entries in group file")
            gid = found.gid
    return uid, gid


def make_dirs(root: str, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> str:
    """mkdir -p inside root; only directories it creates get mode and owner."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part)
        host = resolve_in_root(root, current)
        if os.path.isdir(host):
            continue
        if os.path.lexists(host):
            raise SolveError(f"cannot create directory {current}: a file is in the way")
        os.mkdir(host)
        os.chmod(host, mode)
        os.lchown(host, uid, gid)
    return resolve_in_root(root, path)


def apply_mkdir(root: str, action: MkdirAction) -> None:
    uid, gid = parse_ids(action.chown, root) if action.chown else (0, 0)
    make_dirs(root, action.path, action.mode, uid, gid)


class _Copier:
    def __init__(self, uid: int, gid: int, chmod: int | None, skip=lambda rel: False):
        self.uid, self.gid, self.chmod = uid, gid, chmod
        self.skip = skip  # .dockerignore and --exclude, by path relative to the source root
        self.links: dict[tuple[int, int], str] = {}

    def _finish(self, path: str, st: os.stat_result) -> None:
        os.lchown(path, self.uid, self.gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, self.chmod if self.chmod is not None else stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy(self, src: str, dst: str, rel: str, follow: bool) -> None:
        st = os.stat(src) if follow else os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(dst) and not os.path.isdir(dst):
                _remove(dst)
            if not os.path.isdir(dst):
                os.mkdir(dst)
            for name in sorted(os.listdir(src)):
                child = f"{rel}/{name}" if rel else name
                if not self.skip(child):
                    self.copy(os.path.join(src, name), os.path.join(dst, name), child, follow=False)
            self._finish(dst, st)
            return
        if os.path.lexists(dst):
            _remove(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], dst)
                return
            shutil.copyfile(src, dst, follow_symlinks=False)
            if st.st_nlink > 1:
                self.links[key] = dst
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(dst)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(dst, st.st_mode, st.st_rdev)
        else:
            return  # sockets are not copied
        self._finish(dst, st)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _is_archive(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _extract(archive: str, dest_dir: str) -> None:
    if open(archive, "rb").read(4) == b"\x28\xb5\x2f\xfd":
        import subprocess

        data = subprocess.run(["zstd", "-dc", archive], check=True, capture_output=True).stdout
        import io

        tf = tarfile.open(fileobj=io.BytesIO(data))
    else:
        tf = tarfile.open(archive)
    with tf:
        tf.extractall(dest_dir, filter="tar", numeric_owner=True)


def apply_copy(dest_root: str, src_root: str, action: CopyAction, context_rules=()) -> None:
    """BuildKit's COPY rules: a directory source copies its contents; several sources (or a
    wildcard matching several) need a destination ending in '/'; a file onto 'dir/' keeps its name."""
    source = BuildContext(src_root, context_rules)
    matches: list[str] = []
    for path in action.paths:
        matches.extend(source.match(path))
    many = len(matches) > 1
    dest = action.dest
    dest_is_dir = dest.endswith("/")
    if many and not dest_is_dir:
        raise SolveError("When using COPY with more than one source file, the destination must be a "
                         "directory and end with a /")
    uid, gid = parse_ids(action.chown, dest_root) if action.chown else (0, 0)
    chmod = int(action.chmod, 8) if action.chmod else None
    exclude = BuildContext(src_root, tuple(_exclude_rules(action.exclude)))
    copier = _Copier(uid, gid, chmod, skip=lambda rel: source.excluded(rel) or exclude.excluded(rel))
    for rel in matches:
        src = os.path.join(src_root, rel)
        real = os.path.realpath(src)
        if not (real == os.path.realpath(src_root) or real.startswith(os.path.realpath(src_root) + os.sep)):
            raise SolveError(f'"/{rel}" points outside the build source')
        if os.path.isdir(real):
            target = make_dirs(dest_root, dest, 0o755, uid, gid)
            for name in sorted(os.listdir(real)):
                child = f"{rel}/{name}" if rel else name
                if not copier.skip(child):
                    copier.copy(os.path.join(real, name), os.path.join(target, name), child, follow=False)
            continue
        if action.extract_archives and _is_archive(real):
            _extract(real, make_dirs(dest_root, dest, 0o755, uid, gid))
            continue
        if dest_is_dir or many:
            parent = make_dirs(dest_root, dest, 0o755, uid, gid)
            target = os.path.join(parent, os.path.basename(rel))
        else:
            parent_path, name = posixpath.split(dest.rstrip("/"))
            target = os.path.join(make_dirs(dest_root, parent_path or "/", 0o755, uid, gid), name)
            if os.path.isdir(target) and not os.path.islink(target):
                target = os.path.join(target, os.path.basename(rel))
        copier.copy(real, target, rel, follow=True)


def _exclude_rules(patterns):
    from builder.context import IgnoreRule

    return [IgnoreRule(os.path.normpath(p).lstrip("/"), False) for p in patterns]


__all__ = ["apply_copy", "apply_mkdir", "has_wildcards", "make_dirs", "parse_ids", "resolve_in_root"]
