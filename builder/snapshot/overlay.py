"""Mount an overlay filesystem from any number of layer directories.

The classic ``mount(2)`` call takes every lower directory in one option string; past one page the
kernel silently drops layers (and the upper dir) and hands back a read-only mount. The new mount
API has no such limit: ``fsopen("overlay")`` opens a filesystem context, ``fsconfig`` adds one
``lowerdir+`` per layer (kernel 6.8+), ``fsmount`` turns it into a detached mount and
``move_mount`` attaches it. Detached mounts also let callers resolve a tree now and attach it
later, which the executor uses to bind host paths into a container after ``pivot_root``.

Everything here is a thin ctypes call with no Python-level locking, so it is safe to call in a
child forked from a multi-threaded process.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

# x86_64 syscall numbers (the same on every architecture that has the new mount API, except alpha).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# The upper dir is later read as a layer diff, so it must hold whole files and plain renames:
# metacopy would leave data-less copies after a chown, redirect_dir would record directory renames
# as xattrs instead of a copy, and the inode index is only needed for NFS export and hard-link
# healing across mounts, neither of which a build step uses.
DIFFABLE_OPTIONS = (("redirect_dir", "off"), ("metacopy", "off"), ("index", "off"))

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class OverlayError(OSError):
    """An overlay mount the kernel refused; the message carries the kernel's own explanation."""


def _call(what: str, *args) -> int:
    ret = _syscall(*args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _arg(value) -> ctypes.c_long | ctypes.c_char_p:
    # syscall(2) is variadic: pass every integer as a full register, every string as a pointer.
    if isinstance(value, bytes):
        return ctypes.c_char_p(value)
    if isinstance(value, str):
        return ctypes.c_char_p(os.fsencode(value))
    if value is None:
        return ctypes.c_char_p(None)
    return ctypes.c_long(value)


def syscall(what: str, number: int, *args) -> int:
    return _call(what, ctypes.c_long(number), *(_arg(a) for a in args))


def fsopen(fstype: str) -> int:
    return syscall(f"fsopen({fstype})", SYS_FSOPEN, fstype, FSOPEN_CLOEXEC)


def fsconfig_string(fs_fd: int, key: str, value: str) -> None:
    syscall(f"fsconfig({key}={value})", SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING, key, value, 0)


def fsconfig_create(fs_fd: int) -> None:
    syscall("fsconfig(create)", SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0)


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    return syscall("fsmount", SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attr_flags)


def move_mount(mount_fd: int, target: str) -> None:
    """Attach a detached mount (from fsmount or open_tree) at TARGET."""
    syscall(f"move_mount({target})", SYS_MOVE_MOUNT, mount_fd, "", AT_FDCWD, target,
            MOVE_MOUNT_F_EMPTY_PATH)


def clone_tree(source: str, *, readonly: bool) -> int:
    """A detached recursive bind of SOURCE (like ``mount --rbind``), optionally read-only."""
    fd = syscall(f"open_tree({source})", SYS_OPEN_TREE, AT_FDCWD, source,
                 OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    if readonly:
        # struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
        try:
            _call(f"mount_setattr({source}, ro)", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(fd),
                  ctypes.c_char_p(b""), ctypes.c_long(AT_EMPTY_PATH | AT_RECURSIVE),
                  ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))
        except BaseException:
            os.close(fd)
            raise
    return fd


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


def overlay_mount_fd(lowerdirs: Sequence[str], upperdir: str | None, workdir: str | None) -> int:
    """Build a detached overlay mount and return its fd.

    LOWERDIRS is base layer first, topmost last (the order of an image's layers); overlayfs wants
    the topmost first, so they are added in reverse. At least one lower dir is required.
    Without UPPERDIR the mount is read-only (the kernel then wants at least two lower dirs).
    """
    if not lowerdirs:
        raise ValueError("overlay needs at least one lower directory")
    fs_fd = fsopen("overlay")
    try:
        try:
            for lower in reversed(lowerdirs):
                fsconfig_string(fs_fd, "lowerdir+", lower)
            if upperdir is not None:
                fsconfig_string(fs_fd, "upperdir", upperdir)
                fsconfig_string(fs_fd, "workdir", workdir or "")
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
        os.close(fs_fd)


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
