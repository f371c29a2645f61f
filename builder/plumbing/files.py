"""Atomic file writes (readers see the old file or the new one, never a part, even after a crash)
and the exclusive lock file writers take around a read-modify-write.

The one recipe every caller uses: a temp file in the target's directory (so the rename stays on
one filesystem), fsync of the file, rename over the target, fsync of the directory (the rename
is durable only once the directory entry is). A writer whose file is only a cache may skip both
fsyncs (`durable=False`) and make many writes durable at once with `sync_filesystem` instead: a
rename is still all or nothing for every reader, and after a power loss such a file may be
missing or short, never a mix of old and new bytes (ext4's ordered data).
"""

from __future__ import annotations

import contextlib
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
