"""COPY/ADD and mkdir, applied to a mounted root filesystem, with BuildKit's rules.

These functions run inside the step's private mount namespace with the destination mounted at
`dest_root`; every destination path is resolved inside that root (symlinks in the image are
followed as the container would see them, never out to the host). The copy follows
tonistiigi/fsutil's `Copy`, which BuildKit uses:

- a source directory copies its contents; the destination directory is created when missing
  (root-owned 0755, or the --chown owner and octal --chmod mode) and left as it is when present;
- a file onto an existing directory (or a destination ending in '/') goes inside it, keeping its
  name; otherwise it becomes the destination path;
- file data goes through plumbing.files.copy_file (reflink, copy_file_range or sendfile: the
  kernel moves the bytes);
- copied entries keep their mode, mtime, xattrs, symlinks and hard links; their owner is the
  source's (0:0 for the build context) unless --chown; --chmod applies to every copied entry and
  to the directories created for the destination;
- --exclude patterns are relative to each copied source; --parents keeps the path below the
  pivot, creating the parent directories with their source metadata.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from builder.context import (BuildContext, PatternMatcher, clean_path, has_wildcards, resolve_in_root,
                             split_parents)
from builder.errors import SolveError
from builder.grammar.flags import ModeSpec, parse_user_id
from builder.llb.ops import CopyAction, MkdirAction
from builder.plumbing.files import copy_file

# ---- --chown --------------------------------------------------------------------------------

def _read_text(root: str, path: str) -> str | None:
    try:
        with open(resolve_in_root(root, path), encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def parse_ids(spec: str, root: str) -> tuple[int, int]:
    """--chown USER[:GROUP] -> (uid, gid), names looked up in the destination image at `root`.

    As BuildKit's WithUser: a user id alone also sets the gid; a user name alone takes its primary
    group; "uid:" (an empty group) means gid 0. Unknown names fail, as the Dockerfile reference says.
    """
    from builder.executor.users import parse_group, parse_passwd

    user, has_group, group = spec.partition(":")
    uid = parse_user_id(user)
    if uid is not None:
        gid = uid
    else:
        entry = next((u for u in parse_passwd(_read_text(root, "/etc/passwd") or "") if u.name == user), None)
        if entry is None:
            raise SolveError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = entry.uid, entry.gid
    if has_group:
        known = parse_user_id(group) if group else 0
        if known is not None:
            gid = known
        else:
            found = next((g for g in parse_group(_read_text(root, "/etc/group") or "") if g.name == group), None)
            if found is None:
                raise SolveError(f"unable to find group {group}: no matching entries in group file")
            gid = found.gid
    return uid, gid


# ---- mkdir ----------------------------------------------------------------------------------

def make_dirs(root: str, path: str, mode: int = 0o755, uid: int | None = 0, gid: int | None = 0) -> str:
    """mkdir -p inside root; only directories it creates get mode and owner (None: leave root's)."""
    current = "/"
    for part in [p for p in path.split("/") if p not in ("", ".")]:
        current = posixpath.normpath(posixpath.join(current, part))
        host = resolve_in_root(root, current)
        if os.path.isdir(host):
            continue
        if os.path.lexists(host):
            raise SolveError(f"mkdir {current}: not a directory")
        parent = os.path.dirname(host)
        if not os.path.isdir(parent):  # a symlink on the way points at a path not made yet: make it
            make_dirs(root, "/" + os.path.relpath(parent, root), mode, uid, gid)
        os.mkdir(host)
        os.chmod(host, mode)
        if uid is not None:
            os.lchown(host, uid, gid if gid is not None else uid)
    return resolve_in_root(root, path)


def apply_mkdir(root: str, action: MkdirAction) -> None:
    uid, gid = parse_ids(action.chown, root) if action.chown else (0, 0)
    make_dirs(root, action.path, action.mode, uid, gid)


# ---- copy -----------------------------------------------------------------------------------

def apply_copy(dest_root: str, src_root: str, action: CopyAction, *, rules=(), reset_owner: bool = False,
               files=None) -> None:
    """Copies `action.paths` from the tree at `src_root` into `dest_root` at `action.dest`.

    `rules` are the build context's .dockerignore rules; `reset_owner` makes sources root-owned,
    as BuildKit's context transfer does (a stage's files keep their owners). `files`, if given
    (builder.solver.copyreuse.ActionFiles), hears of each regular file copied and may keep a
    file already at its target instead (`keep`)."""
    source = BuildContext(src_root, rules)
    owner = parse_ids(action.chown, dest_root) if action.chown else None
    try:
        mode = ModeSpec.parse(action.chmod) if action.chmod else None
    except ValueError as error:
        raise SolveError(str(error)) from None
    exclude = PatternMatcher(action.exclude) if action.exclude else None

    planned = []
    for path in action.paths:
        include = None
        pivot = path
        if action.parents:
            pivot, include = split_parents(path)
            if not has_wildcards(path):
                source.match(path.replace("/./", "/"))  # raises if the named path is missing
        planned.append((source.match(pivot), include))

    dest = action.dest
    dest_is_dir = dest.endswith("/") or dest.endswith("/.")
    total = sum(len(matches) for matches, _ in planned)
    if total > 1 and not dest_is_dir and not action.parents and not os.path.isdir(resolve_in_root(dest_root, dest)):
        raise SolveError("When using COPY with more than one source file, the destination must be a "
                         "directory and end with a /")
    for matches, include in planned:
        for rel in matches:
            copier = _Copier(dest_root, source, owner, mode, reset_owner, include, exclude, files)
            if action.extract_archives and _try_unpack(source, rel, dest_root, dest, owner):
                continue
            copier.copy_source(rel, dest, dest_is_dir)


def _try_unpack(source: BuildContext, rel: str, dest_root: str, dest: str, owner) -> bool:
    from builder.solver.archive import extract, is_archive

    path = resolve_in_root(source.root, rel)
    if not is_archive(path):
        return False
    uid, gid = owner if owner is not None else (None, None)
    target = make_dirs(dest_root, dest, 0o755, uid, gid)
    extract(path, target, owner)
    return True


class _Copier:
    """One fsutil Copy: a matched source (file or directory) into the destination."""

    def __init__(self, dest_root: str, source: BuildContext, owner: tuple[int, int] | None,
                 mode: ModeSpec | None, reset_owner: bool, include: PatternMatcher | None,
                 exclude: PatternMatcher | None, files=None):
        self.dest_root = dest_root
        self.files = files
        self.source = source
        self.owner = owner
        self.mode = mode
        self.reset_owner = reset_owner
        self.include = include
        self.exclude = exclude
        self.inodes: dict[tuple[int, int], str] = {}
        self.pending: list[list] = []  # [src, dst, created] of directories passed but not yet made
        self.top_rel = ""

    def _dir_mode(self) -> int:
        return self.mode.octal if self.mode is not None and self.mode.octal is not None else 0o755

    def _mkdir_all(self, host_path: str) -> None:
        rel = os.path.relpath(host_path, self.dest_root)
        uid, gid = self.owner if self.owner is not None else (None, None)
        make_dirs(self.dest_root, "/" if rel == "." else "/" + rel, self._dir_mode(), uid, gid)

    def copy_source(self, rel: str, dest: str, dest_is_dir: bool) -> None:
        clean_dest = clean_path("/" + dest)
        self._mkdir_all(resolve_in_root(self.dest_root, clean_dest if dest_is_dir else posixpath.dirname(clean_dest)))
        src = resolve_in_root(self.source.root, rel)
        top = os.path.relpath(src, self.source.root)
        self.top_rel = "" if top == "." else top
        target = resolve_in_root(self.dest_root, clean_dest)
        src_is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        target_exists = os.path.exists(target)
        if not src_is_dir and target_exists and os.path.isdir(target):
            target = os.path.join(target, posixpath.basename(rel) or posixpath.basename(src))
        self._mkdir_all(target if src_is_dir and not target_exists else os.path.dirname(target))
        self.copy(src, "", target, overwrite=False)

    def _where(self, host_path: str) -> str:
        rel = os.path.relpath(host_path, self.dest_root)
        return "/" if rel == "." else "/" + rel

    def _hidden(self, comps: str, is_dir: bool) -> bool:
        if not self.source.rules or not comps:
            return False
        rel = f"{self.top_rel}/{comps}" if self.top_rel else comps
        return self.source.hidden(rel, is_dir)

    def copy(self, src: str, comps: str, target: str, overwrite: bool) -> None:
        include, excluded = True, False
        if comps:
            if self.include is not None and not self.include.matches(comps):
                include = False
            if self.exclude is not None and self.exclude.matches(comps):
                include, excluded = False, True
            if not include and self.include is None and not (self.exclude is not None and self.exclude.exclusions):
                return
        st = os.lstat(src)
        is_dir = stat.S_ISDIR(st.st_mode)
        if self._hidden(comps, is_dir) or (not include and not is_dir):
            return
        target_existed = os.path.lexists(target)
        if include:
            self._create_pending()
        if not is_dir:
            if (self.files is not None and stat.S_ISREG(st.st_mode)
                    and self.files.keep(src, st, target, self._owner_of(st), self._mode_of(st))):
                return
            self._ensure_file_target(target)

        copy_info = include
        if is_dir:
            created = self._copy_directory(src, comps, target, st, overwrite, include, excluded)
            if not overwrite:
                copy_info = created
                if not created and target_existed:
                    _set_times(target, st)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            first = self.inodes.get(key) if st.st_nlink > 1 else None
            if first is not None:
                os.link(first, target)
            else:
                copy_file(src, target)
                if st.st_nlink > 1:
                    self.inodes[key] = target
                elif self.files is not None:
                    self.files.wrote(src, target)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(target)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
        else:
            open(target, "wb").close()  # a socket arrives as an empty file, as through BuildKit's transfer
        if copy_info:
            self._copy_info(st, src, target)

    def _ensure_file_target(self, target: str) -> None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise SolveError(f"cannot replace to directory {self._where(target)} with file")
        os.unlink(target)

    def _copy_directory(self, src, comps, target, st, overwrite, include, excluded) -> bool:
        created = False
        if include:
            created = self._directory_only(target, st, overwrite)
        self.pending.append([src, target, include])
        try:
            if excluded and not (self.exclude is not None and self.exclude.exclusions):
                return created
            for name in sorted(os.listdir(src)):
                self.copy(os.path.join(src, name), f"{comps}/{name}" if comps else name,
                          os.path.join(target, name), overwrite=True)
        finally:
            self.pending.pop()
        return created

    def _directory_only(self, target: str, st: os.stat_result, overwrite: bool) -> bool:
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            os.mkdir(target, stat.S_IMODE(st.st_mode))
            return True
        if not stat.S_ISDIR(existing.st_mode):
            raise SolveError(f"cannot copy to non-directory: {self._where(target)}")
        if overwrite:
            os.chmod(target, stat.S_IMODE(st.st_mode))
        return False

    def _create_pending(self) -> None:
        for entry in self.pending:
            src, target, done = entry
            if done:
                continue
            st = os.stat(src)
            if self._directory_only(target, st, overwrite=False):
                self._copy_info(st, src, target)
            entry[2] = True

    def _owner_of(self, st: os.stat_result) -> tuple[int, int]:
        """The owner a copy of an entry with lstat ST gets."""
        if self.owner is not None:
            return self.owner
        return (0, 0) if self.reset_owner else (st.st_uid, st.st_gid)

    def _mode_of(self, st: os.stat_result) -> int:
        """The permission bits a copy of an entry with lstat ST gets (not for symlinks)."""
        return self.mode.apply(st.st_mode, stat.S_ISDIR(st.st_mode)) if self.mode else stat.S_IMODE(st.st_mode)

    def _copy_info(self, st: os.stat_result, src: str, target: str) -> None:
        os.lchown(target, *self._owner_of(st))
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(target, self._mode_of(st))
        _copy_xattrs(src, target)
        _set_times(target, st)


def _set_times(target: str, st: os.stat_result) -> None:
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(src: str, target: str) -> None:
    """Best effort, as BuildKit (it logs failures); overlayfs' own attributes are never copied."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith("trusted.overlay.") or name.startswith("user.overlay."):
            continue
        try:
            os.setxattr(target, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL):
                raise


__all__ = ["apply_copy", "apply_mkdir", "has_wildcards", "make_dirs", "parse_ids", "resolve_in_root"]
