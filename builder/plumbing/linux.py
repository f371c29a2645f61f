"""The Linux calls Python 3.11 lacks: namespaces, mounts (classic and the new mount API), seccomp,
pivot_root, capabilities, loopback. The executor, the snapshotter and the network all use these.

Each wrapper is one ctypes call with errno turned into OSError. None of them takes a Python-level
lock, so they may run in a child forked from a multi-threaded process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_SOCK_FILTER_BYTES = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }

SYS_PIVOT_ROOT = 155
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace FD refers to (NSTYPE: one CLONE_NEW* flag)."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {fstype or source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    syscall("pivot_root", SYS_PIVOT_ROOT, new_root, put_old)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH descriptor for PATH resolved as if ROOT_FD were "/": absolute symlinks and ".."
    stay inside it (openat2 with RESOLVE_IN_ROOT), so a tree's own links cannot reach the host."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    relative = path.strip("/") or "."
    ret = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_long(root_fd), ctypes.c_char_p(os.fsencode(relative)),
                        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ret


def syncfs(fd: int) -> None:
    """Write back everything cached for the filesystem that FD is on (one call for many files)."""
    _check(_libc.syncfs(fd), "syncfs")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def set_parent_death_signal(signum: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs() -> None:
    """execve can no longer grant privileges (setuid bits, file capabilities) to this process."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A BPF program (raw struct sock_filter array) laid out in memory ready for the kernel, so
    that a forked child installs it with one prctl and no allocation."""

    def __init__(self, bpf: bytes):
        if not bpf or len(bpf) % _SOCK_FILTER_BYTES:
            raise ValueError("a seccomp program is a non-empty array of 8-byte instructions")
        self._code = ctypes.create_string_buffer(bpf, len(bpf))
        self._fprog = _SockFprog(len(bpf) // _SOCK_FILTER_BYTES, ctypes.addressof(self._code))

    def install(self) -> None:
        """Filter every later system call of this thread (needs no_new_privs or CAP_SYS_ADMIN)."""
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog), 0, 0),
               "prctl(PR_SET_SECCOMP)")


SYS_BPF = 321
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_ATTR_BYTES = 128
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6


def bpf_load_program(prog_type: int, instructions: bytes, license_name: str) -> int:
    """BPF_PROG_LOAD: the program's fd. On a verifier refusal the message carries its log."""
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    lic = ctypes.create_string_buffer(license_name.encode())
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(_BPF_ATTR_BYTES)
    # union bpf_attr, BPF_PROG_LOAD: u32 prog_type, insn_cnt; u64 insns, license; u32 log_level, log_size; u64 log_buf
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(instructions) // 8, ctypes.addressof(insns),
                     ctypes.addressof(lic), 1, len(log), ctypes.addressof(log))
    fd = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(_BPF_PROG_LOAD), attr, ctypes.c_long(_BPF_ATTR_BYTES))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip()
        raise OSError(err, f"bpf(PROG_LOAD): {os.strerror(err)}{': ' + detail if detail else ''}")
    return fd


def bpf_prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    attr = ctypes.create_string_buffer(_BPF_ATTR_BYTES)
    # BPF_PROG_ATTACH: u32 target_fd, attach_bpf_fd, attach_type, attach_flags
    struct.pack_into("<IIII", attr, 0, target_fd, prog_fd, attach_type, flags)
    ret = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(_BPF_PROG_ATTACH), attr, ctypes.c_long(_BPF_ATTR_BYTES))
    _check(ret, "bpf(PROG_ATTACH)")


def limit_capabilities(keep: frozenset[int], last_cap: int) -> None:
    """Drop every capability not in KEEP from the bounding, ambient and inheritable sets.

    After execve a root process gets exactly its bounding set, and a process that switched to a
    non-root uid has none, so this is all a build step needs.
    """
    for cap in range(last_cap + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    mask = sum(1 << cap for cap in keep)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    # Two {effective, permitted, inheritable} triples: capabilities 0-31, then 32-63.
    data = (ctypes.c_uint32 * 6)(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0,
                                 mask >> 32, mask >> 32, 0)
    ret = _libc.syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(header), ctypes.byref(data))
    _check(ret, "capset")


def bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` in the current network namespace (no netlink library needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


_SIG_SETMASK = 2
_SIGSET_BYTES = 128
_libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.signal.restype = ctypes.c_void_p
_libc.pthread_sigmask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def set_signal_mask(block_all: bool) -> None:
    """Block every signal, or none, without going through Python's signal machinery.

    Python's own ``signal.pthread_sigmask`` runs pending Python handlers afterwards, which in a
    forked child could raise KeyboardInterrupt halfway through container setup.
    """
    sigset = ctypes.create_string_buffer(b"\xff" * _SIGSET_BYTES if block_all else _SIGSET_BYTES)
    ret = _libc.pthread_sigmask(_SIG_SETMASK, sigset, None)
    if ret != 0:
        raise OSError(ret, f"pthread_sigmask: {os.strerror(ret)}")


def reset_signal_dispositions() -> None:
    """Put every signal back to its default action: execve keeps ignored ones ignored
    (Python ignores SIGPIPE and SIGXFSZ), which would surprise the build step."""
    for signum in range(1, 65):
        _libc.signal(signum, 0)  # SIG_DFL; EINVAL for SIGKILL, SIGSTOP and glibc's own is fine


# ---- the new mount API and raw syscalls ---------------------------------------------------

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

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


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


def fsconfig_flag(fs_fd: int, key: str) -> None:
    syscall(f"fsconfig({key})", SYS_FSCONFIG, fs_fd, FSCONFIG_SET_FLAG, key, None, 0)


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
