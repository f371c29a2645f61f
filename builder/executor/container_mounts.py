"""The container's file system view: /proc, /dev, /sys, RUN --mount mounts, and their mount points.

Everything except ``remove_stubs`` runs inside the container's init after ``pivot_root``, so
every container path (symlinks included) resolves inside the container and never on the host.

A mount needs an existing mount point. When the image lacks one (/proc, /etc/hosts, a bind
target), ``make_mountpoint`` creates it through the overlay, which puts it in the upper dir, and
records a ``MountStub``. After the run, ``remove_stubs`` deletes those stubs from the upper dir if
the process left them empty, and puts back the parent directory's times, so that a step does not
add empty /proc or /etc/hosts entries to its layer (BuildKit cleans up the same way).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

from builder.executor.spec import LayeredMount, SecretFile
from builder.plumbing.linux import (AT_EMPTY_PATH, AT_RECURSIVE, MNT_DETACH, MOUNT_ATTR_RDONLY, MS_BIND,
                                    MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT,
                                    OPEN_TREE_CLOEXEC, OPEN_TREE_CLONE, SYS_MOUNT_SETATTR, SYS_OPEN_TREE,
                                    clone_tree, mount, move_mount, open_in_root, syscall, umount2)
from builder.plumbing.records import dataclass

_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
            ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
# As runc's defaults: kernel interfaces a build step must not write to, and files it must not read.
_READONLY_PROC = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_MASKED_PROC = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/acpi", "/proc/scsi")
_MASKED_SYS = ("/sys/firmware",)


@dataclass(frozen=True)
class MountStub:
    """A mount point the executor created because the image did not have it."""

    path: str                        # container path, symlinks resolved
    is_dir: bool
    parent_times: tuple[int, int]    # parent's (atime_ns, mtime_ns) before the stub was created
    parent_mtime_after: int          # parent's mtime_ns right after; a change means the process wrote

    def encode(self) -> bytes:
        fields = ("d" if self.is_dir else "f", *map(str, self.parent_times),
                  str(self.parent_mtime_after), self.path)
        return os.fsencode("\t".join(fields))

    @classmethod
    def decode(cls, raw: bytes) -> MountStub:
        kind, atime, mtime, after, path = os.fsdecode(raw).split("\t", 4)
        return cls(path, kind == "d", (int(atime), int(mtime)), int(after))


class MountSourceError(Exception):
    """A mount's source cannot be mounted (missing path, refused by the kernel)."""


def _clone_at(fd: int, readonly: bool) -> int:
    """A detached recursive copy of the mount tree at the O_PATH descriptor FD."""
    tree = syscall("open_tree", SYS_OPEN_TREE, fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH
                   | AT_RECURSIVE)
    if readonly:
        # struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
        try:
            syscall("mount_setattr(ro)", SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                    ctypes.addressof(attr), ctypes.sizeof(attr))
        except BaseException:
            os.close(tree)
            raise
    return tree


def layered_mount_fd(spec: LayeredMount, view: str, empty: str) -> tuple[int, bool]:
    """A detached mount of SPEC's SUBPATH and whether it is a directory. Runs on the host side of
    init (before pivot_root): the whole stack is attached at the empty dir VIEW just long enough
    to resolve SUBPATH inside it, so that only that part is ever visible in the container."""
    try:
        tree = spec.snapshot.detached(empty)
    except OSError as exc:
        raise MountSourceError(f"mount for {spec.target}: {exc.strerror or exc}") from None
    try:
        move_mount(tree, view)
    finally:
        os.close(tree)
    try:
        root = os.open(view, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            source = open_in_root(root, spec.subpath)
        except OSError as exc:
            raise MountSourceError(f'mount source "{spec.subpath}" for {spec.target}: '
                                   f"{os.strerror(exc.errno).lower()}") from None
        finally:
            os.close(root)
        try:
            is_dir = stat.S_ISDIR(os.fstat(source).st_mode)
            return _clone_at(source, readonly=spec.upperdir is None), is_dir
        finally:
            os.close(source)
    finally:
        umount2(view, MNT_DETACH)


def secret_file_fds(secrets: list[SecretFile], scratch: str) -> list[int]:
    """Detached read-only mounts of one file per secret, written to a tmpfs at SCRATCH that is
    unmounted again at once: the values live only in memory, reachable only through the clones."""
    # noexec unless a file is meant to run (a RUN heredoc script with #!, mode 0755).
    executable = any(secret.mode & 0o111 for secret in secrets)
    flags = MS_NOSUID | MS_NODEV | (0 if executable else MS_NOEXEC)
    mount("tmpfs", scratch, "tmpfs", flags, "mode=0711")
    fds = []
    try:
        for i, secret in enumerate(secrets):
            path = os.path.join(scratch, str(i))
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                data = memoryview(secret.data)
                while data:
                    data = data[os.write(fd, data):]
                os.fchown(fd, secret.uid, secret.gid)
                os.fchmod(fd, secret.mode)
            finally:
                os.close(fd)
            fds.append(clone_tree(path, readonly=True))
    finally:
        umount2(scratch, MNT_DETACH)
    return fds


def mount_tmpfs(target: str, size: int) -> None:
    mount("tmpfs", target, "tmpfs", MS_NOSUID, f"size={size}" if size else None)


def make_mountpoint(path: str, is_dir: bool, stubs: list[MountStub]) -> str:
    """Ensure PATH exists (a directory, or an empty file when not IS_DIR); return it resolved.

    Each component created is appended to STUBS.
    """
    resolved = os.path.realpath(path)
    if resolved == "/":
        raise OSError(errno.EINVAL, f"cannot mount over the container's root ({path})")
    current = ""
    names = resolved.strip("/").split("/")
    for i, name in enumerate(names):
        parent, current = current or "/", f"{current}/{name}"
        if os.path.lexists(current):
            continue
        before = os.stat(parent)
        if i == len(names) - 1 and not is_dir:
            os.close(os.open(current, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
            created_dir = False
        else:
            os.mkdir(current, 0o755)
            created_dir = True
        stubs.append(MountStub(current, created_dir, (before.st_atime_ns, before.st_mtime_ns),
                               os.stat(parent).st_mtime_ns))
    return resolved


def mount_proc(stubs: list[MountStub]) -> None:
    make_mountpoint("/proc", True, stubs)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_dev(stubs: list[MountStub], shm_size: int = 0) -> None:
    make_mountpoint("/dev", True, stubs)
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name, major, minor in _DEVICES:
        node = f"/dev/{name}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)  # the umask trimmed mknod's mode
    for name, target in _DEV_LINKS:
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/pts", 0o755)
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.mkdir("/dev/shm", 0o755)
    mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={shm_size or 64 << 20}")


def mount_sys(stubs: list[MountStub]) -> None:
    make_mountpoint("/sys", True, stubs)
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in _MASKED_SYS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def restrict_proc() -> None:
    """Make kernel tunables read-only and hide kernel memory and keys (needs /dev/null)."""
    for path in _READONLY_PROC:
        if os.path.lexists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    for path in _MASKED_PROC:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY)
        else:
            mount("/dev/null", path, None, MS_BIND)


def _open_dir_nofollow(root: str, relative: str) -> int:
    """Open ROOT/RELATIVE as a directory without following any symlink below ROOT."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in relative.split("/"):
            if not name:
                continue
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stubs(upperdir: str, stubs: Iterable[MountStub], lowerdirs: tuple[str, ...] = ()) -> None:
    """Delete from UPPERDIR the stubs the process left as created (deepest first).

    Creating a stub made overlayfs copy its parent directory up (an /etc with no hosts file);
    once the stub is gone, a parent left empty and identical to the lower one is removed too, so
    the layer does not carry an unchanged /etc (LOWERDIRS: base first, as in RootFS).

    Runs on the host after the container is gone. The upper dir holds what the process wrote, so
    it is walked without following symlinks: a step that replaced /etc with a symlink to / must
    not make us delete host files.
    """
    for stub in reversed(list(stubs)):
        parent, _, name = stub.path.rpartition("/")
        try:
            dir_fd = _open_dir_nofollow(upperdir, parent)
        except OSError:
            continue  # the process replaced or removed a parent: leave its work alone
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            untouched_parent = os.fstat(dir_fd).st_mtime_ns == stub.parent_mtime_after
            if stub.is_dir and stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dir_fd)
            elif not stub.is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=dir_fd)
            else:
                continue
            if untouched_parent:
                os.utime(dir_fd, ns=stub.parent_times)
                _drop_unchanged_copy_up(upperdir, parent, dir_fd, lowerdirs)
        except OSError:
            continue  # not empty, already gone, or changed type: it is the process's content now
        finally:
            os.close(dir_fd)


def _drop_unchanged_copy_up(upperdir: str, path: str, dir_fd: int, lowerdirs: tuple[str, ...]) -> None:
    """Removes upper dir PATH (open as DIR_FD) if it is empty, not opaque, and matches the
    topmost lower directory at PATH in mode, owner and mtime: a copy-up with no change in it."""
    if not path.strip("/") or os.listdir(dir_fd):
        return
    try:
        os.getxattr(dir_fd, "trusted.overlay.opaque")
        return
    except OSError:
        pass
    upper = os.fstat(dir_fd)
    for lower in reversed(lowerdirs):
        try:
            st = os.stat(os.path.join(lower, path.lstrip("/")), follow_symlinks=False)
        except OSError:
            continue
        same = (stat.S_ISDIR(st.st_mode) and st.st_mode == upper.st_mode and st.st_uid == upper.st_uid
                and st.st_gid == upper.st_gid and st.st_mtime_ns == upper.st_mtime_ns)
        if same:
            parent, _, name = path.rstrip("/").rpartition("/")
            parent_fd = _open_dir_nofollow(upperdir, parent)
            try:
                times = os.fstat(parent_fd)
                os.rmdir(name, dir_fd=parent_fd)
                os.utime(parent_fd, ns=(times.st_atime_ns, times.st_mtime_ns))
            finally:
                os.close(parent_fd)
        return

