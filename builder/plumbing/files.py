"""Atomic file writes (readers see the old file or the new one, never a part, even after a crash)
and the exclusive lock file writers take around a read-modify-write.

Also the one way file data is copied (copy_file): reflink, copy_file_range, sendfile, read/write.

The one recipe every atomic write uses: a temp file in the target's directory (so the rename stays on
one filesystem), fsync of the file, rename over the target, fsync of the directory (the rename
is durable only once the directory entry is). A writer whose file is only a cache may skip both
fsyncs (`durable=False`) and make many writes durable at once with `sync_filesystem` instead: a
rename is still all or nothing for every reader, and after a power loss such a file may be
missing or short, never a mix of old and new bytes (ext4's ordered data).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from typing import BinaryIO, Callable, Iterator


def fsync_directory(path: str) -> None:
    """Make the entries of directory PATH (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: str) -> None:
    """Make durable every write so far to the filesystem PATH is on (syncfs: one call, however
    many files were written without fsync)."""
    from builder.plumbing.linux import syncfs  # ctypes only when syncing

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, content: bytes | Callable[[BinaryIO], None], *, mode: int = 0o644,
                     durable: bool = True) -> None:
    """Replace PATH with CONTENT (bytes, or a function that writes to the open file) and MODE;
    with DURABLE false, without the fsyncs (see the module's note).

    On any failure the temp file is removed and the target is left as it was; OSError is raised
    as it came, for the caller to word."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, (bytes, bytearray, memoryview)):
                out.write(content)
            else:
                content(out)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_directory(directory)


@contextlib.contextmanager
def locked(path: str, mode: int = 0o600) -> Iterator[None]:
    """Hold an exclusive flock on the lock file PATH (made with MODE if missing) for the block;
    other processes that lock the same path wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


# ---- copying file data with the kernel's copy paths ---------------------------------------------

FICLONE = 0x40049409            # _IOW(0x94, 9, int): share the source's extents (btrfs, xfs, bcachefs)
_CHUNK = 1 << 30                # per copy_file_range/sendfile call: big, but under the 2 GiB a call takes
# (source st_dev, destination st_dev) pairs on which a method failed once: later files skip it.
_NO_CLONE: set[tuple[int, int]] = set()
_NO_COPY_RANGE: set[tuple[int, int]] = set()
# What a filesystem (or a kernel, or a seccomp filter) says when it does not do a copy method.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF,
                errno.EPERM, errno.ETXTBSY}


def copy_file(src: str, dst: str, *, mode: int = 0o600) -> str:
    """Copy the regular file SRC's bytes to a new file DST (replaced if it exists, made with MODE
    before the umask) and return the method that copied them.

    The fastest path the two filesystems allow: a reflink (FICLONE: no data copied at all), else
    `copy_file_range` (in the kernel, and offloaded on filesystems that can), else `sendfile`,
    else a read/write loop. Metadata (owner, mode, times, xattrs) is the caller's business."""
    with open(src, "rb", buffering=0) as source:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            return copy_file_data(source.fileno(), fd, os.fstat(source.fileno()).st_size)
        finally:
            os.close(fd)


def copy_file_data(src_fd: int, dst_fd: int, size: int) -> str:
    """Copy SIZE bytes from the start of SRC_FD to the start of the empty DST_FD (see copy_file)."""
    if size == 0:
        return "empty"
    devices = (os.fstat(src_fd).st_dev, os.fstat(dst_fd).st_dev)
    if devices not in _NO_CLONE:
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return "reflink"
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
            _NO_CLONE.add(devices)
    done = 0
    if devices not in _NO_COPY_RANGE:
        done, supported = _copy_loop(lambda n, at: os.copy_file_range(src_fd, dst_fd, n, at, at), size)
        if done == size:
            return "copy_file_range"
        if not supported:
            _NO_COPY_RANGE.add(devices)
    start = done
    os.lseek(dst_fd, done, os.SEEK_SET)  # sendfile writes at the file position; it reads at the offset
    done, _ = _copy_loop(lambda n, at: os.sendfile(dst_fd, src_fd, at, n), size, done)
    if done == size:
        return "sendfile" if start == 0 else "copy_file_range+sendfile"
    while done < size:  # neither kernel path works here (or the file shrank: copy what is left)
        chunk = os.pread(src_fd, min(size - done, 1 << 20), done)
        if not chunk:
            break
        done += os.pwrite(dst_fd, chunk, done)
    return "read/write"


def _copy_loop(step: Callable[[int, int], int], size: int, done: int = 0) -> tuple[int, bool]:
    """Call STEP(count, offset) until SIZE bytes are copied: (bytes copied, whether the method is
    supported here). It stops early when it is not, or at an early end of file (the file shrank)."""
    while done < size:
        try:
            copied = step(min(size - done, _CHUNK), done)
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
            return done, False
        if copied == 0:
            return done, True
        done += copied
    return done, True
