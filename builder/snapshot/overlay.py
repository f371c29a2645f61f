"""Mount an overlay filesystem from any number of layer directories.

The classic ``mount(2)`` call takes every lower directory in one option string; past one page the
kernel silently drops layers (and the upper dir) and hands back a read-only mount. The new mount
API has no such limit: ``fsopen("overlay")`` opens a filesystem context, ``fsconfig`` adds one
``lowerdir+`` per layer (kernel 6.8+), ``fsmount`` turns it into a detached mount and
``move_mount`` attaches it. Detached mounts also let callers resolve a tree now and attach it
later, which the executor uses to bind host paths into a container after ``pivot_root``.

The syscalls themselves live in builder.plumbing.linux; nothing here takes a Python-level lock,
so it is safe to call in a child forked from a multi-threaded process.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from builder.plumbing.linux import fsconfig_create, fsconfig_flag, fsconfig_string, fsmount, fsopen, move_mount

# The upper dir is later read as a layer diff, so it must hold whole files and plain renames:
# metacopy would leave data-less copies after a chown, redirect_dir would record directory renames
# as xattrs instead of a copy, and the inode index is only needed for NFS export and hard-link
# healing across mounts, neither of which a build step uses.
DIFFABLE_OPTIONS = (("redirect_dir", "off"), ("metacopy", "off"), ("index", "off"))


class OverlayError(OSError):
    """An overlay mount the kernel refused; the message carries the kernel's own explanation."""


def _kernel_messages(fs_fd: int) -> str:
    # A filesystem context keeps the kernel's error messages ("e overlay: ...") readable on its fd.
    lines = []
    while True:
        try:
            msg = os.read(fs_fd, 1024)
        except OSError:
            break
        if not msg:
            break
        lines.append(msg.decode(errors="replace").strip())
    return "; ".join(lines)


def _forget_volatile_mark(workdir: str) -> None:
    """A volatile mount leaves WORKDIR/work/incompat/volatile/dirty behind, and the kernel refuses
    the next mount while it is there, because after a crash the upper dir may have lost writes.
    A work dir is only ever reused by the process that used it (scratch dirs are new per step and
    thrown away with it after a crash), so the writes are all there: the mark can go."""
    mark = os.path.join(workdir, "work", "incompat", "volatile")
    try:
        os.unlink(os.path.join(mark, "dirty"))
    except FileNotFoundError:
        return
    for path in (mark, os.path.dirname(mark)):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            break


def overlay_mount_fd(lowerdirs: Sequence[str], upperdir: str | None, workdir: str | None) -> int:
    """Build a detached overlay mount and return its fd.

    LOWERDIRS is base layer first, topmost last (the order of an image's layers); overlayfs wants
    the topmost first, so they are added in reverse. At least one lower dir is required.
    Without UPPERDIR the mount is read-only (the kernel then wants at least two lower dirs).
    """
    if not lowerdirs:
        raise ValueError("overlay needs at least one lower directory")
    fs_fd = fsopen("overlay")
    opened: list[int] = []
    try:
        try:
            for lower in reversed(lowerdirs):
                fsconfig_string(fs_fd, "lowerdir+", _fd_path("lowerdir+", lower, opened))
            if upperdir is not None:
                fsconfig_string(fs_fd, "upperdir", _fd_path("upperdir", upperdir, opened))
                fsconfig_string(fs_fd, "workdir", _fd_path("workdir", workdir or "", opened))
                # No sync of the upper filesystem: not at unmount (which would flush every byte the
                # step wrote, 0.3 s for 300 MB here, on the step's critical path) and not for the
                # step's own fsync calls. The build makes its snapshots durable with one syncfs
                # before any name points at them (Store.sync).
                _forget_volatile_mark(workdir or "")
                fsconfig_flag(fs_fd, "volatile")
            for key, value in DIFFABLE_OPTIONS:
                fsconfig_string(fs_fd, key, value)
            fsconfig_create(fs_fd)
        except OSError as exc:
            detail = _kernel_messages(fs_fd)
            raise OverlayError(exc.errno or errno.EINVAL,
                               f"{exc.strerror}{': ' + detail if detail else ''} "
                               f"({len(lowerdirs)} lower dirs, upper {upperdir})") from None
        return fsmount(fs_fd)
    finally:
        for fd in opened:
            os.close(fd)
        os.close(fs_fd)


def _fd_path(key: str, directory: str, opened: list[int]) -> str:
    """DIRECTORY as /proc/thread-self/fd/N of an O_PATH descriptor. Overlayfs shows its options
    as given in /proc/*/mountinfo: a container must not learn the store's host paths from them."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"{key}={directory}: {os.strerror(exc.errno)}") from None
    opened.append(fd)
    return f"/proc/thread-self/fd/{fd}"


def mount_overlay(lowerdirs: Sequence[str], upperdir: str | None, workdir: str | None,
                  target: str) -> None:
    """Mount an overlay of LOWERDIRS (base first) with UPPERDIR/WORKDIR at TARGET.

    Call it inside a private mount namespace: the mount then disappears with the namespace.
    """
    mount_fd = overlay_mount_fd(lowerdirs, upperdir, workdir)
    try:
        move_mount(mount_fd, target)
    finally:
        os.close(mount_fd)
